#!/usr/bin/env python3
"""Floods that must not take the server's threads, process ids or memory
(docs/security.md, "Limits"): a real effadam-server on 127.0.0.1, confined
first to a pids cgroup and a memory cgroup (cgroup v1 or v2; the test exits
77, skipped, when neither can be created), then:

- rapid_reset: HTTP/2 rapid reset from a client without the token
  (HEADERS + RST_STREAM pairs on one connection; 60,000 streams, 100,000
  with --long). The server's threads (/proc/PID/status) stay at most
  --max_threads + THREAD_SLACK and its RSS under RSS_BOUND; afterwards the
  health check says SERVING and two workers with the token train to the
  end.
- rapid_reset_tls: the same flood, 100,000 streams, over TLS against a
  server with TLS and a token: the token is checked before a call is
  queued (server/token_gate.h), so the server starts no call thread at all
  and its RSS grows by less than 128 MB; health over TLS says SERVING and
  two workers with the token train to the end.
- train_never_send: 1,000 Train streams on 10 connections that never send
  a message. Threads stay bounded; while every call thread is taken the
  health check is truthful: NOT_SERVING, and Status fails with
  RESOURCE_EXHAUSTED; once the flood's connections close it says SERVING
  again and two workers train to the end.
- fetch_never_read: with a 16 MiB model uploaded, 40 FetchParams calls on
  connections whose flow-control window is 0. At most --workers of them are
  served (the rest end with RESOURCE_EXHAUSTED), those are cancelled after
  --send_stall_timeout, RSS grows by at most two copies of the model, and
  the workers train to the end.
- over_limit_messages: eight 100 MiB messages (the limit is 1 MiB + 64
  KiB) sent at once on eight connections: RSS grows by at most 3 x the
  default --max_transport_memory_mb, and the workers train afterwards.
- idle_connections: 2,000 HTTP/2 connections that never start a call are
  closed by the server (GOAWAY, then the socket ends) within
  --max_connection_idle plus a margin.

Usage: limits_test.py --bin BUILD/bin [--only NAME] [--long]
Every process is bounded in time and killed in a finally block; the
cgroups and temporary directories are removed.
"""

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_test import TOY, LOOPBACK, Failure, check, run_cases  # noqa: E402
import http2_flood as h2  # noqa: E402
from security_test import make_pki  # noqa: E402

ROUNDS = 20
MAX_THREADS = 256  # the server's default --max_threads
# Threads of the process that are not call threads: gRPC's timer, executor
# and resolver threads, the health service, the metrics server, main.
THREAD_SLACK = 24
PIDS_MAX = 600  # the cgroup's limit: room for the bound, not for a runaway
MEMORY_LIMIT = 2 << 30
TOOL_TIMEOUT = 30
LONG = False


def rss_bound():
    # Measured (docs/security.md): gRPC 1.51 keeps every call a connection
    # opened until a thread has handled it, so the peak grows with the
    # streams a flood sends faster than the threads handle them: 100,000
    # streams peaked at 1.5 GB, 20,000 at 0.04-0.33 GB.
    return 1800 << 20


class Confinement:
    """A pids cgroup (pids.max = PIDS_MAX) and a memory cgroup
    (MEMORY_LIMIT) for one process, v1 or v2; remove() deletes them."""

    def __init__(self, name):
        self.dirs = []
        v1 = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory")
        if all(os.path.isdir(d) for d in v1):
            pids = os.path.join(v1[0], name)
            mem = os.path.join(v1[1], name)
            self._make(pids, {"pids.max": PIDS_MAX})
            self._make(mem, {"memory.limit_in_bytes": MEMORY_LIMIT})
        else:
            root = "/sys/fs/cgroup"
            if os.path.isdir("/sys/fs/cgroup/unified"):
                root = "/sys/fs/cgroup/unified"
            d = os.path.join(root, name)
            self._make(d, {"pids.max": PIDS_MAX, "memory.max": MEMORY_LIMIT})

    def _make(self, d, limits):
        os.mkdir(d)
        self.dirs.append(d)
        for k, v in limits.items():
            with open(os.path.join(d, k), "w") as f:
                f.write(str(v))

    def add(self, pid):
        for d in self.dirs:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def remove(self):
        for d in self.dirs:
            for _ in range(50):  # the processes' exit reaches it shortly
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)


class Sampler:
    """Peak Threads and VmRSS of a process, every 20 ms, in a thread."""

    def __init__(self, pid):
        self.pid = pid
        self.threads = 0
        self.rss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def now(self):
        with open("/proc/%d/status" % self.pid) as f:
            s = f.read()
        return (int(re.search(r"Threads:\s+(\d+)", s).group(1)),
                int(re.search(r"VmRSS:\s+(\d+)", s).group(1)) << 10)

    def _run(self):
        while not self._stop.is_set():
            try:
                t, r = self.now()
                self.threads, self.rss = max(self.threads, t), max(self.rss, r)
            except (OSError, AttributeError):
                return
            self._stop.wait(0.02)

    def stop(self):
        self._stop.set()
        self._t.join()


def run_health(c, port, extra=()):
    """effadam-health's exit code and output. Read as bytes: one CI run
    saw bytes that are not UTF-8 in its stdout (after the TLS flood; not
    reproduced in 200 runs since), which text=True turned into a
    UnicodeDecodeError instead of an answer; such bytes are shown escaped,
    and reported, so that a repeat says what they were."""
    r = subprocess.run([os.path.join(c.bin, "effadam-health"),
                        "--addr=%s:%d" % (LOOPBACK, port)] + list(extra),
                       capture_output=True, timeout=TOOL_TIMEOUT)
    raw = r.stdout + r.stderr
    try:
        out = raw.decode()
    except UnicodeDecodeError:
        out = raw.decode(errors="backslashreplace")
        print("effadam-health (exit %d) wrote bytes that are not UTF-8: %s"
              % (r.returncode, out), file=sys.stderr, flush=True)
    return r.returncode, out


def health(c, port, extra=()):
    rc, out = run_health(c, port, extra)
    return rc == 0 and "SERVING" in out and "NOT_SERVING" not in out


def status(c, port, token_file=None):
    argv = [os.path.join(c.bin, "status_probe"),
            "--server=%s:%d" % (LOOPBACK, port), "--timeout_ms=5000"]
    if token_file:
        argv.append("--auth_token_file=" + token_file)
    r = subprocess.run(argv, capture_output=True, text=True,
                       timeout=TOOL_TIMEOUT)
    return r.returncode, r.stdout + r.stderr


def start_confined_server(c, flags):
    server, port = c.start_server(
        ["--workers=2", "--rounds=%d" % ROUNDS, "--block_size=64",
         "--min_compress_elements=64", "--seed=5", "--worker_codec=sign",
         "--server_codec=sign"] + flags)
    c.confinement = Confinement("effadam_limits_%d_%s" % (os.getpid(),
                                                           c.name))
    c.confinement.add(server.pid)
    return server, port


def train_two_workers(c, port, extra=()):
    """Two workers train the toy model to the end; returns their rounds."""
    workers = [c.start_worker("worker%d" % i, port,
                              TOY + ["--worker_codec=sign",
                                     "--server_codec=sign",
                                     "--rounds=%d" % ROUNDS,
                                     "--connect_timeout=60s"] + list(extra))
               for i in range(2)]
    for w in workers:
        c.expect_ok(w)
    return [c.summary("worker%d" % i)["rounds"] for i in range(2)]


def check_bounds(sampler, what):
    bound = MAX_THREADS + THREAD_SLACK
    check(sampler.threads <= bound,
          "%s: the server grew to %d threads (bound %d)"
          % (what, sampler.threads, bound))
    check(sampler.rss <= rss_bound(),
          "%s: the server's RSS reached %d MB (bound %d MB)"
          % (what, sampler.rss >> 20, rss_bound() >> 20))


def finish(c, server):
    c.expect_ok(server)
    s = c.summary("server")
    check(s["rounds"] == ROUNDS, "the server ran %s rounds" % s["rounds"])


# ---- test cases -----------------------------------------------------------

def case_rapid_reset(c):
    token = c.path("token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    server, port = start_confined_server(c, ["--auth_token_file=" + token])
    sampler = Sampler(server.pid)
    streams = 100000 if LONG else 60000
    start = time.time()
    sent = h2.rapid_reset((LOOPBACK, port), streams, time.time() + 120,
                          hold=5)
    flood_seconds = time.time() - start
    # The server works through the calls it queued (seconds after the
    # connection closed); wait until it has been idle for 2 s and answers.
    idle_since = [None]

    def drained():
        if sampler.now()[0] > THREAD_SLACK + 4:
            idle_since[0] = None
            return False
        idle_since[0] = idle_since[0] or time.time()
        return (time.time() - idle_since[0] >= 2 and
                status(c, port, token)[0] == 0)

    c.wait_for("the server to finish the flood's calls", drained,
               timeout=120)
    sampler.stop()
    check(server.poll() is None, "the server died in the flood")
    check(sent == streams, "only %d of %d streams were sent" % (sent, streams))
    check_bounds(sampler, "rapid reset")
    check(health(c, port), "health is not SERVING after the flood")
    rounds = train_two_workers(c, port, ["--auth_token_file=" + token])
    finish(c, server)
    return ("%d streams in %.1f s: peak %d threads, RSS %d MB; workers ran "
            "%s rounds" % (sent, flood_seconds, sampler.threads,
                           sampler.rss >> 20, rounds))


def case_rapid_reset_tls(c):
    pki = make_pki(c.dir)
    token = c.path("token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32))
    server, port = start_confined_server(
        c, ["--auth_token_file=" + token, "--tls_cert_file=" + pki["server.pem"],
            "--tls_key_file=" + pki["server.key"]])
    base_threads, base_rss = Sampler(server.pid).now()
    sampler = Sampler(server.pid)
    streams = 100000
    start = time.time()
    sent = h2.rapid_reset((LOOPBACK, port), streams, time.time() + 120,
                          hold=5, tls_ca=pki["ca.pem"])
    flood_seconds = time.time() - start
    sampler.stop()
    check(server.poll() is None, "the server died in the flood")
    check(sent == streams, "only %d of %d streams were sent" % (sent, streams))
    # The token is checked before a call is queued: no call thread at all.
    check(sampler.threads <= base_threads + 4,
          "the server grew from %d to %d threads" % (base_threads,
                                                     sampler.threads))
    # Usually flat (21 -> 33-47 MB), but in 5 of 23 runs on 30
    # November the server reached 424-864 MB with no thread added: memory
    # as on the plaintext port, which the memory cgroup bounds
    # (docs/security.md).
    check(sampler.rss <= rss_bound(),
          "the server's RSS reached %d MB (bound %d MB)"
          % (sampler.rss >> 20, rss_bound() >> 20))
    rc, out = run_health(c, port, ["--tls_ca_file=" + pki["ca.pem"]])
    check(rc == 0 and "SERVING" in out and "NOT_SERVING" not in out,
          "health over TLS: %s" % out)
    rounds = train_two_workers(c, port, ["--auth_token_file=" + token,
                                         "--tls_ca_file=" + pki["ca.pem"]])
    finish(c, server)
    return ("%d unauthenticated streams over TLS in %.1f s: threads %d -> "
            "peak %d, RSS %d -> peak %d MB; workers ran %s rounds"
            % (sent, flood_seconds, base_threads, sampler.threads,
               base_rss >> 20, sampler.rss >> 20, rounds))


def case_train_never_send(c):
    server, port = start_confined_server(c, [])
    sampler = Sampler(server.pid)
    conns = []
    try:
        for _ in range(10):
            conn = h2.Connection((LOOPBACK, port))
            conns.append(conn)
            for _ in range(100):
                conn.open_stream(h2.TRAIN)
        # Every call thread is taken once the streams have arrived.
        c.wait_for("the streams to take the call threads",
                   lambda: sampler.threads >= MAX_THREADS - 4, timeout=60)
        time.sleep(1)
        # Truthful: while calls fail for want of a thread, health says so.
        c.wait_for("health to say NOT_SERVING", lambda: not health(c, port),
                   timeout=10)
        rc, out = status(c, port)
        check(rc != 0 and "RESOURCE_EXHAUSTED" in out,
              "Status during the flood: exit %d %s" % (rc, out))
        busy_threads = sampler.threads
    finally:
        for conn in conns:
            conn.close()
    c.wait_for("health to say SERVING after the flood",
               lambda: health(c, port), timeout=60)
    rc, out = status(c, port)
    check(rc == 0, "Status after the flood: %s" % out)
    sampler.stop()
    check_bounds(sampler, "1,000 Train streams")
    rounds = train_two_workers(c, port)
    finish(c, server)
    return ("1000 silent Train streams: peak %d threads (%d while held), "
            "RSS %d MB; workers ran %s rounds"
            % (sampler.threads, busy_threads, sampler.rss >> 20, rounds))


def case_fetch_never_read(c):
    elements = 4 << 20  # a 16 MiB model
    server, port = start_confined_server(c, ["--send_stall_timeout=3s"])
    synth = os.path.join(c.bin, "effadam-synthetic-worker")
    common = ["--server=%s:%d" % (LOOPBACK, port), "--elements=%d" % elements,
              "--rounds=%d" % ROUNDS, "--worker_codec=sign",
              "--server_codec=sign", "--block_size=64",
              "--min_compress_elements=64"]
    # Rank 0 joins, uploads the 16 MiB model and waits for rank 1.
    first = c.spawn("worker0", [synth, "--rank=0"] + common)
    def uploaded():
        rc, out = status(c, port)
        return rc == 0 and json.loads(out)["params_checksum"] != ""

    c.wait_for("the initial parameters", uploaded, timeout=60)
    time.sleep(1)
    base_rss = Sampler(server.pid).now()[1]
    sampler = Sampler(server.pid)
    conns = []
    try:
        # 40 FetchParams calls on 4 connections whose window is 0: the
        # server cannot send a byte of any of them.
        for _ in range(4):
            conn = h2.Connection((LOOPBACK, port), window=0)
            conns.append(conn)
            for _ in range(10):
                sid = conn.open_stream(h2.FETCH)
                conn.send_message(sid, b"", end_stream=True)
        time.sleep(2)
        held_rss = sampler.now()[1]
        # The stalled calls are cancelled after --send_stall_timeout.
        c.wait_for("the stalled fetches to be cancelled",
                   lambda: sampler.now()[0] <= THREAD_SLACK + 4, timeout=30)
    finally:
        for conn in conns:
            conn.close()
    sampler.stop()
    grown = sampler.rss - base_rss
    bound = 2 * (elements * 4) + (64 << 20)  # one copy per worker, slack
    check(grown <= bound,
          "40 unread FetchParams grew RSS by %d MB (bound %d MB; %d MB "
          "before, %d MB 2 s in)" % (grown >> 20, bound >> 20,
                                     base_rss >> 20, held_rss >> 20))
    second = c.spawn("worker1", [synth, "--rank=1"] + common)
    for w in (first, second):
        c.expect_ok(w)
    finish(c, server)
    return ("40 unread FetchParams of a 16 MiB model: RSS %d MB -> peak %d "
            "MB (+%d MB, %d MB 2 s in); workers trained to the end"
            % (base_rss >> 20, sampler.rss >> 20, grown >> 20,
               held_rss >> 20))


def case_over_limit_messages(c):
    server, port = start_confined_server(c, [])
    time.sleep(0.5)
    base_rss = Sampler(server.pid).now()[1]
    sampler = Sampler(server.pid)
    message = h2.grpc_message(bytes(100 << 20))
    sent = []

    def send_one():
        conn = h2.Connection((LOOPBACK, port))
        try:
            sid = conn.open_stream(h2.JOIN)
            sent.append(conn.send_flow_controlled(
                sid, message, time.time() + 60, end_stream=True))
        finally:
            conn.close()

    # Eight 100 MiB messages (the limit is 1 MiB + 64 KiB) at once, one per
    # connection: gRPC 1.51 receives a message whole before it checks its
    # size; the transport's memory quota is what stops them.
    senders = [threading.Thread(target=send_one) for _ in range(8)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(90)
    time.sleep(1)
    sampler.stop()
    grown = sampler.rss - base_rss
    bound = 3 * (128 << 20)  # the default --max_transport_memory_mb, x3
    check(grown <= bound,
          "eight 100 MiB messages grew RSS by %d MB (bound %d MB)"
          % (grown >> 20, bound >> 20))
    check(health(c, port), "health is not SERVING")
    rounds = train_two_workers(c, port)
    finish(c, server)
    return ("8 x 100 MiB at once (%s MiB got through before gRPC closed "
            "the connection): RSS %d -> peak %d MB; workers ran %s rounds"
            % ([n >> 20 for n in sent], base_rss >> 20, sampler.rss >> 20,
               rounds))


def case_idle_connections(c):
    idle = 2
    server, port = start_confined_server(
        c, ["--max_connection_idle=%ds" % idle])
    fds_before = len(os.listdir("/proc/%d/fd" % server.pid))
    conns = [h2.Connection((LOOPBACK, port)) for _ in range(2000)]
    try:
        opened = time.time()
        # Every connection was accepted and answered (some may be closed
        # already: accepting 2000 can take longer than --max_connection_idle
        # on a loaded machine).
        c.wait_for("the server to answer 2000 connections",
                   lambda: all(k.handshaken.is_set() for k in conns),
                   timeout=idle + 30)
        c.wait_for("the server to close 2000 idle connections",
                   lambda: all(k.closed.is_set() for k in conns),
                   timeout=idle + 30)
        took = time.time() - opened
        goaways = sum(k.goaway for k in conns)
        check(goaways == len(conns),
              "%d of %d connections got a GOAWAY" % (goaways, len(conns)))
    finally:
        for k in conns:
            k.close()
    c.wait_for("the server's descriptors to return",
               lambda: len(os.listdir("/proc/%d/fd" % server.pid))
               <= fds_before + 10, timeout=30)
    check(health(c, port), "health is not SERVING")
    rounds = train_two_workers(c, port)
    finish(c, server)
    return ("2000 idle connections closed %.1f s after they opened "
            "(--max_connection_idle=%ds); workers ran %s rounds"
            % (took, idle, rounds))


def confined(fn):
    """fn(c), then its processes are killed and its cgroups removed (a
    cgroup cannot be removed while a process is in it)."""
    def run(c):
        c.confinement = None
        try:
            return fn(c)
        finally:
            for p in c.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            if c.confinement is not None:
                c.confinement.remove()
    return run


CASES = [
    ("rapid_reset", confined(case_rapid_reset)),
    ("rapid_reset_tls", confined(case_rapid_reset_tls)),
    ("train_never_send", confined(case_train_never_send)),
    ("fetch_never_read", confined(case_fetch_never_read)),
    ("over_limit_messages", confined(case_over_limit_messages)),
    ("idle_connections", confined(case_idle_connections)),
]


def cgroups_usable():
    probe = "effadam_limits_probe_%d" % os.getpid()
    try:
        Confinement(probe).remove()
        return True
    except OSError as e:
        print("SKIP: cannot create a pids and a memory cgroup (%s); run as "
              "root on a host with cgroup v1 or v2" % e)
        return False


def main():
    global LONG
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="build/bin directory")
    parser.add_argument("--only", help="run this case only")
    parser.add_argument("--long", action="store_true",
                        help="100,000 streams of rapid reset (about 1 min)")
    args = parser.parse_args()
    LONG = args.long
    for b in ("effadam-server", "effadam-worker", "effadam-health",
              "status_probe", "effadam-synthetic-worker"):
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            print("missing %s in %s" % (b, args.bin))
            return 1
    if not cgroups_usable():
        return 77
    return 1 if run_cases(args.bin, CASES, args.only, prefix="limits_") else 0


if __name__ == "__main__":
    sys.exit(main())
