"""A fault-injecting HTTP proxy in front of the GCS emulator, on loopback.

It forwards every request to the emulator unchanged and, for the requests a rule selects,
does one of the things the real service (or the network in between) does:

- ``drop_reply``: forward the request, let the emulator apply it, then close the connection
  without answering. The client sees a TCP disconnect and retries; GCS documents that a
  request's effect may have happened although no response arrived, and that socket timeouts
  and TCP disconnects are retryable (https://cloud.google.com/storage/docs/retry-strategy).
  A retried create-only or compare-and-swap write then meets HTTP 412 against itself.
- ``applied_503``: forward, let it apply, answer 503 ``backendError`` instead of the reply.
- ``429`` / ``503``: answer ``rateLimitExceeded`` / ``backendError`` without forwarding
  (nothing applied), in the JSON error shape GCS sends
  (https://cloud.google.com/storage/docs/json_api/v1/status-codes).
- ``400``: answer ``invalid`` without forwarding: a write that fails for good (not retried), which
  stands for a writer that dies between two writes.
- ``tear_upload``: forward an upload whose object bytes are not the ones the client hashed, as
  when the file changes while it is read or bytes are lost between hashing and sending ("changes
  to the source data during extended period file uploads",
  https://docs.cloud.google.com/storage/docs/data-validation): a multipart body's object part
  cut to its first half (a short, torn object), or, for a media upload or a resumable chunk
  (whose length its ``Content-Range`` fixes), its last byte flipped. The client's declared
  checksum then describes other bytes, and GCS refuses the upload.
- ``corrupt_body``: forward, then answer with one byte of the body flipped (for a read: give the
  rule ``writes_only=False``). Google's client libraries validate a download's hash because
  without it "data integrity errors may still be exposed via other network layers, but there is
  a risk of data loss" (https://cloud.google.com/dotnet/docs/reference/Google.Cloud.Storage.V1/latest/Google.Cloud.Storage.V1.DownloadValidationMode);
  a client must refuse such bytes.

``latency`` (seconds, 0 by default) delays every request before it is forwarded: a benchmark
can stand for the round trip to real GCS (tens of milliseconds) on loopback.

What it does not model: partial bodies, or faults in the middle of a resumable
upload's chunks (a rule can still select a chunk's PUT as a whole request).

Rules are explicit so a test can say exactly which reply is lost (``FaultRule(match="create.json",
action="drop_reply", times=1)``), or random with a seed (``random_writes(rate=0.3, seed=7)``)
so a chaos run is reproducible. ``stats`` counts what was done, for the test's report, and how
the client used the proxy: connections opened, and the most requests it had in flight at once.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "trailer", "upgrade", "content-length"}
ACTIONS = ("drop_reply", "applied_503", "429", "503", "400", "corrupt_body", "tear_upload")


def is_write(method: str, target: str) -> bool:
    """A request that changes an object: uploads (media, multipart, resumable chunks),
    copy/rewrite/compose, patch and delete."""
    if method in ("PUT", "PATCH", "DELETE"):
        return True
    return method == "POST" and ("/upload/" in target or "/rewriteTo/" in target
                                 or "/copyTo/" in target or "/compose" in target)


@dataclass
class FaultRule:
    """Apply ``action`` to writes whose request line or body contains ``match`` (``""``: any
    write), with probability ``rate``, at most ``times`` times (``None``: no limit)."""

    action: str
    match: str = ""
    rate: float = 1.0
    times: int | None = None
    writes_only: bool = True
    applied: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {ACTIONS}")


@dataclass
class FaultStats:
    requests: int = 0
    writes: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    matched: list[str] = field(default_factory=list)  # "ACTION METHOD target" per fault applied
    seen: list[str] = field(default_factory=list)  # "METHOD target" of every request, in order
    connections: int = 0  # TCP connections clients opened to the proxy
    in_flight: int = 0  # requests being handled now
    max_in_flight: int = 0  # the most handled at once: how many a client really sent together


def object_requests(seen: list[str]) -> list[str]:
    """The requests among ``seen`` that are about objects: not the storage client's own
    background checks of the bucket (``GET /storage/v1/b/BUCKET?fields=name`` after a 404, its
    metadata cache), which it sends on a thread of its own and no store call waits for."""
    return [r for r in seen if not re.match(r"^GET /storage/v1/b/[^/?]+(\?|$)", r)]


class FaultProxy:
    """Holds the rules; the HTTP server asks it what to do with each request."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        self.upstream = upstream  # host:port of the emulator
        self.rules: list[FaultRule] = []
        self.stats = FaultStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.address = ""  # host:port of the proxy, once serving
        self.latency = 0.0  # seconds added to every request (a round trip to a distant service)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def random_writes(self, rate: float, seed: int, actions: tuple[str, ...] = ("drop_reply",)) -> None:
        """Every write, with probability ``rate``, gets one of ``actions`` (picked at random)."""
        with self._lock:
            self._rng = random.Random(seed)
            for action in actions:
                self.rules.append(FaultRule(action=action, rate=rate / len(actions)))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def connected(self) -> None:
        with self._lock:
            self.stats.connections += 1

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Count a request as in flight while it is handled (its latency included)."""
        with self._lock:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.stats.in_flight -= 1

    def decide(self, method: str, target: str, body: bytes) -> str | None:
        write = is_write(method, target)
        with self._lock:
            self.stats.requests += 1
            self.stats.seen.append(f"{method} {target}")
            self.stats.writes += write
            for rule in self.rules:
                if rule.writes_only and not write:
                    continue
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                if rule.match and rule.match.encode() not in target.encode() + body:
                    continue
                if rule.rate < 1.0 and self._rng.random() >= rule.rate:
                    continue
                rule.applied += 1
                self.stats.by_action[rule.action] = self.stats.by_action.get(rule.action, 0) + 1
                self.stats.matched.append(f"{rule.action} {method} {target[:120]}")
                return rule.action
        return None


def torn(body: bytes, content_type: str) -> bytes:
    """``body`` with its object bytes torn (see ``tear_upload``); unchanged when it has none."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if m and content_type.lower().startswith("multipart/"):
        delimiter = b"--" + m.group(1).encode()
        second = body.find(delimiter, body.find(delimiter) + len(delimiter))
        start = body.find(b"\r\n\r\n", second) + 4
        end = body.rfind(b"\r\n" + delimiter)
        if second < 0 or start < 4 or end <= start:
            return body
        return body[:start] + body[start:start + (end - start) // 2] + body[end:]
    if not body:
        return body
    return body[:-1] + bytes([body[-1] ^ 0xFF])


def _error_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message,
                                 "errors": [{"domain": "global", "reason": reason, "message": message}]}}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers (40 ms on Linux), a stall on every reply that no GCS
    # front end adds and that would swamp the ``latency`` a benchmark sets.
    disable_nagle_algorithm = True
    proxy: FaultProxy  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:  # once per connection (keep-alive: many requests on it)
        super().setup()
        self.proxy.connected()

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = []
            for k, v in resp.getheaders():
                if k.lower() in _HOP_BY_HOP:
                    continue
                if k.lower() == "location":  # resumable session URLs must come back through us
                    v = re.sub(r"//[^/]+", "//" + self.proxy.address, v, count=1)
                out.append((k, v))
            return resp.status, out, data
        finally:
            conn.close()

    def _handle(self) -> None:
        with self.proxy.handling():
            self._handle_counted()

    def _handle_counted(self) -> None:
        body = self._body()
        action = self.proxy.decide(self.command, self.path, body)
        if self.proxy.latency > 0:
            time.sleep(self.proxy.latency)
        if action in ("429", "503", "400"):
            code = int(action)
            reason = {429: "rateLimitExceeded", 503: "backendError", 400: "invalid"}[code]
            self._answer(code, [("Content-Type", "application/json")],
                         _error_body(code, reason, "injected by the fault proxy"))
            return
        if action == "tear_upload":
            body = torn(body, self.headers.get("Content-Type", ""))
        status, headers, data = self._forward(body)
        if action == "drop_reply":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if action == "applied_503":
            self._answer(503, [("Content-Type", "application/json")],
                         _error_body(503, "backendError", "injected after applying the request"))
            return
        if action == "corrupt_body" and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        self._answer(status, headers, data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


@contextmanager
def run_fault_proxy(upstream: str, seed: int = 0) -> Iterator[FaultProxy]:
    """Serve a proxy to ``upstream`` (host:port) on 127.0.0.1; yields it with ``address`` set."""
    proxy = FaultProxy(upstream, seed)
    handler = type("Handler", (_Handler,), {"proxy": proxy})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    proxy.address = f"127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        httpd.shutdown()
        httpd.server_close()
