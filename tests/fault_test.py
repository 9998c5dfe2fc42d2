#!/usr/bin/env python3
"""Faults with real processes on loopback (docs/faults.md): a worker killed
with SIGKILL and restarted, a worker that hangs (SIGSTOP: its connection
stays open but nobody answers) and is dropped by the server's keepalive,
a server that hangs and is given up on by the workers' keepalive, the
server killed with SIGKILL and restarted
from its checkpoint, the server killed while it writes a checkpoint, and
SIGTERM for both daemons. Each case prints what it measured (rounds lost,
time to rejoin, the round resumed at).

Usage: fault_test.py --bin BUILD/bin [--only NAME]
Only 127.0.0.1 is ever used. Every process started here is killed in a
finally block; temporary directories are removed.
"""

import glob
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_test import Failure, check, main_for  # noqa: E402

SIGN = ["--worker_codec=sign", "--server_codec=sign", "--seed=3"]
CHECKPOINT_LINE = re.compile(
    r"checkpoint (\S+) \(round (\d+), \d+ B, [\d.]+ s\), params_checksum (\w+)")
RESUMED_LINE = re.compile(
    r"resumed from (\S+) at round (\d+), params_checksum (\w+)")


def synthetic(c, label, port, rank, rounds, elements=100000, extra=()):
    return c.spawn(label, [os.path.join(c.bin, "effadam-synthetic-worker"),
                           "--server=127.0.0.1:%d" % port, "--rank=%d" % rank,
                           "--rounds=%d" % rounds,
                           "--elements=%d" % elements,
                           "--summary_json=" + c.path(label + ".json")]
                   + SIGN + list(extra))


def started(c, label):
    return "started at round" in c.output(label)[0]


def round_of(c, server):
    try:
        return c.metric(server, "effadam_server_round")
    except (OSError, Failure):
        return 0


def checkpoints_written(c, label):
    return [(m.group(1), int(m.group(2)), m.group(3))
            for m in CHECKPOINT_LINE.finditer(c.output(label)[1])]


def resumed(c, label):
    m = RESUMED_LINE.search(c.output(label)[1])
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def expect_same_checksums(c, server_label, worker_labels):
    want = c.summary(server_label)["params_checksum"]
    for w in worker_labels:
        got = c.summary(w)["params_checksum"]
        check(got == want, "%s params_checksum %s, server %s" % (w, got, want))
    return want


def case_worker_sigkill(c):
    # 4 workers; rank 2 is killed mid-run and started again. The others go
    # on without waiting for the round timeout (its stream ends at once on
    # loopback), the new process joins with rank 2, fetches x and finishes
    # in step with everyone.
    rounds = 2500
    server, port = c.start_server(
        ["--workers=4", "--rounds=%d" % rounds, "--round_timeout=5s"] + SIGN,
        metrics=True)
    workers = {r: synthetic(c, "w%d" % r, port, r, rounds) for r in range(4)}
    c.wait_for("round 300", lambda: round_of(c, server) >= 300)
    workers[2].kill()
    killed_at_round = round_of(c, server)
    killed_at = time.time()
    # Rounds go on without rank 2, well within the 5 s round timeout.
    c.wait_for("rounds after the kill",
               lambda: round_of(c, server) >= killed_at_round + 50,
               timeout=4)
    after = time.time() - killed_at
    spawned = time.time()
    workers[2] = synthetic(c, "w2b", port, 2, rounds)
    c.wait_for("rank 2 to rejoin", lambda: started(c, "w2b"))
    rejoin = time.time() - spawned
    for r, p in workers.items():
        c.expect_ok(p)
    c.expect_ok(server)
    s = c.summary("server")
    check(s["rounds"] == rounds, "server closed %d rounds" % s["rounds"])
    lost = s["short_rounds"]
    check(0 < lost < rounds - killed_at_round,
          "%d rounds short of a worker" % lost)
    checksum = expect_same_checksums(c, "server", ["w0", "w1", "w2b", "w3"])
    restarted_at = int(re.search(r"started at round (\d+)",
                                 c.output("w2b")[0]).group(1))
    return ("killed at round %d; 50 rounds went on in %.2f s; restart "
            "rejoined in %.2f s at round %d; %d rounds without rank 2; "
            "params_checksum %s everywhere"
            % (killed_at_round, after, rejoin, restarted_at, lost, checksum))


def case_worker_hangs(c):
    # A worker that stops answering with its TCP connection still open (a
    # hung process or host: SIGSTOP here) is what a round timeout alone
    # would wait out; the server's keepalive pings drop its connection
    # after --keepalive_time + --keepalive_timeout and the round closes
    # without it. After SIGCONT the worker finds its stream gone, resyncs
    # and finishes with everyone.
    rounds = 2500
    server, port = c.start_server(
        ["--workers=3", "--rounds=%d" % rounds, "--round_timeout=600s",
         "--keepalive_time=1s", "--keepalive_timeout=1s"] + SIGN,
        metrics=True)
    workers = {r: synthetic(c, "w%d" % r, port, r, rounds) for r in range(3)}
    c.wait_for("round 200", lambda: round_of(c, server) >= 200)
    workers[2].send_signal(signal.SIGSTOP)
    stopped_at_round = round_of(c, server)
    stopped_at = time.time()
    try:
        # Far sooner than the 600 s round timeout: keepalive (1 s + 1 s)
        # plus the round in flight.
        c.wait_for("rounds after the hang",
                   lambda: round_of(c, server) >= stopped_at_round + 50,
                   timeout=30)
        after = time.time() - stopped_at
    finally:
        workers[2].send_signal(signal.SIGCONT)
    for p in workers.values():
        c.expect_ok(p)
    c.expect_ok(server)
    s = c.summary("server")
    check(s["rounds"] == rounds, "server closed %d rounds" % s["rounds"])
    w2 = c.summary("w2")
    check(w2["resyncs"] >= 1, "the hung worker resynced %d times"
          % w2["resyncs"])
    checksum = expect_same_checksums(c, "server", ["w0", "w1", "w2"])
    return ("stopped at round %d; 50 rounds went on %.1f s later (keepalive "
            "1 s + 1 s, round timeout 600 s); %d rounds without it; it "
            "resynced after SIGCONT; params_checksum %s everywhere"
            % (stopped_at_round, after, s["short_rounds"], checksum))


def case_server_hangs(c):
    # A server that stops answering with its connections still open (a hung
    # process or host, a partition): without keepalive a worker's Train
    # stream would wait forever. Its pings (1 s + 1 s here, the server
    # accepting them) end the stream; the worker tries to resync for
    # --reconnect_timeout and then fails, naming the server.
    rounds = 100000
    server, port = c.start_server(
        ["--workers=2", "--rounds=%d" % rounds, "--min_ping_interval=500ms"]
        + SIGN, metrics=True)
    keepalive = ["--keepalive_time=1s", "--keepalive_timeout=1s",
                 "--reconnect_timeout=3s"]
    workers = [synthetic(c, "w%d" % r, port, r, rounds, extra=keepalive)
               for r in range(2)]
    c.wait_for("round 100", lambda: round_of(c, server) >= 100)
    server.send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        took = []
        for w in workers:
            rc = c.wait(w, timeout=30)
            took.append(time.time() - stopped_at)
            _, err = c.output(w.label)
            check(rc == 1 and "127.0.0.1:%d" % port in err,
                  "%s: exit %s, stderr %r" % (w.label, rc, err[-300:]))
    finally:
        server.send_signal(signal.SIGCONT)
        server.kill()
    last = c.output("w0")[1].strip().splitlines()[-1]
    return ("both workers gave up %.1f s and %.1f s after the server hung "
            "(keepalive 1 s + 1 s, reconnect_timeout 3 s): %s"
            % (took[0], took[1], last[:160]))


def case_server_sigkill_restores_checkpoint(c):
    # The MLP on 4 workers; the server is killed mid-run and started again on
    # the same port with the same flags. It restores the newest checkpoint
    # (x bit for bit as written); the workers reconnect, and the first to
    # rejoin uploads its replica, which is newer than the checkpoint: no
    # round is lost (docs/faults.md, "Zero lost rounds"). The run ends in the
    # accuracy band of an uninterrupted one (effadam-sim).
    rounds = 600
    flags = ["--model=mlp", "--rounds=%d" % rounds, "--eval_every=%d" % rounds,
             "--batch_size=32"] + SIGN
    server_flags = ["--workers=4", "--rounds=%d" % rounds,
                    "--checkpoint_dir=" + c.path("ckpt"),
                    "--checkpoint_every=100"] + SIGN
    server, port = c.start_server(server_flags, metrics=True)
    workers = [c.start_worker("w%d" % r, port, flags + ["--rank=%d" % r])
               for r in range(4)]
    c.wait_for("round 250", lambda: round_of(c, server) >= 250, timeout=120)
    # The round being collected when the server dies is at least this.
    round_at_kill = round_of(c, server)
    server.kill()
    server.wait()
    written = checkpoints_written(c, "server")
    check(written, "no checkpoint was written before the kill")
    path, ckpt_round, ckpt_checksum = written[-1]
    # The last round the killed server closed: its delta is logged before
    # any worker can have it.
    logged = [int(m.group(1)) for m in
              (re.match(r"delta-(\d+)\.effadam$", f)
               for f in os.listdir(c.path("ckpt"))) if m]
    check(logged, "no delta record in %s" % c.path("ckpt"))
    last_closed = max(logged)
    killed_at = time.time()
    server2, _ = c.start_server(server_flags, port=port, label="server2")
    for p in workers:
        c.expect_ok(p)
    c.expect_ok(server2)
    back = resumed(c, "server2")
    check(back == (path, ckpt_round, ckpt_checksum),
          "restored %s, last written %s" % (back, written[-1]))
    s = c.summary("server2")
    # Zero lost rounds: x went on from the workers' replica, not from the
    # older checkpoint, plus the delta log for a round whose delta was in
    # flight (closed, but no worker had it yet when the kill landed), and
    # the log says which source won (docs/faults.md, "Zero lost rounds").
    check(s["resumed_at_round"] == last_closed + 1 and
          s["resumed_at_round"] >= round_at_kill and
          s["resumed_at_round"] > ckpt_round,
          "resumed at round %s; the server had closed round %d when killed, "
          "its checkpoint at %d" % (s["resumed_at_round"], last_closed,
                                    ckpt_round))
    recovered = re.search(r"x recovered from rank \d+'s replica at round "
                          r"(\d+)(?: and (\d+) round\(s\) from the delta log)?",
                          c.output("server2")[1])
    check(recovered and int(recovered.group(1)) +
          int(recovered.group(2) or 0) == s["resumed_at_round"],
          "no 'x recovered from ... replica' line for round %s"
          % s["resumed_at_round"])
    checksum = expect_same_checksums(c, "server2",
                                     ["w%d" % r for r in range(4)])
    for r in range(4):
        w = c.summary("w%d" % r)
        # A worker that resynced to an older replica before the newest one
        # arrived resyncs once more (its update for the older round is
        # dropped).
        check(1 <= w["resyncs"] <= 2,
              "rank %d resynced %d times" % (r, w["resyncs"]))
        check(w["rounds"] == rounds, "rank %d ran to %d" % (r, w["rounds"]))
    sim = c.run_sim(flags, workers=4)
    acc, want = c.summary("w0")["test_accuracy"], sim["test_accuracy"]
    check(abs(acc - want) <= 0.02,
          "accuracy %.4f after the restart, %.4f uninterrupted" % (acc, want))
    return ("killed after closing round %d; checkpoint of round %d "
            "restored, then x from a replica at round %s and %d round(s) "
            "from the delta log; resumed run %.4f vs uninterrupted %.4f; "
            "every replica %s; down %.1f s"
            % (last_closed, ckpt_round, recovered.group(1),
               int(recovered.group(2) or 0), acc, want, checksum,
               time.time() - killed_at))


def case_server_sigkill_during_checkpoint_write(c):
    # A large model makes a checkpoint take long enough to kill the server
    # while the temporary file is being written. The restart loads the
    # previous checkpoint, not the torn one, and removes the leftover.
    rounds = 60
    elements = 20 * 1000 * 1000
    ckpt = c.path("ckpt")
    server_flags = ["--workers=1", "--rounds=%d" % rounds,
                    "--checkpoint_dir=" + ckpt, "--checkpoint_every=4"] + SIGN
    server, port = c.start_server(server_flags)
    worker = synthetic(c, "w0", port, 0, rounds, elements=elements)
    c.wait_for("a first checkpoint",
               lambda: checkpoints_written(c, "server"), timeout=120)
    temp = os.path.join(ckpt, ".checkpoint-*.tmp-*")
    c.wait_for("a checkpoint write in progress",
               lambda: any(os.path.getsize(f) > 0 for f in glob.glob(temp)),
               timeout=120)
    server.kill()
    server.wait()
    torn = glob.glob(temp)
    check(torn, "the temporary file was gone before the kill landed")
    written = checkpoints_written(c, "server")
    path, ckpt_round, ckpt_checksum = written[-1]
    server2, _ = c.start_server(server_flags, port=port, label="server2")
    c.expect_ok(worker)
    c.expect_ok(server2)
    back = resumed(c, "server2")
    check(back == (path, ckpt_round, ckpt_checksum),
          "restored %s, last complete %s" % (back, written[-1]))
    check(not glob.glob(temp), "leftover %s not removed" % glob.glob(temp))
    expect_same_checksums(c, "server2", ["w0"])
    return ("killed while writing %s; restored round %d from %s"
            % (os.path.basename(torn[0]), ckpt_round, os.path.basename(path)))


def case_sigterm_both_daemons(c):
    # SIGTERM on the server: it stops, writes a checkpoint of exactly where
    # it stopped and exits 0; started again it goes on from there. SIGTERM
    # on a worker: it exits 128+15 at once and the others go on.
    rounds = 3000
    flags = ["--model=toy", "--batch_size=8", "--rounds=%d" % rounds] + SIGN
    server_flags = ["--workers=3", "--rounds=%d" % rounds,
                    "--round_timeout=5s", "--checkpoint_dir=" + c.path("ckpt"),
                    "--checkpoint_every=0"] + SIGN
    server, port = c.start_server(server_flags, metrics=True)
    workers = [c.start_worker("w%d" % r, port, flags + ["--rank=%d" % r])
               for r in range(3)]
    c.wait_for("round 200", lambda: round_of(c, server) >= 200)
    server.send_signal(signal.SIGTERM)
    rc = c.wait(server, timeout=20)
    check(rc == 0, "server exit %d on SIGTERM" % rc)
    s = c.summary("server")
    written = checkpoints_written(c, "server")
    check(len(written) == 1 and written[0][1] == s["rounds"] + 1,
          "checkpoints on SIGTERM %s after %d rounds" % (written, s["rounds"]))
    server2, _ = c.start_server(server_flags, port=port, label="server2",
                                metrics=True)
    back = resumed(c, "server2")
    check(back is not None and back[1:] == written[0][1:],
          "restored %s, written on SIGTERM %s" % (back, written[0]))
    c.wait_for("round %d" % (back[1] + 200),
               lambda: round_of(c, server2) >= back[1] + 200)
    workers[1].send_signal(signal.SIGTERM)
    stopped = time.time()
    rc = c.wait(workers[1], timeout=10)
    worker_exit = time.time() - stopped
    check(rc == 128 + signal.SIGTERM, "worker exit %d on SIGTERM" % rc)
    check("stopped by SIGTERM" in c.output("w1")[1],
          "worker stderr %r" % c.output("w1")[1])
    for p in (workers[0], workers[2]):
        c.expect_ok(p)
    c.expect_ok(server2)
    expect_same_checksums(c, "server2", ["w0", "w2"])
    return ("server stopped after round %d, its checkpoint restored at round "
            "%d; worker exited %.2f s after SIGTERM"
            % (s["rounds"], back[1], worker_exit))


CASES = [
    ("worker_sigkill", case_worker_sigkill),
    ("worker_hangs", case_worker_hangs),
    ("server_hangs", case_server_hangs),
    ("server_sigkill", case_server_sigkill_restores_checkpoint),
    ("server_sigkill_mid_checkpoint",
     case_server_sigkill_during_checkpoint_write),
    ("sigterm_both_daemons", case_sigterm_both_daemons),
]

if __name__ == "__main__":
    sys.exit(main_for(CASES, ("effadam-server", "effadam-worker",
                              "effadam-sim", "effadam-synthetic-worker")))
