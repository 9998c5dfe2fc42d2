#!/usr/bin/env python3
"""python3 -m effadam.run (python/effadam/run.py) and effadam-worker's
environment: the launcher starts a server and N workers with RANK,
WORLD_SIZE and EFFADAM_SERVER set, prefixes their lines, compares their
params_checksum with the server's, stops everything and names the part
that failed, and forwards SIGTERM; effadam-worker finds its server and rank
in the environment (flags win) and refuses a WORLD_SIZE other than the
server's --workers. No torch needed.

Usage: python_launch_test.py --bin BUILD/bin [unittest args]
(run by /usr/bin/python3 with PYTHONPATH=BUILD/python, as ctest does).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_bindings_test  # noqa: E402
from python_bindings_test import ServerTestCase  # noqa: E402


def script(body):
    """A worker script in a temporary file; removed at exit."""
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False,
                                    prefix="effadam_launch_")
    f.write(textwrap.dedent(body))
    f.close()
    return f.name


class LauncherTest(unittest.TestCase):
    def launcher(self, *args):
        return [sys.executable, "-m", "effadam.run", "--server_bin",
                os.path.join(python_bindings_test.BIN, "effadam-server")] + \
            list(args)

    def run_launcher(self, *args, timeout=120):
        return subprocess.run(self.launcher(*args), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)

    def tearDown(self):
        for f in getattr(self, "scripts", []):
            os.unlink(f)

    def script(self, body):
        self.scripts = getattr(self, "scripts", [])
        self.scripts.append(script(body))
        return self.scripts[-1]

    def test_cpp_workers_from_the_environment(self):
        worker = os.path.join(python_bindings_test.BIN, "effadam-worker")
        p = self.run_launcher("--nproc=2", "--rounds=5", "--", worker,
                              "--model=toy", "--rounds=5", "--eval_every=0")
        self.assertEqual(p.returncode, 0, p.stdout)
        for r in range(2):
            self.assertRegex(p.stdout, r"\[rank %d\] effadam-worker: rank %d "
                                       r"of 2" % (r, r))
        self.assertIn("every worker's equal to the server's: yes", p.stdout)
        self.assertRegex(p.stdout, r"\[server\] .*effadam-server: done")

    def test_environment_of_the_workers(self):
        w = self.script("""
            import os
            print(" ".join("%s=%s" % (k, os.environ.get(k)) for k in
                  ("RANK", "LOCAL_RANK", "WORLD_SIZE", "EFFADAM_SERVER")))
        """)
        p = self.run_launcher("--nproc=3", "--", w)
        self.assertEqual(p.returncode, 0, p.stdout)
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", p.stdout).group(1)
        for r in range(3):
            self.assertIn("[rank %d] RANK=%d LOCAL_RANK=%d WORLD_SIZE=3 "
                          "EFFADAM_SERVER=127.0.0.1:%s" % (r, r, r, port),
                          p.stdout)

    def test_a_failing_worker_stops_everything_and_is_named(self):
        w = self.script("""
            import os, sys, time
            if os.environ["RANK"] == "1":
                sys.exit(3)
            time.sleep(60)
        """)
        start = time.time()
        p = self.run_launcher("--nproc=3", "--", w)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("effadam.run: failed: rank 1 exited with status 3",
                      p.stdout)
        self.assertLess(time.time() - start, 30)  # the others were stopped

    def test_bad_usage(self):
        p = self.run_launcher("--nproc=2", "--workers=3", "--", "x.py")
        self.assertEqual(p.returncode, 2)
        self.assertIn("--workers is the launcher's to set", p.stdout)
        p = self.run_launcher("--nproc=2")
        self.assertEqual(p.returncode, 2)
        self.assertIn("give the worker after --", p.stdout)
        p = self.run_launcher("--nproc=1", "--no_such_server_flag=1", "--",
                              sys.executable, "-c", "pass")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("effadam-server exited with", p.stdout)

    def test_sigterm_is_forwarded_to_every_part(self):
        w = self.script("""
            import os, signal, sys, time
            def stop(sig, frame):
                print("rank %s got %s" % (os.environ["RANK"],
                      signal.Signals(sig).name), flush=True)
                sys.exit(143)
            signal.signal(signal.SIGTERM, stop)
            print("ready", flush=True)
            time.sleep(60)
        """)
        p = subprocess.Popen(self.launcher("--nproc=2", "--", w),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        lines = []
        while sum("ready" in line for line in lines) < 2:
            line = p.stdout.readline()
            self.assertTrue(line, "".join(lines))
            lines.append(line)
        p.send_signal(signal.SIGTERM)
        out = "".join(lines) + p.stdout.read()
        self.assertEqual(p.wait(timeout=30), 128 + signal.SIGTERM, out)
        for r in range(2):
            self.assertIn("[rank %d] rank %d got SIGTERM" % (r, r), out)
        self.assertIn("effadam.run: stopped by SIGTERM", out)


class CppWorkerEnvironmentTest(ServerTestCase):
    def worker(self, env, *flags):
        e = {k: v for k, v in os.environ.items()
             if k not in ("RANK", "WORLD_SIZE", "EFFADAM_SERVER",
                          "MASTER_ADDR", "JOB_COMPLETION_INDEX")}
        e.update(env)
        return subprocess.run(
            [os.path.join(python_bindings_test.BIN, "effadam-worker"),
             "--model=toy", "--rounds=3", "--eval_every=0",
             "--connect_timeout=10s"] + list(flags),
            env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=60)

    def test_world_size_and_rank_are_checked(self):
        s = self.server("--workers=2", "--rounds=3")
        p = self.worker({"EFFADAM_SERVER": s.address, "WORLD_SIZE": "3",
                         "RANK": "0"})
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("WORLD_SIZE=3 but the effadam-server at %s trains "
                      "with --workers=2" % s.address, p.stdout)
        p = self.worker({"EFFADAM_SERVER": s.address, "WORLD_SIZE": "2",
                         "RANK": "2"})
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("rank 2 (from RANK) is outside WORLD_SIZE=2", p.stdout)

    def test_flags_win_over_the_environment(self):
        s = self.server("--workers=1", "--rounds=3")
        # The environment points nowhere; the flags are used.
        p = self.worker({"EFFADAM_SERVER": "127.0.0.1:1", "RANK": "5"},
                        "--server=" + s.address, "--rank=0")
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("rank 0 of 1", p.stdout)
        # An Indexed Job's completion index picks the rank.
        s = self.server("--workers=2", "--rounds=3")
        other = subprocess.Popen(
            [os.path.join(python_bindings_test.BIN, "effadam-worker"),
             "--model=toy", "--rounds=3", "--eval_every=0",
             "--server=" + s.address, "--rank=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p = self.worker({"EFFADAM_SERVER": s.address,
                             "JOB_COMPLETION_INDEX": "1"})
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertIn("rank 1 of 2", p.stdout)
        finally:
            other.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(python_bindings_test.main())
