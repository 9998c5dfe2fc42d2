#!/usr/bin/env python3
"""Generates deploy/grafana/dashboards/effadam.json (run it after an edit:
python3 deploy/grafana/make_dashboard.py [OUT]). The JSON is committed, so Grafana
needs no Python; this file is the readable source of the panels."""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
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
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": e,
                     "legendFormat": l} for i, (e, l) in enumerate(targets)],
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
panel("Round", [("max(effadam_server_round)", "round")], kind="stat", w=4, h=4, x=0)
panel("Live workers", [("max(effadam_server_live_workers)", "live")], kind="stat", w=4, h=4, x=4)
panel("Bytes transferred", [(f"sum(effadam_server_wire_bytes_total)", "all directions")],
      unit="bytes", kind="stat", w=4, h=4, x=8)
panel("Compression ratio vs fp32",
      [(f"sum(effadam_server_fp32_equivalent_bytes_total) / "
        f"sum(effadam_server_payload_bytes_total{{{ROUND_DIRS}}})", "ratio")],
      kind="stat", w=4, h=4, x=12, decimals=1,
      description="fp32-equivalent bytes over the payload bytes actually sent, both directions, whole run")
panel("Train loss", [("max(effadam_server_train_loss)", "loss")], kind="stat", w=4, h=4, x=16,
      decimals=4)
panel("Test accuracy", [("max(effadam_worker_test_accuracy)", "accuracy")], unit="percentunit",
      kind="stat", w=4, h=4, x=20, decimals=4)

row("Traffic")
panel("Bytes transferred per direction (wire)",
      [("sum by (direction) (effadam_server_wire_bytes_total)", "{{direction}}")],
      unit="bytes", x=0,
      description="Cumulative gRPC wire bytes counted by the server: worker_to_server updates, "
                  "server_to_worker deltas, join (initial parameters and fetches)")
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
      x=0, w=24, decimals=0)

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
    "templating": {"list": [{
        "name": "datasource", "label": "Prometheus", "type": "datasource",
        "query": "prometheus", "current": {"text": "Prometheus", "value": "effadam-prometheus"},
        "hide": 0}]},
    "annotations": {"list": []},
    "panels": [dict(p, id=i + 1) for i, p in enumerate(panels)],
}
out = (sys.argv[1] if len(sys.argv) > 1 else
       os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "effadam.json"))
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
