#!/usr/bin/env python3
"""Round time of a real cluster on loopback: 1 effadam-server and N
effadam-worker processes train the MLP, once with fp32 both ways and once
with sign both ways (Efficient-Adam), in the same run so the two figures
share the machine's state. The time per round is the difference of two runs
of different lengths divided by the difference in rounds, which cancels
start-up, joins and the final evaluation.

Usage: bench/loopback_round_time.py --bin build/bin [--workers 4]
Only 127.0.0.1 is used; every process is killed at the end.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from cluster_test import Cluster  # noqa: E402

SETTINGS = [("fp32/fp32", ["--worker_codec=fp32", "--server_codec=fp32"]),
            ("sign/sign", ["--worker_codec=sign", "--server_codec=sign"])]


def run(bin_dir, workers, rounds, codec_flags):
    c = Cluster(bin_dir, "bench")
    try:
        flags = codec_flags + ["--rounds=%d" % rounds]
        server, port = c.start_server(flags + ["--workers=%d" % workers])
        procs = [c.start_worker("w%d" % r, port,
                                flags + ["--model=mlp", "--rank=%d" % r,
                                         "--eval_every=0"])
                 for r in range(workers)]
        for p in procs + [server]:
            c.expect_ok(p)
        s = c.summary("server")
        return s["seconds"], s["bytes_worker_to_server"] / (rounds * workers)
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--short", type=int, default=30)
    ap.add_argument("--long", type=int, default=330)
    args = ap.parse_args()
    print("%-10s %14s %16s" % ("setting", "ms per round", "up B/worker/round"))
    for name, flags in SETTINGS:
        t_short, _ = run(args.bin, args.workers, args.short, flags)
        t_long, up = run(args.bin, args.workers, args.long, flags)
        ms = 1000 * (t_long - t_short) / (args.long - args.short)
        print("%-10s %14.2f %16d" % (name, ms, up))


if __name__ == "__main__":
    main()
