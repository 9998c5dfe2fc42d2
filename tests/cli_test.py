#!/usr/bin/env python3
"""The command line of every binary (daemon/command_line.h): --help lists
the binary's own flags with their defaults and points at --helpfull;
--version prints the project version and git revision; duration flags take
units and say so when they refuse a value; address flags check host:port
and the port range; a port in use fails naming the address and the reason.

Usage: cli_test.py --bin BUILD/bin
Only 127.0.0.1 is used; every process is bounded by a timeout.
"""

import argparse
import os
import re
import socket
import subprocess
import sys

# Each binary and flags its --help must name (its main ones).
BINARIES = {
    "effadam-server": ["--listen", "--workers", "--rounds", "--round_timeout",
                       "--checkpoint_dir", "--metrics_listen",
                       "--metrics_linger", "--worker_codec",
                       "--tls_cert_file"],
    "effadam-worker": ["--server", "--rank", "--model", "--rounds",
                       "--reconnect_timeout", "--connect_timeout",
                       "--worker_codec", "--tls_ca_file", "--keepalive_time"],
    "effadam-sim": ["--workers", "--model", "--rounds", "--worker_codec",
                    "--summary_json"],
    "effadam-health": ["--addr", "--timeout", "--service", "--tls_ca_file"],
    "effadam-example-own-model": ["--server", "--rounds", "--worker_codec"],
    "effadam-synthetic-worker": ["--server", "--elements", "--rounds",
                                 "--reconnect_timeout"],
}

# A duration flag of each binary that has one.
DURATION_FLAG = {
    "effadam-server": "--round_timeout",
    "effadam-worker": "--connect_timeout",
    "effadam-health": "--timeout",
    "effadam-synthetic-worker": "--reconnect_timeout",
    "effadam-example-own-model": "--keepalive_time",
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL " + what)


def run(bin_dir, name, *args):
    p = subprocess.run([os.path.join(bin_dir, name)] + list(args),
                       capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def help_and_version(bin_dir):
    for name, flags in BINARIES.items():
        rc, out = run(bin_dir, name, "--help")
        check("No flags matched" not in out, "%s --help lists flags" % name)
        for f in flags:
            check(re.search(r"^\s+%s \(" % re.escape(f), out, re.M),
                  "%s --help names %s" % (name, f))
        check("default:" in out, "%s --help shows defaults" % name)
        # Only the binary's own flags: none of Abseil's.
        for absl_flag in ("--flagfile", "--fromenv", "--undefok",
                          "--tryfromenv"):
            check(not re.search(r"^\s+%s \(" % absl_flag, out, re.M),
                  "%s --help leaves out %s" % (name, absl_flag))
        check("--helpfull" in out, "%s --help points at --helpfull" % name)
        rc, full = run(bin_dir, name, "--helpfull")
        check(re.search(r"^\s+--flagfile \(", full, re.M),
              "%s --helpfull lists Abseil's flags" % name)
        rc, out = run(bin_dir, name, "--version")
        check(rc == 0 and re.fullmatch(
            r"%s \d+\.\d+\.\d+ \(git ([0-9a-f]{7,}|unknown)\)\n" %
            re.escape(name), out),
            "%s --version prints version and revision, got %r" % (name, out))
        check("Debug build" not in out, "%s --version: no build mode" % name)
        print("%s: --help names %d flags; %s" % (name, len(flags),
                                                 out.strip()))


def durations(bin_dir):
    for name, flag in DURATION_FLAG.items():
        rc, out = run(bin_dir, name, flag + "=10")
        check(rc != 0 and "with a unit, e.g. 500ms, 10s, 5m" in out and
              "write 10s for seconds" in out,
              "%s %s=10 refused saying why: %s" % (name, flag, out.strip()))
        rc, out = run(bin_dir, name, flag + "=-1s")
        check(rc != 0 and "must not be negative" in out,
              "%s %s=-1s refused: %s" % (name, flag, out.strip()))
    # Accepted with units: the start then fails on the next, bad flag.
    rc, out = run(bin_dir, "effadam-server", "--round_timeout=500ms",
                  "--metrics_linger=5m", "--keepalive_time=1m",
                  "--listen=127.0.0.1:99999")
    check(rc == 1 and "round_timeout" not in out and "--listen must be" in out,
          "effadam-server takes 500ms and 5m: %s" % out.strip())
    rc, out = run(bin_dir, "effadam-worker", "--connect_timeout=1500ms",
                  "--reconnect_timeout=1h", "--server=127.0.0.1:99999")
    check(rc == 1 and "a server address must be host:port" in out,
          "effadam-worker takes 1500ms and 1h: %s" % out.strip())


def addresses(bin_dir):
    cases = [
        ("effadam-server", ["--listen=127.0.0.1:99999"],
         '--listen must be host:port with a port in [0, 65535]'),
        ("effadam-server", ["--listen=50051"], "write 0.0.0.0:50051"),
        ("effadam-server", ["--listen=127.0.0.1:0",
                            "--metrics_listen=127.0.0.1:70000"],
         "--metrics_listen must be host:port"),
        ("effadam-worker", ["--server=127.0.0.1:0", "--model=toy"],
         "[1, 65535]"),
        ("effadam-worker", ["--server=a:1,b:99999", "--model=toy"],
         'got "b:99999"'),
        ("effadam-health", ["--addr=50051"], "--addr must be host:port"),
        ("effadam-synthetic-worker", ["--server=localhost"],
         "must be host:port"),
        ("effadam-synthetic-worker", ["--timed_rounds=-1"],
         "--timed_rounds >= 0; got"),
        ("effadam-example-own-model", ["--server=127.0.0.1:65536"],
         "must be host:port"),
    ]
    for name, args, needle in cases:
        rc, out = run(bin_dir, name, *args)
        check(rc == 1 and needle in out,
              "%s %s refused with %r: %s" % (name, " ".join(args), needle,
                                             out.strip()))
    # A port in use: the address and the reason, for gRPC and metrics.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        for args, needle in [
                (["--listen=127.0.0.1:%d" % port, "--metrics_listen="],
                 "cannot listen on 127.0.0.1:%d: Address already in use" %
                 port),
                (["--listen=127.0.0.1:0",
                  "--metrics_listen=127.0.0.1:%d" % port],
                 "metrics: cannot listen on 127.0.0.1:%d: Address already "
                 "in use" % port)]:
            rc, out = run(bin_dir, "effadam-server", *args)
            check(rc == 1 and needle in out,
                  "effadam-server %s: %r in %s" % (" ".join(args), needle,
                                                    out.strip()))
    finally:
        taken.close()
    rc, out = run(bin_dir, "effadam-example-own-model",
                  "--worker_codec=bogus")
    check(rc == 1 and "bad codec name 'bogus'" in out,
          "own-model --worker_codec=bogus exits 1 with the reason (got %d)"
          % rc)
    print("addresses: %d refusals checked" % (len(cases) + 3))


def log_format(bin_dir):
    # Both daemons: RFC 3339 UTC timestamp, level, program.
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (INFO|WARN|"
                      r"ERROR) effadam-(server|worker): ")
    for name, args in [("effadam-server", ["--listen=1.2.3.4:5:6"]),
                       ("effadam-worker", ["--server=x", "--model=toy"])]:
        rc, out = run(bin_dir, name, *args)
        check(rc == 1 and line.match(out),
              "%s logs with timestamp and level: %r" % (name, out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    args = parser.parse_args()
    help_and_version(args.bin)
    durations(args.bin)
    addresses(args.bin)
    log_format(args.bin)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
