#!/usr/bin/env python3
"""A discrete-event model of a sharded cluster's round rules.

Why: with S shards a worker's step sends one update to every shard and
waits for every shard's delta, and each shard has its own round counter.
Workers whose counters are paired differently (shard 0's round r with shard
1's round q for one worker, with q - 1 for another) wait for each other's
next steps, and when three pairings meet, for the round timeout: the stall
docs/faults.md ("Workers out of step") describes. This model replays the
rules from random pairings and counts the rounds each policy for a late
update closes in a fixed time, and how many closed on the timeout:

  answer   the late update gets its own round's delta, not averaged (the
           rule before protocol 3)
  into     the late update is taken into the round being collected and the
           worker receives every delta it missed (protocol 3)

It models the rules, not the code: the code's behaviour is tested in
tests/server_service_test.cc and tests/worker_client_test.cc.
Usage: python3 bench/round_pairing_model.py [--cases 60] [--seconds 100]
"""
import argparse
import heapq
import itertools
import random

KEPT_DELTAS = 4  # RoundCoordinator keeps the last 4 deltas


def run(policy, counters, server_rounds, seconds, timeout, seed):
    """Returns (rounds closed per shard, rounds closed on the timeout)."""
    rng = random.Random(seed)
    workers, shards = len(counters), len(server_rounds)
    current = list(server_rounds)
    submitted = [set() for _ in range(shards)]
    opened = [None] * shards
    waiting = [set() for _ in range(shards)]
    rounds = [list(c) for c in counters]
    pending = [set() for _ in range(workers)]
    events, order = [], itertools.count()
    closed, timed_out = [0] * shards, [0] * shards

    def at(t, f):
        heapq.heappush(events, (t, next(order), f))

    def compute():
        return rng.uniform(0.05, 0.15)  # a step's gradient, seconds

    def close(k, t, on_timeout):
        timed_out[k] += on_timeout
        closed[k] += 1
        for w in waiting[k]:
            rounds[w][k] = current[k] + 1
            pending[w].discard(k)
            if not pending[w]:
                at(t + compute(), lambda t, w=w: step(w, t))
        waiting[k].clear()
        submitted[k].clear()
        opened[k] = None
        current[k] += 1

    def check_timeout(k, t, r):
        if current[k] == r and opened[k] is not None:
            close(k, t, True)

    def submit(k, w, t):
        submitted[k].add(w)
        waiting[k].add(w)
        if opened[k] is None:
            opened[k] = t
            at(t + timeout, lambda t, k=k, r=current[k]: check_timeout(k, t, r))

    def step(w, t):
        pending[w] = set(range(shards))
        for k in range(shards):
            behind = current[k] - rounds[w][k]
            if behind == 0 or (policy == "into" and 0 < behind <= KEPT_DELTAS
                               and w not in submitted[k]):
                submit(k, w, t)
            elif behind > KEPT_DELTAS:  # ABORTED: resync, fetch x
                rounds[w][k] = current[k]
                pending[w].discard(k)
            else:  # answered with its round's delta at once
                rounds[w][k] += 1
                pending[w].discard(k)
        if not pending[w]:
            at(t + compute(), lambda t, w=w: step(w, t))
            return
        for k in range(shards):
            if len(submitted[k]) == workers:
                close(k, t, False)

    for w in range(workers):
        at(0.01 * w, lambda t, w=w: step(w, t))
    while events:
        t, _, f = heapq.heappop(events)
        if t > seconds:
            break
        f(t)
    return closed, timed_out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--seconds", type=float, default=100.0)
    p.add_argument("--round_timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = random.Random(a.seed)
    cases = []
    for i in range(a.cases):
        shards = 2 + i % 2
        servers = tuple(282 + rng.choice([0, 0, 1]) for _ in range(shards))
        counters = [[servers[k] - rng.choice([0, 0, 1, 2, 3])
                     for k in range(shards)] for _ in range(4)]
        cases.append((counters, servers))
    in_step = [min(run("answer", [list(s)] * 4, s, a.seconds,
                       a.round_timeout, i)[0])
               for i, (_, s) in enumerate(cases)]
    print(f"{a.cases} random pairings of 4 workers over 2-3 shards, "
          f"{a.seconds:g} s, round timeout {a.round_timeout:g} s; workers in "
          f"step close {min(in_step)}-{max(in_step)} rounds")
    for policy in ("answer", "into"):
        got = [run(policy, c, s, a.seconds, a.round_timeout, i)
               for i, (c, s) in enumerate(cases)]
        fewest = sorted(min(closed) for closed, _ in got)
        full = sum(1 for f, ref in zip([min(c) for c, _ in got], in_step)
                   if f >= 0.95 * ref)
        timeouts = sum(sum(t) for _, t in got)
        print(f"{policy:7s} rounds closed: min {fewest[0]}, median "
              f"{fewest[len(fewest) // 2]}, max {fewest[-1]}; at full speed "
              f"(>= 95% of in step) {full} of {len(got)}; rounds closed on "
              f"the timeout {timeouts}")


if __name__ == "__main__":
    main()
