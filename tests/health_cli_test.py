#!/usr/bin/env python3
"""effadam-health against a live effadam-server (SERVING, exit 0) and
against a port nobody listens on (exit 1 with the reason). 127.0.0.1 only."""

import argparse
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from cluster_test import Cluster  # noqa: E402

BIN = None


def health(port, *flags):
    return subprocess.run([os.path.join(BIN, "effadam-health"),
                           "--addr=127.0.0.1:%d" % port, *flags],
                          capture_output=True, text=True, timeout=30)


class HealthCli(unittest.TestCase):
    def test_serving_then_refused(self):
        c = Cluster(BIN, "health")
        try:
            server, port = c.start_server(["--workers=1"])
            r = health(port)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("SERVING", r.stdout)
            r = health(port, "--service=no.such.Service")
            self.assertEqual(r.returncode, 1)
            self.assertIn("127.0.0.1:%d" % port, r.stderr)
            server.terminate()
            server.wait(timeout=30)
            r = health(port, "--timeout=1s")
            self.assertEqual(r.returncode, 1)
            self.assertIn("127.0.0.1:%d" % port, r.stderr)
        finally:
            c.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    args, rest = parser.parse_known_args()
    BIN = args.bin
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
