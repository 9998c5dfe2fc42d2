#!/usr/bin/env python3
"""End-to-end benchmark: real effadam clusters (1 effadam-server, 4
effadam-worker processes from build/bin) inside network namespaces whose
loopback is shaped with tc, one namespace per rate; bench/e2e/run.sh makes
the namespaces and removes them, and is the entry point.

For every model and codec setting:
  * effadam-sim with the cluster's flags gives test accuracy every
    --eval_every rounds (untimed). The cluster ends with the sim's
    params_checksum and final test accuracy (checked here for every run), so
    the two follow the same trajectory bit for bit.
  * the cluster runs the same rounds without intermediate evaluation, so
    that no round waits for rank 0 to evaluate (0.2 s per evaluation on the
    MLP, about 6 s on the wide MLP); rank 0 evaluates once, after the last
    round. Wall time per round = (first "done" line of ranks 1..N-1 - last
    "starting" line of any rank) / rounds, from the arrival times of the
    workers' own output lines; CPU time of each process from wait4().
  * time to target = rounds to reach the target accuracy (first evaluation
    at or above it) x wall time per round.
Also: achieved rate of each namespace's loopback, the round cost against
workers and model size on unshaped loopback (effadam-synthetic-worker)
and codec throughput (effadam-bench-codec). Results are CSV files in --out;
bench/e2e/report.py turns them into tables and plots.

Only 127.0.0.1 inside the given namespaces is used. Every process started
here is killed on the way out.
"""

import argparse
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
WORKERS = 4
SEED = 1



def read_settings():
    """(name, worker codec, server codec, error feedback) from
    bench/codec_settings.tsv, which scripts/compare_codecs.sh reads too."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "codec_settings.tsv")
    with open(path) as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f
                if line.strip() and not line.startswith("#")]


SETTINGS = read_settings()
QUICK_SETTINGS = ["fp32/fp32", "sign/sign+EF"]

# flags, rounds, evaluation interval of the sim curve, target accuracy
MODELS = {
    "mlp": dict(flags=["--model=mlp", "--mlp_hidden=256,128"],
                rounds=1000, eval_every=20, target=0.85),
    "wide": dict(flags=["--model=mlp", "--mlp_hidden=2048,2048"],
                 rounds=30, eval_every=3, target=0.72),
}
QUICK_MODEL = dict(flags=["--model=mlp", "--mlp_hidden=256,128"],
                   rounds=20, eval_every=10, target=0.6)

SWEEP_WORKERS = [1, 2, 4, 8, 16]
# parameters, rounds (the first SWEEP_WARMUP are not measured)
SWEEP_SIZES = [(1_000_000, 20), (10_000_000, 10), (50_000_000, 6)]
SWEEP_WARMUP = 2
# Share of MemAvailable a sweep point may plan to use: the machine is
# shared, and a point that swaps measures the disk.
SWEEP_MEMORY_SHARE = 0.6

E2E_COLUMNS = [
    "model", "params", "setting", "worker_codec", "server_codec",
    "error_feedback", "rate", "rate_measured_mbit", "workers", "rounds",
    "seconds_per_round", "target_accuracy", "rounds_to_target",
    "seconds_to_target", "final_accuracy", "final_accuracy_last5_mean",
    "up_bytes_per_worker_round", "down_bytes_per_worker_round",
    "wire_bytes_per_round", "train_seconds", "run_seconds",
    "server_cpu_seconds", "worker_cpu_seconds", "server_cpu_per_round",
    "worker_cpu_per_round", "checksum_matches_sim",
]
CURVE_COLUMNS = ["model", "setting", "round", "test_accuracy", "train_loss",
                 "bytes_worker_to_server", "bytes_server_to_worker"]
SWEEP_COLUMNS = [
    "params", "workers", "rounds", "measured_rounds", "codecs",
    "round_seconds_median", "round_seconds_mean", "server_cpu_per_round",
    "server_max_rss_mb", "worker_max_rss_mb", "status",
]
CODEC_COLUMNS = ["operation", "codec", "elements", "elements_per_second",
                 "vs_memcpy"]


class BenchError(Exception):
    pass


def log(msg):
    print("e2e: " + msg, file=sys.stderr, flush=True)


class Process:
    """A child process whose stdout lines are kept with their arrival times
    (and copied to a log file), and whose CPU time comes from wait4()."""

    def __init__(self, argv, label, log_dir, netns=None):
        self.label = label
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.err_path = os.path.join(log_dir, label + ".err")
        self.out_path = os.path.join(log_dir, label + ".out")
        with open(self.err_path, "wb") as err:
            # `ip netns exec` execs the command: the pid is the daemon's own.
            self.popen = subprocess.Popen(prefix + argv, stdout=subprocess.PIPE,
                                          stderr=err, stdin=subprocess.DEVNULL)
        self.lines = []  # (monotonic seconds, line)
        self.cond = threading.Condition()
        self.rusage = None
        self.returncode = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.out_path, "w") as out:
            for raw in self.popen.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(line + "\n")
                with self.cond:
                    self.lines.append((time.monotonic(), line))
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern, deadline):
        """(time, match) of the first stdout line matching `pattern`."""
        rx = re.compile(pattern)
        with self.cond:
            while True:
                for t, line in self.lines:
                    m = rx.search(line)
                    if m:
                        return t, m
                # The reader ends at EOF, when the process has exited (poll()
                # would reap it here and lose its rusage to wait()).
                if not self.reader.is_alive():
                    raise BenchError("%s exited (%s) before printing /%s/:\n%s"
                                     % (self.label, self.popen.returncode,
                                        pattern, self.tail()))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError("%s: no /%s/ in time:\n%s"
                                     % (self.label, pattern, self.tail()))
                self.cond.wait(min(left, 0.5))

    def line_time(self, pattern):
        rx = re.compile(pattern)
        for t, line in self.lines:
            if rx.search(line):
                return t
        raise BenchError("%s printed no /%s/" % (self.label, pattern))

    def wait(self, deadline):
        """Waits for exit; returns the exit code and keeps the rusage."""
        while self.returncode is None:
            pid, status, ru = os.wait4(self.popen.pid, os.WNOHANG)
            if pid == self.popen.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.returncode
                self.rusage = ru
                break
            if time.monotonic() > deadline:
                raise BenchError("%s did not finish in time:\n%s"
                                 % (self.label, self.tail()))
            time.sleep(0.02)
        self.reader.join(timeout=5)
        return self.returncode

    def expect_ok(self, deadline):
        if self.wait(deadline) != 0:
            raise BenchError("%s exited with %d:\n%s"
                             % (self.label, self.returncode, self.tail()))

    def cpu_seconds(self):
        return self.rusage.ru_utime + self.rusage.ru_stime

    def max_rss_mb(self):
        return self.rusage.ru_maxrss / 1024.0

    def proc_cpu_seconds(self):
        """CPU time so far, from /proc, while the process runs."""
        with open("/proc/%d/stat" % self.popen.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, n=15):
        text = []
        for path in (self.out_path, self.err_path):
            try:
                with open(path, errors="replace") as f:
                    text += f.read().splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(text)

    def kill(self):
        if self.returncode is None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()


class Processes:
    """Everything one measurement starts; close() kills what is left."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.all = []

    def start(self, argv, label, netns=None):
        p = Process(argv, label, self.log_dir, netns)
        self.all.append(p)
        return p

    def close(self):
        for p in self.all:
            p.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def setting_flags(setting):
    _, wcodec, scodec, feedback = setting
    return ["--worker_codec=" + wcodec, "--server_codec=" + scodec,
            "--error_feedback=" + feedback, "--seed=%d" % SEED]


def start_server(procs, bin_dir, flags, workers, rounds, netns, deadline):
    server = procs.start(
        [os.path.join(bin_dir, "effadam-server"), "--listen=%s:0" % LOOPBACK,
         "--metrics_listen=", "--workers=%d" % workers, "--rounds=%d" % rounds,
         "--summary_json=" + os.path.join(procs.log_dir, "server.json")]
        + flags, "server", netns)
    _, m = server.wait_line(r"^effadam-server listening on 127\.0\.0\.1:(\d+)$",
                            deadline)
    return server, int(m.group(1))


def read_json(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------ link rate

def measure_link(netns, rate_mbit, bin_dir, log_dir):
    """Achieved TCP throughput on the namespace's loopback, Mbit/s."""
    seconds = 1.5
    nbytes = int(rate_mbit * 1e6 / 8 * seconds)
    with Processes(log_dir) as procs:
        p = procs.start([sys.executable,
                         os.path.join(os.path.dirname(__file__), "link_rate.py"),
                         "--bytes=%d" % nbytes], "link_rate", netns)
        p.expect_ok(time.monotonic() + 60)
        _, m = p.wait_line(r"^mbit_per_second ([0-9.]+)$", time.monotonic())
        return float(m.group(1))


# --------------------------------------------------------- sim and cluster

PROGRESS = re.compile(r"^round (\d+)/\d+\s+loss (\S+)\s+test_accuracy (\S+)")


def run_sim_curve(bin_dir, model, setting, log_dir):
    """Test accuracy every model['eval_every'] rounds and the sim summary."""
    with Processes(log_dir) as procs:
        summary_path = os.path.join(log_dir, "sim.json")
        p = procs.start(
            [os.path.join(bin_dir, "effadam-sim"), "--workers=%d" % WORKERS,
             "--rounds=%d" % model["rounds"],
             "--eval_every=%d" % model["eval_every"],
             "--summary_json=" + summary_path]
            + model["flags"] + setting_flags(setting), "sim")
        p.expect_ok(time.monotonic() + 7200)
        curve = []
        for _, line in p.lines:
            m = PROGRESS.match(line)
            if m:
                curve.append((int(m.group(1)), float(m.group(3)),
                              float(m.group(2))))
        if not curve or curve[-1][0] != model["rounds"]:
            raise BenchError("effadam-sim printed no progress up to round %d"
                             % model["rounds"])
        return curve, read_json(summary_path)


def cluster_timeout(model_params, rounds, rate_mbit):
    """Generous bound for one run: fp32 both ways at the shaped rate plus
    5 s of computation per round, twice over, plus start-up."""
    fp32_round = 8.0 * model_params * 4 * 2 * WORKERS / (rate_mbit * 1e6)
    return 2 * rounds * (fp32_round + 5.0) + 180


def run_cluster(bin_dir, model, setting, netns, rate_mbit, log_dir):
    rounds = model["rounds"]
    flags = setting_flags(setting)
    deadline = time.monotonic() + cluster_timeout(model["params"], rounds,
                                                  rate_mbit)
    with Processes(log_dir) as procs:
        t_begin = time.monotonic()
        server, port = start_server(procs, bin_dir, flags, WORKERS, rounds,
                                    netns, deadline)
        workers = [procs.start(
            [os.path.join(bin_dir, "effadam-worker"),
             "--server=%s:%d" % (LOOPBACK, port), "--rank=%d" % r,
             "--rounds=%d" % rounds, "--eval_every=0",
             "--summary_json=" + os.path.join(log_dir, "worker%d.json" % r)]
            + model["flags"] + flags, "worker%d" % r, netns)
            for r in range(WORKERS)]
        for p in workers + [server]:
            p.expect_ok(deadline)
        t_end = time.monotonic()
        t0 = max(w.line_time(r"starting at round 1 of") for w in workers)
        t1 = min(w.line_time(r"done after round %d\b" % rounds)
                 for w in workers[1:])
        s = read_json(os.path.join(log_dir, "server.json"))
        w = [read_json(os.path.join(log_dir, "worker%d.json" % r))
             for r in range(WORKERS)]
        return dict(
            train_seconds=t1 - t0, run_seconds=t_end - t_begin,
            server_summary=s, worker_summaries=w,
            server_cpu=server.cpu_seconds(),
            # Rank 0 also loads the test set and evaluates after the last
            # round; ranks 1..N-1 only train.
            worker_cpu=sum(p.cpu_seconds() for p in workers[1:])
            / (WORKERS - 1))


def run_e2e(args, models, settings, rates, out):
    curves_rows, rows = [], []
    sims = {}
    for mname, model in models.items():
        for setting in settings:
            log("sim curve: %s %s, %d rounds" % (mname, setting[0],
                                                  model["rounds"]))
            curve, summary = run_sim_curve(
                args.bin, model, setting,
                os.path.join(out, "logs", "sim", mname, safe(setting[0])))
            sims[(mname, setting[0])] = (curve, summary)
            per_round_up = summary["bytes_worker_to_server"] / model["rounds"]
            per_round_down = summary["bytes_server_to_worker"] / model["rounds"]
            for r, acc, loss in curve:
                curves_rows.append(dict(
                    model=mname, setting=setting[0], round=r,
                    test_accuracy=acc, train_loss=loss,
                    bytes_worker_to_server=int(per_round_up * r),
                    bytes_server_to_worker=int(per_round_down * r)))
    write_csv(os.path.join(out, "curves.csv"), CURVE_COLUMNS, curves_rows)

    for rate, netns, measured in rates:
        for mname, model in models.items():
            for setting in settings:
                name = setting[0]
                log("cluster: %s %s at %s" % (mname, name, rate))
                res = run_cluster(
                    args.bin, model, setting, netns, rate_to_mbit(rate),
                    os.path.join(out, "logs", rate, mname, safe(name)))
                curve, sim = sims[(mname, name)]
                rows.append(e2e_row(mname, model, setting, rate, measured,
                                    res, curve, sim))
                r = rows[-1]
                log("  %.3f s/round, %s to target, final accuracy %.4f, "
                    "server CPU %.1f s, worker CPU %.1f s"
                    % (r["seconds_per_round"],
                       "%.1f s" % r["seconds_to_target"]
                       if r["seconds_to_target"] != "" else "never",
                       r["final_accuracy"], r["server_cpu_seconds"],
                       r["worker_cpu_seconds"]))
                write_csv(os.path.join(out, "e2e.csv"), E2E_COLUMNS, rows)


def e2e_row(mname, model, setting, rate, measured, res, curve, sim):
    rounds = model["rounds"]
    s = res["server_summary"]
    w0 = res["worker_summaries"][0]
    checksums = {w["params_checksum"] for w in res["worker_summaries"]}
    matches = (checksums == {s["params_checksum"]} ==
               {sim["params_checksum"]} and
               w0["test_accuracy"] == sim["test_accuracy"] and
               s["bytes_worker_to_server"] == sim["bytes_worker_to_server"])
    if not matches:
        raise BenchError(
            "%s %s at %s: the cluster does not match effadam-sim (checksums "
            "%s, server %s, sim %s; accuracy %s vs %s): its accuracy curve "
            "would not be the sim's" % (
                mname, setting[0], rate, sorted(checksums),
                s["params_checksum"], sim["params_checksum"],
                w0["test_accuracy"], sim["test_accuracy"]))
    per_round = res["train_seconds"] / rounds
    reached = [r for r, acc, _ in curve if acc >= model["target"]]
    last5 = [acc for _, acc, _ in curve[-5:]]
    wire = (s["wire_bytes_worker_to_server"] + s["wire_bytes_server_to_worker"])
    return dict(
        model=mname, params=model["params"], setting=setting[0],
        worker_codec=setting[1], server_codec=setting[2],
        error_feedback=setting[3], rate=rate,
        rate_measured_mbit=round(measured, 1), workers=WORKERS, rounds=rounds,
        seconds_per_round=round(per_round, 5),
        target_accuracy=model["target"],
        rounds_to_target=reached[0] if reached else "",
        seconds_to_target=round(reached[0] * per_round, 2) if reached else "",
        final_accuracy=w0["test_accuracy"],
        final_accuracy_last5_mean=round(sum(last5) / len(last5), 4),
        up_bytes_per_worker_round=s["bytes_worker_to_server"] // (rounds * WORKERS),
        down_bytes_per_worker_round=s["bytes_server_to_worker"] // (rounds * WORKERS),
        wire_bytes_per_round=wire // rounds,
        train_seconds=round(res["train_seconds"], 2),
        run_seconds=round(res["run_seconds"], 2),
        server_cpu_seconds=round(res["server_cpu"], 2),
        worker_cpu_seconds=round(res["worker_cpu"], 2),
        server_cpu_per_round=round(res["server_cpu"] / rounds, 5),
        worker_cpu_per_round=round(res["worker_cpu"] / rounds, 5),
        checksum_matches_sim=matches)


# ------------------------------------------------------------ latency sweep

def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


def run_sweep_point(bin_dir, params, workers, rounds, netns, log_dir):
    flags = ["--worker_codec=sign", "--server_codec=sign",
             "--error_feedback=both"]
    # Generous: start-up moves x to every worker, and a round makes a few
    # passes over x per worker, on two shared cores.
    deadline = time.monotonic() + 300 + workers * params * (rounds + 4) * 5e-8
    with Processes(log_dir) as procs:
        server, port = start_server(procs, bin_dir, flags, workers, rounds,
                                    netns, deadline)
        ws = [procs.start(
            [os.path.join(bin_dir, "effadam-synthetic-worker"),
             "--server=%s:%d" % (LOOPBACK, port), "--elements=%d" % params,
             "--tensor_elements=%d" % (1 << 22),
             "--rounds=%d" % rounds, "--untimed_rounds=%d" % SWEEP_WARMUP]
            + flags, "worker%d" % i, netns) for i in range(workers)]
        # Server CPU over the measured rounds: sampled when every worker has
        # started its first measured round and when every worker has written
        # its summary (after the last round).
        for w in ws:
            w.wait_line(r"^measuring from round", deadline)
        cpu_start = server.proc_cpu_seconds()
        for w in ws:
            w.wait_line(r'"round_seconds_median"', deadline)
        cpu_end = server.proc_cpu_seconds()
        for p in ws + [server]:
            p.expect_ok(deadline)
        summaries = []
        for w in ws:
            # The summary ends stdout, after the worker's progress lines.
            lines = [line for _, line in w.lines]
            first = max(i for i, l in enumerate(lines) if l.startswith("{"))
            text = "\n".join(lines[first:])
            summaries.append(json.loads(text))
        rank0 = next(s for s in summaries if s["rank"] == 0)
        return dict(
            measured_rounds=rank0["measured_rounds"],
            round_seconds_median=round(rank0["round_seconds_median"], 5),
            round_seconds_mean=round(rank0["round_seconds_mean"], 5),
            server_cpu_per_round=round(
                (cpu_end - cpu_start) / rank0["measured_rounds"], 5),
            server_max_rss_mb=round(server.max_rss_mb(), 1),
            worker_max_rss_mb=round(max(w.max_rss_mb() for w in ws), 1))


def run_sweep(args, netns, out, sizes, worker_counts):
    rows = []
    # Memory per parameter of a worker and of the server, from the peak RSS
    # of the latest point of at least 10M parameters (below that, fixed
    # overheads dominate); a start value until then.
    worker_bytes_per_param = server_bytes_per_param = 30.0
    for params, rounds in sizes:
        for n in worker_counts:
            row = dict(params=params, workers=n, rounds=rounds,
                       codecs="sign/sign+EF")
            need = params * (n * worker_bytes_per_param + server_bytes_per_param)
            avail = mem_available_bytes()
            if need > SWEEP_MEMORY_SHARE * avail:
                row["status"] = ("skipped: needs about %.1f GB, %.0f%% of the "
                                 "%.1f GB available is the limit"
                                 % (need / 1e9, 100 * SWEEP_MEMORY_SHARE,
                                    avail / 1e9))
                log("sweep: %d params x %d workers %s" % (params, n,
                                                          row["status"]))
                rows.append(row)
                continue
            log("sweep: %d params x %d workers, %d rounds" % (params, n, rounds))
            res = run_sweep_point(args.bin, params, n, rounds, netns,
                                  os.path.join(out, "logs", "sweep",
                                               "%d_%d" % (params, n)))
            row.update(res, status="ok")
            if params >= 10_000_000:
                worker_bytes_per_param = res["worker_max_rss_mb"] * 2**20 / params
                server_bytes_per_param = res["server_max_rss_mb"] * 2**20 / params
            log("  %.4f s/round (rank 0 median), server CPU %.4f s/round"
                % (res["round_seconds_median"], res["server_cpu_per_round"]))
            rows.append(row)
            write_csv(os.path.join(out, "sweep.csv"), SWEEP_COLUMNS, rows)
    write_csv(os.path.join(out, "sweep.csv"), SWEEP_COLUMNS, rows)


# ------------------------------------------------------------ codec bench

def run_codec_bench(args, out):
    """The codecs of SETTINGS against memcpy; the median of 3 repetitions
    of each benchmark, as the machine may be shared."""
    path = os.path.join(out, "codec_bench.json")
    codecs = sorted({s[i] for s in SETTINGS for i in (1, 2)})
    log("effadam-bench-codec: %s" % ", ".join(codecs))
    with open(os.path.join(out, "codec_bench.log"), "wb") as err:
        subprocess.run(
            [os.path.join(args.bin, "effadam-bench-codec"),
             "--benchmark_filter=^(memcpy|(encode_ef|decode_accumulate)/(%s))/"
             % "|".join(re.escape(c) for c in codecs),
             "--benchmark_repetitions=3", "--benchmark_min_time=0.2",
             "--benchmark_report_aggregates_only=true",
             "--benchmark_out=" + path, "--benchmark_out_format=json"],
            check=True, stdout=subprocess.DEVNULL, stderr=err)
    speed = {}
    for b in read_json(path)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        # OPERATION[/CODEC]/ELEMENTS/real_time
        parts = [p for p in b["run_name"].split("/") if p != "real_time"]
        speed[(parts[0], "/".join(parts[1:-1]), int(parts[-1]))] = \
            b["items_per_second"]
    rows = []
    for (op, codec, n), v in sorted(speed.items(),
                                    key=lambda kv: (kv[0][0] != "memcpy", kv[0])):
        base = speed[("memcpy", "", n)]
        rows.append(dict(operation=op, codec=codec, elements=n,
                         elements_per_second=round(v),
                         vs_memcpy=round(v / base, 4)))
    write_csv(os.path.join(out, "codec.csv"), CODEC_COLUMNS, rows)


# ------------------------------------------------------------ helpers

def safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def rate_to_mbit(rate):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(kbit|mbit|gbit)", rate)
    if not m:
        raise BenchError("rate %r: expected NUMBER followed by kbit, mbit or "
                         "gbit (tc's units), e.g. 100mbit" % rate)
    return float(m.group(1)) * {"kbit": 1e-3, "mbit": 1, "gbit": 1e3}[m.group(2)]


def write_csv(path, columns, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="raise")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    os.replace(tmp, path)


def machine_info():
    info = dict(kernel=platform.release(), cpus=os.cpu_count())
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    try:
        with open("/etc/debian_version") as f:
            info["debian"] = f.read().strip()
    except OSError:
        pass
    return info


def parse_map(text, convert):
    """'mlp=1000,wide=30' -> {'mlp': 1000, 'wide': 30}"""
    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in MODELS or not value:
            raise BenchError("%r: expected MODEL=VALUE with MODEL one of %s"
                             % (item, ", ".join(MODELS)))
        out[key] = convert(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/bin", help="the effadam binaries")
    ap.add_argument("--out", required=True, help="results directory")
    ap.add_argument("--netns", action="append", default=[],
                    help="RATE=NAMESPACE, a namespace whose lo tc shapes to "
                         "RATE (made by run.sh); once per rate")
    ap.add_argument("--unshaped_netns",
                    help="namespace with an unshaped lo for the sweep")
    ap.add_argument("--models", default="mlp,wide",
                    help="mlp (784-256-128-10) and/or wide (784-2048-2048-10)")
    ap.add_argument("--rounds", default="", help="e.g. mlp=1000,wide=30")
    ap.add_argument("--eval_every", default="", help="e.g. mlp=20,wide=3")
    ap.add_argument("--targets", default="", help="e.g. mlp=0.85,wide=0.72")
    ap.add_argument("--quick", action="store_true",
                    help="MLP, %s, %d rounds: checks the benchmark itself"
                         % (" and ".join(QUICK_SETTINGS), QUICK_MODEL["rounds"]))
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to leave out: e2e, sweep, codec")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        models = {"mlp": dict(QUICK_MODEL)}
        settings = [s for s in SETTINGS if s[0] in QUICK_SETTINGS]
        skip |= {"sweep", "codec"}
    else:
        names = [m for m in args.models.split(",") if m]
        unknown = [m for m in names if m not in MODELS]
        if unknown or not names:
            raise BenchError("--models=%s: expected some of %s"
                             % (args.models, ", ".join(MODELS)))
        models = {m: dict(MODELS[m]) for m in names}
        settings = SETTINGS
    for key, conv in (("rounds", int), ("eval_every", int), ("targets", float)):
        for m, v in parse_map(getattr(args, key), conv).items():
            if m in models:
                models[m]["target" if key == "targets" else key] = v
    for m in models.values():
        m["params"] = params_of(m["flags"])

    info = machine_info()
    info["load_average_start"] = os.getloadavg()
    rates = []
    if "e2e" not in skip:
        for item in args.netns:
            rate, _, ns = item.partition("=")
            log("measuring the loopback of %s (%s)" % (ns, rate))
            measured = measure_link(ns, rate_to_mbit(rate), args.bin,
                                    os.path.join(args.out, "logs", "link_" + rate))
            log("  %.1f Mbit/s" % measured)
            rates.append((rate, ns, measured))
        if not rates:
            raise BenchError("no --netns RATE=NAMESPACE given")
        run_e2e(args, models, settings, rates, args.out)
    if "sweep" not in skip:
        if not args.unshaped_netns:
            raise BenchError("the sweep needs --unshaped_netns")
        run_sweep(args, args.unshaped_netns, args.out, SWEEP_SIZES,
                  SWEEP_WORKERS)
    if "codec" not in skip:
        run_codec_bench(args, args.out)
    info["load_average_end"] = os.getloadavg()
    info["models"] = models
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump(info, f, indent=1)
    log("results in %s" % args.out)


def parse_results_args(doc):
    """--out RESULTS_DIR and --img_dir (default RESULTS_DIR/img) of the
    scripts that read the results."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="e2e_bench.py's --out")
    ap.add_argument("--img_dir", help="where the PNG plots are")
    args = ap.parse_args()
    return args.out, args.img_dir or os.path.join(args.out, "img")


def params_of(model_flags):
    """Parameters of the 784-...-10 MLP the flags describe."""
    hidden = next(f for f in model_flags if f.startswith("--mlp_hidden="))
    widths = [784] + [int(w) for w in hidden.split("=", 1)[1].split(",")] + [10]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


class Stopped(Exception):
    pass


def stop(signum, _frame):
    raise Stopped(signal.Signals(signum).name)


def run_main(main_function, log=log):
    """Runs a benchmark's main(): SIGTERM and SIGINT unwind through every
    Processes block, which kills its daemons; exits with main's status (0
    for None), 1 on BenchError, 130 when stopped (saying so with `log`)."""
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        sys.exit(main_function() or 0)
    except BenchError as e:
        log("FAILED: %s" % e)
        sys.exit(1)
    except Stopped as e:
        log("stopped by %s" % e)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
