#!/usr/bin/env python3
"""TLS, mutual TLS and the shared token on a real loopback cluster
(docs/security.md). A CA, a server certificate (SAN IP:127.0.0.1 and
DNS:localhost) and a client certificate are made with the openssl CLI in a
temporary directory; then:

- tls_token: a TLS + token server trains the toy model with 2 workers to
  the end and every worker's params_checksum equals the server's. While one
  worker waits for the other, workers without the token, with a wrong one,
  and without TLS are refused (non-zero exit, a message naming the
  problem), and the server's Status (round, params_checksum, live workers)
  and its rejected-messages metric say they changed nothing else;
  effadam-health works over TLS and fails in plaintext.
- mtls: with --tls_client_ca_file a client without a certificate, or with
  one of another CA, fails; with its certificate a worker trains to the end
  and effadam-health answers; --tls_server_name picks the name checked.
- bad_files: unreadable, empty and mismatched files stop every binary at
  start-up with exit 1 and a message naming the flag and the file.

Usage: security_test.py --bin BUILD/bin [--only NAME]
Only 127.0.0.1 is used; every process is bounded in time and killed in a
finally block, and the temporary directories are removed.
"""

import argparse
import functools
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_test import (TOY, Failure, check, run_cases,  # noqa: E402
                          wait_started)

ROUNDS = 20
# A refused or unreachable client gives up after this (it retries
# UNAVAILABLE with backoff until then).
REFUSED = ["--connect_timeout=2s"]
TOOL_TIMEOUT = 30  # seconds for one short-lived process


def openssl(cwd, *args):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=TOOL_TIMEOUT)
    check(r.returncode == 0, "openssl %s failed:\n%s" % (" ".join(args),
                                                         r.stderr))


def make_pki(d):
    """ca.pem, server.pem/.key (127.0.0.1, localhost), client.pem/.key, and
    other-ca.pem with other-client.pem/.key, a client of another CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl(d, "req", "-x509", *ec, "-keyout", ca + ".key", "-out",
                ca + ".pem", "-days", "2", "-subj", "/CN=effadam test " + ca,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "extendedKeyUsage=serverAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"),
                          ("client", "ca", "client.ext"),
                          ("other-client", "other-ca", "client.ext")):
        openssl(d, "req", *ec, "-keyout", name + ".key", "-out",
                name + ".csr", "-subj", "/CN=effadam " + name)
        openssl(d, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem",
                "-CAkey", ca + ".key", "-set_serial",
                str(secrets.randbits(63)), "-days", "2", "-extfile", ext,
                "-out", name + ".pem")
    return {n: os.path.join(d, n) for n in os.listdir(d)}


def write(c, name, text):
    path = c.path(name)
    with open(path, "w") as f:
        f.write(text)
    return path


def run_tool(c, label, argv):
    """A short-lived binary: (exit status, stdout, stderr), bounded."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True,
                           timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Failure("%s did not finish within %d s" % (label, TOOL_TIMEOUT))
    return r.returncode, r.stdout, r.stderr


def health(c, port, *flags):
    return run_tool(c, "effadam-health",
                    [os.path.join(c.bin, "effadam-health"),
                     "--addr=127.0.0.1:%d" % port, "--timeout=3s", *flags])


def status(c, port, *flags):
    """The server's Status as a dict, or raises with the probe's error."""
    rc, out, err = run_tool(c, "status_probe",
                            [os.path.join(c.bin, "status_probe"),
                             "--server=127.0.0.1:%d" % port, *flags])
    check(rc == 0, "status_probe exited with %d: %s" % (rc, err))
    return json.loads(out)


def expect_tool_fails(c, label, argv, *needles):
    """A short-lived client that must fail: non-zero exit, stderr naming the
    problem. Returns its last line of stderr."""
    rc, out, err = run_tool(c, label, argv)
    check(rc != 0, "%s exited with 0, want a failure:\n%s%s" % (label, out, err))
    for n in needles:
        check(n in err, "%s: stderr does not mention %r:\n%s" % (label, n, err))
    return err.strip().splitlines()[-1] if err.strip() else ""


def expect_worker_fails(c, label, port, flags, *needles):
    """A worker that must fail; as expect_tool_fails."""
    p = c.start_worker(label, port, flags)
    rc = c.wait(p, timeout=TOOL_TIMEOUT)
    out, err = c.output(label)
    check(rc != 0, "%s exited with 0, want a failure:\n%s%s" % (label, out, err))
    for n in needles:
        check(n in err, "%s: stderr does not mention %r:\n%s" % (label, n, err))
    return err.strip().splitlines()[-1] if err.strip() else ""


def wait_for_output(c, label, text, timeout=30):
    deadline = time.time() + timeout
    while text not in "".join(c.output(label)):
        check(time.time() < deadline, "%s did not print %r within %d s:\n%s"
              % (label, text, timeout, "".join(c.output(label))))
        time.sleep(0.05)


def metrics_port(c):
    out, err = c.output("server")
    m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", out + err)
    check(m is not None, "the server printed no metrics port:\n%s%s" % (out, err))
    return int(m.group(1))


def rejected(port, reason):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^effadam_server_rejected_messages_total\{reason="%s"\} (\S+)$'
                  % reason, text, re.M)
    check(m is not None, "no rejected-messages series for %s" % reason)
    return float(m.group(1))


def start_secure_server(c, workers, flags):
    """A server for `workers` workers on the toy settings of worker_flags()."""
    return c.start_server(["--workers=%d" % workers, "--rounds=%d" % ROUNDS,
                           "--block_size=64", "--min_compress_elements=64",
                           "--seed=5", "--worker_codec=sign",
                           "--server_codec=sign"] + flags)


def worker_flags():
    return TOY + ["--worker_codec=sign", "--server_codec=sign",
                  "--rounds=%d" % ROUNDS, "--eval_every=10"]


def check_same_checksums(c, labels):
    server = c.summary("server")
    check(server["rounds"] == ROUNDS, "the server ran %s rounds" % server["rounds"])
    for label in labels:
        w = c.summary(label)
        check(w["rounds"] == ROUNDS, "%s ran %s rounds" % (label, w["rounds"]))
        check(w["params_checksum"] == server["params_checksum"],
              "%s params_checksum %s, server %s"
              % (label, w["params_checksum"], server["params_checksum"]))
    return server["params_checksum"]


# ---- test cases -----------------------------------------------------------

def case_tls_token(c, pki):
    token = write(c, "token", secrets.token_hex(32) + "\n")
    wrong = write(c, "wrong", secrets.token_hex(32))
    tls = ["--tls_ca_file=" + pki["ca.pem"]]
    auth = ["--auth_token_file=" + token]
    server, port = start_secure_server(
        c, 2, ["--tls_cert_file=" + pki["server.pem"],
               "--tls_key_file=" + pki["server.key"],
               "--metrics_listen=127.0.0.1:0"] + auth)
    wait_for_output(c, "server", "TLS, bearer token required")
    mport = metrics_port(c)

    rc, out, err = health(c, port, *tls)
    check(rc == 0 and "SERVING" in out, "health over TLS: %d %s%s"
          % (rc, out, err))
    expect_tool_fails(c, "health_plaintext",
                      [os.path.join(c.bin, "effadam-health"),
                       "--addr=127.0.0.1:%d" % port, "--timeout=2s"],
                      "127.0.0.1:%d" % port)

    # Worker 0 joins, uploads x0, sends round 1 and waits for worker 1.
    w0 = c.start_worker("worker0", port, worker_flags() + tls + auth)
    wait_started(c, "worker0", w0)
    deadline = time.time() + 30
    while status(c, port, *tls, *auth)["bytes_worker_to_server"] == 0:
        check(time.time() < deadline, "worker0 sent no update within 30 s")
        time.sleep(0.05)
    before = status(c, port, *tls, *auth)
    check(before["round"] == 1 and before["live_workers"] == 1 and
          before["params_checksum"], "unexpected state %s" % before)

    refused = [
        expect_worker_fails(c, "no_token", port,
                            worker_flags() + tls + REFUSED,
                            "UNAUTHENTICATED", "no token was sent"),
        expect_worker_fails(c, "wrong_token", port,
                            worker_flags() + tls + REFUSED
                            + ["--auth_token_file=" + wrong],
                            "UNAUTHENTICATED", "the token is wrong"),
        expect_worker_fails(c, "plaintext", port,
                            worker_flags() + auth + REFUSED,
                            "UNAVAILABLE", "127.0.0.1:%d" % port,
                            "If it uses TLS, give --tls_ca_file"),
        expect_tool_fails(c, "status_no_token",
                          [os.path.join(c.bin, "status_probe"),
                           "--server=127.0.0.1:%d" % port] + tls,
                          "UNAUTHENTICATED", "no token was sent"),
    ]
    after = status(c, port, *tls, *auth)
    for key in ("round", "live_workers", "params_checksum",
                "bytes_worker_to_server", "bytes_join"):
        check(after[key] == before[key], "%s changed from %s to %s by refused "
              "clients" % (key, before[key], after[key]))
    # Two workers' Joins and the probe's Status; the plaintext worker never
    # got through the handshake.
    n = rejected(mport, "unauthenticated")
    check(n == 3, "rejected{reason=unauthenticated} = %s, want 3" % n)

    w1 = c.start_worker("worker1", port, worker_flags() + tls + auth)
    for p in (w0, w1, server):
        c.expect_ok(p)
    checksum = check_same_checksums(c, ["worker0", "worker1"])
    return "params_checksum %s on the server and 2 workers; refused: %s" % (
        checksum, " | ".join(r[:70] for r in refused))


def case_mtls(c, pki):
    tls = ["--tls_ca_file=" + pki["ca.pem"]]
    mine = ["--tls_cert_file=" + pki["client.pem"],
            "--tls_key_file=" + pki["client.key"]]
    other = ["--tls_cert_file=" + pki["other-client.pem"],
             "--tls_key_file=" + pki["other-client.key"]]
    server, port = start_secure_server(
        c, 1, ["--tls_cert_file=" + pki["server.pem"],
               "--tls_key_file=" + pki["server.key"],
               "--tls_client_ca_file=" + pki["ca.pem"]])
    wait_for_output(c, "server", "mutual TLS")

    health_bin = os.path.join(c.bin, "effadam-health")
    addr = "--addr=127.0.0.1:%d" % port
    for label, flags in (("health_no_cert", tls),
                         ("health_other_ca", tls + other),
                         ("health_wrong_name", tls + mine + [
                             "--tls_server_name=other.example"])):
        expect_tool_fails(c, label, [health_bin, addr, "--timeout=2s"] + flags,
                          "127.0.0.1:%d" % port)
    for name in ([], ["--tls_server_name=localhost"]):
        rc, out, err = health(c, port, *tls, *mine, *name)
        check(rc == 0 and "SERVING" in out, "health with a client certificate "
              "%s: %d %s%s" % (name, rc, out, err))
    expect_worker_fails(c, "worker_no_cert", port,
                        worker_flags() + tls + REFUSED, "UNAVAILABLE",
                        "give --tls_cert_file/--tls_key_file")
    w = c.start_worker("worker0", port, worker_flags() + tls + mine)
    c.expect_ok(w)
    c.expect_ok(server)
    checksum = check_same_checksums(c, ["worker0"])
    return "worker with its certificate: params_checksum %s" % checksum


def case_bad_files(c, pki):
    empty = write(c, "empty", "")
    blank = write(c, "blank", " \n")
    missing = c.path("missing.pem")
    server = os.path.join(c.bin, "effadam-server")
    worker = os.path.join(c.bin, "effadam-worker")
    health_bin = os.path.join(c.bin, "effadam-health")
    listen = ["--listen=127.0.0.1:0", "--metrics_listen="]
    cases = [
        ("server_cert_only", [server, *listen,
                              "--tls_cert_file=" + pki["server.pem"]],
         ["--tls_cert_file needs --tls_key_file"]),
        ("server_mismatched_key", [server, *listen,
                                   "--tls_cert_file=" + pki["server.pem"],
                                   "--tls_key_file=" + pki["client.key"]],
         ["--tls_key_file=" + pki["client.key"], "is not the private key"]),
        ("server_empty_cert", [server, *listen, "--tls_cert_file=" + empty,
                               "--tls_key_file=" + pki["server.key"]],
         ["--tls_cert_file=" + empty, "the file is empty"]),
        ("server_blank_token", [server, *listen,
                                "--auth_token_file=" + blank],
         ["--auth_token_file=" + blank, "no token"]),
        ("server_missing_ca", [server, *listen,
                               "--tls_cert_file=" + pki["server.pem"],
                               "--tls_key_file=" + pki["server.key"],
                               "--tls_client_ca_file=" + missing],
         ["--tls_client_ca_file=" + missing, "cannot open"]),
        ("worker_missing_ca", [worker, "--tls_ca_file=" + missing],
         ["--tls_ca_file=" + missing, "cannot open"]),
        ("worker_empty_token", [worker, "--auth_token_file=" + empty],
         ["--auth_token_file=" + empty, "the file is empty"]),
        ("worker_key_is_cert", [worker, "--tls_ca_file=" + pki["ca.pem"],
                                "--tls_cert_file=" + pki["client.pem"],
                                "--tls_key_file=" + pki["client.pem"]],
         ["--tls_key_file=" + pki["client.pem"], "private key"]),
        ("health_cert_without_ca", [health_bin,
                                    "--tls_cert_file=" + pki["client.pem"],
                                    "--tls_key_file=" + pki["client.key"]],
         ["--tls_cert_file needs --tls_ca_file"]),
    ]
    for label, argv, needles in cases:
        rc, out, err = run_tool(c, label, argv)
        check(rc == 1, "%s: exit %d, want 1:\n%s%s" % (label, rc, out, err))
        for n in needles:
            check(n in err, "%s: stderr does not mention %r:\n%s"
                  % (label, n, err))
        check("listening" not in out, "%s: started anyway" % label)
    return "%d bad start-ups refused" % len(cases)


CASES = [
    ("tls_token", case_tls_token),
    ("mtls", case_mtls),
    ("bad_files", case_bad_files),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="build/bin directory")
    parser.add_argument("--only", help="run this case only")
    args = parser.parse_args()
    for b in ("effadam-server", "effadam-worker", "effadam-health",
              "status_probe"):
        if not os.access(os.path.join(args.bin, b), os.X_OK):
            print("missing %s in %s" % (b, args.bin))
            return 1
    with tempfile.TemporaryDirectory(prefix="effadam_pki_") as d:
        pki = make_pki(d)
        cases = [(name, functools.partial(fn, pki=pki)) for name, fn in CASES]
        failed = run_cases(args.bin, cases, args.only, prefix="security_")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
