"""Raw HTTP/2 clients that misbehave on purpose, for tests/limits_test.py:
plaintext gRPC framing written by hand (RFC 9113 frames, RFC 7541 HPACK
literals without indexing), so that nothing outside the standard library is
needed and no client library smooths over what is sent.

Every function takes an address (host, port) on loopback and a deadline
(time.time() value) and returns or closes its sockets before it.
"""

import socket
import ssl
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 0x8
SETTINGS_INITIAL_WINDOW_SIZE = 0x4

TRAIN = "/effadam.v1.ParameterServer/Train"
FETCH = "/effadam.v1.ParameterServer/FetchParams"
JOIN = "/effadam.v1.ParameterServer/Join"


def frame(kind, flags, stream, payload=b""):
    return (struct.pack(">I", len(payload))[1:] +
            struct.pack(">BBI", kind, flags, stream) + payload)


def _string(s):
    b = s.encode() if isinstance(s, str) else s
    if len(b) < 127:
        return bytes([len(b)]) + b
    n, out = len(b) - 127, bytearray([127])
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + b


def request_headers(path, token=None):
    """The HPACK block of a gRPC request (literals, new names)."""
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path),
              (":authority", "localhost"), ("content-type", "application/grpc"),
              ("te", "trailers")]
    if token:
        fields.append(("authorization", "Bearer " + token))
    return b"".join(b"\x00" + _string(k) + _string(v) for k, v in fields)


def grpc_message(body):
    """A length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(body)) + body


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Connection:
    """One HTTP/2 connection. A reader thread answers SETTINGS and PING
    (a well-behaved peer at the frame level), records GOAWAY and the end of
    the connection, and otherwise discards what arrives; unless `read` is
    false, in which case it stops reading after the handshake, so that the
    server's writes fill the socket."""

    def __init__(self, address, window=65535, read=True, tls_ca=None):
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ca:  # TLS with ALPN h2, the server's name "localhost"
            context = ssl.create_default_context(cafile=tls_ca)
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock,
                                            server_hostname="localhost")
        self.lock = threading.Lock()
        self.closing = False
        self.goaway = False
        self.closed = threading.Event()
        self.handshaken = threading.Event()  # the server's SETTINGS came
        self.next_stream = 1
        # Flow control of what this client sends (RFC 9113 6.9): the
        # connection's window and the initial window of every stream.
        self.window_cv = threading.Condition()
        self.conn_window = 65535
        self.initial_stream_window = 65535
        self.stream_windows = {}
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, window)
        self.send(PREFACE + frame(SETTINGS, 0, 0, settings))
        self.read = read
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def send(self, data):
        with self.lock:
            if self.closing:
                raise OSError("the connection is closed")
            self.sock.sendall(data)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _read(self):
        try:
            self.sock.settimeout(None)
            handshake_done = False
            while True:
                if handshake_done and not self.read:
                    return  # leave everything unread
                head = self._recv_exact(9)
                length = struct.unpack(">I", b"\x00" + head[:3])[0]
                kind, flags = head[3], head[4]
                payload = self._recv_exact(length)
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload), 6):
                        key, value = struct.unpack(">HI", payload[i:i + 6])
                        if key == SETTINGS_INITIAL_WINDOW_SIZE:
                            with self.window_cv:
                                delta = value - self.initial_stream_window
                                self.initial_stream_window = value
                                for sid in self.stream_windows:
                                    self.stream_windows[sid] += delta
                                self.window_cv.notify_all()
                    self.send(frame(SETTINGS, ACK, 0))
                    handshake_done = True
                    self.handshaken.set()
                elif kind == WINDOW_UPDATE:
                    increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                    sid = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                    with self.window_cv:
                        if sid == 0:
                            self.conn_window += increment
                        elif sid in self.stream_windows:
                            self.stream_windows[sid] += increment
                        self.window_cv.notify_all()
                elif kind == RST_STREAM:
                    sid = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                    with self.window_cv:
                        self.stream_windows.pop(sid, None)
                        self.window_cv.notify_all()
                elif kind == PING and not flags & ACK:
                    self.send(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    self.goaway = True
        except (EOFError, OSError):
            pass
        finally:
            if self.read:
                self.closed.set()

    def open_stream(self, path, token=None, end_stream=False):
        sid = self.next_stream
        self.next_stream += 2
        with self.window_cv:
            self.stream_windows[sid] = self.initial_stream_window
        self.send(frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0),
                        sid, request_headers(path, token)))
        return sid

    def send_message(self, sid, body, end_stream=False):
        self.send(frame(DATA, END_STREAM if end_stream else 0, sid,
                        grpc_message(body)))

    def send_flow_controlled(self, sid, data, deadline, end_stream=False):
        """Sends `data` as DATA frames of at most 16 KiB on stream `sid`
        within the peer's windows; returns the bytes sent: all of them, or
        fewer if the server reset the stream, closed the connection or the
        deadline passed."""
        sent = 0
        while sent < len(data) or (end_stream and sent == len(data) == 0):
            with self.window_cv:
                while True:
                    if sid not in self.stream_windows or self.closed.is_set():
                        return sent
                    room = min(self.conn_window, self.stream_windows[sid],
                               16384, len(data) - sent)
                    if room > 0 or len(data) == sent:
                        break
                    if time.time() >= deadline:
                        return sent
                    self.window_cv.wait(0.1)
                self.conn_window -= room
                self.stream_windows[sid] -= room
            last = sent + room == len(data)
            self.send(frame(DATA, END_STREAM if (last and end_stream) else 0,
                            sid, data[sent:sent + room]))
            sent += room
            if last:
                break
        return sent

    def close(self):
        # The descriptor is closed only once no thread can use it: a reader
        # that answers a PING while the socket closes could write its frame
        # into whatever takes the descriptor's number next, such as the
        # pipe of a tool the test starts (the likely cause of the bytes
        # that were not effadam-health's in its stdout in one CI run).
        self.closing = True  # no send starts from now on
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # ends a blocked recv/send
        except OSError:
            pass
        self.reader.join(timeout=10)
        with self.lock:  # a send that began before the flag has returned
            pass
        if not self.reader.is_alive():
            self.sock.close()
        # else: leave the descriptor open (a leak in a test process) rather
        # than let its number be reused under a live thread.


def rapid_reset(address, streams, deadline, path=TRAIN, token=None,
                batch=500, hold=0.0, tls_ca=None):
    """HEADERS + RST_STREAM(CANCEL) pairs for `streams` streams on one
    connection, written in batches, then the connection is kept open for
    `hold` seconds (the server still works through what it read); returns
    how many were sent (fewer if the server closed the connection or the
    deadline passed)."""
    c = Connection(address, tls_ca=tls_ca)
    block = request_headers(path, token)
    sent = 0
    try:
        sid = 1
        while sent < streams and time.time() < deadline:
            n = min(batch, streams - sent)
            out = bytearray()
            for _ in range(n):
                out += frame(HEADERS, END_HEADERS, sid, block)
                out += frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                sid += 2
            c.send(bytes(out))
            sent += n
        c.closed.wait(max(0.0, min(hold, deadline - time.time())))
    except OSError:
        pass
    finally:
        c.close()
    return sent
