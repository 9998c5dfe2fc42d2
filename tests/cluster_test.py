#!/usr/bin/env python3
"""Cluster equivalence: 1 effadam-server + N effadam-worker processes on
loopback must end with the params_checksum and byte counts of effadam-sim
with the same flags (docs/protocol.md, "Determinism"), and the cluster must
refuse bad workers with a clear error while staying up.

Usage: cluster_test.py --bin BUILD/bin [--only NAME]
Only 127.0.0.1 is ever used. Every process started here is killed in a
finally block; temporary directories are removed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

LOOPBACK = "127.0.0.1"
WORKERS = 3
PROCESS_TIMEOUT = 120  # seconds for one process to finish its run

# Toy runs use small blocks so that every tensor of the toy model, biases
# included, goes through the codec under test.
TOY = ["--model=toy", "--batch_size=8", "--seed=5", "--lr=0.01",
       "--block_size=64", "--min_compress_elements=64"]


class Failure(Exception):
    pass


def scrape(address, timeout=10):
    """{series: value} of every sample at http://address/metrics
    (Prometheus text format; a series is its name and labels as printed)."""
    with urllib.request.urlopen("http://%s/metrics" % address,
                                timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def check(cond, what):
    if not cond:
        raise Failure(what)


class Cluster:
    """Processes and files of one test case; close() kills what is left."""

    def __init__(self, bin_dir, name):
        self.bin = bin_dir
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="effadam_cluster_%s_" % name)
        self.procs = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def spawn(self, label, argv):
        out = open(self.path(label + ".out"), "wb")
        err = open(self.path(label + ".err"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
        out.close()
        err.close()
        p.label = label
        self.procs.append(p)
        return p

    def output(self, label):
        with open(self.path(label + ".out"), "rb") as f:
            out = f.read().decode(errors="replace")
        with open(self.path(label + ".err"), "rb") as f:
            err = f.read().decode(errors="replace")
        return out, err

    def start_server(self, flags, port=0, label="server", metrics=False):
        """Starts effadam-server and returns its port, read from the line
        'effadam-server listening on 127.0.0.1:PORT'. With metrics, on a
        free port that p.metrics_port holds."""
        p = self.spawn(label, [os.path.join(self.bin, "effadam-server"),
                               "--listen=%s:%d" % (LOOPBACK, port),
                               # Port 0 when on: the default port would
                               # collide between concurrent tests.
                               "--metrics_listen=" +
                               ("%s:0" % LOOPBACK if metrics else ""),
                               "--summary_json=" + self.path(label + ".json")]
                       + flags)
        deadline = time.time() + 30
        pattern = re.compile(r"effadam-server listening on 127\.0\.0\.1:(\d+)")
        metrics_pattern = re.compile(
            r"effadam-server metrics on http://127\.0\.0\.1:(\d+)/")
        while time.time() < deadline:
            out, err = self.output(label)
            m = pattern.search(out + err)
            mm = metrics_pattern.search(out + err)
            if m and (mm or not metrics):
                p.metrics_port = int(mm.group(1)) if mm else None
                return p, int(m.group(1))
            if p.poll() is not None:
                raise Failure("%s exited with %d before listening:\n%s%s"
                              % (label, p.returncode, out, err))
            time.sleep(0.05)
        raise Failure("%s did not print its port within 30 s" % label)

    def start_shards(self, flags, shards, label):
        """`shards` servers that hold one model between them
        (docs/sharding.md), labelled LABEL0, LABEL1, ...; returns their
        processes and the workers' --server value (every address, in shard
        order)."""
        servers, addresses = [], []
        for k in range(shards):
            p, port = self.start_server(
                flags + ["--shard=%d" % k, "--num_shards=%d" % shards],
                label="%s%d" % (label, k))
            servers.append(p)
            addresses.append("%s:%d" % (LOOPBACK, port))
        return servers, ",".join(addresses)

    def metric(self, server, name):
        """The value of an unlabelled metric on `server`'s /metrics."""
        address = "%s:%d" % (LOOPBACK, server.metrics_port)
        value = scrape(address, timeout=5).get(name)
        if value is None:
            raise Failure("no %s on http://%s/metrics" % (name, address))
        return value

    def wait_for(self, what, predicate, timeout=60):
        """Polls predicate() until true; Failure naming `what` after
        `timeout` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise Failure("timed out after %d s waiting for %s" % (timeout, what))

    def start_worker(self, label, port, flags):
        return self.spawn(label, [os.path.join(self.bin, "effadam-worker"),
                                  "--server=%s:%d" % (LOOPBACK, port),
                                  "--summary_json=" + self.path(label + ".json")]
                          + flags)

    def wait(self, p, timeout=PROCESS_TIMEOUT):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("%s did not finish within %d s:\n%s"
                          % (p.label, timeout, "".join(self.output(p.label))))
        return p.returncode

    def expect_ok(self, p):
        rc = self.wait(p)
        if rc != 0:
            raise Failure("%s exited with %d:\n%s"
                          % (p.label, rc, "".join(self.output(p.label))))

    def summary(self, label):
        with open(self.path(label + ".json")) as f:
            return json.load(f)

    def run_sim(self, flags, workers=WORKERS):
        argv = [os.path.join(self.bin, "effadam-sim"),
                "--workers=%d" % workers,
                "--summary_json=" + self.path("sim.json")] + flags
        p = self.spawn("sim", argv)
        self.expect_ok(p)
        return self.summary("sim")

    def close_processes(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def close(self):
        self.close_processes()
        shutil.rmtree(self.dir, ignore_errors=True)


def server_flags(flags, rounds):
    return ["--workers=%d" % WORKERS, "--rounds=%d" % rounds] + [
        f for f in flags if f.split("=")[0] in (
            "--worker_codec", "--server_codec", "--block_size",
            "--min_compress_elements", "--error_feedback", "--seed")]


def check_equivalence(c, sim, rounds, metric, eval_every, uploader=None):
    """The server's and every worker's summary against effadam-sim's."""
    server = c.summary("server")
    workers = [c.summary("worker%d" % i) for i in range(WORKERS)]
    by_rank = {w["rank"]: w for w in workers}
    # Rank 0 prints effadam-sim's progress lines, the others start and end.
    for i, w in enumerate(workers):
        lines = c.output("worker%d" % i)[0].splitlines()
        progress = [l for l in lines if l.startswith("round ")]
        want = (rounds // eval_every + (rounds % eval_every != 0)
                if w["rank"] == 0 else 0)
        check(len(progress) == want and len(lines) == want + 2,
              "rank %d printed %d lines, %d of progress (want %d):\n%s"
              % (w["rank"], len(lines), len(progress), want,
                 "\n".join(lines)))
    check(sorted(by_rank) == list(range(WORKERS)),
          "ranks %s, want 0..%d" % (sorted(by_rank), WORKERS - 1))
    want = sim["params_checksum"]
    check(server["params_checksum"] == want,
          "server params_checksum %s, effadam-sim %s"
          % (server["params_checksum"], want))
    for r, w in sorted(by_rank.items()):
        check(w["params_checksum"] == want,
              "rank %d params_checksum %s, effadam-sim %s"
              % (r, w["params_checksum"], want))
        check(w["rounds"] == rounds, "rank %d ran %s rounds" % (r, w["rounds"]))
    for key in ("bytes_worker_to_server", "bytes_server_to_worker",
                "fp32_equivalent_bytes"):
        check(server[key] == sim[key],
              "server %s %d, effadam-sim %d" % (key, server[key], sim[key]))
        # effadam-sim counts N workers; each worker counts its own share.
        check(sim[key] % WORKERS == 0, "effadam-sim %s not divisible" % key)
        for r, w in sorted(by_rank.items()):
            check(w[key] == sim[key] // WORKERS,
                  "rank %d %s %d, want %d" % (r, key, w[key],
                                              sim[key] // WORKERS))
    # Join traffic: every worker fetches x once, the first also uploads it.
    d4 = sim["fp32_equivalent_bytes"] // (2 * WORKERS * rounds)
    joins = sorted(w["bytes_join"] for w in workers)
    check(joins == [d4] * (WORKERS - 1) + [2 * d4],
          "workers' bytes_join %s, want %s" % (joins,
                                               [d4] * (WORKERS - 1) + [2 * d4]))
    if uploader is not None:
        check(by_rank[uploader]["bytes_join"] == 2 * d4,
              "rank %d did not upload x0" % uploader)
    check(server["bytes_join"] == sum(joins),
          "server bytes_join %d, workers %d" % (server["bytes_join"], sum(joins)))
    # Rank 0 evaluates the same x on the same test data as effadam-sim.
    check(by_rank[0].get(metric) == sim[metric],
          "rank 0 %s %s, effadam-sim %s" % (metric, by_rank[0].get(metric),
                                            sim[metric]))
    for r in range(1, WORKERS):
        check(metric not in by_rank[r], "rank %d reports %s" % (r, metric))
    return ("params_checksum %s = sim = server = %d workers; up %d B, "
            "down %d B, join %d B" % (want, WORKERS,
                                      sim["bytes_worker_to_server"],
                                      sim["bytes_server_to_worker"],
                                      server["bytes_join"]))


def wait_started(c, label, p):
    """Until the worker has joined, fetched x and opened its stream."""
    deadline = time.time() + 30
    while "starting at round" not in c.output(label)[0]:
        check(time.time() < deadline and p.poll() is None,
              "%s did not start:\n%s" % (label, "".join(c.output(label))))
        time.sleep(0.05)


def run_equivalence(c, flags, rounds, metric, server_extra=(),
                    before_workers=None, before_last_worker=None, ranks=None):
    """Runs effadam-sim and a cluster with the same flags and compares.
    before_workers(c, port) runs on the empty server; before_last_worker
    (c, port) once all workers but the last have joined (they then wait
    for the last one to close round 1). ranks: the --rank of each worker in
    start order; default: assigned by the server."""
    common = flags + ["--rounds=%d" % rounds, "--eval_every=10"]
    sim = c.run_sim(common)
    server, port = c.start_server(server_flags(common, rounds) +
                                  list(server_extra))
    if before_workers:
        before_workers(c, port)
    workers = []
    for i in range(WORKERS):
        label = "worker%d" % i
        if i == WORKERS - 1 and before_last_worker:
            for j, w in enumerate(workers):
                wait_started(c, "worker%d" % j, w)
            before_last_worker(c, port)
        rank = ["--rank=%d" % ranks[i]] if ranks else []
        workers.append(c.start_worker(label, port, common + rank))
        if ranks and i == 0:
            wait_started(c, label, workers[0])  # it joins first and uploads
    for w in workers:
        c.expect_ok(w)
    c.expect_ok(server)
    return check_equivalence(c, sim, rounds, metric, eval_every=10,
                             uploader=ranks[0] if ranks else None)


def expect_refused(c, port, label, flags, code, *needles):
    """A worker the server must refuse: exit 1, one line naming why."""
    p = c.start_worker(label, port, flags)
    rc = c.wait(p, timeout=30)
    out, err = c.output(label)
    check(rc == 1, "%s exited with %d, want 1:\n%s%s" % (label, rc, out, err))
    # The daemons' log lines: "<RFC 3339 time> <LEVEL> effadam-worker: ..."
    lines = [re.sub(r"^\S+Z ERROR ", "", l) for l in err.splitlines()
             if l.strip()]
    check(len(lines) == 1 and lines[0].startswith("effadam-worker: " + code),
          "%s stderr is not one line starting with '%s':\n%s"
          % (label, code, err))
    for n in needles:
        check(n in lines[0], "%s error does not mention %r: %s"
              % (label, n, lines[0]))


# ---- test cases -----------------------------------------------------------

def case_toy_fp32(c):
    # --max_chunk_bytes far below one update makes every update, delta and
    # the parameter transfers travel as many chunks.
    return run_equivalence(c, TOY + ["--worker_codec=fp32",
                                     "--server_codec=fp32"],
                           rounds=30, metric="distance_to_optimum",
                           server_extra=["--max_chunk_bytes=1000"])


def case_toy_sign_and_refusals(c):
    flags = TOY + ["--worker_codec=sign", "--server_codec=sign"]
    refused = flags + ["--rounds=30"]

    def on_empty_server(c, port):
        expect_refused(c, port, "bad_codec", refused + ["--worker_codec=q8"],
                       "FAILED_PRECONDITION", "worker_codec", "q8", "sign")
        expect_refused(c, port, "bad_feedback",
                       refused + ["--error_feedback=none"],
                       "FAILED_PRECONDITION", "error_feedback")
        expect_refused(c, port, "bad_rank", refused + ["--rank=%d" % WORKERS],
                       "INVALID_ARGUMENT", str(WORKERS))

    def on_running_server(c, port):
        # The layout is fixed now, and ranks 0 and 1 are live.
        expect_refused(c, port, "bad_layout", refused + ["--model=logreg"],
                       "FAILED_PRECONDITION", "layout")
        # Without a reconnect budget a taken rank is final at once (with
        # one, the worker waits for it: lifecycle_test.py rank_still_held).
        expect_refused(c, port, "taken_rank",
                       refused + ["--rank=0", "--reconnect_timeout=0"],
                       "ALREADY_EXISTS", "0")

    # The server must stay up through the refusals, keep no rank for the
    # refused workers and still run the cluster to the simulator's result.
    return run_equivalence(c, flags, rounds=30,
                           metric="distance_to_optimum",
                           before_workers=on_empty_server,
                           before_last_worker=on_running_server)


def case_toy_q4_topk(c):
    # Ranks claimed out of order: rank 2 joins first and uploads x0, and
    # each worker's shard follows its rank, not its arrival.
    return run_equivalence(c, TOY + ["--worker_codec=q4",
                                     "--server_codec=topk:0.01"],
                           rounds=30, metric="distance_to_optimum",
                           ranks=[2, 0, 1])


def case_toy_one_way_worker_feedback(c):
    # One-way compression (the server sends fp32) with error feedback on the
    # workers only: the workers must take --error_feedback as the server does.
    return run_equivalence(c, TOY + ["--worker_codec=bf16",
                                     "--server_codec=fp32",
                                     "--error_feedback=worker",
                                     "--lr_schedule=inverse_sqrt"],
                           rounds=30, metric="distance_to_optimum")


def case_mlp_sign(c):
    # Small chunks: x (940 kB) moves in 115 chunks each way, updates in 4.
    return run_equivalence(c, ["--model=mlp", "--seed=3", "--worker_codec=sign",
                               "--server_codec=sign"],
                           rounds=40, metric="test_accuracy",
                           server_extra=["--max_chunk_bytes=8192"])


def case_worker_before_server(c):
    # Workers started before the server retry until it listens. The port is
    # picked free here and reused by the server (a tiny window in which
    # another process could take it).
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    flags = TOY + ["--worker_codec=q4s", "--server_codec=q4s", "--rounds=15",
                   "--eval_every=5"]
    sim = c.run_sim(flags)
    workers = [c.start_worker("worker%d" % i, port, flags)
               for i in range(WORKERS)]
    time.sleep(1.0)
    server, got = c.start_server(server_flags(flags, 15), port=port)
    check(got == port, "server listens on %d, asked for %d" % (got, port))
    for w in workers:
        c.expect_ok(w)
    c.expect_ok(server)
    return check_equivalence(c, sim, 15, "distance_to_optimum", eval_every=5)


def case_sigterm(c):
    # A worker waiting for a round that cannot close (N=3, one worker) stops
    # on SIGTERM at once, with a clear line and a non-zero status.
    flags = TOY + ["--worker_codec=sign", "--server_codec=sign", "--rounds=30"]
    server, port = c.start_server(server_flags(flags, 30))
    w = c.start_worker("lonely", port, flags)
    wait_started(c, "lonely", w)
    time.sleep(0.3)
    w.send_signal(signal.SIGTERM)
    rc = c.wait(w, timeout=10)
    _, err = c.output("lonely")
    check(rc == 128 + signal.SIGTERM, "SIGTERM: exit %d, want %d"
          % (rc, 128 + signal.SIGTERM))
    check("stopped by SIGTERM before round 1" in err,
          "SIGTERM: stderr %r" % err)
    check(server.poll() is None, "the server died with the worker")
    return "exit %d" % rc


def case_toy_sharded(c):
    # The model split over S = 1, 2, 3 servers (docs/sharding.md): every
    # worker's x, and the shards' byte counts summed, equal effadam-sim's
    # unsharded run. Shard boundaries fall on codec segments, so this is
    # exact; q4s on the server checks that stochastic rounding draws as in
    # the whole model.
    rounds = 20
    flags = TOY + ["--worker_codec=sign", "--server_codec=q4s",
                   "--rounds=%d" % rounds, "--eval_every=10"]
    sim = c.run_sim(flags)
    results = []
    for shards in (1, 2, 3):
        servers, addresses = c.start_shards(server_flags(flags, rounds),
                                            shards, "s%d_shard" % shards)
        workers = [c.spawn("s%d_w%d" % (shards, i), [
            os.path.join(c.bin, "effadam-worker"), "--server=" + addresses,
            "--summary_json=" + c.path("s%d_w%d.json" % (shards, i))] + flags)
            for i in range(WORKERS)]
        for p in workers + servers:
            c.expect_ok(p)
        for i in range(WORKERS):
            got = c.summary("s%d_w%d" % (shards, i))["params_checksum"]
            check(got == sim["params_checksum"],
                  "S=%d worker %d params_checksum %s, effadam-sim %s"
                  % (shards, i, got, sim["params_checksum"]))
        for key in ("bytes_worker_to_server", "bytes_server_to_worker"):
            total = sum(c.summary("s%d_shard%d" % (shards, k))[key]
                        for k in range(shards))
            check(total == sim[key], "S=%d shards' %s %d, effadam-sim %d"
                  % (shards, key, total, sim[key]))
        results.append(shards)
    return "S = %s: params_checksum %s = effadam-sim" % (
        ", ".join(map(str, results)), sim["params_checksum"])


def case_shard_unreachable(c):
    # Shard 1 of 2 is not there: the worker retries with backoff, then
    # fails naming that shard's address.
    flags = TOY + ["--worker_codec=sign", "--server_codec=sign",
                   "--rounds=5"]
    _, port = c.start_server(server_flags(flags, 5) +
                             ["--shard=0", "--num_shards=2"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind((LOOPBACK, 0))
        dead = s.getsockname()[1]
    missing = "%s:%d" % (LOOPBACK, dead)
    w = c.spawn("worker", [os.path.join(c.bin, "effadam-worker"),
                           "--server=%s:%d,%s" % (LOOPBACK, port, missing),
                           "--connect_timeout=2s"] + flags)
    rc = c.wait(w, timeout=30)
    _, err = c.output("worker")
    check(rc == 1 and missing in err and "UNAVAILABLE" in err,
          "exit %d, stderr %r" % (rc, err))
    return "exit 1: %s" % err.strip().splitlines()[-1][:100]


CASES = [
    ("toy_fp32", case_toy_fp32),
    ("toy_sign_and_refusals", case_toy_sign_and_refusals),
    ("toy_q4_topk", case_toy_q4_topk),
    ("toy_one_way_worker_feedback", case_toy_one_way_worker_feedback),
    ("toy_worker_before_server", case_worker_before_server),
    ("mlp_sign", case_mlp_sign),
    ("sigterm", case_sigterm),
    ("toy_sharded", case_toy_sharded),
    ("shard_unreachable", case_shard_unreachable),
]


def run_cases(bin_dir, cases, only=None, prefix=""):
    """Runs each (name, fn) of `cases` (all, or the one named `only`) with a
    Cluster of its own, fn(c) returning a one-line result; prints PASS or
    FAIL per case, with the last lines of every process of a failed one,
    and returns how many failed."""
    failed = 0
    for name, fn in cases:
        if only and name != only:
            continue
        c = Cluster(bin_dir, prefix + name)
        start = time.time()
        try:
            result = fn(c)
            print("PASS %-28s %5.1f s  %s" % (name, time.time() - start, result))
        except Exception as e:  # report every case, then fail
            failed += 1
            detail = str(e) if isinstance(e, Failure) else traceback.format_exc()
            print("FAIL %-28s %5.1f s\n%s" % (name, time.time() - start,
                                               detail))
            for p in c.procs:  # the last words of every process
                out, err = c.output(p.label)
                print("--- %s (exit %s):\n%s" % (
                    p.label, p.poll(), "\n".join(
                        (out + err).splitlines()[-8:])))
        finally:
            c.close()
        sys.stdout.flush()
    return failed


def main_for(cases, binaries):
    """The command line of a file of cases: --bin DIR, --only NAME; checks
    that `binaries` exist in DIR. The process exit status."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="build/bin directory")
    parser.add_argument("--only", help="run this case only")
    args = parser.parse_args()
    for b in binaries:
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            print("missing %s in %s" % (b, args.bin))
            return 1
    return 1 if run_cases(args.bin, cases, args.only) else 0


if __name__ == "__main__":
    sys.exit(main_for(CASES, ("effadam-server", "effadam-worker",
                              "effadam-sim")))
