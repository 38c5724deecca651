"""What a COS VM's startup script talks to: the metadata server (faked here, strictly) and the
Google APIs (the GCS emulator and the Compute stand-in, reached through a recording tap)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 with a free port, serving in a daemon thread."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, str], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:  # keep pytest output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                handle(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _read(h: BaseHTTPRequestHandler, method: str) -> Request:
    url = urllib.parse.urlsplit(h.path)
    length = int(h.headers.get("Content-Length") or 0)
    return Request(
        method=method,
        path=urllib.parse.unquote(url.path),
        query=dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
        headers={k.lower(): v for k, v in h.headers.items()},
        body=h.rfile.read(length) if length else b"",
    )


def _reply(h: BaseHTTPRequestHandler, code: int, body: bytes | str, ctype: str = "application/json") -> None:
    data = body.encode() if isinstance(body, str) else body
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


@dataclass
class FakeMetadata:
    """The GCE metadata server, as strict as the real one about ``Metadata-Flavor: Google``.

    Serves ``/computeMetadata/v1/``: ``instance/attributes/KEY`` (404 when absent, as GCE does),
    ``instance/name``, ``instance/zone`` (``projects/NUM/zones/ZONE``), ``project/project-id`` and
    the service account token. A request without the header gets 403 and is counted in
    ``refused``.
    """

    attributes: dict[str, str]
    instance: str
    zone: str
    project: str
    token: str
    requests: list[Request] = field(default_factory=list)
    refused: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/computeMetadata/v1"

    def __enter__(self) -> "FakeMetadata":
        # A fresh server (and port) each time: one VM may boot, reboot and shut down.
        self._server = _Server(self._handle)
        self._server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.stop()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        req = _read(h, method)
        self.requests.append(req)
        if req.headers.get("metadata-flavor") != "Google":
            self.refused.append(req)
            return _reply(h, 403, "Missing required header: Metadata-Flavor", "text/html")
        prefix = "/computeMetadata/v1/"
        if method != "GET" or not req.path.startswith(prefix):
            return _reply(h, 404, "not found", "text/html")
        key = req.path[len(prefix):]
        values = {
            "instance/name": self.instance,
            "instance/zone": f"projects/123456789/zones/{self.zone}",
            "project/project-id": self.project,
            "instance/service-accounts/default/token": json.dumps(
                {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"}),
        }
        if key.startswith("instance/attributes/") and key[len("instance/attributes/"):] in self.attributes:
            return _reply(h, 200, self.attributes[key[len("instance/attributes/"):]], "application/text")
        if key in values:
            return _reply(h, 200, values[key], "application/text")
        return _reply(h, 404, "not found", "text/html")


@dataclass
class GoogleApiTap:
    """Where the startup script's Google calls go: a recording pass-through to the stand-ins.

    The script uploads its phase markers to GCS (``POST /upload/storage/v1/b/B/o?uploadType=media``)
    and deletes its own VM through Compute (``DELETE /compute/v1/projects/P/zones/Z/instances/N``).
    Those APIs are faked once, by the GCS emulator and the Compute stand-in, the same ones the
    cloud path boots its VMs against (tests/standins/cloud_sim.py); this tap only records each
    request as the script sent it (headers included, which the stand-ins do not keep) and
    forwards it unchanged, so a test can assert on the call and on what the stand-in made of it.
    """

    gcs_api: str       # http://HOST:PORT of the GCS emulator
    compute_api: str   # http://HOST:PORT of the Compute stand-in
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = _Server(self._handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def __enter__(self) -> "GoogleApiTap":
        self._server.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.stop()

    def deletes(self) -> list[Request]:
        return [r for r in self.requests if r.method == "DELETE"]

    def uploads(self) -> list[Request]:
        return [r for r in self.requests if r.path.startswith("/upload/storage/v1/")]

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        req = _read(h, method)
        self.requests.append(req)
        upstream = self.compute_api if req.path.startswith("/compute/") else self.gcs_api
        forwarded = urllib.request.Request(
            upstream + h.path, data=req.body if method != "GET" else None, method=method,
            headers={k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length")})
        try:
            with urllib.request.urlopen(forwarded, timeout=30) as resp:
                code, body, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            code, body, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        return _reply(h, code, body, ctype or "application/json")
