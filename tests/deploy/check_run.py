#!/usr/bin/env python3
"""Checks a finished container run: the server's --summary_json and, with
--prometheus, that the host's Prometheus scraped the server container.

Summary: the run closed --rounds rounds with --workers workers, every round
had all of them (the byte counts are exact multiples of one update and one
delta per worker and round), sign both ways compresses well over 20x, and
the loss went down from ln(10) (untrained 10-class MLP).
Prometheus: the scrape target was up, the scraped counters agree with the
summary, and every effadam_server_* metric the dashboard queries exists.
Workers (--log): every rank ended with the server's params_checksum.
Sharded (--shard_summaries, --shard_log): the same run over S server
shards closed every round on each shard, the shards' byte counts add up to
the unsharded server's, and every worker ended with the x it had there.
"""
import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def query(base, promql):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(base, promql):
    res = query(base, promql)
    return float(res[0]["value"][1]) if res else None


def dashboard_metrics(path):
    with open(path) as f:
        dash = json.load(f)
    names = set()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            names.update(re.findall(r"\beffadam_[a-z0-9_]+", t.get("expr", "")))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count"))
            and "duration" in n else n for n in names}


def worker_checksums(log_path):
    """{rank: params_checksum} from the workers' last lines in a compose log."""
    with open(log_path) as f:
        log = f.read()
    found = re.findall(r"effadam-worker: rank (\d+) done after round \d+.*?"
                       r"params_checksum ([0-9a-f]+)", log)
    return {int(rank): checksum for rank, checksum in found}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--summary", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--prometheus")
    p.add_argument("--dashboard")
    p.add_argument("--shard_summaries", nargs="*", default=[])
    p.add_argument("--shard_log")
    a = p.parse_args()
    if a.shard_summaries and not (a.log and a.shard_log):
        p.error("--shard_summaries needs --log and --shard_log")

    with open(a.summary) as f:
        s = json.load(f)
    print("server summary:", json.dumps(s, sort_keys=True))
    check(s["rounds"] == a.rounds, f"rounds {s['rounds']} == {a.rounds}")
    check(s["workers"] == a.workers, f"workers {s['workers']} == {a.workers}")
    n = a.rounds * a.workers
    up, down = s["bytes_worker_to_server"], s["bytes_server_to_worker"]
    check(up > 0 and up % n == 0, f"worker_to_server bytes {up} = {n} updates")
    check(down > 0 and down % n == 0, f"server_to_worker bytes {down} = {n} deltas")
    check(s["bytes_join"] > 0, f"join bytes {s['bytes_join']} > 0")
    check(s["compression_ratio"] > 20, f"compression ratio {s['compression_ratio']:.1f} > 20 (sign/sign)")
    check(0 < s["train_loss"] < 1.5, f"train loss {s['train_loss']:.3f} in (0, 1.5)")
    check(bool(s["params_checksum"]), "params_checksum present")
    for d in ("worker_to_server", "server_to_worker", "join"):
        if f"wire_bytes_{d}" in s:  # wire = serialized messages around the payload
            payload = s["bytes_join"] if d == "join" else s[f"bytes_{d}"]
            check(s[f"wire_bytes_{d}"] >= payload,
                  f"summary: wire bytes {d} {s[f'wire_bytes_{d}']} >= payload {payload}")

    if a.log:
        final = worker_checksums(a.log)
        check(sorted(final) == list(range(a.workers)),
              f"ranks {sorted(final)} reported their final params_checksum")
        check(all(c == s["params_checksum"] for c in final.values()),
              f"every worker's params_checksum == the server's {s['params_checksum']}")

    if a.shard_summaries:
        shards = []
        for path in a.shard_summaries:
            with open(path) as f:
                shards.append(json.load(f))
        for k, sh in enumerate(shards):
            check(sh["shard"] == k and sh["num_shards"] == len(shards),
                  f"summary {k}: shard {sh['shard']} of {sh['num_shards']}")
            check(sh["rounds"] == a.rounds and sh["workers"] == a.workers,
                  f"shard {k}: {sh['rounds']} rounds with {sh['workers']} workers")
        for d in ("worker_to_server", "server_to_worker"):
            total = sum(sh[f"bytes_{d}"] for sh in shards)
            check(total == s[f"bytes_{d}"],
                  f"shards' {d} bytes add up to {total} == unsharded {s[f'bytes_{d}']}")
        sharded = worker_checksums(a.shard_log)
        check(sharded == final,
              f"every worker's params_checksum over {len(shards)} shards == unsharded: {sharded}")

    if a.prometheus:
        base = a.prometheus
        window = "[10m]"
        check(scalar(base, f'max_over_time(up{{job="effadam-server"}}{window})') == 1,
              "Prometheus scraped the server container (up == 1)")
        # The server keeps /metrics up for --metrics_linger after the last
        # round, so the last scrape holds the final counts.
        rounds = scalar(base, f"max_over_time(effadam_server_rounds_total{window})")
        check(rounds == a.rounds, f"scraped effadam_server_rounds_total {rounds} == {a.rounds}")
        for d in ("worker_to_server", "server_to_worker"):
            # Counters scraped together: their maxima are the same scrape.
            wire = scalar(base, f'max_over_time(effadam_server_wire_bytes_total{{direction="{d}"}}{window})')
            pay = scalar(base, f'max_over_time(effadam_server_payload_bytes_total{{direction="{d}"}}{window})')
            fp32 = scalar(base, f'max_over_time(effadam_server_fp32_equivalent_bytes_total{{direction="{d}"}}{window})')
            check(pay == s[f"bytes_{d}"],
                  f"scraped payload bytes {d} {pay} == the summary's {s[f'bytes_{d}']}")
            check(wire is not None and pay is not None and wire >= pay,
                  f"scraped wire bytes {d} {wire} >= payload bytes {pay}")
            check(fp32 is not None and pay and fp32 / pay > 20,
                  f"scraped fp32-equivalent / payload {d}: {fp32 and pay and fp32 / pay:.1f} > 20")
        # Gauges that keep their last value while the server lingers, so
        # the check does not hang on a scrape landing inside a short run:
        # every worker contributed to the last round, and all have left.
        contributors = scalar(base, "last_over_time(effadam_server_round_contributors"
                                    f"{window})")
        check(contributors == a.workers,
              f"effadam_server_round_contributors at the end {contributors} == {a.workers}")
        live = scalar(base, f"last_over_time(effadam_server_live_workers{window})")
        check(live == 0, f"effadam_server_live_workers at the end {live} == 0")
        if a.dashboard:
            url = base + "/api/v1/label/__name__/values"
            with urllib.request.urlopen(url, timeout=10) as r:
                scraped = set(json.load(r)["data"])
            for name in sorted(dashboard_metrics(a.dashboard)):
                if not name.startswith("effadam_server_"):
                    continue  # worker metrics: the host-network test does not scrape workers
                have = name in scraped or any(x.startswith(name + "_") for x in scraped)
                check(have, f"dashboard metric {name} was scraped from the server")

    if failures:
        print(f"check_run: {len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("check_run: all checks passed")


if __name__ == "__main__":
    main()
