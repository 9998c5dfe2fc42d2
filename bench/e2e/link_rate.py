#!/usr/bin/env python3
"""Achieved TCP throughput on 127.0.0.1 of the current network namespace:
one connection sends --bytes, the receiver times the bytes after the first
64 kB (so the token bucket's initial burst does not count). Prints
"mbit_per_second X". Run it inside a namespace (ip netns exec NAME ...)."""

import argparse
import socket
import threading
import time

CHUNK = 1 << 16


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bytes", type=int, required=True)
    args = ap.parse_args()
    if args.bytes <= 4 * CHUNK:
        ap.error("--bytes must be more than %d" % (4 * CHUNK))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def send():
        with socket.create_connection(listener.getsockname()) as s:
            payload = b"\0" * CHUNK
            left = args.bytes
            while left > 0:
                s.sendall(payload[:min(left, CHUNK)])
                left -= min(left, CHUNK)

    sender = threading.Thread(target=send)
    sender.start()
    conn, _ = listener.accept()
    received, start = 0, None
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        received += len(data)
        if start is None and received >= CHUNK:
            start, base = time.monotonic(), received
    elapsed = time.monotonic() - start
    sender.join()
    conn.close()
    listener.close()
    print("mbit_per_second %.1f" % ((received - base) * 8 / elapsed / 1e6))


if __name__ == "__main__":
    main()
