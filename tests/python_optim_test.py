#!/usr/bin/env python3
"""effadam.optim.EfficientAdam against a real effadam-server on loopback:
with fp32 both ways and one worker it is torch.optim.Adam; it names the
layout after the model's parameters and leaves frozen ones alone; bad
input is a clear error; and the example scripts (examples/) run end to end
through examples/local_cluster.py for a few rounds.

Usage: python_optim_test.py --bin BUILD/bin [unittest args]
(run by /usr/bin/python3 with PYTHONPATH=BUILD/python, as ctest does).
Exits 77 (ctest: skipped), saying why, where python3-torch is missing.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import shutil
import unittest

if importlib.util.find_spec("torch") is None:
    print("SKIPPED: python3-torch is not installed for %s (scripts/setup.sh "
          "installs it)" % sys.executable)
    sys.exit(77)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import effadam  # noqa: E402
from effadam.optim import EfficientAdam  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from python_bindings_test import ServerTestCase  # noqa: E402
import python_bindings_test  # noqa: E402

EXAMPLES = os.path.join(HERE, "..", "examples")
torch.set_num_threads(1)


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


class EfficientAdamTest(ServerTestCase):
    def address(self, rounds, *flags):
        """A one-worker server's address."""
        return self.server("--workers=1", "--rounds=%d" % rounds,
                           *flags).address

    def test_fp32_with_one_worker_is_torch_adam(self):
        address = self.address(30, "--worker_codec=fp32", "--server_codec=fp32")
        model, reference = mlp(), mlp()
        opt = EfficientAdam(model.named_parameters(), server=address, lr=1e-2,
                            worker_codec="fp32", server_codec="fp32")
        ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
        x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
        for _ in range(30):
            for m, o in ((model, opt), (reference, ref)):
                o.zero_grad()
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                o.step()
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        moved = sum((a - b).abs().sum().item()
                    for a, b in zip(model.parameters(), mlp().parameters()))
        self.assertGreater(moved, 1.0)  # it did train
        self.assertEqual(opt.round, 31)
        opt.step()  # the server has ended training: parameters stay
        self.assertTrue(opt.server_finished)
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        opt.finish()

    def test_layout_names_and_frozen_parameters(self):
        address = self.address(5)
        model = mlp()
        model[0].weight.requires_grad_(False)
        frozen = model[0].weight.detach().clone()
        model.scale = torch.nn.Parameter(torch.tensor(2.0))  # 0-dimensional
        with EfficientAdam(model, server=address, lr=0.1) as opt:
            # named_parameters() order: the module's own, then its children's.
            self.assertEqual(opt.layout.tensors,
                             [("scale", (1,)), ("0.bias", (16,)),
                              ("2.weight", (3, 16)), ("2.bias", (3,))])
            x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x) * model.scale, y)
                loss.backward()
                return loss

            loss = opt.step(closure)
            self.assertTrue(torch.is_tensor(loss))
            self.assertNotEqual(model.scale.item(), 2.0)
            self.assertTrue(torch.equal(model[0].weight, frozen))
            # The parameters hold the library's replica, bit for bit.
            flat = torch.cat([p.detach().reshape(-1) for _, p in
                              model.named_parameters() if p.requires_grad])
            self.assertEqual(effadam.params_checksum(flat.numpy()),
                             effadam.params_checksum(opt.client.params))
            self.assertEqual(opt.traffic.server_to_worker,
                             opt.client.traffic.server_to_worker)

    def test_bad_input_is_a_clear_error(self):
        address = self.address(5)
        model = mlp()
        with self.assertRaisesRegex(ValueError, "float64"):
            EfficientAdam([("w", torch.zeros(3, dtype=torch.float64,
                                             requires_grad=True))],
                          server=address)
        with self.assertRaisesRegex(ValueError, "parameter groups"):
            EfficientAdam([{"params": model.parameters()}], server=address)
        with self.assertRaisesRegex(ValueError, "nothing to train"):
            EfficientAdam([torch.zeros(3)], server=address)
        with self.assertRaisesRegex(effadam.InvalidArgumentError,
                                    "--worker_codec"):
            EfficientAdam(model, server=address, worker_codec="zip")
        with self.assertRaises(effadam.StatusError) as e:  # server: sign
            EfficientAdam(model, server=address, worker_codec="fp32")
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.FAILED_PRECONDITION)
        opt = EfficientAdam(model, server=address)
        opt.param_groups[0]["lr"] = 0.5  # what an LR scheduler does
        with self.assertRaisesRegex(ValueError, "inverse_sqrt"):
            opt.step()
        with self.assertRaises(NotImplementedError):
            opt.state_dict()
        with self.assertRaises(ValueError):
            opt.add_param_group({"params": [torch.zeros(2,
                                                        requires_grad=True)]})
        opt.cancel()


class ExamplesTest(unittest.TestCase):
    """Each example through the launcher, 2 workers, a few rounds: they
    run, evaluate, and every replica ends equal to the server's x."""

    def run_example(self, script, rounds, *flags):
        out = tempfile.mkdtemp(prefix="effadam_example_")
        try:
            p = subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, "local_cluster.py"),
                 "--bin", python_bindings_test.BIN, "--workers=2",
                 "--rounds=%d" % rounds, "--worker_codec=sign",
                 "--server_codec=sign", "--out", out, "--",
                 os.path.join(EXAMPLES, script), "--eval_every=%d" % rounds]
                + list(flags),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=120)
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertIn("every worker's equal to the server's: yes",
                          p.stdout)
            with open(os.path.join(out, "worker0.json")) as f:
                return json.load(f)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def test_fashion_mnist_cnn(self):
        if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
            self.skipTest("dataset-fashion-mnist is not installed")
        s = self.run_example("fashion_mnist_cnn.py", 20, "--channels=4,8",
                             "--hidden=16", "--batch_size=32", "--lr=1e-2",
                             "--lr_schedule=constant")
        self.assertEqual(s["rounds"], 20)
        self.assertGreater(s["test_accuracy"], 0.25)  # chance is 0.1
        self.assertGreater(s["compression_ratio"], 5)

    def test_char_lm(self):
        if not os.path.exists("/usr/share/doc/jargon-text/jargon.txt.gz"):
            self.skipTest("jargon-text is not installed")
        s = self.run_example("char_lm.py", 20, "--batch_size=8",
                             "--channels=16", "--lr=2e-2")
        self.assertEqual(s["rounds"], 20)
        # Uniform over the text's 155 characters is 7.3 bits; 20 rounds
        # learn at least the characters' frequencies.
        self.assertLess(s["test_bits_per_char"], 6.0)


if __name__ == "__main__":
    sys.exit(python_bindings_test.main())
