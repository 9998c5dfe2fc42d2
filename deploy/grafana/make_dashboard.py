#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/effadam.json (run it after an edit:
python3 deploy/grafana/make_dashboard.py [OUT]). The JSON is committed, so Grafana
needs no Python; this file is the readable source of the panels."""
import json
import os
import re
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
# The whole range the dashboard shows: totals are increase() over it, so a
# restarted server (counters from 0) does not zero them.
RANGE = "$__range"
# Every series a query reads is narrowed to the dashboard's variables.
SELECTOR = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
METRIC = re.compile(r"\b((?:effadam|process)_[a-z0-9_]+)(\{)?")


def narrow(expr):
    """`expr` with SELECTOR in every metric's braces."""
    return METRIC.sub(lambda m: m.group(1) + "{" + SELECTOR +
                      (", " if m.group(2) else "}"), expr)
panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(title, targets, unit="short", kind="timeseries", w=12, h=8, x=0,
          description="", decimals=None):
    global y
    p = {
        "type": kind, "title": title, "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS,
                     "expr": narrow(e), "legendFormat": l}
                    for i, (e, l) in enumerate(targets)],
    }
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "colorMode": "value", "graphMode": "area"}
    panels.append(p)
    if x + w >= 24:
        y += h


ROUND_DIRS = 'direction=~"worker_to_server|server_to_worker"'

row("Overview")
panel("Rounds done", [("max(effadam_server_round) - 1", "done"),
                      ("max(effadam_server_target_rounds)", "of (--rounds)")],
      kind="stat", w=4, h=4, x=0, decimals=0,
      description="Rounds closed so far and the run's --rounds (0: until SIGTERM)")
panel("ETA", [(f"(max(effadam_server_target_rounds) - max(effadam_server_round) + 1) / "
               f"sum(rate(effadam_server_rounds_total[5m]))", "remaining")],
      unit="s", kind="stat", w=4, h=4, x=4,
      description="Rounds left over the rounds closed per second in the last 5 minutes")
panel("Bytes transferred", [(f"sum(increase(effadam_server_wire_bytes_total[{RANGE}]))",
                             "all directions")],
      unit="bytes", kind="stat", w=4, h=4, x=8,
      description="Wire bytes over the dashboard's time range (increase(), so a server "
                  "restart does not zero it)")
panel("Compression ratio vs fp32",
      [(f"sum(increase(effadam_server_fp32_equivalent_bytes_total[{RANGE}])) / "
        f"sum(increase(effadam_server_payload_bytes_total{{{ROUND_DIRS}}}[{RANGE}]))", "ratio")],
      kind="stat", w=4, h=4, x=12, decimals=1,
      description="fp32-equivalent bytes over the payload bytes actually sent, both directions, "
                  "over the dashboard's time range")
panel("Train loss", [("max(effadam_server_train_loss)", "loss")], kind="stat", w=4, h=4, x=16,
      decimals=4)
panel("Test accuracy", [("max(effadam_worker_test_accuracy)", "accuracy")], unit="percentunit",
      kind="stat", w=4, h=4, x=20, decimals=4)

row("Traffic")
panel("Bytes transferred per direction (wire)",
      [(f"sum by (direction) (increase(effadam_server_wire_bytes_total[{RANGE}]))",
        "{{direction}}")],
      unit="bytes", x=0, kind="stat",
      description="gRPC wire bytes counted by the server over the dashboard's time range: "
                  "worker_to_server updates, server_to_worker deltas, join (initial parameters "
                  "and fetches)")
panel("Transfer rate per direction (wire)",
      [(f"sum by (direction) (rate(effadam_server_wire_bytes_total[{RI}]))", "{{direction}}")],
      unit="Bps", x=12)
panel("Compression ratio vs fp32 per direction",
      [(f"sum by (direction) (rate(effadam_server_fp32_equivalent_bytes_total[{RI}])) / "
        f"sum by (direction) (rate(effadam_server_payload_bytes_total{{{ROUND_DIRS}}}[{RI}]))",
        "{{direction}}")],
      x=0, decimals=1,
      description="What fp32 Adam would move over what the codecs moved (payload bytes), per direction")
panel("Payload vs fp32-equivalent rate",
      [(f"sum by (direction) (rate(effadam_server_payload_bytes_total{{{ROUND_DIRS}}}[{RI}]))",
        "payload {{direction}}"),
       (f"sum by (direction) (rate(effadam_server_fp32_equivalent_bytes_total[{RI}]))",
        "fp32 {{direction}}")],
      unit="Bps", x=12)
panel("Per-worker transfer rate (wire)",
      [(f"sum by (rank, direction) (rate(effadam_worker_wire_bytes_total[{RI}]))",
        "rank {{rank}} {{direction}}")],
      unit="Bps", x=0)
panel("Per-worker compression ratio vs fp32",
      [(f"sum by (rank) (rate(effadam_worker_fp32_equivalent_bytes_total[{RI}])) / "
        f"sum by (rank) (rate(effadam_worker_payload_bytes_total[{RI}]))", "rank {{rank}}")],
      x=12, decimals=1)

row("Rounds")
panel("Round duration",
      [(f"histogram_quantile(0.5, sum by (le) (rate(effadam_server_round_duration_seconds_bucket[{RI}])))", "p50"),
       (f"histogram_quantile(0.99, sum by (le) (rate(effadam_server_round_duration_seconds_bucket[{RI}])))", "p99"),
       (f"sum(rate(effadam_server_round_duration_seconds_sum[{RI}])) / "
        f"sum(rate(effadam_server_round_duration_seconds_count[{RI}]))", "mean")],
      unit="s", x=0)
panel("Rounds per second",
      [(f"sum(rate(effadam_server_rounds_total[{RI}]))", "server"),
       (f"sum by (rank) (rate(effadam_worker_rounds_total[{RI}]))", "worker rank {{rank}}")],
      unit="ops", x=12)
panel("Worker round duration (mean)",
      [(f"sum by (rank) (rate(effadam_worker_round_duration_seconds_sum[{RI}])) / "
        f"sum by (rank) (rate(effadam_worker_round_duration_seconds_count[{RI}]))", "rank {{rank}}")],
      unit="s", x=0)
panel("Workers",
      [("max(effadam_server_live_workers)", "live"),
       ("max(effadam_server_expected_workers)", "expected"),
       ("max(effadam_server_round_contributors)", "contributors to last round"),
       ("max(effadam_server_lagging_workers)", "lagging")],
      x=12, decimals=0)
panel("Dropped workers and rejected messages",
      [(f"sum(increase(effadam_server_dropped_workers_total[{RI}]))", "dropped"),
       (f"sum by (reason) (increase(effadam_server_rejected_messages_total[{RI}]))",
        "rejected: {{reason}}")],
      x=0, decimals=0)
panel("Short and dropped rounds",
      [(f"sum(increase(effadam_server_short_rounds_total[{RI}]))", "short (fewer than --workers)"),
       (f"sum(increase(effadam_server_dropped_rounds_total[{RI}]))", "dropped (average overflowed)")],
      x=12, decimals=0)
panel("Worker resyncs",
      [(f"sum by (rank) (increase(effadam_worker_resyncs_total[{RI}]))", "rank {{rank}}")],
      x=0, decimals=0,
      description="A worker fetched x again: its stream broke (server restart, network) or it lagged")
panel("Checkpoints",
      [(f"sum by (result) (increase(effadam_server_checkpoints_total[{RI}]))", "{{result}}"),
       ("max(effadam_server_checkpoint_round)", "round of the newest")],
      x=12, decimals=0)

row("Training")
panel("Test accuracy",
      [("max by (rank) (effadam_worker_test_accuracy)", "rank {{rank}}")],
      unit="percentunit", x=0, decimals=4)
panel("Train loss",
      [("max(effadam_server_train_loss)", "server (mean of the round's updates)"),
       ("max by (rank) (effadam_worker_train_loss)", "worker rank {{rank}}")],
      x=12)
panel("Error-feedback memory norm",
      [("max(effadam_server_error_memory_norm)", "server"),
       ("max by (rank) (effadam_worker_error_memory_norm)", "worker rank {{rank}}")],
      x=0, w=24)

row("Processes")
panel("CPU", [(f"sum by (job, instance) (rate(process_cpu_seconds_total[{RI}]))",
               "{{job}} {{instance}}")],
      unit="percentunit", x=0, description="CPU seconds per second (1 = one core)")
panel("Resident memory", [("max by (job, instance) (process_resident_memory_bytes)",
                           "{{job}} {{instance}}")],
      unit="bytes", x=12)
panel("Checkpoint write time (mean)",
      [(f"sum(rate(effadam_server_checkpoint_duration_seconds_sum[{RI}])) / "
        f"sum(rate(effadam_server_checkpoint_duration_seconds_count[{RI}]))", "mean")],
      unit="s", x=0)
panel("Version", [("max by (job, version, revision) (effadam_build_info)",
                   "{{job}} {{version}} ({{revision}})")],
      kind="stat", x=12, decimals=0)


def variable(name, label, query):
    """A query variable over the label `name`; All by default."""
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "hide": 0, "sort": 1}


dashboard = {
    "uid": "effadam",
    "title": "effadam",
    "description": "Efficient-Adam parameter server: bytes per direction, compression vs fp32, "
                   "rounds, workers, loss and accuracy",
    "tags": ["effadam"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "5s",
    "time": {"from": "now-30m", "to": "now"},
    # namespace is absent under compose; ".*" matches a missing label too.
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus",
         "current": {"text": "Prometheus", "value": "effadam-prometheus"}, "hide": 0},
        variable("namespace", "Namespace", "label_values(effadam_build_info, namespace)"),
        variable("job", "Job", 'label_values(effadam_build_info{namespace=~"$namespace"}, job)'),
        variable("instance", "Instance",
                 'label_values(effadam_build_info{namespace=~"$namespace", job=~"$job"}, '
                 'instance)')]},
    "annotations": {"list": []},
    "panels": [dict(p, id=i + 1) for i, p in enumerate(panels)],
}
out = (sys.argv[1] if len(sys.argv) > 1 else
       os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "effadam.json"))
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
