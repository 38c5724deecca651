"""The REST half shared by the JSON fakes of Google's newer APIs (Cloud Run, Cloud Scheduler).

On the one template every stand-in follows (``RoutedApi``, tests/standins/google_api.py): an
unrouted path still reaches ``answer`` (as rpc ``unknown``, which each fake refuses as its service
does); a body that does not parse is 400; errors carry the canonical ``status``, as these APIs send.

``fail_next(code, times, rpc)`` answers the next requests with an error before the fake looks at
them (nothing applied), as the Compute and Cloud Build stand-ins do: these APIs answer an outage
with 503 ``UNAVAILABLE`` ("most likely a transient condition and may be corrected by retrying with
a backoff", https://cloud.google.com/ruby/docs/reference/google-cloud-errors/latest/Google-Cloud-UnavailableError)
and a quota with 429, both to be retried with exponential backoff
(https://docs.cloud.google.com/service-usage/docs/troubleshooting, "How do I perform a retry").
"""

from __future__ import annotations

from typing import Optional

from google.protobuf import json_format

from tests.standins.cloudbuild import ApiError
from tests.standins.google_api import RoutedApi


class RestFake(RoutedApi):
    """Subclasses set ``NAME`` and ``ROUTES`` ((verb, path regex, rpc) rows) and write ``answer``."""

    def __init__(self) -> None:
        super().__init__()
        self._fail_next: list[tuple[int, Optional[str]]] = []

    def fail_next(self, code: int = 503, times: int = 1, rpc: Optional[str] = None) -> None:
        """The next ``times`` requests (to ``rpc`` only, if given) get HTTP ``code``, unprocessed."""
        with self.lock:
            self._fail_next.extend([(code, rpc)] * times)

    def answer(self, rpc: str, args: dict[str, str], q: dict[str, str], body: bytes, headers: dict[str, str],
               int_enums: bool) -> str:
        """The JSON payload of a 200 answer to ``rpc``; raise ``ApiError`` for any other."""
        raise NotImplementedError

    def find_route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        return super().find_route(method, path) or ("unknown", {})

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> str:
        for i, (code, only) in enumerate(self._fail_next):
            if only is None or only == rpc:
                del self._fail_next[i]
                raise ApiError(code)
        return self.answer(rpc, args, query, body, headers, "enum-encoding=int" in query.get("$alt", ""))

    def client_error(self, e: Exception, query: dict[str, str]) -> Optional[ApiError]:
        if isinstance(e, (ValueError, json_format.ParseError)):
            return ApiError(400, f"Invalid JSON payload received. {e}")
        return None

    def crashed(self, e: Exception) -> ApiError:
        return ApiError(500, f"{self.NAME} crashed: {e!r}")
