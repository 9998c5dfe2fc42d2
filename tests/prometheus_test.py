#!/usr/bin/env python3
"""The metrics against a real Prometheus: Debian's /usr/bin/prometheus
scrapes one effadam-server and 3 effadam-worker processes on loopback every
second while they train the toy model. Once the run is over (every summary
JSON written; the daemons keep serving /metrics thanks to --metrics_linger),
the byte counters Prometheus stored must equal the summaries exactly, and
`promtool check metrics` must find nothing to complain about in what the
daemons expose.

Usage: prometheus_test.py --bin BUILD/bin [--rounds N]
Only 127.0.0.1 is used. Every process started here is killed in a finally
block and the temporary directory is removed. scripts/setup.sh installs
Prometheus (Debian package `prometheus`); without it this test fails.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

LOOPBACK = "127.0.0.1"
WORKERS = 3
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
# Same toy settings as tests/cluster_test.py: every tensor goes through the
# sign codec both ways.
TOY = ["--model=toy", "--batch_size=8", "--seed=5", "--lr=0.01",
       "--block_size=64", "--min_compress_elements=64",
       "--worker_codec=sign", "--server_codec=sign"]
DIRECTIONS = ("worker_to_server", "server_to_worker", "join")


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def free_ports(n):
    """n distinct free loopback ports. The sockets stay open until all are
    picked, so the n are distinct; the daemons bind them right after."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


class Run:
    def __init__(self, bin_dir):
        self.bin = bin_dir
        self.dir = tempfile.mkdtemp(prefix="effadam_prometheus_")
        self.procs = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def spawn(self, label, argv):
        with open(self.path(label + ".out"), "wb") as out, \
                open(self.path(label + ".err"), "wb") as err:
            p = subprocess.Popen(argv, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
        p.label = label
        self.procs.append(p)
        return p

    def output(self, label):
        text = ""
        for ext in (".out", ".err"):
            with open(self.path(label + ext), "rb") as f:
                text += f.read().decode(errors="replace")
        return text

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus:
    def __init__(self, port):
        self.base = "http://%s:%d" % (LOOPBACK, port)

    def query(self, promql):
        """The instant vector as a list of (labels, float value)."""
        url = "%s/api/v1/query?%s" % (
            self.base, urllib.parse.urlencode({"query": promql}))
        _, body = http_get(url)
        reply = json.loads(body)
        check(reply.get("status") == "success",
              "query %s failed: %s" % (promql, body))
        check(reply["data"]["resultType"] == "vector",
              "query %s: not a vector: %s" % (promql, body))
        return [(r["metric"], float(r["value"][1]))
                for r in reply["data"]["result"]]

    def query_range_values(self, promql):
        """The distinct sample values of a range-vector selector."""
        url = "%s/api/v1/query?%s" % (
            self.base, urllib.parse.urlencode({"query": promql}))
        _, body = http_get(url)
        reply = json.loads(body)
        values = set()
        for r in reply["data"]["result"]:
            values.update(float(v) for _, v in r["values"])
        return values


def expected_values(summaries):
    """{(metric, frozenset(labels)): value} the scraped series must hold."""
    want = {}
    server = summaries["server"]
    for d in DIRECTIONS:
        want[("effadam_server_payload_bytes_total",
              (("direction", d),))] = server["bytes_" + d]
        want[("effadam_server_wire_bytes_total",
              (("direction", d),))] = server["wire_bytes_" + d]
    want[("effadam_server_rounds_total", ())] = server["rounds"]
    for r in range(WORKERS):
        w = summaries["worker%d" % r]
        for d in DIRECTIONS:
            want[("effadam_worker_wire_bytes_total",
                  (("direction", d), ("rank", str(r))))] = w["wire_bytes_" + d]
            want[("effadam_worker_payload_bytes_total",
                  (("direction", d), ("rank", str(r))))] = w["bytes_" + d]
        want[("effadam_worker_rounds_total", (("rank", str(r)),))] = \
            w["rounds"]
    return want


def scraped_values(prom, want):
    got = {}
    for metric in sorted({m for m, _ in want}):
        for labels, value in prom.query(metric):
            key = tuple(sorted((k, v) for k, v in labels.items()
                               if k in ("direction", "rank")))
            got[(metric, key)] = value
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()

    for tool in (PROMETHEUS, PROMTOOL):
        if not os.access(tool, os.X_OK):
            print("FAIL: %s is missing; scripts/setup.sh installs it (Debian "
                  "package `prometheus`)" % tool)
            return 1

    run = Run(args.bin)
    try:
        metrics_ports = free_ports(WORKERS + 2)
        prom_port = metrics_ports.pop()
        server_metrics = metrics_ports[0]
        worker_metrics = metrics_ports[1:]

        # Prometheus first, so that it scrapes the whole run.
        config = run.path("prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n"
                    "  - job_name: effadam-server\n"
                    "    static_configs:\n"
                    "      - targets: ['%s:%d']\n"
                    "  - job_name: effadam-worker\n"
                    "    static_configs:\n"
                    "      - targets: [%s]\n"
                    % (LOOPBACK, server_metrics,
                       ", ".join("'%s:%d'" % (LOOPBACK, p)
                                 for p in worker_metrics)))
        prom_proc = run.spawn("prometheus", [
            PROMETHEUS, "--config.file=" + config,
            "--storage.tsdb.path=" + run.path("tsdb"),
            "--web.listen-address=%s:%d" % (LOOPBACK, prom_port),
            "--log.level=warn"])
        prom = Prometheus(prom_port)
        deadline = time.time() + 60
        while True:
            check(prom_proc.poll() is None,
                  "prometheus exited with %s:\n%s"
                  % (prom_proc.returncode, run.output("prometheus")))
            try:
                if http_get(prom.base + "/-/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            check(time.time() < deadline, "prometheus not ready in 60 s:\n"
                  + run.output("prometheus"))
            time.sleep(0.2)
        # Prometheus applies discovered targets a few seconds after it
        # starts; once it has tried every target (each is down for now), it
        # scrapes the run from its first round.
        deadline = time.time() + 60
        while len(prom.query("up")) < WORKERS + 1:
            check(time.time() < deadline,
                  "prometheus did not scrape its targets in 60 s")
            time.sleep(0.2)

        linger = ["--metrics_linger=120s"]
        server = run.spawn("server", [
            os.path.join(args.bin, "effadam-server"),
            "--listen=%s:0" % LOOPBACK,
            "--metrics_listen=%s:%d" % (LOOPBACK, server_metrics),
            "--workers=%d" % WORKERS, "--rounds=%d" % args.rounds,
            "--summary_json=" + run.path("server.json")] + linger +
            [f for f in TOY if f.split("=")[0] in (
                "--worker_codec", "--server_codec", "--block_size",
                "--min_compress_elements", "--seed")])
        deadline = time.time() + 30
        pattern = re.compile(r"effadam-server listening on 127\.0\.0\.1:(\d+)")
        while True:
            m = pattern.search(run.output("server"))
            if m:
                port = int(m.group(1))
                break
            check(server.poll() is None, "server exited with %s:\n%s"
                  % (server.returncode, run.output("server")))
            check(time.time() < deadline, "server did not print its port")
            time.sleep(0.05)
        workers = []
        started = time.time()
        for r in range(WORKERS):
            workers.append(run.spawn("worker%d" % r, [
                os.path.join(args.bin, "effadam-worker"),
                "--server=%s:%d" % (LOOPBACK, port), "--rank=%d" % r,
                "--rounds=%d" % args.rounds,
                "--metrics_listen=%s:%d" % (LOOPBACK, worker_metrics[r]),
                "--summary_json=" + run.path("worker%d.json" % r)]
                + linger + TOY))

        # The run is over when every summary is written; the daemons then
        # linger, serving their final metrics.
        labels = ["server"] + ["worker%d" % r for r in range(WORKERS)]
        deadline = time.time() + 150
        while not all(os.path.exists(run.path(l + ".json")) for l in labels):
            for p in [server] + workers:
                check(p.poll() is None, "%s exited with %s:\n%s"
                      % (p.label, p.returncode, run.output(p.label)))
            check(time.time() < deadline, "the run did not finish in 150 s")
            time.sleep(0.1)
        run_seconds = time.time() - started
        summaries = {}
        for l in labels:
            with open(run.path(l + ".json")) as f:
                summaries[l] = json.load(f)
        check(summaries["server"]["rounds"] == args.rounds,
              "the server ran %s rounds" % summaries["server"]["rounds"])

        # What Prometheus stored must become exactly the summaries' numbers
        # (within a few scrapes of the run's end).
        want = expected_values(summaries)
        deadline = time.time() + 30
        while True:
            got = scraped_values(prom, want)
            diff = {k: (v, got.get(k)) for k, v in want.items()
                    if got.get(k) != v}
            if not diff:
                break
            if time.time() > deadline:
                raise Failure("Prometheus's values differ from the "
                              "summaries (want, got):\n" + "\n".join(
                                  "  %s%s: %s" % (m, dict(l), vs)
                                  for (m, l), vs in sorted(diff.items())))
            time.sleep(0.5)
        up = prom.query("up")
        check(len(up) == WORKERS + 1 and all(v == 1 for _, v in up),
              "not every target is up: %s" % up)

        # The workers' messages are the server's: the sums agree.
        for labels_, value in prom.query(
                "sum by (direction) (effadam_worker_wire_bytes_total)"):
            d = labels_["direction"]
            check(value == summaries["server"]["wire_bytes_" + d],
                  "workers' %s wire bytes %s != server's %s"
                  % (d, value, summaries["server"]["wire_bytes_" + d]))
        ratio = prom.query(
            "sum(effadam_server_fp32_equivalent_bytes_total) / "
            "sum(effadam_server_payload_bytes_total{direction!=\"join\"})")
        check(len(ratio) == 1 and
              abs(ratio[0][1] - summaries["server"]["compression_ratio"])
              < 1e-6, "compression ratio %s != summary %s"
              % (ratio, summaries["server"]["compression_ratio"]))
        seen_rounds = prom.query_range_values("effadam_server_rounds_total[5m]")

        # promtool lints each daemon's exposition.
        for label, mport in (("server", server_metrics),
                             ("worker0", worker_metrics[0])):
            _, text = http_get("http://%s:%d/metrics" % (LOOPBACK, mport))
            check("effadam_" in text, "%s exposes no effadam_ metrics"
                  % label)
            lint = subprocess.run([PROMTOOL, "check", "metrics"],
                                  input=text.encode(), capture_output=True,
                                  timeout=30)
            complaints = (lint.stdout + lint.stderr).decode().strip()
            check(lint.returncode == 0 and not complaints,
                  "promtool check metrics on %s's /metrics (exit %d):\n%s"
                  % (label, lint.returncode, complaints))

        # SIGTERM ends the linger; training was complete, so exit 0.
        for p in [server] + workers:
            p.send_signal(signal.SIGTERM)
        for p in [server] + workers:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                raise Failure("%s ignored SIGTERM while lingering" % p.label)
            check(p.returncode == 0, "%s exited with %d after SIGTERM:\n%s"
                  % (p.label, p.returncode, run.output(p.label)))

        s = summaries["server"]
        print("OK: %d rounds in %.1f s; Prometheus holds the summaries' "
              "numbers: server payload bytes up/down/join %d/%d/%d, wire "
              "bytes %d/%d/%d, ratio %.2f; stored %d distinct values of "
              "effadam_server_rounds_total during the run; promtool clean"
              % (s["rounds"], run_seconds, s["bytes_worker_to_server"],
                 s["bytes_server_to_worker"], s["bytes_join"],
                 s["wire_bytes_worker_to_server"],
                 s["wire_bytes_server_to_worker"], s["wire_bytes_join"],
                 ratio[0][1], len(seen_rounds)))
        return 0
    except Failure as e:
        print("FAIL: %s" % e)
        return 1
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main())
