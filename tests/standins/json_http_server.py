"""The HTTP plumbing the API fakes share: a threaded JSON server on 127.0.0.1.

A fake only implements ``handle(method, path, headers, body) -> (status, json_text)``; this
module serves it with keep-alive (as ``requests.Session`` expects) and, when stopped, cuts the
kept-alive connections too, so no client keeps talking to a stopped fake's state.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Protocol


class JsonApiFake(Protocol):
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests.Session expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls
    timeout = 30
    fake: JsonApiFake  # set on a per-server subclass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.fake.handle(self.command, self.path, dict(self.headers), body)
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        with self.sockets_lock:
            for s in list(self.open_sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@contextmanager
def serve(fake: JsonApiFake, name: str) -> Iterator[str]:
    """Serve ``fake`` on a free loopback port for the block; yields ``http://127.0.0.1:PORT``."""
    server = _Server(type("Handler", (_Handler,), {"fake": fake}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.close_all()
        server.server_close()
        thread.join(timeout=5)
