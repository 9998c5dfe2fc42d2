#!/usr/bin/env python3
"""What the Python layer costs per round: one effadam-server and one worker
on loopback, sign both ways, the same O(n) gradient (x - t) computed by

  cpp      effadam-synthetic-worker (C++ WorkerClient)
  binding  tests/python_synthetic_worker.py --mode=binding: numpy and
           effadam.WorkerClient (the bindings, GIL released, a thread per
           blocking call)
  torch    tests/python_synthetic_worker.py --mode=torch: an nn.Module,
           autograd of 0.5 * sum((x - t)^2) and effadam.optim.EfficientAdam
  torch_fn the same with the gradient from an autograd.Function that makes
           one pass over x, as the C++ worker does: what autograd and the
           optimizer cost, without a naive loss's extra passes
  torch_fn_gather  torch_fn with flat_params=False: the path of CUDA
           parameters on the CPU (a gather and a copy back per step), so
           that the difference to torch_fn is what those copies cost

at each model size, the kinds interleaved so they share the machine's
state. Prints the median seconds per round after a warm-up and the ratio
to the C++ worker; with --json, writes the rows there too.

Usage: PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py \\
           --bin build/bin [--elements 1000000,10000000] [--rounds 60]
Only 127.0.0.1 is used; every process is killed at the end.
"""

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
sys.path.insert(0, TESTS)
from cluster_test import Cluster  # noqa: E402

FLAGS = ["--worker_codec=sign", "--server_codec=sign", "--seed=1"]


def one_run(bin_dir, kind, elements, rounds, warmup):
    """Median seconds per round of one worker of `kind`."""
    c = Cluster(bin_dir, "pyoverhead")
    try:
        server, port = c.start_server(
            ["--workers=1", "--rounds=%d" % rounds] + FLAGS)
        common = ["--server=127.0.0.1:%d" % port, "--rounds=%d" % rounds,
                  "--elements=%d" % elements,
                  "--warmup_rounds=%d" % warmup,
                  "--summary_json=" + c.path("w.json")] + FLAGS
        if kind == "cpp":
            argv = [os.path.join(bin_dir, "effadam-synthetic-worker")] + common
        else:
            argv = [sys.executable,
                    os.path.join(TESTS, "python_synthetic_worker.py"),
                    "--mode=" + kind] + common
        worker = c.spawn("w", argv)
        c.expect_ok(worker)
        c.expect_ok(server)
        s = c.summary("w")
        return s["round_seconds_median"], s["params_checksum"]
    finally:
        c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--elements", default="1000000,10000000")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", default="")
    p.add_argument("--kinds", default="",
                   help="comma-separated subset of the rows (cpp always)")
    a = p.parse_args()
    kinds = ["cpp", "binding"]
    if importlib.util.find_spec("torch") is not None:
        kinds += ["torch", "torch_fn", "torch_fn_gather"]
    else:
        print("python_overhead: torch is not installed; no torch row")
    if a.kinds:
        kinds = ["cpp"] + [k for k in a.kinds.split(",") if k != "cpp"]
    rows = []
    print("%12s %16s %12s %10s" % ("elements", "worker", "s/round", "vs C++"))
    for n in (int(x) for x in a.elements.split(",")):
        results = {k: one_run(a.bin, k, n, a.rounds, a.warmup) for k in kinds}
        # Same gradient, same float operations: the same x at the end.
        checksums = {k: r[1] for k, r in results.items()}
        if len(set(checksums.values())) != 1:
            sys.exit("python_overhead: params_checksum differs: %s"
                     % checksums)
        base = results["cpp"][0]
        for k in kinds:
            sec = results[k][0]
            rows.append(dict(elements=n, worker=k, round_seconds_median=sec,
                             ratio_to_cpp=sec / base if base else None))
            print("%12d %16s %12.4f %9.2fx" % (n, k, sec, sec / base))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
