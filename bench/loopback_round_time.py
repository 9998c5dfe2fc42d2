#!/usr/bin/env python3
"""Round time of a real cluster on loopback: 1 effadam-server and N
effadam-worker processes train the MLP, once with fp32 both ways and once
with sign both ways (Efficient-Adam), in the same run so the two figures
share the machine's state. The time per round is the difference of two runs
of different lengths divided by the difference in rounds, which cancels
start-up, joins and the final evaluation.

With --tls every setting runs twice more with TLS and the shared token
(certificates made by the openssl CLI, as tests/security_test.py does),
in the same order, so the two figures show what TLS costs per round.

Usage: bench/loopback_round_time.py --bin build/bin [--workers 4] [--tls]
Only 127.0.0.1 is used; every process is killed at the end.
"""

import argparse
import os
import secrets
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from cluster_test import Cluster  # noqa: E402
from security_test import make_pki  # noqa: E402

SETTINGS = [("fp32/fp32", ["--worker_codec=fp32", "--server_codec=fp32"]),
            ("sign/sign", ["--worker_codec=sign", "--server_codec=sign"])]


def run(bin_dir, workers, rounds, codec_flags, security=([], [])):
    """security: (server flags, worker flags)."""
    c = Cluster(bin_dir, "bench")
    try:
        flags = codec_flags + ["--rounds=%d" % rounds]
        server, port = c.start_server(flags + ["--workers=%d" % workers]
                                      + security[0])
        procs = [c.start_worker("w%d" % r, port,
                                flags + security[1]
                                + ["--model=mlp", "--rank=%d" % r,
                                   "--eval_every=0"])
                 for r in range(workers)]
        for p in procs + [server]:
            c.expect_ok(p)
        s = c.summary("server")
        return s["seconds"], s["bytes_worker_to_server"] / (rounds * workers)
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--short", type=int, default=30)
    ap.add_argument("--long", type=int, default=330)
    ap.add_argument("--tls", action="store_true",
                    help="also run every setting with TLS and the token")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="effadam_bench_pki_") as d:
        modes = [("plaintext", ([], []))]
        if args.tls:
            pki = make_pki(d)
            token = os.path.join(d, "token")
            with open(token, "w") as f:
                f.write(secrets.token_hex(32))
            modes.append(("TLS+token", (
                ["--tls_cert_file=" + pki["server.pem"],
                 "--tls_key_file=" + pki["server.key"],
                 "--auth_token_file=" + token],
                ["--tls_ca_file=" + pki["ca.pem"],
                 "--auth_token_file=" + token])))
        print("%-10s %-10s %14s %16s" % ("setting", "transport",
                                         "ms per round", "up B/worker/round"))
        for name, flags in SETTINGS:
            for mode, security in modes:
                t_short, _ = run(args.bin, args.workers, args.short, flags,
                                 security)
                t_long, up = run(args.bin, args.workers, args.long, flags,
                                 security)
                ms = 1000 * (t_long - t_short) / (args.long - args.short)
                print("%-10s %-10s %14.2f %16d" % (name, mode, ms, up))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
