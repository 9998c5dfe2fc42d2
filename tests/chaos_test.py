#!/usr/bin/env python3
"""Chaos test (issue 17): 2 server shards and 4 workers train the MLP, each
process in its own network namespace, joined by veth pairs to a bridge in
a "switch" namespace with no route out. An undisturbed run of the same
flags goes first; then, during the second run, a seeded random driver picks
a fault every few seconds:

  worker_kill   SIGKILL a worker, restart it with the same --rank after a pause
  server_kill   SIGKILL a shard, restart it with the same flags (and its
                --checkpoint_dir) after a pause
  stop          SIGSTOP a process, SIGCONT it a few seconds later
  link          `ip link set down` the host's veth end in the switch
                namespace, up again a few seconds later

A thread polls every shard's Status RPC (tests/status_probe.cc, run in the
switch namespace) and records the round each shard is collecting.

The run must show:
  - the run completes: the last incarnation of every process exits 0 and
    every worker reached --rounds;
  - one params_checksum: every worker's equals XXH3-64 of the two shards'
    final checkpoints' x put together, and each shard's summary checksum
    equals XXH3-64 of its part (x as the servers hold it, bit for bit);
  - rounds never go backwards on any shard, across restarts included
    (a restarted shard resumes at the round its workers' replicas hold,
    not at its checkpoint's; the one exception is the round whose delta
    was in flight at the kill, which is computed again; a restarted
    shard's round is read only once it no longer awaits replicas;
    --no_server_kills leaves server kills out);
  - the final test accuracy is within --accuracy_points (default 0.5,
    the issue's) of the undisturbed run.

Usage: chaos_test.py --bin BUILD/bin [--minutes 3] [--seed 1]
       [--rounds N] [--no_server_kills] [--keep_logs DIR]
       [--accuracy_points 0.5] [--time_limit SECONDS]
Exits 77 (skipped) unless root with network namespaces available. Every
process started is killed by pid, every namespace deleted and the
temporary directory removed, on exit and on SIGINT/SIGTERM.
"""

import argparse
import collections
import glob
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import xxhash

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_test import Cluster, Failure, check  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "bench", "cluster"))
from netns import Network, NetworkError, namespaces_available  # noqa: E402

SHARDS = 2
WORKERS = 4
PORT = 50051
SIGN = ["--worker_codec=sign", "--server_codec=sign", "--seed=7"]
# Short keepalives so that a stopped process or a cut link is noticed in
# about 2 s; a long reconnect window so that workers outlive server kills.
KEEPALIVE = ["--keepalive_time=1s", "--keepalive_timeout=1s"]
FAULT_KINDS = ("worker_kill", "server_kill", "stop", "link")


def log(msg):
    print("[%8.1f] %s" % (time.time() - T0, msg), flush=True)


T0 = time.time()


def checkpoint_x(path):
    """x (float32 bytes) of a checkpoint file (docs/faults.md, "File format")."""
    with open(path, "rb") as f:
        data = f.read()
    check(data[:8] == b"EFADCKPT", "%s: bad magic" % path)
    (h,) = struct.unpack("<I", data[8:12])
    n4 = (len(data) - 12 - h - 4) // 2
    return data[12 + h:12 + h + n4]


class Run:
    """One training run (servers and workers in the namespaces)."""

    def __init__(self, c, net, name, rounds):
        self.c, self.net, self.name, self.rounds = c, net, name, rounds
        self.procs = {}          # host -> current Popen
        self.incarnation = collections.Counter()
        self.addresses = ",".join("%s:%d" % (net.ip["s%d" % k], PORT)
                                  for k in range(SHARDS))
        self.ckpt = {k: c.path("%s_ckpt%d" % (name, k)) for k in range(SHARDS)}

    def label(self, host):
        return "%s_%s_%d" % (self.name, host, self.incarnation[host])

    def start(self, host):
        self.incarnation[host] += 1
        label = self.label(host)
        netns = ["ip", "netns", "exec", self.net.ns[host]]
        # Every incarnation writes the same summary file: the last one wins.
        summary = self.c.path("%s_%s.json" % (self.name, host))
        if host.startswith("s"):
            k = int(host[1:])
            argv = netns + [
                os.path.join(self.c.bin, "effadam-server"),
                "--listen=%s:%d" % (self.net.ip[host], PORT),
                "--metrics_listen=", "--summary_json=" + summary,
                "--workers=%d" % WORKERS, "--rounds=%d" % self.rounds,
                "--shard=%d" % k, "--num_shards=%d" % SHARDS,
                "--round_timeout=5s", "--checkpoint_dir=" + self.ckpt[k],
                "--checkpoint_every=20", "--checkpoint_keep=3",
                # The finished state: a worker still reconnecting when the
                # run ends takes the final x instead of waiting in vain.
                "--metrics_linger=20s",
                "--min_ping_interval=500ms"] + KEEPALIVE + SIGN
        else:
            r = int(host[1:])
            argv = netns + [
                os.path.join(self.c.bin, "effadam-worker"),
                "--server=" + self.addresses, "--rank=%d" % r,
                "--model=mlp", "--rounds=%d" % self.rounds,
                "--eval_every=%d" % self.rounds,
                "--reconnect_timeout=600s", "--metrics_listen=",
                "--summary_json=" + summary] + KEEPALIVE + SIGN
        # `ip netns exec` execs the command: the pid is the daemon's own.
        p = self.c.spawn(label, argv)
        self.procs[host] = p
        if host.startswith("s"):
            self.c.wait_for("%s listening" % label,
                            lambda: "listening on" in "".join(
                                self.c.output(label)) or p.poll() is not None,
                            timeout=60)
            check(p.poll() is None, "%s exited with %s:\n%s" % (
                label, p.returncode, "".join(self.c.output(label))))
        return p

    def start_all(self):
        for k in range(SHARDS):
            self.start("s%d" % k)
        for r in range(WORKERS):
            self.start("w%d" % r)

    def workers_running(self):
        return [h for h, p in self.procs.items()
                if h.startswith("w") and p.poll() is None]

    def finish(self, timeout):
        """Waits for every process; Failure as soon as one exits non-zero
        (the others could wait for it for ever), or after `timeout`."""
        deadline = time.time() + timeout
        while True:
            for p in self.procs.values():
                if p.poll() not in (None, 0):
                    raise Failure("%s exited with %d:\n%s" % (
                        p.label, p.returncode,
                        tail("".join(self.c.output(p.label)))))
            if all(p.poll() == 0 for p in self.procs.values()):
                return
            if time.time() > deadline:
                raise Failure("still running after %d s: %s" % (timeout, ", ".join(
                    p.label for p in self.procs.values() if p.poll() is None)))
            time.sleep(0.2)

    def summary(self, host):
        return self.c.summary("%s_%s" % (self.name, host))


def tail(text, lines=30):
    return "\n".join(text.splitlines()[-lines:])


class Prober(threading.Thread):
    """Polls each shard's Status every `period` seconds from the switch
    namespace; samples[k] is a list of (time, round)."""

    def __init__(self, c, net, period=0.5):
        super().__init__(daemon=True)
        self.c, self.net, self.period = c, net, period
        self.samples = {k: [] for k in range(SHARDS)}
        self.kills = {k: [] for k in range(SHARDS)}  # times of SIGKILLs
        self.lock = threading.Lock()
        self.reading = threading.Lock()
        self.stopping = threading.Event()
        self.recomputed = 0  # in-flight rounds computed again (backwards)

    def probe(self, k):
        try:
            r = subprocess.run(
                ["ip", "netns", "exec", self.net.switch,
                 os.path.join(self.c.bin, "status_probe"),
                 "--server=%s:%d" % (self.net.ip["s%d" % k], PORT),
                 "--timeout_ms=800"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        status = json.loads(r.stdout)
        # A restarted shard's round is provisional until a rejoining
        # worker's newer replica is taken or a round closes.
        if status["awaiting_replicas"]:
            return None
        return status["round"]

    def sample(self, k):
        """Reads shard k's round now and records it; None if it did not
        answer. Reads are serialized, so samples are in the order read."""
        with self.reading:
            rnd = self.probe(k)
            if rnd is not None:
                with self.lock:
                    self.samples[k].append((time.time(), rnd))
            return rnd

    def run(self):
        while not self.stopping.is_set():
            for k in range(SHARDS):
                self.sample(k)
            self.stopping.wait(self.period)

    def last(self, k):
        with self.lock:
            return self.samples[k][-1] if self.samples[k] else (0, 0)

    def wait_progress(self, beyond, timeout):
        """Seconds until every shard reports a round > beyond[k] (None
        after `timeout`)."""
        start = time.time()
        while time.time() - start < timeout:
            if all(self.last(k)[1] > beyond[k] for k in range(SHARDS)):
                return time.time() - start
            time.sleep(0.1)
        return None

    def killed(self, k):
        with self.lock:
            self.kills[k].append(time.time())

    def backwards(self):
        """Every time a shard's round went below the highest it had
        reported: (shard, t, highest, first round below, samples below).
        One exception, the round whose delta was in flight when its shard
        was killed (closed, received by no worker: computed again,
        docs/faults.md "Zero lost rounds"): a restarted shard may resume
        exactly one round below the highest it reported before the kill."""
        out = []
        with self.lock:
            for k, s in self.samples.items():
                high, excursion, last_t = 0, None, 0.0
                for t, rnd in s:
                    killed_since = any(last_t < kt <= t for kt in self.kills[k])
                    last_t = t
                    if killed_since and rnd == high - 1:
                        high = rnd  # the round in flight is computed again
                        self.recomputed += 1
                    if rnd < high:
                        if excursion is None:
                            excursion = [k, t, high, rnd, 0]
                            out.append(excursion)
                        excursion[4] += 1
                    else:
                        excursion = None
                    high = max(high, rnd)
        return [tuple(e) for e in out]


class Driver:
    """The seeded fault driver; faults holds one dict per fault."""

    def __init__(self, run_, prober, seed, server_kills):
        self.run, self.prober = run_, prober
        self.rng = random.Random(seed)
        self.kinds = [k for k in FAULT_KINDS
                      if server_kills or k != "server_kill"]
        self.faults = []
        self.stopped, self.cut = set(), set()

    def _rounds(self):
        return [self.prober.last(k)[1] for k in range(SHARDS)]

    def one(self):
        kind = self.rng.choice(self.kinds)
        running = self.run.workers_running()
        servers = ["s%d" % k for k in range(SHARDS)]
        hosts = {"worker_kill": running, "server_kill": servers}.get(
            kind, running + servers)
        if not hosts:
            return False
        host = self.rng.choice(sorted(hosts))
        pause = self.rng.uniform(1.5, 4.0)
        f = {"t": time.time() - T0, "kind": kind, "host": host,
             "pause": pause, "rounds_before": self._rounds()}
        p = self.run.procs[host]
        if p.poll() not in (None, 0):
            # A restart would hide it.
            raise Failure("%s exited with %d before the fault:\n%s" % (
                p.label, p.returncode,
                tail("".join(self.run.c.output(p.label)))))
        if kind == "server_kill":
            # The shard's round read just before the kill (the background
            # samples can be half a second old).
            k = int(host[1:])
            now = self.prober.sample(k)
            if now is not None:
                f["rounds_before"][k] = now
        if kind in ("worker_kill", "server_kill"):
            p.kill()
            p.wait()
            if kind == "server_kill":
                self.prober.killed(int(host[1:]))
            log("%s %s (pid %d) at rounds %s" % (kind, host, p.pid,
                                                  f["rounds_before"]))
            time.sleep(pause)
            p2 = self.run.start(host)
            log("restarted %s as pid %d after %.1f s" % (host, p2.pid, pause))
            if kind == "server_kill":
                k = int(host[1:])
                first = self._first_round_after(k, p2)
                f["shard_before"] = f["rounds_before"][k]
                f["shard_after"] = first
                log("shard %d: round %d before the kill, %s after the restart"
                    % (k, f["shard_before"], first))
        elif kind == "stop":
            os.kill(p.pid, signal.SIGSTOP)
            self.stopped.add(p.pid)
            log("SIGSTOP %s (pid %d) for %.1f s at rounds %s" % (
                host, p.pid, pause, f["rounds_before"]))
            time.sleep(pause)
            os.kill(p.pid, signal.SIGCONT)
            self.stopped.discard(p.pid)
        else:
            self.run.net.set_link(host, False)
            self.cut.add(host)
            log("link of %s down for %.1f s at rounds %s" % (
                host, pause, f["rounds_before"]))
            time.sleep(pause)
            self.run.net.set_link(host, True)
            self.cut.discard(host)
        at_restore = self._rounds()
        rec = self.prober.wait_progress(at_restore, timeout=60)
        f["recovery"] = rec
        f["rounds_after"] = self._rounds()
        log("  %s %s restored; rounds advanced %s" % (
            kind, host, "after %.1f s" % rec if rec is not None
            else "NOT within 60 s (run over?)"))
        self.faults.append(f)
        return True

    def _first_round_after(self, k, p, timeout=30):
        """The first round the restarted shard k reports."""
        n = len(self.prober.samples[k])
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None:
            with self.prober.lock:
                if len(self.prober.samples[k]) > n:
                    return self.prober.samples[k][n][1]
            time.sleep(0.05)
        return None

    def heal(self):
        """Undoes whatever is in effect (on exit or an exception)."""
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        for host in list(self.cut):
            self.run.net.set_link(host, True)


def summary_table(faults, chaos_seconds):
    lines = ["", "chaos: %d faults in %.0f s" % (len(faults), chaos_seconds),
             "| kind | count | recovery median (s) | recovery max (s) | not recovered |",
             "|---|---|---|---|---|"]
    for kind in FAULT_KINDS:
        fs = [f for f in faults if f["kind"] == kind]
        rec = sorted(f["recovery"] for f in fs if f["recovery"] is not None)
        lines.append("| %s | %d | %s | %s | %d |" % (
            kind, len(fs),
            "%.1f" % rec[len(rec) // 2] if rec else "-",
            "%.1f" % rec[-1] if rec else "-", len(fs) - len(rec)))
    kills = [f for f in faults if f["kind"] == "server_kill"]
    if kills:
        lines += ["", "| server kill at (s) | shard | round before | round after restart | lost rounds |",
                  "|---|---|---|---|---|"]
        for f in kills:
            after = f["shard_after"]
            lost = (f["shard_before"] - after) if after is not None else None
            lines.append("| %.1f | %s | %d | %s | %s |" % (
                f["t"], f["host"], f["shard_before"],
                after if after is not None else "-",
                max(lost, 0) if lost is not None else "-"))
    return "\n".join(lines)


def check_checksums(c, r):
    """Workers' checksums equal XXH3-64 (core/checksum.h; the reference is
    python3-xxhash) of the shards' x put together; each shard's summary
    checksum equals XXH3-64 of its part."""
    whole = xxhash.xxh3_64()
    for k in range(SHARDS):
        newest = sorted(glob.glob(os.path.join(r.ckpt[k],
                                               "checkpoint-*.effadam")))
        check(newest, "shard %d wrote no checkpoint" % k)
        x = checkpoint_x(newest[-1])
        part = xxhash.xxh3_64_hexdigest(x)
        got = r.summary("s%d" % k)["params_checksum"]
        check(got == part, "shard %d summary params_checksum %s, its final "
              "checkpoint %s holds x of %s" % (k, got, newest[-1], part))
        whole.update(x)
    want = whole.hexdigest()
    for w in range(WORKERS):
        s = r.summary("w%d" % w)
        check(s["params_checksum"] == want,
              "rank %d params_checksum %s, the shards' x %s"
              % (w, s["params_checksum"], want))
        check(s["rounds"] == r.rounds, "rank %d ended after round %d of %d"
              % (w, s["rounds"], r.rounds))
    return want


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--minutes", type=float, default=3.0,
                    help="minutes of faults (they stop earlier if training ends)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="training rounds (default: 1000 per minute of "
                         "chaos)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no_server_kills", action="store_true",
                    help="leave server SIGKILLs out of the faults")
    ap.add_argument("--keep_logs", default="",
                    help="copy every process's output here before cleanup")
    ap.add_argument("--accuracy_points", type=float, default=0.5,
                    help="allowed gap between the final test accuracies "
                         "of the chaos and the undisturbed run, in points "
                         "(issue 17 asks 0.5; two undisturbed trajectories "
                         "of other seeds differ by about 0.4 points, "
                         "docs/faults.md \"Chaos\")")
    ap.add_argument("--time_limit", type=int, default=0,
                    help="fail (and clean up) after this many seconds in "
                         "all; set it below ctest's TIMEOUT, whose kill "
                         "would leave the namespaces behind (0: none)")
    args = ap.parse_args()
    why = namespaces_available()
    if why:
        print("chaos_test: skipped: " + why, flush=True)
        return 77
    rounds = args.rounds or int(1000 * args.minutes)

    c = Cluster(os.path.abspath(args.bin), "chaos")
    net = None
    driver = None
    prober = None

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_alarm(signum, frame):
        raise Failure("over the time limit of %d s" % args.time_limit)
    if args.time_limit > 0:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(args.time_limit)
    failures = []
    try:
        hosts = ["s%d" % k for k in range(SHARDS)] + \
                ["w%d" % r for r in range(WORKERS)]
        # Its own tag: bench/cluster's emulated clusters use ech<pid>.
        net = Network(hosts, tag="chaos%d" % os.getpid())
        log("namespaces up: switch %s, hosts %s; %d rounds, seed %d%s" % (
            net.switch, ", ".join("%s=%s" % (h, net.ip[h]) for h in hosts),
            rounds, args.seed,
            ", no server kills" if args.no_server_kills else ""))

        # 1. The undisturbed run.
        calm = Run(c, net, "calm", rounds)
        start = time.time()
        calm.start_all()
        calm.finish(timeout=600)
        calm_seconds = time.time() - start
        calm_acc = calm.summary("w0")["test_accuracy"]
        calm_sum = check_checksums(c, calm)
        log("undisturbed: %d rounds in %.0f s, test accuracy %.4f, "
            "params_checksum %s" % (rounds, calm_seconds, calm_acc, calm_sum))

        # 2. The same flags under faults.
        chaos = Run(c, net, "chaos", rounds)
        prober = Prober(c, net)
        start = time.time()
        chaos.start_all()
        prober.start()
        driver = Driver(chaos, prober, args.seed, not args.no_server_kills)
        end = start + 60 * args.minutes
        # Faults start once both shards train, and stop at 90% of the
        # rounds: a worker restarted after the servers finished could not
        # join (that is not a recovery failure).
        prober_ready = prober.wait_progress([1] * SHARDS, timeout=120)
        check(prober_ready is not None, "no shard got past round 1 in 120 s")
        last_fault_round = int(0.9 * rounds)
        while (time.time() < end and chaos.workers_running() and
               min(driver._rounds()) < last_fault_round):
            if not driver.one():
                break
            time.sleep(driver.rng.uniform(1.0, 3.0))
        chaos_seconds = time.time() - start
        log("faults over after %.0f s; waiting for the run to end"
            % chaos_seconds)
        completed = False
        try:
            chaos.finish(timeout=600)
            completed = True
        except Failure as e:
            failures.append("run did not complete: %s" % e)
        prober.stopping.set()
        prober.join()
        run_seconds = time.time() - start
        print(summary_table(driver.faults, chaos_seconds), flush=True)

        for k, t, before, after, n in prober.backwards():
            failures.append("shard %d round went backwards at %.1f s: %d -> "
                            "%d (%d samples below %d)"
                            % (k, t - T0, before, after, n, before))
        log("shard restarts that computed the round in flight again: %d"
            % prober.recomputed)
        if completed:
            try:
                chaos_sum = check_checksums(c, chaos)
            except Failure as e:
                failures.append(str(e))
                chaos_sum = "(differs)"
            acc = chaos.summary("w0")["test_accuracy"]
            log("under chaos: %d rounds in %.0f s, test accuracy %.4f "
                "(undisturbed %.4f, %+.2f points), params_checksum %s on "
                "every worker and both shards' x" % (
                    rounds, run_seconds, acc, calm_acc,
                    100 * (acc - calm_acc), chaos_sum))
            if abs(acc - calm_acc) * 100 > args.accuracy_points:
                failures.append("accuracy %.4f under chaos, %.4f undisturbed:"
                                " more than %.1f points apart" % (
                                    acc, calm_acc, args.accuracy_points))
        for f in failures:
            print("FAIL: " + f, flush=True)
        if failures:
            for host in sorted(chaos.procs):
                print("---- %s (last lines)" % chaos.procs[host].label)
                print(tail("".join(c.output(chaos.procs[host].label)), 15))
        return 1 if failures else 0
    except (Failure, NetworkError) as e:
        print("FAIL: %s" % e, flush=True)
        return 1
    finally:
        signal.alarm(0)  # the clean-up below is not to be interrupted
        if prober is not None:
            prober.stopping.set()
        if driver is not None:
            driver.heal()
        c.close_processes()  # kills every process it spawned, by pid
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for f in glob.glob(c.path("*.out")) + glob.glob(c.path("*.err")):
                shutil.copy(f, args.keep_logs)
            log("process output copied to %s" % args.keep_logs)
        c.close()
        if net is not None:
            net.close()


if __name__ == "__main__":
    sys.exit(main())
