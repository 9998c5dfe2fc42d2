#!/usr/bin/env python3
"""Mixed clusters: C++ and Python workers in one cluster end with exactly
the x of a cluster of C++ workers only, given the same gradients.

The C++ worker is effadam-synthetic-worker; its Python twin,
tests/python_synthetic_worker.py, computes the same gradient with the same
float32 operations through effadam.WorkerClient (--mode=binding) or
through the PyTorch optimizer (--mode=torch). Every case runs the same
server flags; the server's and every worker's params_checksum and byte
counts must equal those of the all-C++ cluster.

Usage: python_cluster_test.py --bin BUILD/bin [--only NAME]
(run by /usr/bin/python3 with PYTHONPATH=BUILD/python, as ctest does). The
torch case is skipped, saying so, where python3-torch is not installed.
Only 127.0.0.1 is used; every process is killed and every file removed.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cluster_test import check, main_for  # noqa: E402

WORKERS = 4
ROUNDS = 40
ELEMENTS = 5000
# Small blocks so that w goes through the codec in several blocks; b (16
# elements) travels as fp32.
FLAGS = ["--worker_codec=sign", "--server_codec=sign", "--block_size=64",
         "--min_compress_elements=64"]
KEYS = ("params_checksum", "bytes_worker_to_server", "bytes_server_to_worker")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def run_cluster(c, name, kinds, shards=1):
    """`shards` servers (the model split as docs/sharding.md says) and one
    worker per entry of kinds ('cpp', 'binding', 'torch'), rank i running
    kinds[i]; returns (server summary, {rank: worker summary}), the byte
    counts of the server summary summed over shards."""
    servers, addresses = c.start_shards(
        ["--workers=%d" % WORKERS, "--rounds=%d" % ROUNDS] + FLAGS, shards,
        name + "_server")
    procs = []
    for rank, kind in enumerate(kinds):
        label = "%s_rank%d_%s" % (name, rank, kind)
        common = ["--server=" + addresses, "--rank=%d" % rank,
                  "--rounds=%d" % ROUNDS, "--elements=%d" % ELEMENTS,
                  "--summary_json=" + c.path(label + ".json")] + FLAGS
        if kind == "cpp":
            argv = [os.path.join(c.bin, "effadam-synthetic-worker")] + common
        else:
            argv = [sys.executable,
                    os.path.join(HERE, "python_synthetic_worker.py"),
                    "--mode=" + kind] + common
        procs.append((label, c.spawn(label, argv)))
    for _, p in procs:
        c.expect_ok(p)
    for server in servers:
        c.expect_ok(server)
    shard_summaries = [c.summary("%s_server%d" % (name, k))
                       for k in range(shards)]
    server = dict(shard_summaries[0])
    for key in ("bytes_worker_to_server", "bytes_server_to_worker"):
        server[key] = sum(s[key] for s in shard_summaries)
    return (server,
            {rank: c.summary(label) for rank, (label, _) in enumerate(procs)})


def expect_same(reference, got, what, server_keys=KEYS):
    ref_server, ref_workers = reference
    server, workers = got
    for key in KEYS:
        if key in server_keys:
            check(server[key] == ref_server[key],
                  "%s: server %s %s, all-C++ cluster %s"
                  % (what, key, server[key], ref_server[key]))
        for rank, w in sorted(workers.items()):
            check(w[key] == ref_workers[rank][key],
                  "%s: rank %d %s %s, all-C++ cluster %s"
                  % (what, rank, key, w[key], ref_workers[rank][key]))
    for rank, w in sorted(workers.items()):
        check(w["rounds"] == ROUNDS, "%s: rank %d ran %s rounds"
              % (what, rank, w["rounds"]))
        if "params_checksum" in server_keys:
            check(w["params_checksum"] == server["params_checksum"],
                  "%s: rank %d's replica differs from the server's"
                  % (what, rank))


def case_mixed_cluster(c):
    reference = run_cluster(c, "cpp", ["cpp"] * WORKERS)
    ref_server = reference[0]
    check(ref_server["rounds"] == ROUNDS, "the server closed %s rounds"
          % ref_server["rounds"])
    expect_same(reference, run_cluster(c, "binding",
                                       ["binding", "cpp", "binding", "cpp"]),
                "2 C++ + 2 Python (WorkerClient) workers")
    result = ("params_checksum %s after %d rounds: all-C++ = C++ + "
              "WorkerClient" % (ref_server["params_checksum"], ROUNDS))
    # The model over 2 servers (w | b): each shard holds part of x, so
    # only the workers' replicas and the bytes summed over shards compare.
    python = "torch" if HAVE_TORCH else "binding"
    expect_same(reference,
                run_cluster(c, "sharded", ["cpp", python, "binding", "cpp"],
                            shards=2),
                "2 shards, C++ and Python workers",
                server_keys=KEYS[1:])
    result += " = the same over 2 shards"
    if not HAVE_TORCH:
        print("SKIPPED the PyTorch-optimizer part: python3-torch is not "
              "installed (scripts/setup.sh installs it)")
        return result + "; torch part skipped"
    expect_same(reference, run_cluster(c, "torch",
                                       ["cpp", "torch", "binding", "torch"]),
                "1 C++ + 1 WorkerClient + 2 EfficientAdam workers")
    return result + " = C++ + WorkerClient + EfficientAdam"


CASES = [("mixed_cluster", case_mixed_cluster)]

if __name__ == "__main__":
    sys.exit(main_for(CASES, ("effadam-server", "effadam-synthetic-worker")))
