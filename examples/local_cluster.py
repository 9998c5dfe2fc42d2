#!/usr/bin/env python3
"""Runs a local effadam cluster of Python workers: one effadam-server and N
processes of a worker script, all on 127.0.0.1.

    PYTHONPATH=build/python python3 examples/local_cluster.py --workers=4 \\
        --rounds=6000 --worker_codec=sign --server_codec=sign -- \\
        examples/fashion_mnist_cnn.py [worker flags...]

The server gets --workers, --rounds and the compression flags; every
worker gets --server, --rank, --rounds, the same compression flags and
--summary_json, then the flags after the script. Rank 0's output is shown
as it comes; the others' go to files in --out. At the end: the server's
bytes each way against fp32, rank 0's last metrics, and whether every
worker's params_checksum equals the server's. Ctrl-C stops everything.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COMPRESSION = ("worker_codec", "server_codec", "error_feedback", "block_size",
               "min_compress_elements")


def start_server(argv, log_path):
    """Starts effadam-server on a free loopback port; (process, port)."""
    log = open(log_path, "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(log_path, errors="replace") as f:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
        if m:
            return p, int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    with open(log_path, errors="replace") as f:
        raise RuntimeError("effadam-server did not start:\n" + f.read())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s [options] -- WORKER_SCRIPT [worker flags...]")
    parser.add_argument("--bin", default=os.path.join(HERE, "..", "build",
                                                      "bin"),
                        help="directory of effadam-server (build/bin)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3000)
    for flag in COMPRESSION:
        parser.add_argument("--" + flag,
                            help="passed to the server and every worker")
    parser.add_argument("--out", default="",
                        help="keep logs and summaries here (default: a "
                             "temporary directory, removed at the end)")
    parser.add_argument("worker", nargs=argparse.REMAINDER,
                        help="-- WORKER_SCRIPT [flags...]")
    args = parser.parse_args()
    worker = args.worker[1:] if args.worker[:1] == ["--"] else args.worker
    if not worker:
        parser.error("give the worker script after --")
    if args.workers < 1 or args.rounds < 1:
        parser.error("--workers and --rounds must be >= 1")

    out = args.out or tempfile.mkdtemp(prefix="effadam_local_cluster_")
    os.makedirs(out, exist_ok=True)
    common = ["--rounds=%d" % args.rounds] + [
        "--%s=%s" % (f, getattr(args, f)) for f in COMPRESSION
        if getattr(args, f) is not None]
    env = dict(os.environ)
    # The package in the build tree, unless one is importable already.
    build_python = os.path.abspath(os.path.join(args.bin, "..", "python"))
    if os.path.isdir(build_python):
        env["PYTHONPATH"] = os.pathsep.join(
            [build_python] + [p for p in [env.get("PYTHONPATH")] if p])

    procs = []
    start = time.time()
    try:
        server, port = start_server(
            [os.path.join(args.bin, "effadam-server"), "--listen=127.0.0.1:0",
             "--metrics_listen=", "--workers=%d" % args.workers,
             "--summary_json=" + os.path.join(out, "server.json")] + common,
            os.path.join(out, "server.log"))
        procs.append(server)
        for r in range(args.workers):
            argv = [sys.executable] + worker[:1] + [
                "--server=127.0.0.1:%d" % port, "--rank=%d" % r,
                "--summary_json=" + os.path.join(out, "worker%d.json" % r)
            ] + common + worker[1:]
            if r == 0:
                procs.append(subprocess.Popen(argv, env=env,
                                              stdin=subprocess.DEVNULL))
            else:
                with open(os.path.join(out, "worker%d.log" % r), "wb") as log:
                    procs.append(subprocess.Popen(
                        argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL))
        failed = []
        for r, p in enumerate(procs[1:]):
            if p.wait() != 0:
                failed.append("rank %d exited with %d" % (r, p.returncode))
        if server.wait(timeout=60) != 0:
            failed.append("effadam-server exited with %d" % server.returncode)
        if failed:
            for r in range(1, args.workers):
                with open(os.path.join(out, "worker%d.log" % r),
                          errors="replace") as f:
                    tail = f.read().splitlines()[-5:]
                print("--- rank %d:\n%s" % (r, "\n".join(tail)))
            with open(os.path.join(out, "server.log"), errors="replace") as f:
                print("--- server:\n" + "\n".join(f.read().splitlines()[-5:]))
            print("local_cluster: " + "; ".join(failed), file=sys.stderr)
            return 1

        with open(os.path.join(out, "server.json")) as f:
            s = json.load(f)
        workers = []
        for r in range(args.workers):
            with open(os.path.join(out, "worker%d.json" % r)) as f:
                workers.append(json.load(f))
        same = all(w["params_checksum"] == s["params_checksum"]
                   for w in workers)
        metrics = {k: v for k, v in workers[0].items()
                   if k in ("test_accuracy", "test_bits_per_char")}
        print("local_cluster: %d workers, %d rounds in %.1f s (CPU per "
              "worker %.0f s); %s" % (
                  args.workers, s["rounds"], time.time() - start,
                  sum(w["cpu_seconds"] for w in workers) / len(workers),
                  "  ".join("%s %.4f" % kv for kv in metrics.items())))
        print("local_cluster: bytes up %d, down %d (codec payload); fp32 "
              "Adam would move %d: %.1fx fewer" % (
                  s["bytes_worker_to_server"], s["bytes_server_to_worker"],
                  s["fp32_equivalent_bytes"], s["compression_ratio"]))
        print("local_cluster: params_checksum %s, every worker's equal to "
              "the server's: %s" % (s["params_checksum"],
                                     "yes" if same else "NO"))
        return 0 if same else 1
    except KeyboardInterrupt:
        print("local_cluster: interrupted", file=sys.stderr)
        return 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
