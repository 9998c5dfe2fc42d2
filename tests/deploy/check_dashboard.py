#!/usr/bin/env python3
"""Checks deploy/grafana/dashboards/effadam.json.

Static: the JSON parses; panel ids are unique; panels do not overlap; every
panel has queries on the provisioned datasource; every effadam_* name in a
query is in metric_names.txt (histogram series by their base name); the
panels cover what the issue asks for (bytes per direction and their rate,
compression ratio vs fp32, round duration, live workers, loss, accuracy);
the dashboard file matches its generator (make_dashboard.py).

Live (--bin DIR with an effadam-server that has --metrics_listen): starts
that server and a worker on 127.0.0.1, trains 20 rounds of the toy model,
scrapes both /metrics endpoints and checks every effadam_* name the
dashboard uses is exported.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
failures = []


def check(cond, what, quiet=False):
    if not (cond and quiet):
        print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def base_name(name, known):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def live_names(bindir, names):
    """Names a running server and worker export after 20 toy rounds."""
    server = os.path.join(bindir, "effadam-server")
    worker = os.path.join(bindir, "effadam-worker")
    helpfull = subprocess.run([server, "--helpfull"], capture_output=True, text=True).stdout
    if "--metrics_listen" not in helpfull:
        print("SKIP live export check: effadam-server has no --metrics_listen yet")
        return None
    grpc, smetrics, wmetrics = free_port(), free_port(), free_port()
    codec = ["--worker_codec=sign", "--server_codec=sign"]
    procs = []
    try:
        procs.append(subprocess.Popen(
            [server, f"--listen=127.0.0.1:{grpc}", f"--metrics_listen=127.0.0.1:{smetrics}",
             "--workers=1", "--rounds=0"] + codec,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # --metrics_linger keeps the worker's /metrics up after its last round.
        procs.append(subprocess.Popen(
            [worker, f"--server=127.0.0.1:{grpc}", "--model=toy", "--rounds=20",
             f"--metrics_listen=127.0.0.1:{wmetrics}", "--metrics_linger=60s"] + codec,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        done = re.compile(r"^effadam_worker_rounds_total\{[^}]*\} 20(\.0*)?$", re.M)
        text = ""
        deadline = time.time() + 60
        while time.time() < deadline and not done.search(text):
            time.sleep(0.2)
            text = scrape(wmetrics)
        check(done.search(text) is not None, "a toy worker trained 20 rounds and exports its metrics")
        text += scrape(smetrics)
        exported = set(re.findall(r"^(effadam_[a-z0-9_]+)", text, re.M))
        return {base_name(n, names) for n in exported}
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dashboard", default=os.path.join(ROOT, "deploy/grafana/dashboards/effadam.json"))
    p.add_argument("--bin", help="directory with effadam-server and effadam-worker")
    a = p.parse_args()

    with open(os.path.join(HERE, "metric_names.txt")) as f:
        names = {l.strip() for l in f if l.strip() and not l.startswith("#")}
    with open(a.dashboard) as f:
        dash = json.load(f)
    check(True, f"{os.path.relpath(a.dashboard, ROOT)} parses as JSON")

    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    check(len(ids) == len(set(ids)), "panel ids are unique")
    cells = {}
    for p in panels:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    check(False, f"panel '{p['title']}' overlaps '{cells[(x, y)]}'")
                    break
                cells[(x, y)] = p["title"]
        check(g["x"] + g["w"] <= 24, f"panel '{p['title']}' fits the 24-column grid", quiet=True)

    used = set()
    exprs = []
    for p in panels:
        if p["type"] == "row":
            continue
        check(bool(p.get("targets")), f"panel '{p['title']}' has queries", quiet=True)
        check(p.get("datasource", {}).get("uid") == "${datasource}",
              f"panel '{p['title']}' uses the datasource variable", quiet=True)
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            exprs.append(expr)
            for n in re.findall(r"\beffadam_[a-z0-9_]+", expr):
                used.add(base_name(n, names))
            check(expr.count("(") == expr.count(")"), f"balanced parentheses: {expr}", quiet=True)
    check(True, f"{len(panels)} panels, {len(exprs)} queries, all with the datasource variable")
    for n in sorted(used):
        check(n in names, f"dashboard metric {n} is an exported metric")
    ds = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    with open(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/prometheus.yml")) as f:
        uid = re.search(r"uid:\s*(\S+)", f.read()).group(1)
    check(ds and ds[0]["current"]["value"] == uid, f"the datasource variable defaults to the provisioned uid {uid}")

    all_exprs = "\n".join(exprs)
    for what, pattern in [
        ("bytes per direction, restart-proof",
         r"sum by \(direction\) \(increase\(effadam_server_wire_bytes_total\{[^}]*\}\[\$__range\]\)\)"),
        ("round N of M and an ETA", r"effadam_server_target_rounds.*rate\(effadam_server_rounds_total"),
        ("checkpoints", r"effadam_server_checkpoints_total"),
        ("short and dropped rounds", r"effadam_server_short_rounds_total.*|effadam_server_dropped_rounds_total"),
        ("resyncs", r"effadam_worker_resyncs_total"),
        ("CPU and memory", r"process_cpu_seconds_total"),
        ("resident memory", r"process_resident_memory_bytes"),
        ("bytes rate per direction", r"rate\(effadam_server_wire_bytes_total(\{[^}]*\})?\["),
        ("compression ratio vs fp32", r"effadam_server_fp32_equivalent_bytes_total.*\) /"),
        ("round duration", r"effadam_server_round_duration_seconds_bucket"),
        ("live workers", r"effadam_server_live_workers"),
        ("loss", r"effadam_server_train_loss"),
        ("accuracy", r"effadam_worker_test_accuracy"),
    ]:
        check(re.search(pattern, all_exprs) is not None, f"the dashboard shows {what}")

    # The committed JSON is what the generator writes.
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "effadam.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "deploy/grafana/make_dashboard.py"), out],
                       check=True)
        with open(a.dashboard) as f, open(out) as g:
            check(f.read() == g.read(), "effadam.json is what make_dashboard.py generates")

    if a.bin:
        exported = live_names(a.bin, names)
        if exported is not None:
            print("exported by a running server and worker:", " ".join(sorted(exported)))
            for n in sorted(used):
                check(n in exported, f"dashboard metric {n} is exported by a running server or worker")

    if failures:
        print(f"check_dashboard: {len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("check_dashboard: all checks passed")


if __name__ == "__main__":
    main()
