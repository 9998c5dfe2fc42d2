#!/usr/bin/env python3
"""effadam.optim.EfficientAdam against a real effadam-server on loopback:
with fp32 both ways and one worker it is torch.optim.Adam (EfficientAdamW
torch.optim.AdamW), with weight decay and under torch's LR schedulers; it
names the layout after the model's parameters and leaves frozen ones
alone; the server and rank come from the environment; a killed worker
restarted from its state_dict ends bit for bit where an uninterrupted one
does; bad input is a clear error that changes nothing; CUDA parameters
where a GPU is; and the example scripts (examples/) run end to end through
`python3 -m effadam.run` for a few rounds.

Usage: python_optim_test.py --bin BUILD/bin [unittest args]
(run by /usr/bin/python3 with PYTHONPATH=BUILD/python, as ctest does).
Exits 77 (ctest: skipped), saying why, where python3-torch is missing.
"""

import copy
import importlib.util
import io
import json
import math
import os
import re
import signal
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
from effadam.optim import EfficientAdam, EfficientAdamW  # noqa: E402

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


def batches(steps):
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(64, 10, generator=g),
             torch.randint(0, 3, (64,), generator=g)) for _ in range(steps)]


def train_both(model, opt, reference, ref, data, sched=None, ref_sched=None):
    """The same batches through both optimizers (and schedulers)."""
    for x, y in data:
        for m, o, s in ((model, opt, sched), (reference, ref, ref_sched)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
            if s is not None:
                s.step()


class EfficientAdamTest(ServerTestCase):
    def address(self, rounds, *flags):
        """A one-worker server's address."""
        return self.server("--workers=1", "--rounds=%d" % rounds,
                           *flags).address

    def fp32_address(self, rounds):
        return self.address(rounds, "--worker_codec=fp32",
                            "--server_codec=fp32")

    def assert_same_params(self, model, reference, atol=1e-5):
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=atol)

    def test_fp32_with_one_worker_is_torch_adam(self):
        address = self.fp32_address(30)
        model, reference = mlp(), mlp()
        # lr positionally, as every torch optimizer takes it.
        opt = EfficientAdam(model.parameters(), 1e-2, server=address,
                            worker_codec="fp32", server_codec="fp32")
        ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
        train_both(model, opt, reference, ref, batches(30))
        self.assert_same_params(model, reference)
        moved = sum((a - b).abs().sum().item()
                    for a, b in zip(model.parameters(), mlp().parameters()))
        self.assertGreater(moved, 1.0)  # it did train
        self.assertEqual(opt.round, 31)
        opt.step()  # the server has ended training: parameters stay
        self.assertTrue(opt.server_finished)
        self.assert_same_params(model, reference)
        opt.finish()

    def test_weight_decay_is_adams_and_adamws(self):
        for ours, theirs in ((EfficientAdam, torch.optim.Adam),
                             (EfficientAdamW, torch.optim.AdamW)):
            with self.subTest(ours.__name__):
                address = self.fp32_address(30)
                model, reference = mlp(), mlp()
                opt = ours(model.parameters(), 1e-2, (0.8, 0.99), 1e-7, 0.1,
                           server=address, worker_codec="fp32",
                           server_codec="fp32")
                ref = theirs(reference.parameters(), 1e-2, (0.8, 0.99), 1e-7,
                             0.1)
                train_both(model, opt, reference, ref, batches(30))
                self.assert_same_params(model, reference)
                opt.finish()

    def test_param_groups_show_the_values_given(self):
        opt = EfficientAdam(mlp(), 0.01, betas=(0.9, 0.99), eps=1e-7,
                            server=self.address(2))
        group = opt.param_groups[0]
        self.assertEqual(group["lr"], 0.01)  # not 0.009999999776482582
        self.assertEqual(group["betas"], (0.9, 0.99))
        self.assertEqual(group["eps"], 1e-7)
        self.assertEqual(group["weight_decay"], 0)
        opt.cancel()

    def check_scheduler(self, make_sched, steps=40):
        address = self.fp32_address(steps)
        model, reference = mlp(), mlp()
        opt = EfficientAdam(model.parameters(), 1e-2, server=address,
                            worker_codec="fp32", server_codec="fp32")
        ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
        train_both(model, opt, reference, ref, batches(steps),
                   make_sched(opt), make_sched(ref))
        self.assertEqual(opt.param_groups[0]["lr"], ref.param_groups[0]["lr"])
        self.assert_same_params(model, reference)
        opt.finish()

    def test_lr_schedulers_equal_torch_adams(self):
        sch = torch.optim.lr_scheduler
        cases = {
            "StepLR": lambda o: sch.StepLR(o, step_size=10, gamma=0.3),
            "CosineAnnealingLR": lambda o: sch.CosineAnnealingLR(o, T_max=40),
            "OneCycleLR": lambda o: sch.OneCycleLR(
                o, max_lr=2e-2, total_steps=40, cycle_momentum=False),
            # Warm-up from lr 0 in the first step.
            "LambdaLR warm-up": lambda o: sch.LambdaLR(
                o, lambda s: min(1.0, s / 10)),
        }
        for name, make in cases.items():
            with self.subTest(name):
                self.check_scheduler(make)

    def test_one_cycle_momentum_is_refused_clearly(self):
        opt = EfficientAdam(mlp(), 1e-2, server=self.address(5))
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=5)
        with self.assertRaisesRegex(ValueError, "cycle_momentum=False"):
            opt.step()
        self.assertEqual(opt.round, 1)  # nothing happened
        opt.cancel()

    def test_scheduler_setting_a_bad_lr_changes_nothing(self):
        model = mlp()
        opt = EfficientAdam(model, 1e-2, server=self.address(5))
        model(torch.randn(4, 10)).sum().backward()
        before = [p.detach().clone() for p in model.parameters()]
        for bad in (math.nan, -1e-3, math.inf):
            opt.param_groups[0]["lr"] = bad
            with self.assertRaisesRegex(ValueError, "learning rate must be"):
                opt.step()
            self.assertEqual(opt.round, 1)
            for a, b in zip(before, model.parameters()):
                self.assertTrue(torch.equal(a, b))
        opt.param_groups[0]["lr"] = 1e-2
        opt.step()
        self.assertEqual(opt.round, 2)
        opt.cancel()

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

            for _ in range(3):  # the gradients become the flat buffer's
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
            # zero_grad(set_to_none=True) and new gradient tensors work too.
            opt.zero_grad(set_to_none=True)
            self.assertIsNone(model.scale.grad)
            opt.step(closure)

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
        with self.assertRaisesRegex(ValueError, "amsgrad"):
            EfficientAdam(model, 1e-3, (0.9, 0.999), 1e-8, 0, True,
                          server=address)
        with self.assertRaisesRegex(effadam.InvalidArgumentError,
                                    "--worker_codec"):
            EfficientAdam(model, server=address, worker_codec="zip")
        with self.assertRaises(effadam.StatusError) as e:  # server: sign
            EfficientAdam(model, server=address, worker_codec="fp32")
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.FAILED_PRECONDITION)
        emb = torch.nn.Embedding(10, 4, sparse=True)
        opt = EfficientAdam(emb, server=address)
        before = emb.weight.detach().clone()
        emb(torch.tensor([1, 2])).sum().backward()
        with self.assertRaisesRegex(ValueError, "sparse"):
            opt.step()
        self.assertTrue(torch.equal(emb.weight, before))
        emb.weight.grad = torch.full((10, 4), math.nan)
        with self.assertRaisesRegex(effadam.InvalidArgumentError, "NaN"):
            opt.step()  # the library refuses; nothing changed
        self.assertTrue(torch.equal(emb.weight, before))
        self.assertEqual(opt.round, 1)
        with self.assertRaises(ValueError):
            opt.add_param_group({"params": [torch.zeros(2,
                                                        requires_grad=True)]})
        opt.cancel()

    def test_a_float64_gradient_is_refused(self):
        model = mlp()
        opt = EfficientAdam(model, server=self.address(5))
        # torch refuses such an assignment to .grad; .grad.data does not.
        model(torch.randn(2, 10)).sum().backward()
        p = next(model.parameters())
        p.grad.data = p.grad.data.double()
        with self.assertRaisesRegex(ValueError, "float64"):
            opt.step()
        self.assertEqual(opt.round, 1)
        opt.cancel()


class EnvironmentTest(ServerTestCase):
    """Where the server is and the rank, from what torchrun, PyTorchJob,
    an Indexed Job and effadam.run put in the environment."""

    def setUp(self):
        super().setUp()
        self.saved = dict(os.environ)
        for k in ("RANK", "WORLD_SIZE", "EFFADAM_SERVER", "MASTER_ADDR",
                  "EFFADAM_PORT", "JOB_COMPLETION_INDEX",
                  "EFFADAM_NUM_SHARDS", "LOCAL_RANK", "MASTER_PORT"):
            os.environ.pop(k, None)

    def tearDown(self):
        os.environ.clear()
        os.environ.update(self.saved)
        super().tearDown()

    def test_rank_and_server_from_the_environment(self):
        s = self.server("--workers=2", "--rounds=5")
        host, port = s.address.rsplit(":", 1)
        # torchrun's variables: rank 1 started first still gets rank 1.
        os.environ.update(RANK="1", WORLD_SIZE="2", MASTER_ADDR=host,
                          MASTER_PORT="29500", EFFADAM_PORT=port,
                          LOCAL_RANK="0")
        opt = EfficientAdam(mlp(), 1e-3)
        self.assertEqual(opt.rank, 1)
        self.assertEqual(opt.placement.server, s.address)
        self.assertEqual(opt.placement.server_source, "MASTER_ADDR")
        opt.cancel()
        # An Indexed Job: the completion index, and EFFADAM_SERVER.
        s2 = self.server("--workers=2", "--rounds=5")
        os.environ.clear()
        os.environ.update(self.saved)
        os.environ.update(JOB_COMPLETION_INDEX="1", EFFADAM_SERVER=s2.address)
        for k in ("RANK", "WORLD_SIZE"):
            os.environ.pop(k, None)
        opt = EfficientAdam(mlp(), 1e-3)
        self.assertEqual(opt.rank, 1)
        self.assertEqual(opt.placement.rank_source, "JOB_COMPLETION_INDEX")
        opt.cancel()

    def test_arguments_win_over_the_environment(self):
        s = self.server("--workers=2", "--rounds=5")
        os.environ.update(RANK="1", EFFADAM_SERVER="127.0.0.1:1")
        opt = EfficientAdam(mlp(), 1e-3, server=s.address, rank=0)
        self.assertEqual(opt.rank, 0)
        opt.cancel()

    def test_bad_environment_is_a_clear_error(self):
        s = self.server("--workers=2", "--rounds=5")
        os.environ.update(EFFADAM_SERVER=s.address, WORLD_SIZE="3", RANK="0")
        with self.assertRaises(effadam.StatusError) as e:
            EfficientAdam(mlp(), 1e-3)
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.FAILED_PRECONDITION)
        self.assertIn("WORLD_SIZE=3 but the effadam-server at %s trains "
                      "with --workers=2" % s.address, str(e.exception))
        os.environ.update(WORLD_SIZE="2", RANK="2")
        with self.assertRaisesRegex(effadam.InvalidArgumentError,
                                    r"rank 2 \(from RANK\) is outside "
                                    r"WORLD_SIZE=2 \(ranks 0..1\)"):
            EfficientAdam(mlp(), 1e-3)
        os.environ.update(RANK="x")
        with self.assertRaisesRegex(effadam.InvalidArgumentError,
                                    "RANK='x'"):
            EfficientAdam(mlp(), 1e-3)
        # Without WORLD_SIZE the server refuses a rank beyond its workers.
        os.environ.pop("WORLD_SIZE")
        os.environ.update(RANK="5")
        with self.assertRaisesRegex(effadam.StatusError, "5"):
            EfficientAdam(mlp(), 1e-3, connect_timeout=5)

    def test_resolve_placement_of_a_mapping(self):
        p = effadam.resolve_placement(environ={
            "EFFADAM_SERVER": "ps-{shard}.svc:50051",
            "EFFADAM_NUM_SHARDS": "2", "JOB_COMPLETION_INDEX": "3"})
        self.assertEqual((p.server, p.num_shards, p.rank, p.world_size),
                         ("ps-{shard}.svc:50051", 2, 3, 0))
        p = effadam.resolve_placement(environ={})
        self.assertEqual((p.server, p.rank), ("127.0.0.1:50051", -1))


class StateDictTest(ServerTestCase):
    def run_worker(self, address, *flags, expect_kill=False):
        p = subprocess.run(
            [sys.executable, os.path.join(HERE, "python_resume_worker.py"),
             "--server", address] + list(flags),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=120)
        if expect_kill:
            self.assertEqual(p.returncode, -signal.SIGKILL, p.stdout)
            return None
        self.assertEqual(p.returncode, 0, p.stdout)
        return re.search(r"params_checksum ([0-9a-f]{16})", p.stdout).group(1)

    def test_killed_worker_resumes_bit_for_bit(self):
        rounds, save_at = 30, 12
        flags = ("--workers=1", "--rounds=%d" % rounds)
        tmp = tempfile.mkdtemp(prefix="effadam_resume_")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "ckpt.pt")
        common = ["--rounds=%d" % rounds, "--save_at=%d" % save_at,
                  "--path", path]
        whole = self.run_worker(self.server(*flags).address, *common)
        s = self.server(*flags)
        self.run_worker(s.address, *common, "--kill_after_save",
                        expect_kill=True)
        resumed = self.run_worker(s.address, *common, "--resume")
        self.assertEqual(resumed, whole)
        # Without the optimizer's state (what a plain rejoin does), m, v
        # and e restart from zero: another result.
        s = self.server(*flags)
        self.run_worker(s.address, *common, "--kill_after_save",
                        expect_kill=True)
        plain = self.run_worker(s.address, *common, "--resume",
                                "--load_state=0")
        self.assertNotEqual(plain, whole)

    def test_loading_checks_layout_settings_and_rank(self):
        s = self.server("--workers=1", "--rounds=10")
        model = mlp()
        opt = EfficientAdam(model, 1e-2, server=s.address)
        model(torch.randn(4, 10)).sum().backward()
        opt.step()
        sd = opt.state_dict()
        buf = io.BytesIO()
        torch.save(sd, buf)  # what every training script does
        buf.seek(0)
        loaded = torch.load(buf)
        self.assertEqual(loaded["state"]["step"], 1)
        self.assertEqual(loaded["state"]["round"], 2)
        self.assertEqual(loaded["effadam"]["x_checksum"],
                         effadam.params_checksum(opt.client.params))
        self.assertEqual(loaded["state"]["exp_avg"].numel(),
                         opt.layout.num_elements)
        before = opt.client.optimizer_state()

        other = copy.deepcopy(loaded)
        other["effadam"]["layout"][0][1] = [17, 10]
        with self.assertRaisesRegex(ValueError, "another layout.*0.weight"):
            opt.load_state_dict(other)
        other = copy.deepcopy(loaded)
        other["effadam"]["settings"]["worker_codec"] = "q4"
        with self.assertRaisesRegex(ValueError,
                                    "worker_codec \\(saved 'q4', here "
                                    "'sign'\\)"):
            opt.load_state_dict(other)
        other = copy.deepcopy(loaded)
        other["effadam"]["rank"] = 3
        with self.assertRaisesRegex(ValueError, "rank 3's"):
            opt.load_state_dict(other)
        other = copy.deepcopy(loaded)
        other["state"]["exp_avg"] = other["state"]["exp_avg"][:-1]
        with self.assertRaisesRegex(effadam.InvalidArgumentError, "m has"):
            opt.load_state_dict(other)
        other = copy.deepcopy(loaded)
        other["param_groups"][0]["betas"] = (0.5, 0.9)
        with self.assertRaisesRegex(ValueError, "betas"):
            opt.load_state_dict(other)
        with self.assertRaisesRegex(ValueError, "not a state_dict"):
            opt.load_state_dict({"state": {}})
        after = opt.client.optimizer_state()  # nothing changed
        for k in ("m", "v", "e"):
            self.assertTrue((before[k] == after[k]).all())
        self.assertEqual(before["step"], after["step"])
        opt.load_state_dict(loaded)  # its own state loads, without warning
        opt.cancel()


class OverlapBackwardTest(ServerTestCase):
    """overlap_backward=True: each gradient goes to the library when
    autograd has accumulated it, the update leaves during backward."""

    def model(self):
        torch.manual_seed(0)
        # An unused layer: its gradient stays None and counts as zeros.
        m = torch.nn.ModuleDict(dict(
            a=torch.nn.Linear(10, 40), b=torch.nn.Linear(40, 33),
            c=torch.nn.Linear(33, 3), unused=torch.nn.Linear(3, 2)))
        m.forward = lambda x: m.c(F.relu(m.b(F.relu(m.a(x)))))
        return m

    def test_equals_the_step_after_backward_bit_for_bit(self):
        # Chunks of 64 bytes: the update of a step is many chunks, most of
        # them out before backward ends.
        flags = ("--workers=1", "--rounds=8", "--max_chunk_bytes=64",
                 "--min_compress_elements=16", "--block_size=32")
        settings = dict(min_compress_elements=16, block_size=32)
        overlapped, after = self.model(), self.model()
        o1 = EfficientAdam(overlapped.named_parameters(), 1e-2,
                           server=self.server(*flags).address,
                           overlap_backward=True, **settings)
        # The same layout as overlap_backward's: the parameters reversed.
        o2 = EfficientAdam(list(after.named_parameters())[::-1], 1e-2,
                           server=self.server(*flags).address, **settings)
        self.assertEqual(o1.names, o2.names)
        self.assertEqual(o1.names[0], "unused.bias")
        for x, y in batches(8):
            for m, o in ((overlapped, o1), (after, o2)):
                o.zero_grad()
                loss = F.cross_entropy(m(x), y)
                loss.backward()
                self.assertEqual(o.client.step_open, o is o1)
                o.step(loss=loss)
        for a, b in zip(overlapped.parameters(), after.parameters()):
            self.assertTrue(torch.equal(a, b))
        s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
        for key in ("exp_avg", "exp_avg_sq", "error_memory"):
            self.assertTrue(torch.equal(s1[key], s2[key]), key)
        self.assertGreater(s1["error_memory"].abs().sum().item(), 0)
        self.assertEqual(o1.traffic.up.payload, o2.traffic.up.payload)
        self.assertEqual(o1.round, 9)
        o1.step()  # the server has ended training
        self.assertTrue(o1.server_finished)
        o1.finish()
        o2.finish()

    def test_accumulating_gradients_is_refused_clearly(self):
        model = self.model()
        opt = EfficientAdam(model, 1e-2, server=self.server(
            "--workers=1", "--rounds=5").address, overlap_backward=True)
        x, y = batches(1)[0]
        F.cross_entropy(model(x), y).backward()
        with self.assertRaisesRegex(RuntimeError, "gradient accumulation"):
            F.cross_entropy(model(x), y).backward()
        opt.cancel()


class CudaTest(ServerTestCase):
    def test_the_gather_path_on_cpu_equals_the_flat_one(self):
        # flat_params=False runs what CUDA runs (one gather, one copy back),
        # with the parameters' own storage kept.
        flags = ("--workers=1", "--rounds=10")
        flat, gather = mlp(), mlp()
        storage = [p.data_ptr() for p in gather.parameters()]
        o1 = EfficientAdam(flat, 1e-2, server=self.server(*flags).address)
        o2 = EfficientAdam(gather, 1e-2, server=self.server(*flags).address,
                           flat_params=False)
        for x, y in batches(10):
            for m, o in ((flat, o1), (gather, o2)):
                o.zero_grad()
                F.cross_entropy(m(x), y).backward()
                o.step()
        for a, b in zip(flat.parameters(), gather.parameters()):
            self.assertTrue(torch.equal(a, b))
        self.assertEqual([p.data_ptr() for p in gather.parameters()], storage)
        self.assertEqual(effadam.params_checksum(o1.client.params),
                         effadam.params_checksum(o2.client.params))
        o1.finish()
        o2.finish()

    def test_cuda_parameters_equal_cpu_ones(self):
        if not torch.cuda.is_available():
            self.skipTest("CUDA is not available (torch %s, %s): the GPU path "
                          "runs where a GPU is" % (
                              torch.__version__,
                              "built without CUDA"
                              if torch.version.cuda is None else
                              "no device"))
        address_cpu, address_gpu = self.fp32_pair()
        cpu, gpu = mlp(), mlp().cuda()
        o1 = EfficientAdam(cpu, 1e-2, server=address_cpu,
                           worker_codec="fp32", server_codec="fp32")
        o2 = EfficientAdam(gpu, 1e-2, server=address_gpu,
                           worker_codec="fp32", server_codec="fp32")
        for x, y in batches(10):
            for m, o, dev in ((cpu, o1, "cpu"), (gpu, o2, "cuda")):
                o.zero_grad()
                F.cross_entropy(m(x.to(dev)), y.to(dev)).backward()
                o.step()
        for a, b in zip(cpu.parameters(), gpu.parameters()):
            torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-5)
        o1.finish()
        o2.finish()

    def fp32_pair(self):
        flags = ("--workers=1", "--rounds=10", "--worker_codec=fp32",
                 "--server_codec=fp32")
        return self.server(*flags).address, self.server(*flags).address


class ExamplesTest(unittest.TestCase):
    """Each example through the launcher, 2 workers, a few rounds: they
    run, evaluate, and every replica ends equal to the server's x."""

    def run_example(self, script, rounds, *flags):
        out = tempfile.mkdtemp(prefix="effadam_example_")
        try:
            p = subprocess.run(
                [sys.executable, "-m", "effadam.run", "--nproc=2",
                 "--server_bin",
                 os.path.join(python_bindings_test.BIN, "effadam-server"),
                 "--rounds=%d" % rounds, "--worker_codec=sign",
                 "--server_codec=sign", "--",
                 os.path.join(EXAMPLES, script), "--eval_every=%d" % rounds,
                 "--summary_json=" + os.path.join(out, "worker{rank}.json")]
                + list(flags),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=180)
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertIn("every worker's equal to the server's: yes",
                          p.stdout)
            self.assertIn("[rank 1] rank 1 done", p.stdout)
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
