"""``runner ops report``'s page, written once (``--out``) or served (``--serve``).

Why a server at all: a file shows the run as it was when it was written. While a run is live, a
browser tab that keeps itself current is what people leave open; it needs nothing but the
standard library's ``http.server`` and a ``<meta http-equiv=refresh>`` (no script), and it is
put on the page only while a run it shows is live, so a finished run's page stays still. Each
request reads the record afresh. Loopback by default: the page names the run's VMs, zones and
costs, which are not for the whole network.
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from entrypoint.store import Store
from runner.ops.cost import PriceTable
from runner.ops.report_data import ReportError, RunReport, build_report, build_reports
from runner.ops.report_html import page

DEFAULT_REFRESH_S = 10.0


def report_page(store: Store, run_ids: list[str], title: str, prices: PriceTable,
                refresh_s: float | None = None, now: float | None = None) -> tuple[str, bool]:
    """(the page, whether any run on it is live). ``refresh_s``: the page reloads itself at
    that interval while a run is live (``--serve``); None: never (a file).

    One run that cannot be read is ``ReportError``; among several it is a row saying why."""
    now = time.time() if now is None else now
    if len(run_ids) == 1:
        reports: list[RunReport | ReportError] = [build_report(store, run_ids[0], prices, now)]
    else:
        reports = build_reports(store, run_ids, prices, now)
    live = any(isinstance(r, RunReport) and r.live for r in reports)
    return page(reports, run_ids, title, now=now, refresh_s=refresh_s if live else None), live


class ReportServer(ThreadingHTTPServer):
    """Serves ``render()``'s page at ``/``; every other path is 404."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], render: Callable[[], str]) -> None:
        self.render = render
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ReportServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] not in ("/", "/index.html"):
            self._send(404, b"not found: the report is at /\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.render().encode()
        except ReportError as e:
            self._send(404, f"{e}\n".encode(), "text/plain; charset=utf-8")
            return
        except Exception as e:  # noqa: BLE001 - one failed read must not end the server; the next may work
            self._send(503, f"could not read the record ({type(e).__name__}: {e}); reload to try again\n".encode(),
                       "text/plain; charset=utf-8")
            return
        self._send(200, body, "text/html; charset=utf-8")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        print(f"report: {self.address_string()} {format % args}", file=sys.stderr)


def start_server(render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> ReportServer:
    """A server answering in a background thread (port 0: any free one; see ``.url``);
    ``shutdown()`` stops it."""
    server = ReportServer((host, port), render)
    threading.Thread(target=server.serve_forever, name="report-server", daemon=True).start()
    return server
