#!/usr/bin/env python3
"""Round time of a real cluster on loopback: 1 effadam-server and N
effadam-worker processes train the MLP, once with fp32 both ways and once
with sign both ways (Efficient-Adam), in the same run so the two figures
share the machine's state. The time per round is the difference of two runs
of different lengths divided by the difference in rounds, which cancels
start-up, joins and the final evaluation.

With --tls every setting runs twice more with TLS and the shared token
(certificates made by the openssl CLI, as tests/security_test.py does),
in the same order, so the two figures show what TLS costs per round.

Usage: bench/loopback_round_time.py --bin build/bin [--workers 4] [--tls]

With --synthetic the model is effadam-synthetic-worker's (a gradient of one
pass over x) at --elements parameters (1M, 10M, 50M by default) with 1, 4
and 8 workers, so the system's own cost is what is measured: the round time
(the median of rank 0's timed rounds, after --warmup rounds) and the CPU
seconds per round of the server and of a worker (mean over workers): each
process's user + system time from /proc/<pid>/stat, read when rank 0 prints
"measuring from round" (its first timed gradient call) and again when it
prints "measured to round" (the same point of the round after the last
timed one; the run has one round more for it), divided by the timed
rounds. So the window is whole rounds from one point of a round to the same
point --rounds later: start-up, joins and each process's exit (the server's
summary, its checksums) are outside it.
--bin may then name several builds (name=dir,name=dir): each configuration
runs on each build in turn, alternating, so a before/after ratio shares the
machine's state. Every build's effadam-synthetic-worker needs
--timed_rounds (for an older build, build its tree with this file's
bench/synthetic_worker.cc; a newer worker cannot stand in for it, since
the protocol version may differ).

Only 127.0.0.1 is used; every process is killed at the end.
"""

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from cluster_test import Cluster  # noqa: E402
from security_test import make_pki  # noqa: E402

SETTINGS = [("fp32/fp32", ["--worker_codec=fp32", "--server_codec=fp32"]),
            ("sign/sign", ["--worker_codec=sign", "--server_codec=sign"])]


def run(bin_dir, workers, rounds, codec_flags, security=([], [])):
    """security: (server flags, worker flags)."""
    c = Cluster(bin_dir, "bench")
    try:
        flags = codec_flags + ["--rounds=%d" % rounds]
        server, port = c.start_server(flags + ["--workers=%d" % workers]
                                      + security[0])
        procs = [c.start_worker("w%d" % r, port,
                                flags + security[1]
                                + ["--model=mlp", "--rank=%d" % r,
                                   "--eval_every=0"])
                 for r in range(workers)]
        for p in procs + [server]:
            c.expect_ok(p)
        s = c.summary("server")
        return s["seconds"], s["bytes_worker_to_server"] / (rounds * workers)
    finally:
        c.close()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU seconds of a running process, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_ok(c, p, timeout):
    """Waits for p to exit with 0."""
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError("%s did not finish within %d s" % (p.label, timeout))
    if p.returncode != 0:
        raise RuntimeError("%s exited with %d:\n%s" % (
            p.label, p.returncode, "".join(c.output(p.label))))


def worker_flags(bin_dir):
    """The synthetic worker's --help: which flags it has."""
    return subprocess.run(
        [os.path.join(bin_dir, "effadam-synthetic-worker"), "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True).stdout


def untimed_flag(bin_dir):
    """The synthetic worker's flag for rounds not timed: --untimed_rounds;
    builds before it was renamed (to free --warmup_rounds for the LR
    schedule) called it --warmup_rounds, which newer builds read as the LR
    warm-up, so passing it to them would time every round from the first
    (join, first-touch page faults, the upload included)."""
    return ("--untimed_rounds" if "untimed_rounds" in worker_flags(bin_dir)
            else "--warmup_rounds")


def has_timed_rounds(bin_dir):
    return "--timed_rounds (" in worker_flags(bin_dir)


def await_line(c, p, line, timeout):
    deadline = time.time() + timeout
    while line not in c.output(p.label)[0]:
        if time.time() > deadline or p.poll() is not None:
            raise RuntimeError("%s did not print %r:\n%s"
                               % (p.label, line, "".join(c.output(p.label))))
        time.sleep(0.005)


def run_synthetic(bin_dir, elements, workers, codec_flags, warmup, rounds,
                  timeout=1800):
    """One synthetic run: (round seconds, server CPU s/round, worker CPU
    s/round)."""
    # dir@--flag@--flag: extra flags for the server and every worker.
    bin_dir, *extra = bin_dir.split("@")
    codec_flags = codec_flags + extra
    c = Cluster(bin_dir, "bench")
    try:
        # One round after the timed ones: rank 0's gradient call in it ends
        # the window.
        total = warmup + rounds + 1
        flags = codec_flags + ["--rounds=%d" % total]
        server, port = c.start_server(flags + ["--workers=%d" % workers])
        procs = [c.spawn("w%d" % r, [
            os.path.join(bin_dir, "effadam-synthetic-worker"),
            "--server=127.0.0.1:%d" % port, "--rank=%d" % r,
            "--elements=%d" % elements,
            "%s=%d" % (untimed_flag(bin_dir), warmup),
            "--timed_rounds=%d" % rounds,
            "--summary_json=" + c.path("w%d.json" % r)] + flags)
            for r in range(workers)]
        await_line(c, procs[0], "measuring from round", timeout)
        start = [cpu_seconds(p.pid) for p in [server] + procs]
        await_line(c, procs[0], "measured to round", timeout)
        end = [cpu_seconds(p.pid) for p in [server] + procs]
        for p in procs + [server]:
            wait_ok(c, p, timeout)
        cpu = [(e - s) / rounds for s, e in zip(start, end)]
        seconds = c.summary("w0")["round_seconds_median"]
        return seconds, cpu[0], sum(cpu[1:]) / workers
    finally:
        c.close()


def parse_bins(value):
    """'dir' or 'name=dir,name=dir' -> [(name, dir)]; a dir may end in
    @--flag@--flag, flags for the server and every worker of that build
    (e.g. new1=build/bin@--threads=1)."""
    if "=" not in value:
        return [("", value)]
    return [tuple(part.split("=", 1)) for part in value.split(",")]


def synthetic(args):
    bins = parse_bins(args.bin)
    for _, d in bins:
        if not has_timed_rounds(d.split("@")[0]):
            sys.exit("%s: effadam-synthetic-worker has no --timed_rounds "
                     "(see --help)" % d.split("@")[0])
    sizes = [int(float(e)) for e in args.elements.split(",")]
    counts = [int(w) for w in args.worker_counts.split(",")]
    print("%-10s %9s %7s %-8s %10s %14s %14s" % (
        "setting", "elements", "workers", "build", "round ms",
        "server CPU ms", "worker CPU ms"))
    for name, flags in SETTINGS:
        for n in sizes:
            for w in counts:
                if "%dx%d" % (n, w) in args.skip.split(","):
                    print("%-10s %9d %7d (skipped, --skip)" % (name, n, w))
                    continue
                for build, bin_dir in bins:
                    sec, server_cpu, worker_cpu = run_synthetic(
                        bin_dir, n, w, flags, args.warmup, args.rounds)
                    print("%-10s %9d %7d %-8s %10.1f %14.1f %14.1f" % (
                        name, n, w, build, 1000 * sec, 1000 * server_cpu,
                        1000 * worker_cpu))
                    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--short", type=int, default=30)
    ap.add_argument("--long", type=int, default=330)
    ap.add_argument("--tls", action="store_true",
                    help="also run every setting with TLS and the token")
    ap.add_argument("--synthetic", action="store_true",
                    help="effadam-synthetic-worker at --elements x "
                         "--worker_counts, round time and CPU per process")
    ap.add_argument("--elements", default="1e6,1e7,5e7")
    ap.add_argument("--worker_counts", default="1,4,8")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip", default="",
                    help="ELEMENTSxWORKERS,... not to run (memory)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed rounds per synthetic run")
    args = ap.parse_args()
    if args.synthetic:
        synthetic(args)
        return
    with tempfile.TemporaryDirectory(prefix="effadam_bench_pki_") as d:
        modes = [("plaintext", ([], []))]
        if args.tls:
            pki = make_pki(d)
            token = os.path.join(d, "token")
            with open(token, "w") as f:
                f.write(secrets.token_hex(32))
            modes.append(("TLS+token", (
                ["--tls_cert_file=" + pki["server.pem"],
                 "--tls_key_file=" + pki["server.key"],
                 "--auth_token_file=" + token],
                ["--tls_ca_file=" + pki["ca.pem"],
                 "--auth_token_file=" + token])))
        print("%-10s %-10s %14s %16s" % ("setting", "transport",
                                         "ms per round", "up B/worker/round"))
        for name, flags in SETTINGS:
            for mode, security in modes:
                t_short, _ = run(args.bin, args.workers, args.short, flags,
                                 security)
                t_long, up = run(args.bin, args.workers, args.long, flags,
                                 security)
                ms = 1000 * (t_long - t_short) / (args.long - args.short)
                print("%-10s %-10s %14.2f %16d" % (name, mode, ms, up))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
