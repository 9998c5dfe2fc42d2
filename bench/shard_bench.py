#!/usr/bin/env python3
"""Round time of a large model split over S shards (docs/sharding.md).

For each S, starts S effadam-server processes (--shard=k --num_shards=S)
and W effadam-synthetic-worker processes (an O(n) gradient, so the cost
measured is the system's, not a model's) on loopback, runs R rounds and
reports, from one run each: wall time per round (the workers' training
time over R), each shard's CPU time per round (user + system, from
wait4's rusage), the workers' CPU per round, and the bytes per round each
shard moved. Prints a markdown table and writes a CSV.

Usage: bench/shard_bench.py [--bin build/bin] [--elements 50000000]
       [--shards 1,2,4] [--workers 4] [--rounds 20] [--codec sign]
       [--csv FILE]
Only 127.0.0.1 is used; every process is stopped at the end.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

LOOPBACK = "127.0.0.1"


def wait_port(log_path, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path) as f:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            sys.exit("effadam-server exited early:\n" + open(log_path).read())
        time.sleep(0.05)
    sys.exit("effadam-server did not start")


def reap(proc, timeout):
    """Waits for proc and returns (exit status, CPU seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    proc.kill()
    sys.exit("a process did not finish within %d s" % timeout)


def run(args, shards, tmp):
    codec = ["--worker_codec=" + args.codec, "--server_codec=" + args.codec]
    servers, ports = [], []
    procs = []
    try:
        for k in range(shards):
            log = os.path.join(tmp, "s%d_%d.log" % (shards, k))
            summary = os.path.join(tmp, "s%d_%d.json" % (shards, k))
            with open(log, "w") as f:
                p = subprocess.Popen(
                    [os.path.join(args.bin, "effadam-server"),
                     "--listen=%s:0" % LOOPBACK, "--metrics_listen=",
                     "--workers=%d" % args.workers,
                     "--rounds=%d" % args.rounds, "--shard=%d" % k,
                     "--num_shards=%d" % shards, "--round_timeout=600s",
                     "--summary_json=" + summary] + codec,
                    stdout=f, stderr=subprocess.STDOUT)
            procs.append(p)
            servers.append((p, summary))
            ports.append(wait_port(log, p))
        addresses = ",".join("%s:%d" % (LOOPBACK, p) for p in ports)
        workers = []
        for r in range(args.workers):
            summary = os.path.join(tmp, "w%d_%d.json" % (shards, r))
            with open(os.path.join(tmp, "w%d_%d.log" % (shards, r)), "w") as f:
                p = subprocess.Popen(
                    [os.path.join(args.bin, "effadam-synthetic-worker"),
                     "--server=" + addresses, "--rank=%d" % r,
                     "--elements=%d" % args.elements,
                     "--rounds=%d" % args.rounds,
                     "--summary_json=" + summary] + codec,
                    stdout=f, stderr=subprocess.STDOUT)
            procs.append(p)
            workers.append((p, summary))
        worker_cpu = 0.0
        seconds = 0.0
        for p, summary in workers:
            rc, cpu = reap(p, 3600)
            if rc != 0:
                sys.exit("a worker failed; logs in " + tmp)
            worker_cpu += cpu
            with open(summary) as f:
                seconds = max(seconds, json.load(f)["seconds"])
        shard_cpu, shard_bytes = [], []
        for p, summary in servers:
            rc, cpu = reap(p, 120)
            if rc != 0:
                sys.exit("a server failed; logs in " + tmp)
            shard_cpu.append(cpu)
            with open(summary) as f:
                s = json.load(f)
            shard_bytes.append(s["bytes_worker_to_server"] +
                               s["bytes_server_to_worker"])
        return {
            "shards": shards,
            "seconds_per_round": seconds / args.rounds,
            "shard_cpu_per_round": [c / args.rounds for c in shard_cpu],
            "worker_cpu_per_round": worker_cpu / args.rounds / args.workers,
            "shard_bytes_per_round": [b / args.rounds for b in shard_bytes],
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(here, "..", "build",
                                                      "bin"))
    parser.add_argument("--elements", type=int, default=50 * 1000 * 1000)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--codec", default="sign")
    parser.add_argument("--csv")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="effadam_shard_bench_")
    rows = []
    try:
        for s in [int(x) for x in args.shards.split(",")]:
            rows.append(run(args, s, tmp))
            print("S=%d done" % s, file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d parameters, %d workers, %s/%s, %d rounds, %d cores\n"
          % (args.elements, args.workers, args.codec, args.codec,
             args.rounds, os.cpu_count()))
    print("| shards | s/round | CPU s/round per shard (max) | "
          "CPU s/round per worker | MB/round per shard (max) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| %d | %.3f | %.3f | %.3f | %.2f |" % (
            r["shards"], r["seconds_per_round"],
            max(r["shard_cpu_per_round"]), r["worker_cpu_per_round"],
            max(r["shard_bytes_per_round"]) / 1e6))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("shards,seconds_per_round,max_shard_cpu_per_round,"
                    "sum_shard_cpu_per_round,worker_cpu_per_round,"
                    "max_shard_bytes_per_round\n")
            for r in rows:
                f.write("%d,%.4f,%.4f,%.4f,%.4f,%d\n" % (
                    r["shards"], r["seconds_per_round"],
                    max(r["shard_cpu_per_round"]),
                    sum(r["shard_cpu_per_round"]),
                    r["worker_cpu_per_round"],
                    max(r["shard_bytes_per_round"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
