#!/usr/bin/env python3
"""The Python twin of effadam-synthetic-worker (bench/synthetic_worker.cc):
the same layout (w[elements], b[16]), the same per-rank targets and the
same gradient x - t, computed with the same float32 operations, so that a
cluster that mixes it with the C++ worker must end bit-identical to one of
C++ workers only (tests/python_cluster_test.py).

--mode=binding drives effadam.WorkerClient with numpy; --mode=torch trains
an nn.Module through effadam.optim.EfficientAdam, its gradient from
autograd of 0.5 * sum((x - t)^2), which is x - t exactly, and with a
frozen parameter that must stay out of the layout and untouched;
--mode=torch_fn is the same with the gradient from a torch.autograd.Function
whose backward hands out the x - t its forward computed (one pass over x, as
the C++ worker makes): autograd and the optimizer without the extra passes
of a naive loss expression; --mode=torch_fn_gather is torch_fn with
flat_params=False, the path CUDA parameters take (the gradients gathered
into one buffer and x copied back into each parameter every step).
Writes the same summary JSON fields as the C++ worker, with
round_seconds_median over the rounds after --untimed_rounds as it measures
it (gradient, step, delta applied), for bench/python_overhead.py.
"""

import argparse
import json
import sys
import time

import numpy as np

import effadam


def targets(rank, n):
    """bench/synthetic_worker.cc's Target(rank, j) for j < n, in float32:
    a common target in [-1, 1) plus a per-rank offset."""
    j = np.arange(n, dtype=np.uint64)
    h = (j * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    common = ((h >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -23)
              - np.float32(1.0))
    return common + np.float32(0.01) * np.float32((rank % 7) - 3)


class RoundTimer:
    """Times each round from one tick() to the next, as the C++ worker
    does from one gradient call to the next, after `warmup` rounds."""

    def __init__(self, warmup):
        self.warmup, self.ticks, self.last, self.seconds = warmup, 0, 0.0, []

    def tick(self):
        now = time.perf_counter()
        self.ticks += 1
        if self.ticks > self.warmup + 1:
            self.seconds.append(now - self.last)
        self.last = now

    def median(self):
        s = sorted(self.seconds)
        return s[len(s) // 2] if s else 0.0


def compression(args):
    return effadam.CompressionConfig(
        worker_codec=args.worker_codec, server_codec=args.server_codec,
        block_size=args.block_size,
        min_compress_elements=args.min_compress_elements)


def run_binding(args):
    layout = effadam.TensorLayout([("w", (args.elements,)), ("b", (16,))])
    client = effadam.WorkerClient(
        server=args.server, rank=args.rank, compression=compression(args),
        adam=effadam.AdamOptions(lr=args.lr), seed=args.seed)
    client.join(layout)
    n = layout.num_elements
    client.start(np.zeros(n, dtype=np.float32))
    t = targets(client.rank, n)
    print("python_synthetic_worker: rank %d started at round %d"
          % (client.rank, client.round), flush=True)
    grad = np.empty(n, dtype=np.float32)
    timer = RoundTimer(args.untimed_rounds)
    while client.round <= args.rounds:
        timer.tick()
        np.subtract(client.params, t, out=grad)
        loss = 0.5 * float(np.dot(grad, grad)) / n  # BLAS sdot: one pass
        try:
            client.step(grad, loss)
        except effadam.StatusError as e:
            if e.code != effadam.StatusCode.OUT_OF_RANGE:
                raise
            break
    timer.tick()
    client.finish()
    return client, client.rank, timer


def run_torch(args):
    import torch  # only this mode needs it
    fused = args.mode.startswith("torch_fn")
    extra = {"flat_params": False} if args.mode.endswith("_gather") else {}
    from effadam.optim import EfficientAdam

    class Synthetic(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(n))
            self.frozen = torch.nn.Parameter(torch.full((3,), 7.0),
                                             requires_grad=False)
            self.b = torch.nn.Parameter(torch.zeros(16))

        def forward(self, t):
            if fused:
                return HalfSquaredDistance.apply(self.w, self.b, t)
            d = torch.cat([self.w, self.b]) - t
            return 0.5 * (d * d).sum()

    class HalfSquaredDistance(torch.autograd.Function):
        """0.5 * |(w, b) - t|^2, its gradient (w, b) - t from the forward."""

        @staticmethod
        def forward(ctx, w, b, t):
            n = w.numel()
            dw, db = w - t[:n], b - t[n:]
            ctx.grads = (dw, db)
            return 0.5 * (torch.dot(dw, dw) + torch.dot(db, db))

        @staticmethod
        def backward(ctx, out):
            dw, db = ctx.grads
            del ctx.grads
            return dw, db, None  # out is 1 in this bench: x - t exactly

    model = Synthetic(args.elements)
    opt = EfficientAdam(
        model.named_parameters(), server=args.server, rank=args.rank,
        lr=args.lr, seed=args.seed, worker_codec=args.worker_codec,
        server_codec=args.server_codec, block_size=args.block_size,
        min_compress_elements=args.min_compress_elements, **extra)
    if opt.names != ["w", "b"]:
        raise AssertionError("layout names %s, want ['w', 'b']" % opt.names)
    t = torch.from_numpy(targets(opt.rank, opt.layout.num_elements))
    print("python_synthetic_worker: rank %d started at round %d"
          % (opt.rank, opt.round), flush=True)
    timer = RoundTimer(args.untimed_rounds)
    while opt.round <= args.rounds:
        timer.tick()
        opt.zero_grad()
        loss = model(t)
        loss.backward()
        opt.step(loss=loss / opt.layout.num_elements)
        if opt.server_finished:
            break
    timer.tick()
    opt.finish()
    if not torch.equal(model.frozen, torch.full((3,), 7.0)):
        raise AssertionError("the frozen parameter changed")
    # The parameters hold the library's replica, bit for bit.
    flat = torch.cat([model.w.detach(), model.b.detach()]).numpy()
    if not np.array_equal(flat.view(np.uint32),
                          np.asarray(opt.client.params).view(np.uint32)):
        raise AssertionError("the parameters differ from the replica")
    return opt.client, opt.rank, timer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--rank", type=int, default=-1)
    p.add_argument("--elements", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--worker_codec", default="sign")
    p.add_argument("--server_codec", default="sign")
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--min_compress_elements", type=int, default=1024)
    p.add_argument("--mode", choices=("binding", "torch", "torch_fn",
                                       "torch_fn_gather"), default="binding")
    p.add_argument("--untimed_rounds", type=int, default=0)
    p.add_argument("--summary_json", default="")
    args = p.parse_args()
    client, rank, timer = (run_torch if args.mode.startswith("torch")
                           else run_binding)(args)
    checksum = effadam.params_checksum(client.params)
    print("python_synthetic_worker: rank %d done after round %d, "
          "params_checksum %s" % (rank, client.round - 1, checksum))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(dict(rank=rank, rounds=client.round - 1,
                           resyncs=client.resyncs,
                           bytes_worker_to_server=client.traffic.worker_to_server,
                           bytes_server_to_worker=client.traffic.server_to_worker,
                           params_checksum=checksum,
                           measured_rounds=len(timer.seconds),
                           round_seconds_median=timer.median()), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
