#!/usr/bin/env python3
"""PyTorch DDP against EfficientAdam on an emulated multi-host cluster.

Every worker and every server shard is a host: its own network namespace,
joined by a veth pair to a bridge in a "switch" namespace, each link shaped
with tbf on both ends to the same full-duplex rate (bench/cluster/netns.py).
One process per host, one torch thread each (bench/cluster/train_worker.py),
the same model, initial weights and batches on both sides:

  ddp      DistributedDataParallel (gloo) + torch.optim.Adam: fp32, the
           fp16 compression hook, PowerSGD rank 1 and 4 (error feedback)
  effadam  EfficientAdam through effadam-server with S shards on their own
           hosts: fp32/fp32, sign/sign+EF, q4/q4+EF
  local    the same processes with no communication at all: the compute
           term of the cost model

Parts (--parts):
  verify    the emulation: one host's measured throughput up and down, and
            two hosts sending to a third (whose link is the limit)
  timing    per model, rate, N and setting: median seconds per step after
            the warm-up, bytes per step on each host's link each way (the
            switch's interface counters, read while every host waits just
            before its first and just after its last measured step), CPU
            seconds per step per process, and the cost
            model's floor beside it
  accuracy  test accuracy against steps for the CNN and the wide MLP on the
            fastest link; a run's trajectory does not depend on the link
            (effadam is deterministic, DDP's gloo ring too), so time to a
            target = steps to it x the timing part's seconds per step

Settings run alternately (a DDP setting, an effadam one, ...) so that the
noise of a shared machine falls on both alike. Output in --out: links.csv,
timing.csv, accuracy.csv (curves), run.json, tables.md and the plots when
matplotlib is there (bench/cluster/cluster_report.py). Root only; every
namespace and process is removed on exit and on SIGINT/SIGTERM, processes
stopped by pid, every run bounded in time (--run_timeout).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import netns  # noqa: E402
from e2e_bench import (BenchError, Processes, machine_info,  # noqa: E402
                       mem_available_bytes, read_json, run_main, write_csv)

PYTHON = "/usr/bin/python3"  # Debian's, the one with torch
SERVER_PORT = 50051
# Of MemAvailable a run may plan to use (--memory_share): N = 16 copies of
# the 25M model need about 13 GB (DDP) and 17.8 GB (effadam, 4 shards) of
# a shared 24 GB machine.
MEMORY_SHARE = 0.8

# name -> (mode, worker flags); effadam settings also take S.
DDP_SETTINGS = {
    "ddp fp32": ["--hook=none"],
    "ddp fp16": ["--hook=fp16"],
    "ddp powersgd r1": ["--hook=powersgd1"],
    "ddp powersgd r4": ["--hook=powersgd4"],
}
EFFADAM_CODECS = {
    "sign/sign+EF": ("sign", "sign", "both"),
    # The same, with the update sent during backward (overlap_backward).
    "sign/sign+EF bucketed": ("sign", "sign", "both"),
    "q4/q4+EF": ("q4", "q4", "both"),
    "fp32/fp32": ("fp32", "fp32", "both"),
}
# Bytes per element of a worker's update, roughly (for planning steps).
CODEC_BYTES = {"fp32": 4, "q4": 0.5, "sign": 0.125}
PARAMS = {"cnn": 206922, "mlp": 5824522, "lm": 25395355}

TIMING_COLUMNS = [
    "model", "params", "rate", "rate_measured_mbit", "workers", "setting",
    "shards", "status", "steps_measured", "seconds_per_step_median",
    "seconds_per_step_rank0_median", "forward_backward_seconds_median",
    "compute_seconds_per_step",
    "worker_up_bytes_per_step", "worker_down_bytes_per_step",
    "server_up_bytes_per_step", "server_down_bytes_per_step",
    "floor_network_seconds", "floor_seconds", "measured_over_floor",
    "compute_cpu_seconds_per_step", "projected_seconds_core_per_host",
    "worker_cpu_seconds_per_step", "server_cpu_seconds_per_step",
    "worker_max_rss_mb", "load_average", "run_seconds",
]
ACCURACY_COLUMNS = ["model", "workers", "setting", "shards", "step",
                    "train_seconds", "test_accuracy"]
LINK_COLUMNS = ["rate", "test", "mbit_per_second", "nominal_mbit"]


def log(msg):
    print("cluster: " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------ cost model

def powersgd_elements(model, rank):
    """Elements PowerSGD all-reduces per step: P and Q of every matrix it
    compresses (torch's _should_compress with min_compression_rate 2), the
    rest as they are."""
    import torch
    from models import Task
    shapes = MODEL_SHAPES.get(model)
    if shapes is None:
        torch.manual_seed(0)
        shapes = [tuple(p.shape) for p in Task(model).make_model().parameters()]
        MODEL_SHAPES[model] = shapes
    total = 0
    for shape in shapes:
        n = shape[0]
        m = 1
        for s in shape[1:]:
            m *= s
        r = min(n, m, rank)
        if (n + m) * r * 2 < n * m:
            total += (n + m) * r
        else:
            total += n * m
    return total


MODEL_SHAPES = {}


def network_floor(model, setting, workers, shards, rate_bits, up_bytes,
                  down_bytes):
    """Seconds of the busiest link per step by the cost model: ring
    all-reduce moves 2(N-1)/N x the all-reduced bytes per host each way; a
    server shard's link carries N x the update bytes / S each way (up and
    down at once on a full-duplex link: the larger counts)."""
    d = PARAMS[model]
    ring = 2.0 * (workers - 1) / workers
    if setting == "ddp fp32":
        return ring * 4 * d * 8 / rate_bits
    if setting == "ddp fp16":
        return ring * 2 * d * 8 / rate_bits
    if setting.startswith("ddp powersgd r"):
        elements = powersgd_elements(model, int(setting.rsplit("r", 1)[1]))
        return ring * 4 * elements * 8 / rate_bits
    # effadam: codec bytes per worker and step from the server summaries.
    return workers * max(up_bytes, down_bytes) / shards * 8 / rate_bits


# ------------------------------------------------------------ the emulation

def verify_links(args, rate, out):
    """Throughput of one host up and down, both at once (full duplex), and
    two hosts into a third. Each test is a list of flows (senders,
    receiver) that run at the same time; a row per flow."""
    rows = []
    net = netns.Network(["a", "b", "c"], tag="edv%d" % os.getpid(),
                        subnet="10.78.0.", rate=rate)
    probe = [PYTHON, os.path.join(HERE, "link_probe.py")]
    try:
        tests = [("a to c (a up, c down)", [(["a"], "c")]),
                 ("c to a (c up, a down)", [(["c"], "a")]),
                 ("a to c and c to a at once (full duplex)",
                  [(["a"], "c"), (["c"], "a")]),
                 ("a and b to c (c's link is the limit)", [(["a", "b"], "c")])]
        port = 5201
        for name, flows in tests:
            with Processes(os.path.join(out, "logs", "links")) as procs:
                deadline = time.monotonic() + args.link_seconds + 60
                receivers = []
                for senders, receiver in flows:
                    port += 1
                    r = procs.start(net.exec_prefix(receiver) + probe + [
                        "recv", "--listen=%s:%d" % (net.ip[receiver], port),
                        "--connections=%d" % len(senders),
                        "--seconds=%g" % args.link_seconds], "recv_" + receiver)
                    r.wait_line(r"^listening$", deadline)
                    receivers.append((r, "%s to %s" % ("+".join(senders),
                                                       receiver)))
                    for s in senders:
                        procs.start(net.exec_prefix(s) + probe + [
                            "send", "--to=%s:%d" % (net.ip[receiver], port),
                            "--seconds=%g" % args.link_seconds], "send_" + s)
                for r, flow in receivers:
                    r.expect_ok(deadline)
                    _, m = r.wait_line(r"^mbit_per_second ([0-9.]+)$", deadline)
                    mbit = float(m.group(1))
                    test = name if len(flows) == 1 else "%s: %s" % (name, flow)
                    log("link %s: %s: %.1f Mbit/s" % (rate, test, mbit))
                    rows.append(dict(rate=rate, test=test, mbit_per_second=mbit,
                                     nominal_mbit=netns.rate_bits(rate) / 1e6))
    finally:
        net.close()
    return rows


class Cluster:
    """The hosts of one rate and worker count: w0..w{N-1}, s0..s{S-1}."""

    def __init__(self, rate, workers, shards):
        self.workers, self.max_shards = workers, shards
        hosts = ["w%d" % r for r in range(workers)] + \
                ["s%d" % k for k in range(shards)]
        self.net = netns.Network(hosts, tag="edc%d" % os.getpid(),
                                 subnet="10.79.0.", rate=rate)

    def close(self):
        self.net.close()


def memory_needed(model, mode, workers, shards):
    """Bytes a run plans for: torch's own 300 MB per process plus what it
    keeps per parameter (measured: 710 MB for the 25M model with Adam
    alone; DDP: x, gradient (its buckets are views), m, v; EfficientAdam:
    x and the gradient as flat buffers, the library's x, m, v, e and
    buffers; a shard: x, E and the sums)."""
    d = PARAMS[model]
    per_worker = 300e6 + d * (20 if mode == "ddp" else 30)
    server = shards * 60e6 + d * 24 if mode == "effadam" else 0
    return workers * per_worker + server


def run_setting(args, cluster, model, rate, name, mode, shards, steps, warmup,
                log_dir, eval_every=0):
    """One run; returns (worker results, counters at the marks, server
    summaries, server CPU seconds between the marks, run seconds)."""
    net, n = cluster.net, cluster.workers
    # An effadam setting of one of --builds ("... @label") runs that
    # build's server and Python package.
    name, label = split_build(name)
    # A build may end in @--flag@--flag: flags for its servers (e.g.
    # c64k=build/bin@--max_chunk_bytes=65536).
    bin_dir, *server_flags = args.builds.get(label, args.bin).split("@")
    worker = ["env", "PYTHONPATH=" + package_of(bin_dir), PYTHON,
              os.path.join(HERE, "train_worker.py"), "--mode=" + mode,
              "--model=" + model, "--world=%d" % n, "--steps=%d" % steps,
              "--warmup=%d" % warmup, "--eval_every=%d" % eval_every]
    timeout = args.run_timeout
    deadline = time.monotonic() + timeout
    t_begin = time.monotonic()
    with Processes(log_dir) as procs:
        mark_dir = os.path.join(log_dir, "marks")
        shutil.rmtree(mark_dir, ignore_errors=True)
        os.makedirs(mark_dir)
        worker.append("--mark_dir=" + mark_dir)
        servers = []
        if mode == "effadam":
            wcodec, scodec, feedback = EFFADAM_CODECS[name.split(" S=")[0]]
            chunk_flags = (["--max_chunk_bytes=%d" % args.max_chunk_bytes]
                           if args.max_chunk_bytes else [])
            codec_flags = ["--worker_codec=" + wcodec,
                           "--server_codec=" + scodec,
                           "--error_feedback=" + feedback]
            for k in range(shards):
                host = "s%d" % k
                servers.append(procs.start(net.exec_prefix(host) + [
                    os.path.join(bin_dir, "effadam-server"),
                    "--listen=%s:%d" % (net.ip[host], SERVER_PORT),
                    "--metrics_listen=", "--workers=%d" % n,
                    "--rounds=%d" % steps, "--shard=%d" % k,
                    "--num_shards=%d" % shards, "--seed=1",
                    "--summary_json=" + os.path.join(log_dir, "s%d.json" % k)]
                    + codec_flags + chunk_flags + server_flags, "s%d" % k))
            for s in servers:
                s.wait_line(r"listening on", deadline)
            worker += ["--server=" + ",".join(
                "%s:%d" % (net.ip["s%d" % k], SERVER_PORT)
                for k in range(shards))] + codec_flags
            if name.split(" S=")[0].endswith(" bucketed"):
                worker.append("--overlap_backward")
        elif mode == "ddp":
            # A new port each run: the last run's may be in TIME_WAIT.
            cluster.port = getattr(cluster, "port", 29400) + 1
            worker += ["--master=%s:%d" % (net.ip["w0"], cluster.port)]
            worker += DDP_SETTINGS[name]
        ws = [procs.start(net.exec_prefix("w%d" % r) + worker + [
            "--rank=%d" % r, "--out=" + os.path.join(log_dir, "w%d.json" % r)],
            "w%d" % r) for r in range(n)]
        # Every worker waits at a mark until the counters are read: no
        # byte of a measured step can fall outside the window.
        marks = {}
        for mark in ("start", "end"):
            for w in ws:
                w.wait_line(r"^mark %s$" % mark, deadline)
            marks[mark] = (net.counters(),
                           [s.proc_cpu_seconds() for s in servers])
            open(os.path.join(mark_dir, mark), "w").close()
        for p in ws + servers:
            p.expect_ok(deadline)
        results = [read_json(os.path.join(log_dir, "w%d.json" % r))
                   for r in range(n)]
        summaries = [read_json(os.path.join(log_dir, "s%d.json" % k))
                     for k in range(shards)] if servers else []
        rss = max(p.max_rss_mb() for p in ws)
    return results, marks, summaries, rss, time.monotonic() - t_begin


def combine(name, network, compute):
    """A step's floor from its network and compute times: DDP overlaps the
    all-reduce with the backward pass; a round of effadam today receives,
    computes and sends one after the other."""
    return (max(network, compute) if name.startswith("ddp")
            else network + compute)


def timing_row(model, rate, measured_mbit, n, name, shards, res, compute,
               compute_cpu):
    results, marks, summaries, rss, seconds = res
    m = len(results[0]["step_seconds"])
    all_steps = [t for r in results for t in r["step_seconds"]]
    (c0, cpu0), (c1, cpu1) = marks["start"], marks["end"]
    # Every host waited at the marks while the counters were read: just
    # before its first measured step and just after its last, m steps.
    per = m

    def delta(host, i):
        return (c1[host][i] - c0[host][i]) / per
    workers = ["w%d" % r for r in range(n)]
    row = dict(
        model=model, params=results[0]["params"], rate=rate,
        rate_measured_mbit=measured_mbit, workers=n, setting=name,
        shards=shards or "", status="ok", steps_measured=m,
        seconds_per_step_median=round(statistics.median(all_steps), 4),
        seconds_per_step_rank0_median=round(
            statistics.median(results[0]["step_seconds"]), 4),
        # Sampling, forward and backward of this run (for DDP the backward
        # includes the all-reduce it waits for).
        forward_backward_seconds_median=round(statistics.median(
            t for r in results for t in r["compute_seconds"]), 4),
        compute_seconds_per_step=round(compute, 4) if compute else "",
        worker_up_bytes_per_step=int(sum(delta(w, 0) for w in workers) / n),
        worker_down_bytes_per_step=int(sum(delta(w, 1) for w in workers) / n),
        worker_cpu_seconds_per_step=round(statistics.mean(
            r["cpu_seconds_measured"] / m for r in results), 4),
        worker_max_rss_mb=round(rss), load_average=round(os.getloadavg()[0], 1),
        run_seconds=round(seconds, 1))
    up = down = 0
    if summaries:
        hosts = ["s%d" % k for k in range(shards)]
        row["server_up_bytes_per_step"] = int(max(delta(h, 0) for h in hosts))
        row["server_down_bytes_per_step"] = int(max(delta(h, 1) for h in hosts))
        row["server_cpu_seconds_per_step"] = round(
            max(b - a for a, b in zip(cpu0, cpu1)) / per, 4)
        rounds = summaries[0]["rounds"] if "rounds" in summaries[0] else None
        rounds = rounds or results[0]["steps"]
        up = sum(s["bytes_worker_to_server"] for s in summaries) / (rounds * n)
        down = sum(s["bytes_server_to_worker"] for s in summaries) / (rounds * n)
    name = split_build(name)[0]
    floor_net = network_floor(model, name.split(" S=")[0] if shards else name,
                              n, shards or 1, measured_mbit * 1e6, up, down)
    row["floor_network_seconds"] = round(floor_net, 4)
    if compute_cpu:
        # Not measured: the floor if every host had its own core (the CPU
        # seconds of the compute-alone run instead of its wall time).
        row["compute_cpu_seconds_per_step"] = round(compute_cpu, 4)
        row["projected_seconds_core_per_host"] = round(
            combine(name, floor_net, compute_cpu), 4)
    # The compute term: for effadam the forward and backward of this very
    # run (the machine's load changes from run to run); DDP's backward
    # waits for its all-reduce, so for DDP the compute-alone run.
    compute_term = (compute if name.startswith("ddp")
                    else row["forward_backward_seconds_median"])
    if compute_term:
        floor = combine(name, floor_net, compute_term)
        row["floor_seconds"] = round(floor, 4)
        row["measured_over_floor"] = round(
            row["seconds_per_step_median"] / row["floor_seconds"], 2)
    return row


# ------------------------------------------------------------ the plan

def split_build(name):
    """("sign/sign+EF S=1", "main") from "sign/sign+EF S=1 @main"; the
    label is "" without one."""
    base, _, label = name.partition(" @")
    return base, label


def package_of(bin_dir):
    """The effadam Python package a build's bin directory goes with."""
    return os.path.join(os.path.dirname(os.path.abspath(bin_dir)), "python")


def settings_for(n, wanted, builds=()):
    """(name, mode, shards) in alternating order: DDP, effadam, DDP, ...;
    with several builds, each effadam setting once per build, one after
    the other ("... @label")."""
    ddp = [s for s in DDP_SETTINGS if s in wanted]
    eff = []
    for codec in EFFADAM_CODECS:
        extra = {int(w.split("S=")[1]) for w in wanted
                 if w.startswith(codec + " S=")}
        for s in sorted({1, max(2, n // 4)} | extra):
            name = "%s S=%d" % (codec, s)
            if name in wanted or codec in wanted:
                for label in builds or [""]:
                    eff.append((name + (" @" + label if label else ""),
                                "effadam", s))
    # By shard count, the codecs of one S next to each other (a setting and
    # its bucketed twin share the machine's state).
    eff.sort(key=lambda e: e[2])
    out = []
    for i in range(max(len(ddp), len(eff))):
        if i < len(ddp):
            out.append((ddp[i], "ddp", 0))
        if i < len(eff):
            out.append(eff[i])
    return out


def steps_for(args, name, model, rate, n):
    """Measured steps: fewer where one step takes long (fp32 parameter
    server on a slow link), so that a run stays within minutes."""
    name = split_build(name)[0]
    codec = EFFADAM_CODECS.get(name.split(" S=")[0], ("fp32",))[0]
    update = PARAMS[model] * CODEC_BYTES[codec]
    per_step = network_floor(model, name.split(" S=")[0], n,
                             int(name.split("S=")[1]) if "S=" in name else 1,
                             netns.rate_bits(rate), update, update)
    measured = args.steps
    if per_step * (measured + args.warmup) > args.run_budget:
        measured = max(2, int(args.run_budget / per_step) - args.warmup)
    return args.warmup + measured


def run_timing(args, out, rates, link_rates, rows):
    for rate in rates:
        for model in args.models:
            for n in args.workers:
                plan = settings_for(n, args.settings, list(args.builds))
                max_shards = max([s for _, _, s in plan] + [0])
                try:
                    cluster = Cluster(rate, n, max_shards)
                except netns.NetworkError as e:
                    raise BenchError(str(e))
                try:
                    compute = compute_cpu = None
                    if "local" not in args.skip:
                        log("timing %s %s N=%d: local (no communication)"
                            % (model, rate, n))
                        res = run_setting(
                            args, cluster, model, rate, "local", "local", 0,
                            args.warmup + args.steps, args.warmup,
                            os.path.join(out, "logs", rate, model, str(n),
                                         "local"))
                        compute = statistics.median(
                            t for r in res[0] for t in r["step_seconds"])
                        compute_cpu = statistics.median(
                            r["cpu_seconds_measured"] / len(r["step_seconds"])
                            for r in res[0])
                        log("  compute %.3f s/step, %.3f CPU s/step" % (
                            compute, compute_cpu))
                    for name, mode, shards in plan:
                        need = memory_needed(model, mode, n, shards)
                        avail = mem_available_bytes()
                        base = dict(model=model, params=PARAMS[model],
                                    rate=rate, workers=n, setting=name,
                                    shards=shards or "",
                                    rate_measured_mbit=link_rates.get(rate))
                        if need > args.memory_share * avail:
                            base["status"] = (
                                "skipped: needs about %.1f GB, %.0f%% of the "
                                "%.1f GB available is the limit" % (
                                    need / 1e9, 100 * args.memory_share,
                                    avail / 1e9))
                            log("  %s: %s" % (name, base["status"]))
                            rows.append(base)
                            continue
                        steps = steps_for(args, name, model, rate, n)
                        log("timing %s %s N=%d: %s, %d steps" % (
                            model, rate, n, name, steps))
                        try:
                            res = run_setting(
                                args, cluster, model, rate, name, mode, shards,
                                steps, args.warmup,
                                os.path.join(out, "logs", rate, model, str(n),
                                             name.replace(" ", "_")
                                             .replace("/", "-")))
                        except BenchError as e:
                            base["status"] = "failed: %s" % str(e).splitlines()[0]
                            log("  " + base["status"])
                            rows.append(base)
                            continue
                        row = timing_row(model, rate,
                                         link_rates.get(rate) or
                                         netns.rate_bits(rate) / 1e6,
                                         n, name, shards, res, compute,
                                         compute_cpu)
                        log("  %.3f s/step (floor %s), worker up/down %d/%d "
                            "B/step" % (row["seconds_per_step_median"],
                                        row.get("floor_seconds", "-"),
                                        row["worker_up_bytes_per_step"],
                                        row["worker_down_bytes_per_step"]))
                        rows.append(row)
                        write_csv(os.path.join(out, "timing.csv"),
                                  TIMING_COLUMNS, rows)
                finally:
                    cluster.close()
    write_csv(os.path.join(out, "timing.csv"), TIMING_COLUMNS, rows)


def run_accuracy(args, out, rows):
    rate = args.accuracy_rate
    n = args.accuracy_workers
    for model in [m for m in args.models if m in args.accuracy_steps]:
        steps, every = args.accuracy_steps[model]
        plan = [p for p in settings_for(n, args.accuracy_settings)
                if p[2] in (0, 1)]
        cluster = Cluster(rate, n, 1)
        try:
            for name, mode, shards in plan:
                log("accuracy %s N=%d %s: %s, %d steps" % (model, n, rate, name,
                                                           steps))
                args.run_timeout = max(args.run_timeout, 4 * steps + 300)
                res = run_setting(args, cluster, model, rate, name, mode,
                                  shards, steps, 1,
                                  os.path.join(out, "logs", "accuracy", model,
                                               name.replace(" ", "_")
                                               .replace("/", "-")),
                                  eval_every=every)
                for point in res[0][0]["curve"]:
                    rows.append(dict(model=model, workers=n, setting=name,
                                     shards=shards or "", **point))
                log("  final test accuracy %.4f" % res[0][0]["final_accuracy"])
                write_csv(os.path.join(out, "accuracy.csv"), ACCURACY_COLUMNS,
                          rows)
        finally:
            cluster.close()


def check_quick(rows, link_rows):
    """What --quick (the ctest) checks: every run worked, the links carry
    their rate, the bytes on the links follow the cost model (DDP: the
    ring's 2(N-1)/N x 4 B x d per host; effadam: the server's link carries
    N x the codec's bytes per worker), and no step beats the link."""
    problems = [r for r in rows if r.get("status") != "ok"]
    for r in link_rows:
        # A link that two flows (or both directions) shared would give 50%;
        # a loaded machine and the reverse flow's ACKs cost up to 15%.
        if not 0.75 <= r["mbit_per_second"] / r["nominal_mbit"] <= 1.05:
            problems.append("link %s %s: %.1f Mbit/s" % (
                r["rate"], r["test"], r["mbit_per_second"]))
    for r in rows:
        if r.get("status") != "ok":
            continue
        n, d = r["workers"], PARAMS[r["model"]]
        if r["setting"] == "ddp fp32":
            want, got = 2.0 * (n - 1) / n * 4 * d, r["worker_up_bytes_per_step"]
        else:
            # The server's link: its summary's codec bytes, from every worker.
            want = r["floor_network_seconds"] * r["rate_measured_mbit"] * 1e6 / 8
            got = max(r["server_up_bytes_per_step"],
                      r["server_down_bytes_per_step"])
        if not 0.95 <= got / want <= 1.2:
            problems.append("%s: %d B/step on the link, the cost model says %d"
                            % (r["setting"], got, want))
        if r["seconds_per_step_median"] < 0.9 * r["floor_network_seconds"]:
            problems.append("%s: %.4f s/step, faster than the link allows "
                            "(%.4f s)" % (r["setting"],
                                          r["seconds_per_step_median"],
                                          r["floor_network_seconds"]))
    if problems:
        raise BenchError("quick check failed: %s" % problems)
    log("quick check passed: %d runs, bytes within the cost model" % len(rows))


def torch_missing():
    r = subprocess.run([PYTHON, "-c", "import torch, torch.distributed"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return r.stderr.decode().strip().splitlines()[-1] if r.returncode else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build",
                                                  "bench-cluster"))
    ap.add_argument("--parts", default="verify,timing,accuracy")
    ap.add_argument("--rates", default="100mbit,1gbit")
    ap.add_argument("--verify_rates", default="100mbit,1gbit,10gbit")
    ap.add_argument("--models", default="mlp,cnn,lm")
    ap.add_argument("--workers", default="4,8")
    ap.add_argument("--settings", default=",".join(
        list(DDP_SETTINGS) + list(EFFADAM_CODECS)),
        help="DDP settings and effadam codec settings (each with S = 1 and "
             "S = max(2, N/4)), or 'CODEC S=k'")
    ap.add_argument("--steps", type=int, default=5, help="measured steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--run_budget", type=float, default=90,
                    help="seconds of network floor a run may plan for; "
                         "slow settings measure fewer steps")
    ap.add_argument("--run_timeout", type=float, default=600)
    ap.add_argument("--memory_share", type=float, default=MEMORY_SHARE,
                    help="of MemAvailable a run may plan to use; a run "
                         "that needs more is skipped (say more on a "
                         "machine nobody else uses)")
    ap.add_argument("--link_seconds", type=float, default=3)
    ap.add_argument("--accuracy_rate", default="10gbit")
    ap.add_argument("--accuracy_workers", type=int, default=4)
    ap.add_argument("--accuracy_steps", default="cnn=400:50,mlp=60:10",
                    help="MODEL=STEPS:EVAL_EVERY")
    ap.add_argument("--accuracy_settings",
                    default="ddp fp32,ddp fp16,ddp powersgd r4,sign/sign+EF,"
                            "q4/q4+EF")
    ap.add_argument("--builds", default="",
                    help="label=bin_dir,...: run every effadam setting with "
                         "each build in turn (its server and Python "
                         "package), e.g. main=../main/build/bin,"
                         "new=build/bin; --bin stays the default. A "
                         "bin_dir may end in @--flag@--flag, flags for "
                         "its servers (k64=build/bin@--max_chunk_bytes="
                         "65536)")
    ap.add_argument("--max_chunk_bytes", type=int, default=0,
                    help="the servers' --max_chunk_bytes (0: their "
                         "default); a delta goes out segment by segment "
                         "only in chunks smaller than itself")
    ap.add_argument("--skip", default="", help="local: no compute runs")
    ap.add_argument("--quick", action="store_true",
                    help="the CNN, N=2, 100 Mbit/s, ddp fp32 and "
                         "sign/sign+EF, a few steps: checks the benchmark")
    args = ap.parse_args()
    if args.quick:
        args.parts, args.rates, args.verify_rates = "verify,timing", \
            "100mbit", "100mbit"
        args.models, args.workers = "cnn", "2"
        args.settings, args.steps, args.warmup = "ddp fp32,sign/sign+EF S=1", 3, 2
        args.link_seconds = 1.5
    args.builds = dict(item.split("=", 1)
                       for item in args.builds.split(",") if item)
    args.models = [m for m in args.models.split(",") if m]
    args.workers = [int(w) for w in args.workers.split(",") if w]
    args.settings = set(s.strip() for s in args.settings.split(",") if s)
    args.accuracy_settings = set(
        s.strip() for s in args.accuracy_settings.split(",") if s)
    args.accuracy_steps = {
        k: tuple(int(x) for x in v.split(":")) for k, v in
        (item.split("=") for item in args.accuracy_steps.split(",") if item)}
    args.skip = set(filter(None, args.skip.split(",")))
    parts = set(filter(None, args.parts.split(",")))
    unknown = [m for m in args.models if m not in PARAMS]
    if unknown:
        raise BenchError("--models: %s unknown (cnn, mlp, lm)" % unknown)
    if min(args.workers) < 2:
        raise BenchError("--workers: at least 2")
    if not 0 < args.memory_share <= 0.95:
        raise BenchError("--memory_share: in (0, 0.95]; the rest is for "
                         "the system and the links' queues")

    why = netns.namespaces_available() or torch_missing()
    if why:
        print("ddp_vs_effadam: skipped: " + why, flush=True)
        return 77
    if not os.access(os.path.join(args.bin, "effadam-server"), os.X_OK):
        raise BenchError("%s/effadam-server is missing; build first "
                         "(scripts/build.sh)" % args.bin)
    os.makedirs(args.out, exist_ok=True)
    # Every worker (and the models, which the cost model reads here): the
    # effadam package of this build; one thread.
    package = package_of(args.bin)
    os.environ["PYTHONPATH"] = package
    sys.path.insert(0, package)
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                      GLOO_SOCKET_IFNAME="eth0")

    info = machine_info()
    info.update(load_average_start=os.getloadavg(),
                netem=netns.netem_available(), argv=sys.argv[1:])
    log("netem (added delay) %s in this kernel" %
        ("is available" if info["netem"] else "is NOT available: no delay"))
    link_rows, link_rates = [], {}
    if "verify" in parts:
        for rate in args.verify_rates.split(","):
            link_rows += verify_links(args, rate, args.out)
            write_csv(os.path.join(args.out, "links.csv"), LINK_COLUMNS,
                      link_rows)
    for r in link_rows:
        if r["test"].startswith("a to c"):
            link_rates[r["rate"]] = r["mbit_per_second"]
    rows = []
    if "timing" in parts:
        run_timing(args, args.out, args.rates.split(","), link_rates, rows)
        if args.quick:
            check_quick(rows, link_rows)
    if "accuracy" in parts:
        run_accuracy(args, args.out, [])
    info["load_average_end"] = os.getloadavg()
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(info, f, indent=1)
    try:
        import cluster_report
        cluster_report.main(args.out)
    except ImportError as e:
        log("no plots: %s" % e)
    log("results in %s" % args.out)
    return 0


if __name__ == "__main__":
    run_main(main, log)
