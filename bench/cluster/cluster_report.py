#!/usr/bin/env python3
"""Tables and plots of bench/cluster/ddp_vs_effadam.py's results.

    cluster_report.py --out DIR [--results DIR ...] [--img_dir DIR]
        [--target cnn=0.82,mlp=0.75] [--time_rate 100mbit]

reads timing.csv, accuracy.csv and links.csv of every results directory
(--out and each --results) and writes DIR/tables.md and, when matplotlib
is there, the plots: step time against N per link rate and model (one line
per setting), and test accuracy against wall time at --time_rate (the
accuracy run's steps x that rate's measured seconds per step).
"""

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

DEFAULT_TARGETS = {"cnn": 0.82, "mlp": 0.75}


def read_rows(dirs, name):
    """The rows of every directory's file, each with its 'source' (the
    directory's name: one invocation, one compute-alone run)."""
    rows = []
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.exists(path):
            with open(path) as f:
                rows += [dict(r, source=os.path.basename(os.path.normpath(d)))
                         for r in csv.DictReader(f)]
    return rows


def superseded(row, rows):
    """A failed run that a later invocation ran again successfully."""
    return row["status"] != "ok" and any(
        r["status"] == "ok" and r["source"] != row["source"] and
        (r["model"], r["rate"], r["workers"], r["setting"]) ==
        (row["model"], row["rate"], row["workers"], row["setting"])
        for r in rows)


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt(v, digits=3):
    x = num(v)
    if x is None:
        return "-"
    if abs(x) >= 1e4:
        return "{:,}".format(int(round(x)))
    return ("%%.%df" % digits) % x


def floor_of(r):
    """The step floor: DDP overlaps its all-reduce with the backward pass
    (max of the network floor and the compute-alone run); a round of
    effadam receives, computes and sends one after the other (the network
    floor plus this run's forward and backward)."""
    net = num(r.get("floor_network_seconds"))
    if net is None:
        return None
    if r["setting"].startswith("ddp"):
        compute = num(r.get("compute_seconds_per_step"))
        return max(net, compute) if compute is not None else None
    compute = num(r.get("forward_backward_seconds_median"))
    return net + compute if compute is not None else None


def timing_tables(rows):
    out = []
    rows = [r for r in rows if not superseded(r, rows)]
    keys = sorted({(r["model"], r["rate"], int(r["workers"]), r["source"])
                   for r in rows},
                  key=lambda k: (k[0], netns.rate_bits(k[1]), k[2], k[3]))
    for model, rate, n, source in keys:
        group = [r for r in rows if (r["model"], r["rate"], int(r["workers"]),
                                     r["source"]) == (model, rate, n, source)]
        measured = group[0].get("rate_measured_mbit") or "-"
        compute = next((r["compute_seconds_per_step"] for r in group
                        if r.get("compute_seconds_per_step")), "-")
        out.append("**%s (%s parameters), %s per host (measured %s Mbit/s), "
                   "N = %d workers** (%s); compute alone (no communication, "
                   "the same N processes): %s s/step\n" % (
                       model, "{:,}".format(int(group[0]["params"])), rate,
                       measured, n, source, fmt(compute)))
        cpu = next((r["compute_cpu_seconds_per_step"] for r in group
                    if r.get("compute_cpu_seconds_per_step")), None)
        if cpu:
            out[-1] = out[-1].rstrip("\n") + (" (%s CPU s/step per process)\n"
                                             % fmt(cpu))
        out.append("| setting | S | s/step | vs ddp fp32 | forward + backward s "
                   "| network floor s | "
                   "floor s | measured / floor | worker sent / received B/step | "
                   "server sent / received B/step | worker CPU s/step | server "
                   "CPU s/step | projected s, a core per host (model) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        base = next((num(r["seconds_per_step_median"]) for r in group
                     if r["setting"] == "ddp fp32" and r["status"] == "ok"),
                    None)
        for r in group:
            if r["status"] != "ok":
                out.append("| %s | %s | %s | | | | | | | | | | |" % (
                    r["setting"], r["shards"] or "-", r["status"]))
                continue
            t = num(r["seconds_per_step_median"])
            floor = floor_of(r)
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | "
                       "%s | %s | %s | %s |" % (
                           r["setting"].split(" S=")[0], r["shards"] or "-",
                           fmt(t), "%.2fx" % (base / t) if base else "-",
                           fmt(r.get("forward_backward_seconds_median")),
                           fmt(r["floor_network_seconds"]), fmt(floor),
                           "%.2f" % (t / floor) if floor else "-",
                           fmt(r["worker_up_bytes_per_step"]),
                           fmt(r["worker_down_bytes_per_step"]),
                           "%s / %s" % (fmt(r["server_up_bytes_per_step"]),
                                        fmt(r["server_down_bytes_per_step"]))
                           if r.get("server_up_bytes_per_step") else "-",
                           fmt(r["worker_cpu_seconds_per_step"]),
                           fmt(r.get("server_cpu_seconds_per_step")),
                           fmt(r.get("projected_seconds_core_per_host"))))
        out.append("")
    return out


def step_time(timing, model, rate, n, setting, shards):
    for r in timing:
        if (r["model"], r["rate"], int(r["workers"]), r["status"]) == (
                model, rate, n, "ok") and r["setting"].split(" S=")[0] == \
                setting.split(" S=")[0] and (r["shards"] or "") == shards:
            return num(r["seconds_per_step_median"])
    return None


def accuracy_tables(acc, timing, targets, rate):
    out = []
    for model in sorted({r["model"] for r in acc}):
        rows = [r for r in acc if r["model"] == model]
        n = int(rows[0]["workers"])
        target = targets.get(model)
        out.append("**%s, N = %d, target test accuracy %s**; time = steps x "
                   "the measured s/step at %s\n" % (model, n, target, rate))
        out.append("| setting | steps | final accuracy | vs ddp fp32 | "
                   "steps to target | s/step at %s | time to target | "
                   "vs ddp fp32 |" % rate)
        out.append("|---|---|---|---|---|---|---|---|")
        settings = []
        for r in rows:
            if r["setting"] not in settings:
                settings.append(r["setting"])
        base_acc = base_time = None
        lines = []
        for s in settings:
            curve = [r for r in rows if r["setting"] == s]
            final = num(curve[-1]["test_accuracy"])
            reached = [int(r["step"]) for r in curve
                       if target is not None and num(r["test_accuracy"]) >= target]
            per = step_time(timing, model, rate, n, s, curve[0]["shards"])
            ttt = reached[0] * per if reached and per else None
            if s == "ddp fp32":
                base_acc, base_time = final, ttt
            lines.append((s, curve, final, reached, per, ttt))
        for s, curve, final, reached, per, ttt in lines:
            out.append("| %s | %s | %.4f | %s | %s | %s | %s | %s |" % (
                s, curve[-1]["step"], final,
                "%+.2f points" % (100 * (final - base_acc))
                if base_acc is not None else "-",
                reached[0] if reached else "not reached",
                fmt(per), "%.1f s" % ttt if ttt else "-",
                "%.2fx" % (base_time / ttt) if ttt and base_time else "-"))
        out.append("")
    return out


def link_table(links):
    out = ["| rate | test | measured Mbit/s |", "|---|---|---|"]
    for r in links:
        out.append("| %s | %s | %s |" % (r["rate"], r["test"],
                                         r["mbit_per_second"]))
    return out + [""]


def label(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def save(plt, fig, img_dir, name):
    fig.tight_layout()
    path = os.path.join(img_dir, name)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plots(timing, acc, targets, rate, img_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(img_dir, exist_ok=True)
    written = []
    ok = [r for r in timing if r["status"] == "ok"]
    for model in sorted({r["model"] for r in ok}):
        rates = sorted({r["rate"] for r in ok if r["model"] == model})
        fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.5),
                                 squeeze=False)
        for ax, rt in zip(axes[0], rates):
            rows = [r for r in ok if r["model"] == model and r["rate"] == rt]
            for setting in sorted({r["setting"] for r in rows}):
                pts = sorted((int(r["workers"]),
                              num(r["seconds_per_step_median"]))
                             for r in rows if r["setting"] == setting)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                        label=setting)
            comp = sorted({(int(r["workers"]), num(r["compute_seconds_per_step"]))
                           for r in rows if r.get("compute_seconds_per_step")})
            if comp:
                ax.plot([c[0] for c in comp], [c[1] for c in comp], "k--",
                        label="compute alone")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            label(ax, "worker hosts N", "seconds per step (median)",
                  "%s, %s per host" % (model, rt))
        written.append(save(plt, fig, img_dir,
                            "cluster_step_time_%s.png" % model))
    for model in sorted({r["model"] for r in acc}):
        rows = [r for r in acc if r["model"] == model]
        n = int(rows[0]["workers"])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for setting in dict.fromkeys(r["setting"] for r in rows):
            curve = [r for r in rows if r["setting"] == setting]
            per = step_time(timing, model, rate, n, setting, curve[0]["shards"])
            if not per:
                continue
            ax.plot([int(r["step"]) * per for r in curve],
                    [num(r["test_accuracy"]) for r in curve], "o-", ms=3,
                    label="%s (%.3f s/step)" % (setting, per))
        if model in targets:
            ax.axhline(targets[model], color="grey", ls=":", label="target")
        ax.set_xscale("log")
        label(ax, "wall time at %s, s (steps x measured s/step)" % rate,
              "test accuracy", "%s, N = %d" % (model, n))
        written.append(save(plt, fig, img_dir,
                            "cluster_accuracy_vs_time_%s.png" % model))
    return written


def main(out, results=(), img_dir=None, targets=None, rate="100mbit"):
    dirs = [out] + list(results)
    os.makedirs(out, exist_ok=True)
    targets = dict(DEFAULT_TARGETS, **(targets or {}))
    timing = read_rows(dirs, "timing.csv")
    acc = read_rows(dirs, "accuracy.csv")
    links = read_rows(dirs, "links.csv")
    text = ["# DDP against EfficientAdam on the emulated cluster", ""]
    if links:
        text += ["## Links", ""] + link_table(links)
    if timing:
        text += ["## Seconds per step", ""] + timing_tables(timing)
    if acc:
        text += ["## Accuracy", ""] + accuracy_tables(acc, timing, targets,
                                                      rate)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    try:
        written = plots(timing, acc, targets, rate,
                        img_dir or os.path.join(out, "img"))
    except ImportError as e:
        print("cluster_report: no plots (%s; python3-matplotlib)" % e,
              file=sys.stderr)
        written = []
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--results", action="append", default=[])
    ap.add_argument("--img_dir")
    ap.add_argument("--target", default="")
    ap.add_argument("--time_rate", default="100mbit")
    a = ap.parse_args()
    tg = {k: float(v) for k, v in (i.split("=") for i in a.target.split(",")
                                    if i)}
    for p in main(a.out, a.results, a.img_dir, tg, a.time_rate):
        print(p)
