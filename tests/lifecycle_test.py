#!/usr/bin/env python3
"""A run's lifecycle with real processes on loopback (deploy/README.md,
"Lifecycle"):

- a server started again on the checkpoint directory of a completed run
  says so, trains nothing, keeps the summary and the checkpoints, serves
  health, Status refusals and /metrics in the finished state until SIGTERM;
  a larger --rounds trains on;
- a finished or signalled daemon exits within a second of its summary,
  again and again (with /metrics on, which used to cost 2 s);
- a worker whose --rank is still held waits (logging its attempts) and
  joins once the old holder is gone, bounded by --reconnect_timeout;
- a worker that cannot reach its server logs its attempts while it waits.

Usage: lifecycle_test.py --bin BUILD/bin [--only NAME]
"""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_test import (TOY, Cluster, check, main_for,  # noqa: E402,F401
                          scrape, wait_started)

# The workers' codec settings, which the server must share.
FP32 = ["--worker_codec=fp32", "--server_codec=fp32"] + [
    f for f in TOY if f.startswith(("--block_size", "--min_compress"))]
# How long after its summary line a daemon may take to exit.
EXIT_BUDGET = 1.0
REPEATS = 5


def summary_line(text):
    return re.search(r"effadam-server: (done|stopped by signal) after", text)


def exit_after_line(c, p, label, pattern, timeout=30):
    """Seconds from `pattern` appearing on `label`'s output to p's exit
    (polled every 5 ms), and p's status."""
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        if seen is None:
            out, err = c.output(label)
            if re.search(pattern, out + err):
                seen = time.time()
        if p.poll() is not None:
            if seen is None:  # printed and exited between two polls
                out, err = c.output(label)
                check(re.search(pattern, out + err),
                      "%s exited without %r" % (label, pattern))
                seen = time.time()
            return time.time() - seen, p.returncode
        time.sleep(0.005)
    raise AssertionError("%s did not exit within %d s" % (label, timeout))


def run_to_end(c, rounds, server_extra, label="server", metrics=False):
    """A server and two toy workers (ranks 0 and 1) through `rounds`."""
    flags = TOY + FP32 + ["--rounds=%d" % rounds]
    server, port = c.start_server(["--workers=2", "--rounds=%d" % rounds] +
                                  FP32 + server_extra, label=label,
                                  metrics=metrics)
    server.port = port
    workers = [c.start_worker("%s_w%d" % (label, r), port,
                              flags + ["--rank=%d" % r]) for r in (0, 1)]
    for w in workers:
        c.expect_ok(w)
    return server


def check_finished_state(c, server, port, label):
    """`server` is in the finished state: health SERVING, the training
    service NOT_SERVING, a worker refused with the reason; SIGTERM ends it
    with 0 within a second."""
    health = os.path.join(c.bin, "effadam-health")
    addr = "--addr=127.0.0.1:%d" % port
    r = subprocess.run([health, addr], capture_output=True, text=True,
                       timeout=30)
    check(r.returncode == 0 and "SERVING" in r.stdout,
          "health SERVING while finished: %s" % r.stdout)
    r = subprocess.run([health, addr, "--service=effadam.v1.ParameterServer"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "NOT_SERVING" in r.stdout,
          "the training service NOT_SERVING: %s" % r.stdout)
    late = c.start_worker(label, port, TOY + FP32 + ["--rounds=20"])
    check(c.wait(late, timeout=30) == 1, "a late worker is refused")
    check("training has ended" in "".join(c.output(label)),
          "the late worker is told why: %s" % "".join(c.output(label)))
    server.send_signal(signal.SIGTERM)
    start = time.time()
    check(c.wait(server, timeout=10) == 0, "SIGTERM ends the finished state "
          "with 0")
    check(time.time() - start < EXIT_BUDGET, "at once")


def case_finished_state(c):
    # The Kubernetes model: after the last round the server stays up
    # (--metrics_linger=inf) with the final values until deleted.
    server = run_to_end(c, 20, ["--metrics_linger=inf"], metrics=True)
    c.wait_for("the summary", lambda: os.path.exists(c.path("server.json")))
    check(c.metric(server, "effadam_server_finished") == 1, "finished gauge")
    check(c.metric(server, "effadam_server_rounds_total") == 20,
          "final rounds on /metrics")
    check(c.summary("server")["rounds"] == 20, "summary written")
    check_finished_state(c, server, server.port, "late")
    return "Status/health/metrics served after the run until SIGTERM"


def case_restart_after_completion(c):
    ckpt = c.path("ckpt")
    summary = c.path("server.json")
    common = ["--checkpoint_dir=" + ckpt, "--checkpoint_every=10"]
    c.expect_ok(run_to_end(c, 20, common))
    with open(summary, "rb") as f:
        first = f.read()
    files = {n: os.stat(os.path.join(ckpt, n)).st_mtime_ns
             for n in os.listdir(ckpt)}
    check("checkpoint-000000000021.effadam" in files,
          "final checkpoint written: %s" % sorted(files))

    # The same command again, as a restarted pod runs it; it stays in the
    # finished state until SIGTERM.
    again, port = c.start_server(
        ["--workers=2", "--rounds=20", "--metrics_linger=inf"] + FP32 +
        common, label="again", metrics=True)
    c.wait_for("the finished state", lambda: c.metric(
        again, "effadam_server_finished") == 1, timeout=20)
    _, err = c.output("again")
    check("the run in %s is complete" % ckpt in err and
          "follows round 20 of 20" in err and
          "keeping --summary_json" in err, "says the run is complete: %s" % err)
    check(not summary_line(err), "no training summary: %s" % err)
    check(c.metric(again, "effadam_server_target_rounds") == 20,
          "target rounds gauge")
    check(c.metric(again, "effadam_server_round") == 21, "round gauge")
    check_finished_state(c, again, port, "late")
    with open(summary, "rb") as f:
        check(f.read() == first, "the summary is kept byte for byte")
    check({n: os.stat(os.path.join(ckpt, n)).st_mtime_ns
           for n in os.listdir(ckpt)} == files,
          "the checkpoints are untouched")

    # A larger --rounds trains on from the final checkpoint.
    c.expect_ok(run_to_end(c, 30, common, label="more"))
    more = c.summary("more")
    check(more["resumed_at_round"] == 21 and more["rounds"] == 30,
          "--rounds=30 trains on from round 21: %s" % more)
    return "summary kept, finished state until SIGTERM, --rounds=30 goes on"


def case_prompt_exit(c):
    times = []
    for i in range(REPEATS):
        label = "run%d" % i
        server, port = c.start_server(
            ["--workers=2", "--rounds=10"] + FP32, label=label, metrics=True)
        workers = [c.start_worker("%s_w%d" % (label, r), port,
                                  TOY + FP32 + ["--rounds=10",
                                                "--metrics_listen=127.0.0.1:0"])
                   for r in (0, 1)]
        after, rc = exit_after_line(c, server, label,
                                    r"effadam-server: done after")
        check(rc == 0, "%s exit %d" % (label, rc))
        times.append(after)
        for r, w in enumerate(workers):
            wafter, wrc = exit_after_line(c, w, "%s_w%d" % (label, r),
                                          r"done after round 10")
            check(wrc == 0, "worker exit %d" % wrc)
            times.append(wafter)
    # Signalled: a server that waits for workers forever, SIGTERM.
    for i in range(REPEATS):
        label = "sig%d" % i
        server, port = c.start_server(["--workers=2", "--rounds=0"] + FP32,
                                      label=label, metrics=True)
        server.send_signal(signal.SIGTERM)
        after, rc = exit_after_line(c, server, label,
                                    r"stopped by signal after")
        check(rc == 0, "%s exit %d" % (label, rc))
        times.append(after)
    worst = max(times)
    check(worst < EXIT_BUDGET, "every exit within %.1f s of the summary: "
          "%s" % (EXIT_BUDGET, ["%.3f" % t for t in times]))
    return "%d exits, slowest %.3f s after the summary" % (len(times), worst)


def case_rank_still_held(c):
    # Enough rounds that the old worker, alone, is far from the end when it
    # is frozen (a toy round takes ~20 ms).
    rounds = 300
    flags = TOY + FP32 + ["--rounds=%d" % rounds]
    server, port = c.start_server(["--workers=1", "--rounds=%d" % rounds] +
                                  FP32)
    old = c.start_worker("old", port, flags + ["--rank=0"])
    wait_started(c, "old", old)
    # Frozen, the old process still holds rank 0: its stream stays open.
    old.send_signal(signal.SIGSTOP)
    try:
        # Bounded: gives up after --reconnect_timeout.
        impatient = c.start_worker("impatient", port,
                                   flags + ["--rank=0",
                                            "--reconnect_timeout=1s"])
        check(c.wait(impatient, timeout=30) == 1, "gives up when bounded")
        _, err = c.output("impatient")
        check("ALREADY_EXISTS" in err and "rank 0 is taken" in err,
              "says the rank is taken: %s" % err)
        new = c.start_worker("new", port, flags + ["--rank=0"])
        c.wait_for("the new worker to log its wait", lambda: re.search(
            r"INFO effadam-worker: waiting \(attempt 1, .*ALREADY_EXISTS",
            c.output("new")[1]), timeout=30)
        time.sleep(0.5)
        check(new.poll() is None, "the new worker waits")
    finally:
        old.kill()  # the server sees the stream end at once
        old.wait()
    c.expect_ok(new)
    c.expect_ok(server)
    out, _ = c.output("new")
    check("rank 0 done after round %d" % rounds in out,
          "the new worker trains to the end: %s" % out)
    return "bounded wait refused after 1 s; unbounded wait joined rank 0"


def case_worker_logs_attempts(c):
    # Nothing listens on the port of a server that is gone.
    server, port = c.start_server(["--workers=1", "--rounds=0"])
    server.send_signal(signal.SIGTERM)
    c.wait(server)
    w = c.start_worker("w", port, TOY + ["--connect_timeout=2500ms"])
    rc = c.wait(w, timeout=30)
    _, err = c.output("w")
    check(rc == 1, "exit %d" % rc)
    waits = re.findall(r"^\S+Z INFO effadam-worker: waiting \(attempt \d+",
                       err, re.M)
    check(len(waits) >= 1, "logs its attempts: %s" % err)
    check("no server answered in time" in err, "says why it gave up: %s" % err)
    return "%d waiting line(s) in 2.5 s" % len(waits)


CASES = [
    ("finished_state", case_finished_state),
    ("restart_after_completion", case_restart_after_completion),
    ("prompt_exit", case_prompt_exit),
    ("rank_still_held", case_rank_still_held),
    ("worker_logs_attempts", case_worker_logs_attempts),
]

if __name__ == "__main__":
    sys.exit(main_for(CASES, ("effadam-server", "effadam-worker",
                              "effadam-health")))
