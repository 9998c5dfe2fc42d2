#!/usr/bin/env python3
"""One worker host of bench/cluster/ddp_vs_effadam.py: trains a model of
bench/cluster/models.py for --steps steps with one torch thread, as

  ddp      torch DistributedDataParallel (gloo) and torch.optim.Adam, with
           --hook none (fp32), fp16 (fp16_compress_hook) or powersgd1 /
           powersgd4 (PowerSGD of that rank with error feedback, compressing
           from step 2 on);
  effadam  effadam.optim.EfficientAdam through effadam-server (--server,
           one address per shard) with --worker_codec, --server_codec and
           --error_feedback;
  local    torch.optim.Adam alone, no communication: the compute of the same
           step with the same contention for the cores, the cost model's
           compute term.

Every step is timed (wall, and forward + backward alone); the first
--warmup steps are not measured. Every rank prints "mark start" when the
measured steps begin and "mark end" after the last one; with --mark_dir it
then waits there until the driver has created the file of that name
(start, end) in that directory, so that the driver reads the interface
counters of the hosts while no host sends anything (otherwise the bytes
sent while the driver reacts would fall outside the window); with
--eval_every it evaluates the test accuracy every that many steps (outside
the timed steps). The result is one JSON object written to --out.
"""

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import Task  # noqa: E402

LR = 1e-3
POWERSGD_START = 2  # PowerSGD's plain all-reduce steps (its minimum)
# PowerSGD in more than one bucket trips gloo (a size mismatch between
# ranks at the first compressed step, torch 1.13: the buckets' collectives
# start in different orders on different ranks): one bucket for it.
BUCKET_MB = {"powersgd1": 4096, "powersgd4": 4096}


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", required=True, choices=("ddp", "effadam", "local"))
    ap.add_argument("--model", required=True, choices=("cnn", "mlp", "lm"))
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--eval_every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--master", help="ddp: rank 0's address:port")
    ap.add_argument("--hook", default="none",
                    choices=("none", "fp16", "powersgd1", "powersgd4"))
    ap.add_argument("--server", help="effadam: the shards' host:port, "
                                     "comma-separated")
    ap.add_argument("--worker_codec", default="sign")
    ap.add_argument("--server_codec", default="sign")
    ap.add_argument("--error_feedback", default="both")
    ap.add_argument("--overlap_backward", action="store_true",
                    help="effadam: send the update during backward")
    ap.add_argument("--mark_dir",
                    help="wait at each mark until DIR/start or DIR/end exists")
    ap.add_argument("--mark_timeout", type=float, default=600.0,
                    help="seconds to wait at a mark before giving up")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    if args.mode == "ddp" and not args.master:
        ap.error("--mode=ddp needs --master")
    if args.mode == "effadam" and not args.server:
        ap.error("--mode=effadam needs --server")
    return args


def ddp_optimizer(args, model):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.distributed.algorithms.ddp_comm_hooks import (default_hooks,
                                                            powerSGD_hook)
    dist.init_process_group("gloo", init_method="tcp://" + args.master,
                            rank=args.rank, world_size=args.world,
                            timeout=datetime.timedelta(seconds=300))
    if args.hook in BUCKET_MB:
        # The first bucket too (its own cap, 1 MiB by default).
        dist._DEFAULT_FIRST_BUCKET_BYTES = BUCKET_MB[args.hook] << 20
    net = DistributedDataParallel(model, gradient_as_bucket_view=True,
                                  bucket_cap_mb=BUCKET_MB.get(args.hook, 25))
    if args.hook == "fp16":
        net.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif args.hook.startswith("powersgd"):
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=int(args.hook[len("powersgd"):]),
            start_powerSGD_iter=POWERSGD_START, use_error_feedback=True,
            warm_start=True, random_seed=args.seed)
        net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return net, torch.optim.Adam(net.parameters(), LR)


def mark(args, name):
    """Prints the mark; with --mark_dir, returns once the driver says it has
    read the counters (it creates the file `name` there)."""
    print("mark " + name, flush=True)
    if not args.mark_dir:
        return
    path = os.path.join(args.mark_dir, name)
    deadline = time.monotonic() + args.mark_timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("no %s from the driver in %.0f s"
                             % (path, args.mark_timeout))
        time.sleep(0.001)


def main():
    args = parse()
    torch.set_num_threads(1)
    task = Task(args.model)
    torch.manual_seed(args.seed)
    model = task.make_model()
    t_start = time.monotonic()
    if args.mode == "ddp":
        net, opt = ddp_optimizer(args, model)
    elif args.mode == "effadam":
        from effadam.optim import EfficientAdam
        net = model
        opt = EfficientAdam(model.named_parameters(), LR, server=args.server,
                            rank=args.rank, seed=args.seed,
                            worker_codec=args.worker_codec,
                            server_codec=args.server_codec,
                            error_feedback=args.error_feedback,
                            overlap_backward=args.overlap_backward)
    else:
        net, opt = model, torch.optim.Adam(model.parameters(), LR)
    sample = task.make_sampler(args.rank, args.world, args.seed)
    joined = time.monotonic() - t_start

    step_seconds, compute_seconds, curve, losses = [], [], [], []
    train_clock = 0.0  # wall time of the training steps so far
    cpu0 = None
    for step in range(1, args.steps + 1):
        if step == args.warmup + 1:
            mark(args, "start")
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        batch = sample()
        opt.zero_grad(set_to_none=False)
        loss = task.loss(net, batch)
        loss.backward()
        t1 = time.perf_counter()
        if args.mode == "effadam":
            opt.step(loss=loss)
            if opt.server_finished:
                raise SystemExit("the server ended training early")
        else:
            opt.step()
        t2 = time.perf_counter()
        train_clock += t2 - t0
        losses.append(float(loss))
        if step > args.warmup:
            step_seconds.append(t2 - t0)
            compute_seconds.append(t1 - t0)
        if step == args.steps:
            mark(args, "end")
        if (args.rank == 0 and task.has_accuracy and args.eval_every and
                (step % args.eval_every == 0 or step == args.steps)):
            curve.append(dict(step=step, train_seconds=round(train_clock, 3),
                              test_accuracy=task.test_accuracy(model)))
            print("step %d test_accuracy %.4f" % (step, curve[-1]["test_accuracy"]),
                  flush=True)
    cpu = time.process_time() - cpu0
    if args.mode == "effadam":
        opt.finish()
    elif args.mode == "ddp":
        import torch.distributed as dist
        dist.destroy_process_group()
    result = dict(rank=args.rank, mode=args.mode, model=args.model,
                  steps=args.steps, warmup=args.warmup,
                  params=sum(p.numel() for p in model.parameters()),
                  join_seconds=round(joined, 3), step_seconds=step_seconds,
                  compute_seconds=compute_seconds,
                  cpu_seconds_measured=round(cpu, 4), losses=losses,
                  curve=curve)
    if curve:
        result["final_accuracy"] = curve[-1]["test_accuracy"]
    with open(args.out, "w") as f:
        json.dump(result, f)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
