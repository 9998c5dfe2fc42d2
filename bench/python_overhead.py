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
           [--kinds torch,torch_fn]    (a subset of the rows)
       ... bench/python_overhead.py --copy_cost --bin build/bin --elements ...
           (the copies alone, no server)
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
                  "--untimed_rounds=%d" % warmup,
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


def copy_cost(sizes, repeats=15):
    """What EfficientAdam's copies cost per step without the network, one
    thread, median of `repeats`: the flat path (zero_grad's fill of the
    flat gradient and x copied out of the library into the flat buffer the
    parameters view) against the gather path of CUDA parameters run on the
    CPU (the gradients of w and b gathered into one buffer, x copied out of
    the library, then into each parameter)."""
    import time
    import numpy as np
    import torch
    torch.set_num_threads(1)

    def median_ms(f):
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        return sorted(t)[len(t) // 2] * 1e3

    print("%12s %10s %10s %12s %10s %12s" % (
        "elements", "zero_grad", "x out", "flat total", "gather",
        "gather total"))
    for n in sizes:
        flat = torch.zeros(n)
        x, library = flat.numpy(), np.ones(n, np.float32)
        w, b = torch.zeros(n - 16), torch.zeros(16)
        gw, gb = torch.ones(n - 16), torch.ones(16)
        fill = median_ms(flat.zero_)
        out = median_ms(lambda: np.copyto(x, library))
        gather = median_ms(lambda: torch.cat([gw, gb], out=flat))
        back = median_ms(lambda: (w.copy_(flat[:n - 16]),
                                  b.copy_(flat[n - 16:])))
        print("%12d %9.2fms %9.2fms %11.2fms %9.2fms %11.2fms" % (
            n, fill, out, fill + out, gather, gather + out + back))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True)
    p.add_argument("--elements", default="1000000,10000000")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", default="")
    p.add_argument("--copy_cost", action="store_true",
                   help="only the copies' cost per step, without a server")
    p.add_argument("--kinds", default="",
                   help="comma-separated subset of the rows (cpp always)")
    a = p.parse_args()
    if a.copy_cost:
        copy_cost([int(x) for x in a.elements.split(",")])
        return 0
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
