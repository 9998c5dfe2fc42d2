#!/usr/bin/env python3
"""Tables (Markdown, on stdout) and PNG plots from the CSV files of
bench/e2e/e2e_bench.py: per model and rate the settings side by side;
accuracy against bytes moved and against wall time, one line per setting;
round cost against workers and model size; codec throughput against memcpy.

Usage: report.py --out RESULTS_DIR [--img_dir DIR]
"""

import csv
import json
import os
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from e2e_bench import parse_results_args  # noqa: E402

BASELINE = "fp32/fp32"
DPI = 80


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def group(rows, *keys):
    out = OrderedDict()
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def header(*cells):
    """A Markdown table's first two lines."""
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def seconds(text):
    if text == "":
        return "not reached"
    v = float(text)
    return "%.1f s" % v if v < 120 else "%.1f min" % (v / 60)


def e2e_tables(rows):
    lines = []
    for (model, rate), group_rows in group(rows, "model", "rate").items():
        first = group_rows[0]
        base = next((r for r in group_rows if r["setting"] == BASELINE), None)
        lines += [
            "",
            "**%s (%s parameters) at %s** (measured %s Mbit/s), %s workers, "
            "%s rounds, target test accuracy %s:" % (
                model, format(int(first["params"]), ","), rate,
                first["rate_measured_mbit"], first["workers"],
                first["rounds"], first["target_accuracy"]),
            "",
        ] + header("setting", "s/round", "rounds to target", "time to target",
                   "vs fp32", "final accuracy (mean of last 5 evals)",
                   "up B/worker/round", "down B/worker/round",
                   "server CPU s/round", "worker CPU s/round")
        for r in group_rows:
            speedup = ""
            if (base is not None and r["seconds_to_target"] != "" and
                    base["seconds_to_target"] != ""):
                speedup = "%.1fx" % (float(base["seconds_to_target"]) /
                                     float(r["seconds_to_target"]))
            lines.append(
                "| %s | %.3f | %s | %s | %s | %.4f (%.4f) | %s | %s | %.3f | %.3f |"
                % (r["setting"], float(r["seconds_per_round"]),
                   r["rounds_to_target"] or "-",
                   seconds(r["seconds_to_target"]), speedup or "-",
                   float(r["final_accuracy"]),
                   float(r["final_accuracy_last5_mean"]),
                   format(int(r["up_bytes_per_worker_round"]), ","),
                   format(int(r["down_bytes_per_worker_round"]), ","),
                   float(r["server_cpu_per_round"]),
                   float(r["worker_cpu_per_round"])))
    return lines


def sweep_table(rows):
    if not rows:
        return []
    workers = sorted({int(r["workers"]) for r in rows})
    lines = ["", "Seconds per round (median seen by rank 0) and, in brackets, "
             "server CPU seconds per round; sign/sign+EF, unshaped loopback:",
             ""] + header("parameters", *("%d workers" % w for w in workers))
    notes = []
    for (params,), prow in group(rows, "params").items():
        cells = []
        by_w = {int(r["workers"]): r for r in prow}
        for w in workers:
            r = by_w.get(w)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append("skipped")
                notes.append("%s parameters x %d workers: %s"
                             % (format(int(params), ","), w, r["status"]))
            else:
                cells.append("%.3f (%.3f)" % (float(r["round_seconds_median"]),
                                              float(r["server_cpu_per_round"])))
        lines.append("| %s | %s |" % (format(int(params), ","), " | ".join(cells)))
    lines += [""] + ["- " + n for n in notes]
    return lines


def codec_table(rows):
    if not rows:
        return []
    sizes = sorted({int(r["elements"]) for r in rows})
    lines = ["", "Elements per second, one core, and the ratio to memcpy of the "
             "same fp32 buffer in the same run:", ""] + header(
                 "operation", *("%dM elements" % (n >> 20) for n in sizes),
                 "vs memcpy (%s)" % " / ".join("%dM" % (n >> 20) for n in sizes))
    for (op, codec), crow in group(rows, "operation", "codec").items():
        by_n = {int(r["elements"]): r for r in crow}
        name = op if not codec else "%s %s" % (codec, op.replace("_", "-"))
        speeds = " | ".join(human_rate(float(by_n[n]["elements_per_second"]))
                            for n in sizes)
        ratios = " / ".join("%.0f%%" % (100 * float(by_n[n]["vs_memcpy"]))
                            for n in sizes)
        lines.append("| %s | %s | %s |" % (name, speeds, ratios))
    return lines


def human_rate(v):
    return "%.2f G/s" % (v / 1e9) if v >= 1e9 else "%.0f M/s" % (v / 1e6)


def plot_accuracy(curves, rows, img_dir):
    """accuracy_vs_bytes_MODEL.png, accuracy_vs_time_MODEL.png"""
    written = []
    per_round = {(r["model"], r["setting"], r["rate"]): float(r["seconds_per_round"])
                 for r in rows}
    targets = {r["model"]: float(r["target_accuracy"]) for r in rows}
    rates = list(OrderedDict.fromkeys(r["rate"] for r in rows))
    for (model,), mcurves in group(curves, "model").items():
        by_setting = group(mcurves, "setting")
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for (setting,), pts in by_setting.items():
            mb = [(int(p["bytes_worker_to_server"]) +
                   int(p["bytes_server_to_worker"])) / 1e6 for p in pts]
            ax.plot(mb, [float(p["test_accuracy"]) for p in pts],
                    label=setting, linewidth=1.3)
        finish(ax, targets.get(model), "MB moved (both directions, all workers)",
               "%s: test accuracy against bytes moved" % model, log_x=True)
        written.append(save(fig, img_dir, "accuracy_vs_bytes_%s.png" % model))

        fig, axes = plt.subplots(1, len(rates), figsize=(5.2 * len(rates), 4.2),
                                 squeeze=False)
        for ax, rate in zip(axes[0], rates):
            for (setting,), pts in by_setting.items():
                spr = per_round.get((model, setting, rate))
                if spr is None:
                    continue
                ax.plot([int(p["round"]) * spr for p in pts],
                        [float(p["test_accuracy"]) for p in pts],
                        label=setting, linewidth=1.3)
            finish(ax, targets.get(model), "wall seconds",
                   "%s at %s" % (model, rate), log_x=True)
        written.append(save(fig, img_dir, "accuracy_vs_time_%s.png" % model))
    return written


def finish(ax, target, xlabel, title, log_x=False):
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1,
                   label="target %.2f" % target)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def plot_sweep(rows, img_dir):
    """round_time_sweep.png: round time and server CPU per round against
    workers, one line per model size."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
            (axes[0], "round_seconds_median", "seconds per round (rank 0)"),
            (axes[1], "server_cpu_per_round", "server CPU seconds per round")):
        for (params,), prow in group(ok, "params").items():
            ax.plot([int(r["workers"]) for r in prow],
                    [float(r[key]) for r in prow], marker="o",
                    label="%gM parameters" % (int(params) / 1e6))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({int(r["workers"]) for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("workers")
        ax.set_ylabel(title)
        ax.set_title("%s; sign/sign+EF, unshaped loopback" % title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return [save(fig, img_dir, "round_time_sweep.png")]


def save(fig, img_dir, name):
    os.makedirs(img_dir, exist_ok=True)
    path = os.path.join(img_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def main():
    out, img_dir = parse_results_args(__doc__)
    rows = read_csv(os.path.join(out, "e2e.csv"))
    curves = read_csv(os.path.join(out, "curves.csv"))
    sweep = read_csv(os.path.join(out, "sweep.csv"))
    codec = read_csv(os.path.join(out, "codec.csv"))
    lines = []
    run_path = os.path.join(out, "run.json")
    if os.path.exists(run_path):
        with open(run_path) as f:
            info = json.load(f)
        lines.append("Machine: %s, %s CPUs, %s GiB, kernel %s, Debian %s; "
                     "load average %s at the start, %s at the end." % (
                         info.get("cpu"), info.get("cpus"),
                         info.get("mem_total_gb"), info.get("kernel"),
                         info.get("debian"),
                         "/".join("%.1f" % x for x in info["load_average_start"]),
                         "/".join("%.1f" % x for x in info["load_average_end"])))
    lines += e2e_tables(rows) + sweep_table(sweep) + codec_table(codec)
    print("\n".join(lines))
    for path in plot_accuracy(curves, rows, img_dir) + plot_sweep(sweep, img_dir):
        print("<!-- plot: %s -->" % path)


if __name__ == "__main__":
    main()
