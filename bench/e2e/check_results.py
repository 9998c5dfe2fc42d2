#!/usr/bin/env python3
"""Checks the results of bench/e2e/e2e_bench.py: the CSV files have the
expected columns and their values are plausible (the cluster matched
effadam-sim, byte counts follow the codecs, no round beat the shaped link's
speed limit, compression made rounds faster on a slow link, the plots
exist and are small). Exit status 1 with every problem listed otherwise.

Usage: check_results.py --out RESULTS_DIR [--img_dir DIR]
"""

import csv
import os
import sys

from e2e_bench import (CODEC_COLUMNS, CURVE_COLUMNS, E2E_COLUMNS,
                       SWEEP_COLUMNS, parse_results_args, rate_to_mbit)

MAX_PNG_BYTES = 200 * 1024


class Checker:
    def __init__(self):
        self.problems = []

    def check(self, cond, what):
        if not cond:
            self.problems.append(what)
        return cond

    def read(self, path, columns, required=True):
        if not os.path.exists(path):
            self.check(not required, "%s is missing" % path)
            return []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            self.check(reader.fieldnames == columns,
                       "%s: columns %s, expected %s"
                       % (path, reader.fieldnames, columns))
        self.check(rows, "%s has no rows" % path)
        return rows


def check_e2e(c, rows, curves):
    fp32_round = {}
    for r in rows:
        where = "%s %s at %s" % (r["model"], r["setting"], r["rate"])
        rounds, params = int(r["rounds"]), int(r["params"])
        spr = float(r["seconds_per_round"])
        c.check(r["checksum_matches_sim"] == "True",
                where + ": the cluster did not match effadam-sim")
        c.check(0.1 < float(r["final_accuracy"]) <= 1.0,
                where + ": final accuracy %s" % r["final_accuracy"])
        nominal = rate_to_mbit(r["rate"])
        measured = float(r["rate_measured_mbit"])
        c.check(0.8 * nominal < measured < 1.2 * nominal,
                where + ": the link measured %s Mbit/s" % measured)
        # Both directions cross the one shaped loopback device.
        bound = 8.0 * int(r["wire_bytes_per_round"]) / (measured * 1e6)
        c.check(spr >= 0.9 * bound,
                where + ": %.4f s/round, faster than the link allows (%.4f s)"
                % (spr, bound))
        for direction, codec in (("up", r["worker_codec"]),
                                 ("down", r["server_codec"])):
            b = int(r["%s_bytes_per_worker_round" % direction])
            if codec == "fp32":
                c.check(b == 4 * params,
                        where + ": fp32 %s moves %d B, expected %d"
                        % (direction, b, 4 * params))
            elif codec == "sign":
                c.check(0 < b < 4 * params / 25,
                        where + ": sign %s moves %d B of %d" %
                        (direction, b, 4 * params))
            else:
                c.check(0 < b < 4 * params,
                        where + ": %s %s moves %d B" % (codec, direction, b))
        for key in ("server_cpu_seconds", "worker_cpu_seconds", "train_seconds"):
            c.check(float(r[key]) > 0, where + ": %s %s" % (key, r[key]))
        c.check(float(r["run_seconds"]) >= float(r["train_seconds"]),
                where + ": run shorter than its training")
        if r["rounds_to_target"] != "":
            c.check(abs(float(r["seconds_to_target"]) -
                        int(r["rounds_to_target"]) * spr) < 0.01 + 1e-3 * spr,
                    where + ": time to target is not rounds x s/round")
            c.check(0 < int(r["rounds_to_target"]) <= rounds,
                    where + ": rounds to target %s" % r["rounds_to_target"])
        points = [p for p in curves if p["model"] == r["model"]
                  and p["setting"] == r["setting"]]
        if c.check(points, where + ": no accuracy curve"):
            c.check(int(points[-1]["round"]) == rounds,
                    where + ": the curve ends at round %s"
                    % points[-1]["round"])
            c.check(float(points[-1]["test_accuracy"]) ==
                    float(r["final_accuracy"]),
                    where + ": the curve's last accuracy is not the cluster's")
        if r["setting"] == "fp32/fp32":
            fp32_round[(r["model"], r["rate"])] = spr
    # On a slow link 1-bit compression must pay off per round.
    for r in rows:
        base = fp32_round.get((r["model"], r["rate"]))
        if (r["setting"] == "sign/sign+EF" and base is not None and
                rate_to_mbit(r["rate"]) <= 200):
            c.check(float(r["seconds_per_round"]) < base / 2,
                    "%s at %s: sign/sign+EF takes %s s/round, fp32/fp32 %.4f"
                    % (r["model"], r["rate"], r["seconds_per_round"], base))


def check_curves(c, curves):
    last = {}
    for p in curves:
        key = (p["model"], p["setting"])
        rnd = int(p["round"])
        c.check(rnd > last.get(key, 0), "%s: rounds not increasing" % (key,))
        last[key] = rnd
        c.check(0.0 <= float(p["test_accuracy"]) <= 1.0,
                "%s round %d: accuracy %s" % (key, rnd, p["test_accuracy"]))


def check_sweep(c, rows):
    for r in rows:
        where = "sweep %s params x %s workers" % (r["params"], r["workers"])
        if r["status"] == "ok":
            for key in ("round_seconds_median", "server_cpu_per_round",
                        "server_max_rss_mb", "worker_max_rss_mb"):
                c.check(float(r[key]) > 0, where + ": %s %s" % (key, r[key]))
            c.check(int(r["measured_rounds"]) > 0, where + ": no rounds")
        else:
            c.check(r["status"].startswith("skipped: "),
                    where + ": status %r" % r["status"])


def check_codec(c, rows):
    for r in rows:
        c.check(float(r["elements_per_second"]) > 0, "codec %s" % r)
        if r["operation"] == "memcpy":
            c.check(float(r["vs_memcpy"]) == 1.0, "memcpy is not 1x memcpy")


def main():
    out, img_dir = parse_results_args(__doc__)
    c = Checker()
    rows = c.read(os.path.join(out, "e2e.csv"), E2E_COLUMNS)
    curves = c.read(os.path.join(out, "curves.csv"), CURVE_COLUMNS)
    check_curves(c, curves)
    check_e2e(c, rows, curves)
    check_sweep(c, c.read(os.path.join(out, "sweep.csv"), SWEEP_COLUMNS,
                          required=False))
    check_codec(c, c.read(os.path.join(out, "codec.csv"), CODEC_COLUMNS,
                          required=False))
    for model in {r["model"] for r in rows}:
        for kind in ("bytes", "time"):
            path = os.path.join(img_dir, "accuracy_vs_%s_%s.png" % (kind, model))
            if c.check(os.path.exists(path), "%s is missing" % path):
                size = os.path.getsize(path)
                c.check(0 < size <= MAX_PNG_BYTES, "%s: %d bytes" % (path, size))
    if c.problems:
        print("check_results: %d problem(s):" % len(c.problems))
        for p in c.problems:
            print("  - " + p)
        sys.exit(1)
    print("check_results: %d runs, %d curve points: ok" % (len(rows), len(curves)))


if __name__ == "__main__":
    main()
