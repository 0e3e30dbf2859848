"""A fault-injecting HTTP proxy for tests: sits in front of the moto S3 server on loopback and, at a
set rate, answers 500 or 503, answers slowly, or resets the connection (before or in the middle of a
response). Decisions come from a seeded RNG, and every injected fault is counted.

``when(method, path, headers)`` picks a fault for one request instead (None: pass it on), for the faults
of conditional writes: "409" (ConditionalRequestConflict, nothing written), "lost" (the store applies
the request, then the connection dies before the answer), "501" (a store without the feature)."""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "slow", "reset", "cut")
_ANSWERS = {"500": "InternalError", "503": "SlowDown", "409": "ConditionalRequestConflict",
            "501": "NotImplemented"}


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.2, seed: int = 0, slow_seconds: float = 0.3,
                 faults: tuple[str, ...] = FAULTS,
                 when: Callable[[str, str, Mapping[str, str]], str | None] | None = None):
        self.upstream = urlsplit(upstream)
        self.rate, self.slow_seconds, self.faults, self.when = rate, slow_seconds, faults, when
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, handler: BaseHTTPRequestHandler) -> str | None:
        with self.lock:
            self.requests += 1
            if self.when is not None:
                fault = self.when(handler.command, handler.path, handler.headers)
                if fault:
                    self.injected[fault] += 1
                return fault
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(self.faults)
            self.injected[fault] += 1
            return fault

    @staticmethod
    def _reset(handler: BaseHTTPRequestHandler) -> None:
        sock = handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        handler.close_connection = True
        sock.close()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        fault = self._decide(handler)
        if fault in _ANSWERS:
            payload = (f"<?xml version='1.0'?><Error><Code>{_ANSWERS[fault]}"
                       f"</Code><Message>injected</Message></Error>").encode()
            handler.send_response(int(fault))
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if fault == "reset":
            self._reset(handler)
            return
        if fault == "slow":
            time.sleep(self.slow_seconds)
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "proxy-connection")}
        conn.request(handler.command, handler.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if fault == "lost":  # applied upstream; the client never hears of it
            self._reset(handler)
            return
        handler.send_response(resp.status)
        for k, v in resp.getheaders():
            # send_response has set Date and Server: a second Date would not parse
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                handler.send_header(k, v)
        # a HEAD answer has no body but states the object's size: pass that on
        length = resp.getheader("Content-Length") if handler.command == "HEAD" else None
        handler.send_header("Content-Length", length or str(len(data)))
        handler.end_headers()
        if fault == "cut" and handler.command == "GET" and len(data) > 64:
            handler.wfile.write(data[: len(data) // 2])  # half the body, then the connection dies
            handler.wfile.flush()
            self._reset(handler)
            return
        if handler.command != "HEAD":
            handler.wfile.write(data)
