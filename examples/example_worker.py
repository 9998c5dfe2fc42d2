"""What the Python example workers share: their flags, the training loop
around effadam.optim.EfficientAdam, progress lines and the summary JSON.

An example supplies the model, a sampler of its data shard and an
evaluation; see fashion_mnist_cnn.py and char_lm.py. Started by
`python3 -m effadam.run --nproc=N [server flags] -- SCRIPT [flags]`, a
worker finds the server and its rank in the environment; --server and
--rank override it.
"""

import argparse
import json
import math
import sys
import time

import torch

from effadam.optim import EfficientAdam


def parser(description, lr, batch_size, eval_every, lr_schedule="constant"):
    """The flags every example worker takes, with the example's defaults.
    The compression flags must be the server's; where the server is and
    the rank come from the environment (effadam.run sets it) unless given."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--server", default=None,
                   help="effadam-server host:port; for a sharded model the "
                        "shards' addresses, comma-separated, or a {shard} "
                        "pattern with --num_shards (default: "
                        "$EFFADAM_SERVER, else $MASTER_ADDR:$EFFADAM_PORT, "
                        "else 127.0.0.1:50051)")
    p.add_argument("--num_shards", type=int, default=None,
                   help="with a {shard} pattern in --server: the number of "
                        "shards")
    p.add_argument("--rank", type=int, default=None,
                   help="rank to claim; -1 for the lowest free one (default: "
                        "$RANK, else $JOB_COMPLETION_INDEX, else -1)")
    p.add_argument("--rounds", type=int, default=0,
                   help="train through this round (0: until the server "
                        "ends training, its --rounds)")
    for flag in ("worker_codec", "server_codec", "error_feedback"):
        p.add_argument("--" + flag, help="as effadam-server's; must match it")
    for flag in ("block_size", "min_compress_elements"):
        p.add_argument("--" + flag, type=int,
                       help="as effadam-server's; must match it")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--lr_schedule", default=lr_schedule,
                   choices=("constant", "inverse_sqrt", "warmup_cosine"),
                   help="constant (lr), inverse_sqrt (lr / sqrt(round), in "
                        "the library) or warmup_cosine (a torch LambdaLR: "
                        "linear from 0 to lr over --warmup_rounds, then a "
                        "half cosine to 0 at --rounds, which it needs)")
    p.add_argument("--warmup_rounds", type=int, default=0,
                   help="warm-up of --lr_schedule=warmup_cosine")
    p.add_argument("--weight_decay", type=float, default=0.0,
                   help="L2 weight decay, as torch.optim.Adam's")
    p.add_argument("--batch_size", type=int, default=batch_size,
                   help="mini-batch per worker and round")
    p.add_argument("--seed", type=int, default=1,
                   help="initialization and data order")
    p.add_argument("--eval_every", type=int, default=eval_every,
                   help="rank 0 evaluates every this many rounds (0: at the "
                        "end only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this worker")
    p.add_argument("--metrics_listen", default="",
                   help="serve this worker's Prometheus metrics at "
                        "http://HOST:PORT/metrics (docs/metrics.md)")
    p.add_argument("--summary_json", default="",
                   help="write the run's summary here at the end ({rank} "
                        "is replaced by the rank)")
    return p


def warmup_cosine(rounds, warmup):
    """The factor of lr in round t (from 1): what effadam-worker's
    --lr_schedule=warmup_cosine does in the library."""
    def factor(t):
        if t <= warmup:
            return t / warmup
        if t >= rounds:
            return 0.0
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / (rounds - warmup)))
    return factor


def _megabytes(n):
    return "%.1f MB" % (n / 1e6)


def train(args, make_model, make_sampler, loss_fn, evaluate):
    """Trains make_model() as one worker of the cluster at args.server.

    make_model() -> the nn.Module, built after torch is seeded with
      args.seed (torch seeds itself at random otherwise), so that a run is
      repeatable whichever worker joins first and uploads its values.
    make_sampler(rank, num_workers, generator) -> () -> batch: this
      worker's shard of the training data, known once the worker has joined.
    loss_fn(model, batch) -> the mini-batch loss (a 0-d tensor).
    evaluate(model) -> {name: value}: rank 0's evaluation on held-out data.
    Returns the process exit status."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.lr_schedule == "warmup_cosine" and not (
            args.rounds > 0 and 0 <= args.warmup_rounds <= args.rounds):
        print("--lr_schedule=warmup_cosine needs --rounds > 0 and "
              "0 <= --warmup_rounds <= --rounds", file=sys.stderr)
        return 2
    model = make_model()
    start = time.time()
    opt = EfficientAdam(model.named_parameters(), args.lr,
                        weight_decay=args.weight_decay, server=args.server,
                        num_shards=args.num_shards,
                        rank=args.rank, seed=args.seed,
                        lr_schedule=("inverse_sqrt"
                                     if args.lr_schedule == "inverse_sqrt"
                                     else "constant"),
                        worker_codec=args.worker_codec,
                        server_codec=args.server_codec,
                        error_feedback=args.error_feedback,
                        block_size=args.block_size,
                        min_compress_elements=args.min_compress_elements,
                        metrics_listen=args.metrics_listen)
    rank = opt.rank
    print("rank %d of %d joined: %d parameters in %d tensors, round %d"
          % (rank, opt.num_workers, opt.layout.num_elements,
             len(opt.layout), opt.round), flush=True)
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)
    sample = make_sampler(rank, opt.num_workers, generator)
    scheduler = None
    if args.lr_schedule == "warmup_cosine":
        # Keyed to the round, not to the scheduler's count, so that a worker
        # that joins late or resyncs uses the cluster's round.
        factor = warmup_cosine(args.rounds, args.warmup_rounds)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _: factor(opt.round))

    metrics = {}
    evaluated = -1  # the round of the last evaluation
    loss_sum, loss_count = 0.0, 0
    last = args.rounds or float("inf")

    def report(done):
        nonlocal metrics, loss_sum, loss_count, evaluated
        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train()
        evaluated = done
        opt.record_evaluation(
            test_loss=metrics.get("test_loss", math.nan),
            test_accuracy=metrics.get("test_accuracy", math.nan))
        t = opt.traffic
        print("round %d/%s  loss %.4f  %s  up %s  down %s  "
              "(%.1fx fewer than fp32)  %.1f s" % (
                  done, args.rounds or "-", loss_sum / max(loss_count, 1),
                  "  ".join("%s %.4f" % kv for kv in metrics.items()),
                  _megabytes(t.worker_to_server),
                  _megabytes(t.server_to_worker), t.ratio,
                  time.time() - start), flush=True)
        loss_sum, loss_count = 0.0, 0

    try:
        while opt.round <= last:
            batch = sample()
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            opt.step(loss=loss)
            if opt.server_finished:
                break
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item()
            loss_count += 1
            done = opt.round - 1
            if rank == 0 and (done == args.rounds or (
                    args.eval_every and done % args.eval_every == 0)):
                report(done)
        opt.finish()
        if rank == 0 and evaluated != opt.round - 1:
            report(opt.round - 1)
    except KeyboardInterrupt:
        print("rank %d interrupted at round %d" % (rank, opt.round),
              file=sys.stderr)
        return 130

    import effadam  # the checksum is the C++ one, as in every summary
    summary = dict(rank=rank, rounds=opt.round - 1,
                   bytes_worker_to_server=opt.traffic.worker_to_server,
                   bytes_server_to_worker=opt.traffic.server_to_worker,
                   fp32_equivalent_bytes=opt.traffic.fp32_total,
                   compression_ratio=opt.traffic.ratio,
                   params_checksum=effadam.params_checksum(opt.client.params),
                   seconds=round(time.time() - start, 3),
                   # This process's CPU time: what the run costs on a machine
                   # that other work shares.
                   cpu_seconds=round(time.process_time(), 3))
    summary.update({k: v for k, v in metrics.items() if math.isfinite(v)})
    if args.summary_json:
        with open(args.summary_json.replace("{rank}", str(rank)), "w") as f:
            json.dump(summary, f, indent=1)
    print("rank %d done after round %d, params_checksum %s"
          % (rank, summary["rounds"], summary["params_checksum"]), flush=True)
    return 0
