#!/usr/bin/env python3
"""effadam-sim as a user runs it: same flags give the same bits, the summary
holds what it promises, and bad flags fail with a clear message."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

BIN = None
TOY = ["--model=toy", "--workers=3", "--rounds=40", "--eval_every=20",
       "--batch_size=8", "--block_size=64", "--min_compress_elements=64"]


def sim(*flags, timeout=120):
    return subprocess.run([os.path.join(BIN, "effadam-sim"), *flags],
                          capture_output=True, text=True, timeout=timeout)


class SimCli(unittest.TestCase):
    def run_summary(self, *flags):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "summary.json")
            r = sim(*TOY, *flags, "--summary_json=" + path)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(path) as f:
                return json.load(f), r.stdout

    def test_same_flags_same_bits_and_summary_fields(self):
        a, out = self.run_summary("--worker_codec=sign", "--server_codec=q4s")
        b, _ = self.run_summary("--worker_codec=sign", "--server_codec=q4s")
        self.assertEqual(a["params_checksum"], b["params_checksum"])
        self.assertRegex(a["params_checksum"], r"^[0-9a-f]{16}$")
        for key in ("rounds", "train_loss", "bytes_worker_to_server",
                    "bytes_server_to_worker", "fp32_equivalent_bytes",
                    "distance_to_optimum", "compression_ratio"):
            self.assertIn(key, a)
        self.assertEqual(a["rounds"], 40)
        # Two progress lines (rounds 20 and 40) and a closing line.
        self.assertEqual(out.count("\nround "), 2, out)
        self.assertIn("fewer than fp32", out)
        ratio = a["fp32_equivalent_bytes"] / (a["bytes_worker_to_server"] +
                                              a["bytes_server_to_worker"])
        self.assertAlmostEqual(ratio, a["compression_ratio"], places=6)

    def test_seed_and_codec_change_the_result(self):
        base, _ = self.run_summary("--seed=1")
        other_seed, _ = self.run_summary("--seed=2")
        other_codec, _ = self.run_summary("--seed=1", "--worker_codec=q8")
        self.assertNotEqual(base["params_checksum"],
                            other_seed["params_checksum"])
        self.assertNotEqual(base["params_checksum"],
                            other_codec["params_checksum"])

    def test_bad_flags_fail_clearly(self):
        cases = [
            (["--worker_codec=sgn"], "--worker_codec"),
            (["--server_codec=q9"], "bit width"),
            (["--block_size=100"], "--block_size"),
            (["--error_feedback=sometimes"], "--error_feedback"),
            (["--model=resnet"], "resnet"),
            (["--lr=-1"], "lr"),
            (["--workers=0"], "--workers"),
            (["--lr_schedule=cosine"], "--lr_schedule"),
            (["--data_dir=/nonexistent", "--model=mlp"], "/nonexistent"),
            (["--model=mlp", "--mlp_hidden=256,x"], "--mlp_hidden"),
            (["--model=mlp", "--mlp_hidden=0"], "--mlp_hidden"),
            (["--model=mlp", "--mlp_hidden="], "--mlp_hidden"),
        ]
        for flags, needle in cases:
            r = sim(*TOY, *flags)
            self.assertEqual(r.returncode, 1, (flags, r.stdout, r.stderr))
            self.assertIn(needle, r.stderr, flags)
            self.assertTrue(r.stderr.startswith("effadam-sim: "), r.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    args, rest = parser.parse_known_args()
    BIN = args.bin
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
