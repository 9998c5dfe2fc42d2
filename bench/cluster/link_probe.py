#!/usr/bin/env python3
"""TCP throughput between emulated hosts (run each side inside its host's
namespace with `ip netns exec`):

  link_probe.py recv --listen IP:PORT --connections K --seconds T
      accepts K connections and prints "mbit_per_second X": the bytes of
      all of them received between 0.5 s after the first byte (the token
      buckets' bursts do not count) and the end, over that time
  link_probe.py send --to IP:PORT --seconds T
      sends zeros for T seconds
"""

import argparse
import socket
import sys
import threading
import time

CHUNK = 1 << 16
SETTLE = 0.5


def receive(args):
    host, port = args.listen.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(args.connections)
    print("listening", flush=True)
    lock = threading.Lock()
    state = {"first": None, "base": None, "bytes": 0, "last": None}

    def drain(conn):
        with conn:
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    return
                now = time.monotonic()
                with lock:
                    if state["first"] is None:
                        state["first"] = now
                    state["bytes"] += len(data)
                    if state["base"] is None and now >= state["first"] + SETTLE:
                        state["base"] = (now, state["bytes"])
                    state["last"] = (now, state["bytes"])

    threads = []
    for _ in range(args.connections):
        conn, _ = listener.accept()
        t = threading.Thread(target=drain, args=(conn,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(args.seconds + 30)
    listener.close()
    if state["base"] is None:
        print("link_probe: too little data to measure", file=sys.stderr)
        return 1
    (t0, b0), (t1, b1) = state["base"], state["last"]
    print("mbit_per_second %.1f" % ((b1 - b0) * 8 / (t1 - t0) / 1e6), flush=True)
    return 0


def send(args):
    host, port = args.to.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((host, int(port)), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload = b"\0" * CHUNK
    end = time.monotonic() + args.seconds
    with s:
        while time.monotonic() < end:
            s.sendall(payload)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--listen", required=True)
    r.add_argument("--connections", type=int, default=1)
    r.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args()
    return receive(args) if args.role == "recv" else send(args)


if __name__ == "__main__":
    sys.exit(main())
