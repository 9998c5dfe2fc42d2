#!/usr/bin/env python3
"""Soak run: one effadam-server and many effadam-synthetic-worker processes
on loopback for thousands of rounds, watching the server's resident memory
(VmRSS from /proc) and round rate. A leak shows as RSS that keeps growing
after the first rounds; the report gives RSS at the start (after round
--warmup, when x, E and every worker's buffers exist), at the end, and the
peak, plus rounds per second in each tenth of the run.

Usage: bench/soak.py [--bin build/bin] [--workers 32] [--elements 1000000]
                     [--rounds 3000] [--codec sign] [--csv FILE]
Only 127.0.0.1 is used; every process is stopped at the end, also on error
or Ctrl-C.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

LOOPBACK = "127.0.0.1"


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_metric(port, name):
    url = "http://%s:%d/metrics" % (LOOPBACK, port)
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def wait_line(path, pattern, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        if proc.poll() is not None:
            sys.exit("effadam-server exited with %d:\n%s"
                     % (proc.returncode, open(path).read()))
        time.sleep(0.05)
    sys.exit("effadam-server did not start within %d s" % timeout)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(here, "..", "build",
                                                      "bin"))
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--elements", type=int, default=1000000)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=20,
                        help="round after which the starting RSS is taken")
    parser.add_argument("--codec", default="sign",
                        help="worker and server codec")
    parser.add_argument("--csv", help="write seconds,round,rss_kib samples")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="effadam_soak_")
    codec = ["--worker_codec=" + args.codec, "--server_codec=" + args.codec]
    procs = []
    try:
        server_log = os.path.join(tmp, "server.log")
        with open(server_log, "w") as log:
            server = subprocess.Popen(
                [os.path.join(args.bin, "effadam-server"),
                 "--listen=%s:0" % LOOPBACK,
                 "--metrics_listen=%s:0" % LOOPBACK,
                 "--workers=%d" % args.workers, "--rounds=%d" % args.rounds,
                 "--round_timeout=120s"] + codec,
                stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        port = int(wait_line(server_log, r"listening on 127\.0\.0\.1:(\d+)",
                             server).group(1))
        metrics_port = int(wait_line(
            server_log, r"metrics on http://127\.0\.0\.1:(\d+)/",
            server).group(1))
        idle_rss = rss_kib(server.pid)
        for r in range(args.workers):
            with open(os.path.join(tmp, "w%d.log" % r), "w") as log:
                procs.append(subprocess.Popen(
                    [os.path.join(args.bin, "effadam-synthetic-worker"),
                     "--server=%s:%d" % (LOOPBACK, port), "--rank=%d" % r,
                     "--elements=%d" % args.elements,
                     "--rounds=%d" % args.rounds] + codec,
                    stdout=log, stderr=subprocess.STDOUT))
        start = time.time()
        samples = []  # (seconds, round, rss_kib)
        while server.poll() is None:
            try:
                rnd = read_metric(metrics_port, "effadam_server_round") or 0
                samples.append((time.time() - start, int(rnd),
                                rss_kib(server.pid)))
            except (OSError, ValueError):
                pass  # the server is finishing
            for p in procs[1:]:
                if p.poll() not in (None, 0):
                    sys.exit("a worker failed (exit %d); logs in %s"
                             % (p.returncode, tmp))
            time.sleep(0.25)
        if server.returncode != 0:
            sys.exit("effadam-server exited with %d; logs in %s"
                     % (server.returncode, tmp))
        for p in procs[1:]:
            p.wait(timeout=60)
        seconds = time.time() - start
    except KeyboardInterrupt:
        sys.exit("interrupted")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    if args.csv:
        with open(args.csv, "w") as f:
            f.write("seconds,round,rss_kib\n")
            for s in samples:
                f.write("%.1f,%d,%d\n" % s)
    warm = [s for s in samples if s[1] > args.warmup]
    if len(warm) < 2:
        sys.exit("too few samples after round %d: %s" % (args.warmup, samples))
    first, last = warm[0], warm[-1]
    peak = max(s[2] for s in samples)
    print("soak: %d workers x %d parameters, %s/%s, %d rounds in %.0f s "
          "(%.1f rounds/s)" % (args.workers, args.elements, args.codec,
                               args.codec, args.rounds, seconds,
                               args.rounds / seconds))
    print("server RSS: idle %.1f MiB; after round %d %.1f MiB; at round %d "
          "%.1f MiB (%+.1f MiB); peak %.1f MiB"
          % (idle_rss / 1024, first[1], first[2] / 1024, last[1],
             last[2] / 1024, (last[2] - first[2]) / 1024, peak / 1024))
    # Rounds per second in tenths of the run: a server slowing down over
    # time (growing queues, fragmentation) shows here.
    tenths = []
    for k in range(10):
        lo, hi = first[0] + (last[0] - first[0]) * k / 10, \
            first[0] + (last[0] - first[0]) * (k + 1) / 10
        window = [s for s in warm if lo <= s[0] <= hi]
        if len(window) >= 2:
            tenths.append((window[-1][1] - window[0][1]) /
                          max(window[-1][0] - window[0][0], 1e-9))
    print("rounds/s by tenth of the run: " +
          " ".join("%.1f" % t for t in tenths))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
