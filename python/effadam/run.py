"""python3 -m effadam.run: one effadam-server and N workers on this machine,
the way torchrun starts a job (torchrun of Debian's torch 1.13 does not run
under Python 3.11).

    python3 -m effadam.run --nproc=4 --rounds=6000 -- \\
        examples/fashion_mnist_cnn.py --eval_every=500

Before `--`: the launcher's own flags (below) and any effadam-server flag
(--rounds, --worker_codec, --server_codec, --round_timeout, ...), which go
to the server; it always gets --workers=N and listens on a free port of
--host. After `--`: the worker, a Python script (run by this interpreter)
or any program (build/bin/effadam-worker), and its arguments. Each of the N
copies gets in its environment RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE (= N), EFFADAM_SERVER and MASTER_ADDR, and PYTHONPATH
leads to this effadam package: EfficientAdam and effadam-worker read them
(docs/python.md, "Launching").

Output: every line of every process, prefixed with "[rank R]" or
"[server]". Ctrl-C or SIGTERM is forwarded to every process (a second one
kills them). When a worker or the server fails, the others are stopped and
the launcher exits 1 naming which part failed and how. At the end it
compares each worker's last "params_checksum HEX" line with the server's
summary: a difference is a failure too.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

_LISTENING = re.compile(rb"effadam-server listening on [^\s:]+:(\d+)")
_CHECKSUM = re.compile(rb"params_checksum[\"=:\s]+([0-9a-f]{16})")
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_server(explicit):
    """The effadam-server binary: --server_bin, $EFFADAM_SERVER_BIN, the
    build tree this package sits in (build/python -> build/bin), or PATH."""
    candidates = [explicit, os.environ.get("EFFADAM_SERVER_BIN"),
                  os.path.join(_PACKAGE_PARENT, "..", "bin", "effadam-server"),
                  shutil.which("effadam-server")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise SystemExit("effadam.run: no effadam-server: give --server_bin, set "
                     "EFFADAM_SERVER_BIN or put it on PATH")


class Part:
    """One process of the job, its output copied line by line with a
    prefix to this process's stdout."""

    def __init__(self, label, argv, env, lock):
        self.label = label
        self.lines = []  # kept for the port and the checksums
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        self._lock = lock
        self._reader = threading.Thread(target=self._copy, daemon=True)
        self._reader.start()

    def _copy(self):
        prefix = ("[%s] " % self.label).encode()
        out = sys.stdout.buffer
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.append(line)
            with self._lock:
                out.write(prefix + line if line.endswith(b"\n")
                          else prefix + line + b"\n")
                out.flush()

    def drain(self, timeout=5):
        self._reader.join(timeout)

    def signal(self, sig):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def last(self, pattern):
        for line in reversed(self.lines):
            m = pattern.search(line)
            if m:
                return m.group(1).decode()
        return None


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python3 -m effadam.run", allow_abbrev=False,
        description=__doc__.splitlines()[0],
        usage="%(prog)s --nproc=N [launcher and effadam-server flags] -- "
              "WORKER [worker args...]")
    p.add_argument("--nproc", "--nproc_per_node", type=int, required=True,
                   help="number of worker processes (the server's --workers)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the server listens on and the workers use")
    p.add_argument("--server_bin", default=None,
                   help="effadam-server binary (default: $EFFADAM_SERVER_BIN, "
                        "the build tree, PATH)")
    p.add_argument("--server_grace", type=float, default=30.0,
                   help="seconds the server may take to end once every "
                        "worker has; then it gets SIGTERM")
    if "--" in argv:
        i = argv.index("--")
        mine, worker = argv[:i], argv[i + 1:]
    else:
        mine, worker = argv, []
    args, server_flags = p.parse_known_args(mine)
    if not worker:
        p.error("give the worker after --: a script and its arguments")
    if args.nproc < 1:
        p.error("--nproc must be >= 1, got %d" % args.nproc)
    for f in server_flags:
        if not f.startswith("--"):
            p.error("unexpected %r before --: effadam-server flags are "
                    "--name=value" % f)
        if f.split("=")[0] in ("--workers", "--listen"):
            p.error("%s is the launcher's to set (--nproc, --host)"
                    % f.split("=")[0])
    return args, server_flags, worker


def main(argv=None):
    args, server_flags, worker = parse_args(
        sys.argv[1:] if argv is None else argv)
    server_bin = find_server(args.server_bin)
    tmp = tempfile.mkdtemp(prefix="effadam_run_")
    summary = os.path.join(tmp, "server.json")
    given = {f.split("=")[0] for f in server_flags}
    if "--summary_json" in given:
        summary = next(f.split("=", 1)[1] for f in server_flags
                       if f.startswith("--summary_json="))
    extra = [] if "--summary_json" in given else ["--summary_json=" + summary]
    if "--metrics_listen" not in given:
        extra.append("--metrics_listen=")  # 9464 may be taken; opt in
    lock = threading.Lock()
    parts = []
    stopping = []  # the signal being forwarded, once one came

    def forward(sig, _frame):
        if stopping:  # a second signal: no more waiting
            for part in parts:
                part.signal(signal.SIGKILL)
        stopping.append(sig)
        for part in parts:
            part.signal(sig)

    previous = {s: signal.signal(s, forward)
                for s in (signal.SIGINT, signal.SIGTERM)}
    failures = []
    try:
        server = Part("server", [server_bin, "--listen=%s:0" % args.host,
                                 "--workers=%d" % args.nproc] + extra +
                      server_flags, dict(os.environ), lock)
        parts.append(server)
        port = wait_for_port(server)
        if port is None:
            failures.append("effadam-server exited with %s before listening"
                            % server.proc.poll())
            return finish(failures, stopping)
        address = "%s:%d" % (args.host, port)
        command = list(worker)
        if command[0].endswith(".py"):
            command = [sys.executable] + command
        for rank in range(args.nproc):
            env = dict(os.environ)
            env.update(RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(args.nproc),
                       LOCAL_WORLD_SIZE=str(args.nproc),
                       EFFADAM_SERVER=address, MASTER_ADDR=args.host,
                       EFFADAM_PORT=str(port))
            env.pop("JOB_COMPLETION_INDEX", None)
            env.pop("EFFADAM_NUM_SHARDS", None)
            env["PYTHONPATH"] = os.pathsep.join(
                [_PACKAGE_PARENT] + [p for p in [env.get("PYTHONPATH")] if p])
            parts.append(Part("rank %d" % rank, command, env, lock))
        workers = parts[1:]
        # Until every worker has ended, or something failed.
        while not stopping:
            if any(w.proc.poll() not in (None, 0) for w in workers):
                break
            if server.proc.poll() not in (None, 0):
                break
            if all(w.proc.poll() == 0 for w in workers):
                break
            time.sleep(0.1)
        if stopping:
            for part in parts:
                part.proc.wait()
        for w in workers:
            rc = w.proc.poll()
            if rc not in (None, 0) and not stopping:
                failures.append("%s exited with %s" % (w.label, describe(rc)))
        if server.proc.poll() not in (None, 0) and not stopping:
            failures.append("effadam-server exited with %s"
                            % describe(server.proc.poll()))
        if failures:
            stop(parts)
            return finish(failures, stopping)
        if stopping:
            return finish(failures, stopping)
        # Every worker is done: the server ends on its own (--rounds), or
        # is stopped after the grace period.
        try:
            rc = server.proc.wait(timeout=args.server_grace)
            if rc != 0:
                failures.append("effadam-server exited with %s"
                                % describe(rc))
        except subprocess.TimeoutExpired:
            server.signal(signal.SIGTERM)
            server.proc.wait()
        for part in parts:
            part.drain()
        failures += compare_checksums(workers, summary)
        return finish(failures, stopping)
    finally:
        stop(parts)
        for s, h in previous.items():
            signal.signal(s, h)
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for_port(server, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in list(server.lines):
            m = _LISTENING.search(line)
            if m:
                return int(m.group(1))
        if server.proc.poll() is not None:
            server.drain()
            return None
        time.sleep(0.05)
    return None


def describe(rc):
    if rc is not None and rc < 0:
        return "signal %s" % signal.Signals(-rc).name
    return "status %s" % rc


def stop(parts, timeout=10):
    """SIGTERM to what still runs, SIGKILL after `timeout`."""
    for part in parts:
        part.signal(signal.SIGTERM)
    deadline = time.time() + timeout
    for part in parts:
        try:
            part.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            part.signal(signal.SIGKILL)
            part.proc.wait()
        part.drain()


def compare_checksums(workers, summary_path):
    """Each worker's last printed params_checksum against the server's."""
    try:
        with open(summary_path) as f:
            server = json.load(f).get("params_checksum")
    except (OSError, ValueError):
        return []  # no summary: nothing to compare
    said = {w.label: w.last(_CHECKSUM) for w in workers}
    if server is None or any(c is None for c in said.values()):
        return []  # a worker that does not print its checksum
    differ = ["%s has %s" % (label, c) for label, c in said.items()
              if c != server]
    with_lock_print("effadam.run: params_checksum %s; every worker's equal "
                    "to the server's: %s" % (server,
                                             "no" if differ else "yes"))
    if differ:
        return ["the server's params_checksum is %s but %s"
                % (server, ", ".join(differ))]
    return []


def with_lock_print(message):
    sys.stdout.flush()
    print(message, flush=True)


def finish(failures, stopping):
    if stopping:
        name = signal.Signals(stopping[0]).name
        print("effadam.run: stopped by %s" % name, file=sys.stderr, flush=True)
        return 128 + stopping[0]
    if failures:
        print("effadam.run: failed: " + "; ".join(failures), file=sys.stderr,
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
