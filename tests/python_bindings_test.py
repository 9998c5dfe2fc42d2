#!/usr/bin/env python3
"""The Python module effadam (pybind11 over the C++ library), without torch:
layouts, settings and codecs against their documented behaviour, errors as
StatusError with the library's code and message, and effadam.WorkerClient
against a real effadam-server on loopback: refusals, bad gradients, run()
with a Python gradient, the worker's Prometheus metrics, the GIL released
while a step blocks, cancel() from another thread and Ctrl-C (SIGINT)
during a blocking step.

Usage: python_bindings_test.py --bin BUILD/bin [unittest args]
(run by /usr/bin/python3 with PYTHONPATH=BUILD/python, as ctest does).
"""

import os
import signal
import struct
import sys
import threading
import time
import unittest

import numpy as np
import xxhash

import effadam
from cluster_test import Cluster, scrape

BIN = None  # --bin
LAYOUT = [("w", (64,)), ("b", (16,))]


def xxh3_64(data):
    """The reference XXH3-64 (Debian's python3-xxhash), as 16 hex digits."""
    return "%016x" % xxhash.xxh3_64_intdigest(data)


class Server:
    """effadam-server on a free loopback port (cluster_test's Cluster);
    stop() kills it and removes its directory."""

    def __init__(self, *flags):
        self.cluster = Cluster(BIN, "pybind")
        try:
            _, port = self.cluster.start_server(list(flags))
        except Exception:
            self.cluster.close()
            raise
        self.address = "127.0.0.1:%d" % port

    def stop(self):
        self.cluster.close()


def fp32():
    return effadam.CompressionConfig(worker_codec="fp32", server_codec="fp32")


class LayoutAndSettingsTest(unittest.TestCase):
    def test_layout(self):
        layout = effadam.TensorLayout(LAYOUT)
        self.assertEqual(layout.num_elements, 80)
        self.assertEqual(layout.tensors, [("w", (64,)), ("b", (16,))])
        self.assertEqual((layout.offset(0), layout.offset(1)), (0, 64))
        self.assertEqual(layout, effadam.TensorLayout(LAYOUT))
        self.assertEqual(repr(layout), "TensorLayout(w[64] b[16])")

    def test_bad_layouts_raise_invalid_argument(self):
        for tensors, needle in (([], "no tensors"),
                                ([("w", (2,)), ("w", (3,))], "twice"),
                                ([("w", (0,))], "out of range"),
                                ([("", (1,))], "without a name")):
            with self.assertRaises(effadam.InvalidArgumentError) as e:
                effadam.TensorLayout(tensors)
            self.assertIsInstance(e.exception, ValueError)
            self.assertEqual(e.exception.code,
                             effadam.StatusCode.INVALID_ARGUMENT)
            self.assertIn(needle, e.exception.message)
            self.assertTrue(str(e.exception).startswith("INVALID_ARGUMENT: "))

    def test_compression_config(self):
        c = effadam.CompressionConfig()  # the flags' defaults
        self.assertEqual((c.worker_codec, c.server_codec, c.block_size,
                          c.min_compress_elements, c.error_feedback),
                         ("sign", "sign", 1024, 1024, "both"))
        c = effadam.CompressionConfig(worker_codec="q4s",
                                      server_codec="topk:0.25",
                                      block_size=64, error_feedback="worker")
        self.assertEqual((c.worker_codec, c.server_codec, c.error_feedback),
                         ("q4s", "topk:0.25", "worker"))
        for kwargs, needle in ((dict(worker_codec="zip"), "--worker_codec"),
                               (dict(server_codec="q9"), "--server_codec"),
                               (dict(block_size=12), "--block_size"),
                               (dict(min_compress_elements=-1),
                                "--min_compress_elements"),
                               (dict(error_feedback="some"),
                                "--error_feedback")):
            with self.assertRaises(effadam.InvalidArgumentError) as e:
                effadam.CompressionConfig(**kwargs)
            self.assertIn(needle, str(e.exception))

    def test_adam_options(self):
        a = effadam.AdamOptions(lr=0.5, lr_schedule="inverse_sqrt",
                                beta2_schedule="theta", theta=0.5)
        self.assertEqual((a.lr, a.theta), (0.5, 0.5))
        self.assertEqual((a.lr_schedule, a.beta2_schedule),
                         ("inverse_sqrt", "theta"))
        self.assertTrue(a.decoupled_weight_decay)
        a = effadam.AdamOptions(lr_schedule="warmup_cosine", warmup_rounds=10,
                                schedule_rounds=100,
                                decoupled_weight_decay=False)
        self.assertEqual((a.warmup_rounds, a.schedule_rounds), (10, 100))
        self.assertFalse(a.decoupled_weight_decay)
        for kwargs, needle in ((dict(lr=0), "lr"),
                               (dict(lr_schedule="warmup_cosine",
                                     warmup_rounds=5), "warmup_rounds"),
                               (dict(beta1=1.0), "beta1"),
                               (dict(lr_schedule="cosine"), "--lr_schedule"),
                               (dict(beta2_schedule="x"), "--beta2_schedule")):
            with self.assertRaises(effadam.InvalidArgumentError) as e:
                effadam.AdamOptions(**kwargs)
            self.assertIn(needle, str(e.exception))

    def test_client_security_names_the_missing_file(self):
        with self.assertRaises(effadam.InvalidArgumentError) as e:
            effadam.ClientSecurity(tls_ca_file="/nonexistent/ca.pem")
        self.assertIn("/nonexistent/ca.pem", str(e.exception))
        self.assertFalse(effadam.ClientSecurity().tls)

    def test_params_checksum_is_xxh3_of_the_float_bytes(self):
        x = np.array([0.0, -1.5, 3.25, 1e-30], dtype=np.float32)
        self.assertEqual(effadam.params_checksum(x), xxh3_64(x.tobytes()))
        # Lists and float64 convert to float32 first.
        self.assertEqual(effadam.params_checksum([0.0, -1.5, 3.25, 1e-30]),
                         xxh3_64(x.tobytes()))
        # XXH3 takes other paths for 0, 1-16, 17-128, 129-240 and longer
        # inputs (several stripes and blocks): all agree with the reference.
        rng = np.random.default_rng(5)
        for n in (0, 1, 3, 4, 30, 31, 60, 61, 300, 4096, 100003):
            y = rng.standard_normal(n).astype(np.float32)
            self.assertEqual(effadam.params_checksum(y), xxh3_64(y.tobytes()),
                             "n = %d" % n)
        with self.assertRaises(effadam.InvalidArgumentError):
            effadam.params_checksum(np.zeros((2, 2), np.float32))

    def test_load_idx_dataset_errors_name_the_file(self):
        with self.assertRaises(effadam.StatusError) as e:
            effadam.load_idx_dataset("/nonexistent/images", "/nonexistent/l")
        self.assertEqual(e.exception.code, effadam.StatusCode.NOT_FOUND)
        self.assertIn("/nonexistent/", e.exception.message)


class CodecTest(unittest.TestCase):
    def test_sign_with_error_feedback(self):
        rng = np.random.default_rng(1)
        p = rng.standard_normal(256).astype(np.float32)
        sign = effadam.Codec("sign", block_size=64)
        self.assertEqual(sign.encoded_size(256), 4 * (8 + 4))
        e = np.zeros(256, np.float32)
        data = sign.encode(p, error=e)
        self.assertEqual(len(data), sign.encoded_size(256))
        q = sign.decode(data, 256)
        # Per block: mean(|p|) * sign(p); the error is p - Q(p) exactly.
        for b in range(4):
            block = p[64 * b:64 * (b + 1)]
            scale = np.abs(q[64 * b:64 * (b + 1)])
            self.assertTrue(np.all(scale == scale[0]))
            self.assertAlmostEqual(float(scale[0]),
                                   float(np.abs(block).mean()), places=5)
            self.assertTrue(np.all(np.sign(q[64 * b:64 * (b + 1)]) ==
                                   np.where(block >= 0, 1, -1)))
        np.testing.assert_array_equal(e, p - q)
        # The compressor property the codec promises.
        self.assertLessEqual(float(np.sum((q - p) ** 2)),
                             (1 - sign.delta(256)) * float(np.sum(p ** 2)))

    def test_decode_accumulate_and_bad_bytes(self):
        q8 = effadam.Codec("q8", block_size=64)
        p = np.linspace(-1, 1, 128, dtype=np.float32)
        data = q8.encode(p)
        acc = np.ones(128, np.float32)
        q8.decode_accumulate(data, 2.0, acc)
        np.testing.assert_allclose(acc, 1 + 2 * p, atol=2 * 1 / 127)
        before = acc.copy()
        with self.assertRaises(effadam.InvalidArgumentError):
            q8.decode_accumulate(data[:-1], 1.0, acc)
        np.testing.assert_array_equal(acc, before)  # unchanged
        bad = bytearray(data)
        bad[0:4] = struct.pack("<f", float("nan"))  # the first block's scale
        with self.assertRaises(effadam.InvalidArgumentError):
            q8.validate(bytes(bad), 128)

    def test_arguments_are_checked(self):
        sign = effadam.Codec("sign", block_size=64)
        with self.assertRaises(effadam.InvalidArgumentError) as e:
            effadam.Codec("sign", block_size=12)
        self.assertIn("block", str(e.exception))
        p = np.ones(64, np.float32)
        for error, needle in ((np.zeros(64), "float32"),
                              (np.zeros(64, np.float32)[::-1], "contiguous"),
                              ([0.0] * 64, "numpy")):
            with self.assertRaises(effadam.InvalidArgumentError) as e:
                sign.encode(p, error=error)
            self.assertIn(needle, str(e.exception))
        readonly = np.zeros(64, np.float32)
        readonly.flags.writeable = False
        with self.assertRaises(effadam.InvalidArgumentError):
            sign.encode(p, error=readonly)
        with self.assertRaises(effadam.InvalidArgumentError):
            sign.encode(np.ones((8, 8), np.float32))
        with self.assertRaises(effadam.InvalidArgumentError) as e:
            sign.encode(np.array([1.0, float("nan")] * 32, np.float32))

    def test_update_codec(self):
        layout = effadam.TensorLayout(LAYOUT)
        codec = effadam.UpdateCodec(layout, "sign", block_size=64,
                                    min_compress_elements=32)
        self.assertEqual([(s["begin"], s["size"], s["codec"])
                          for s in codec.segments],
                         [(0, 64, "sign"), (64, 16, "fp32")])
        self.assertEqual(codec.encoded_size, 8 + 4 + 16 * 4)
        x = np.arange(80, dtype=np.float32) - 40
        q = codec.decode(codec.encode(x))
        np.testing.assert_array_equal(q[64:], x[64:])  # fp32 is exact
        with self.assertRaises(effadam.InvalidArgumentError):
            codec.encode(np.zeros(79, np.float32))
        with self.assertRaises(effadam.InvalidArgumentError):
            codec.validate(b"\0" * 3)


class ServerTestCase(unittest.TestCase):
    """Tests that start servers: each is stopped after the test."""

    def setUp(self):
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.stop()

    def server(self, *flags):
        s = Server(*flags)
        self.servers.append(s)
        return s


class WorkerClientTest(ServerTestCase):

    def client(self, server, compression=None, **kwargs):
        return effadam.WorkerClient(
            server=server.address, compression=compression or fp32(),
            connect_timeout=20, **kwargs)

    def test_refusal_keeps_code_and_message(self):
        s = self.server("--workers=1", "--rounds=5", "--worker_codec=fp32",
                        "--server_codec=fp32")
        c = self.client(s, compression=effadam.CompressionConfig())  # sign
        with self.assertRaises(effadam.StatusError) as e:
            c.join(effadam.TensorLayout(LAYOUT))
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.FAILED_PRECONDITION)
        self.assertIn("codec", e.exception.message)

    def test_steps_bad_gradients_and_the_end_of_training(self):
        s = self.server("--workers=1", "--rounds=3", "--worker_codec=fp32",
                        "--server_codec=fp32")
        c = self.client(s, adam=effadam.AdamOptions(lr=0.1))
        with self.assertRaises(effadam.StatusError) as e:
            c.step(np.zeros(80, np.float32))
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.FAILED_PRECONDITION)
        c.join(effadam.TensorLayout(LAYOUT))
        self.assertEqual((c.rank, c.num_workers), (0, 1))
        with self.assertRaises(effadam.InvalidArgumentError):
            c.start(np.zeros(79, np.float32))
        x0 = np.arange(80, dtype=np.float32)
        c.start(x0)
        np.testing.assert_array_equal(c.params, x0)
        self.assertFalse(c.params.flags.writeable)
        view = c.params
        grad = np.full(80, np.nan, np.float32)
        with self.assertRaises(effadam.InvalidArgumentError):
            c.step(grad, 1.0)
        np.testing.assert_array_equal(c.params, x0)  # nothing changed
        self.assertEqual(c.round, 1)
        c.step(np.ones(80, np.float32), 1.0)
        c.step(np.ones(80), 1.0)  # float64 converts
        # Adam's first steps move every element by about lr.
        np.testing.assert_allclose(c.params, x0 - 0.2, atol=1e-4)
        np.testing.assert_array_equal(view, c.params)  # a live view
        c.step(np.ones(80, np.float32))
        with self.assertRaises(effadam.StatusError) as e:
            c.step(np.ones(80, np.float32))
        self.assertEqual(e.exception.code, effadam.StatusCode.OUT_OF_RANGE)
        self.assertTrue(c.server_finished)
        c.finish()
        self.assertEqual(c.traffic.server_to_worker, 3 * 80 * 4)  # 3 deltas
        self.assertEqual(c.traffic.ratio, 1.0)

    def test_run_with_a_python_gradient(self):
        s = self.server("--workers=1", "--rounds=100", "--worker_codec=fp32",
                        "--server_codec=fp32")
        c = self.client(s, adam=effadam.AdamOptions(lr=0.1))
        c.join(effadam.TensorLayout(LAYOUT))
        c.start(np.zeros(80, np.float32))
        target = np.linspace(-1, 1, 80, dtype=np.float32)
        calls = []

        def gradient(params, grad):
            calls.append(params.copy())
            grad[:] = params - target
            return float(np.sum((params - target) ** 2))

        c.run(4, gradient)
        self.assertEqual((len(calls), c.round), (4, 5))
        np.testing.assert_array_equal(calls[0], np.zeros(80, np.float32))

        s2 = self.server("--workers=1", "--rounds=100", "--worker_codec=fp32",
                         "--server_codec=fp32")
        c2 = self.client(s2)
        c2.join(effadam.TensorLayout(LAYOUT))
        c2.start(np.zeros(80, np.float32))

        def broken(params, grad):
            raise KeyError("from the gradient")

        with self.assertRaises(KeyError) as e:
            c2.run(4, broken)
        self.assertIn("from the gradient", str(e.exception))

    def test_metrics_of_a_python_worker(self):
        # The same effadam_worker_* series as effadam-worker, labelled with
        # the rank, their byte counters equal to the client's own counts.
        with self.assertRaises(effadam.StatusError) as e:
            effadam.WorkerClient(metrics_listen="no-port-here")
        self.assertEqual(e.exception.code,
                         effadam.StatusCode.INVALID_ARGUMENT)
        s = self.server("--workers=1", "--rounds=100", "--worker_codec=fp32",
                        "--server_codec=fp32")
        c = self.client(s, metrics_listen="127.0.0.1:0")
        self.assertGreater(c.metrics_port, 0)
        self.assertEqual(self.client(s).metrics_port, 0)
        c.join(effadam.TensorLayout(LAYOUT))
        c.start(np.zeros(80, np.float32))
        for _ in range(3):
            c.step(np.ones(80, np.float32), 0.5)
        target = np.zeros(80, np.float32)

        def gradient(params, grad):
            grad[:] = params - target
            return 0.25

        c.run(6, gradient)  # rounds 4, 5 and 6
        c.record_evaluation(test_accuracy=0.75)
        metrics = scrape("127.0.0.1:%d" % c.metrics_port)
        rank = '{rank="0"}'
        self.assertEqual(metrics["effadam_worker_rounds_total" + rank], 6)
        self.assertEqual(metrics["effadam_worker_train_loss" + rank], 0.25)
        self.assertEqual(metrics["effadam_worker_test_accuracy" + rank], 0.75)
        self.assertEqual(
            metrics["effadam_worker_round_duration_seconds_count" + rank], 6)
        for direction, count in (("worker_to_server",
                                  c.traffic.worker_to_server),
                                 ("server_to_worker",
                                  c.traffic.server_to_worker)):
            key = ('effadam_worker_payload_bytes_total{rank="0",'
                   'direction="%s"}' % direction)
            self.assertEqual(metrics[key], count)
            self.assertEqual(count, 6 * 80 * 4)

    def blocked_client(self):
        """A client whose next step blocks: its server waits for a second
        worker that never comes (round timeout 60 s)."""
        s = self.server("--workers=2", "--rounds=10", "--round_timeout=60s",
                        "--worker_codec=fp32", "--server_codec=fp32")
        c = self.client(s)
        c.join(effadam.TensorLayout(LAYOUT))
        c.start(np.zeros(80, np.float32))
        return c

    def test_cancel_from_another_thread_while_the_gil_is_released(self):
        c = self.blocked_client()
        ticks = []

        def other():
            deadline = time.time() + 0.5
            while time.time() < deadline:  # runs only without the GIL held
                ticks.append(1)
                time.sleep(0.01)
            c.cancel()

        t = threading.Thread(target=other)
        start = time.time()
        t.start()
        with self.assertRaises(effadam.StatusError) as e:
            c.step(np.ones(80, np.float32))
        t.join()
        self.assertEqual(e.exception.code, effadam.StatusCode.CANCELLED)
        self.assertLess(time.time() - start, 10)
        self.assertGreater(len(ticks), 10)
        with self.assertRaises(effadam.StatusError) as e:
            c.step(np.ones(80, np.float32))
        self.assertEqual(e.exception.code, effadam.StatusCode.CANCELLED)

    def test_ctrl_c_interrupts_a_blocking_step(self):
        c = self.blocked_client()
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        start = time.time()
        timer.start()
        with self.assertRaises(KeyboardInterrupt):
            c.step(np.ones(80, np.float32))
        timer.join()
        self.assertLess(time.time() - start, 10)
        with self.assertRaises(effadam.StatusError) as e:
            c.step(np.ones(80, np.float32))
        self.assertEqual(e.exception.code, effadam.StatusCode.CANCELLED)

    def test_a_second_concurrent_call_is_refused(self):
        c = self.blocked_client()
        errors = []

        def other():
            time.sleep(0.3)
            try:
                c.step(np.ones(80, np.float32))
            except effadam.StatusError as e:
                errors.append(e)
            c.cancel()

        t = threading.Thread(target=other)
        t.start()
        with self.assertRaises(effadam.StatusError):
            c.step(np.ones(80, np.float32))
        t.join()
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0].code, effadam.StatusCode.FAILED_PRECONDITION)
        self.assertIn("not thread-safe", errors[0].message)


def main():
    """--bin DIR, then unittest's arguments; runs the tests of the script
    that was started (python_optim_test.py uses it too)."""
    global BIN
    args = sys.argv[1:]
    if "--bin" not in args:
        print("usage: %s --bin BUILD/bin [unittest args]" % sys.argv[0])
        return 2
    i = args.index("--bin")
    BIN = args[i + 1]
    del args[i:i + 2]
    program = unittest.main(argv=[sys.argv[0]] + args, exit=False,
                            verbosity=2)
    return 0 if program.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
