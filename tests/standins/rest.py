"""The REST half shared by the JSON fakes of Google's newer APIs (Cloud Run, Cloud Scheduler).

On the one template every stand-in follows (``RoutedApi``, tests/standins/google_api.py): an
unrouted path still reaches ``answer`` (as rpc ``unknown``, which each fake refuses as its service
does); a body that does not parse is 400; errors carry the canonical ``status``, as these APIs send.
"""

from __future__ import annotations

from typing import Optional

from google.protobuf import json_format

from tests.standins.cloudbuild import ApiError
from tests.standins.google_api import RoutedApi


class RestFake(RoutedApi):
    """Subclasses set ``NAME`` and ``ROUTES`` ((verb, path regex, rpc) rows) and write ``answer``."""

    def answer(self, rpc: str, args: dict[str, str], q: dict[str, str], body: bytes, headers: dict[str, str],
               int_enums: bool) -> str:
        """The JSON payload of a 200 answer to ``rpc``; raise ``ApiError`` for any other."""
        raise NotImplementedError

    def find_route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        return super().find_route(method, path) or ("unknown", {})

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> str:
        return self.answer(rpc, args, query, body, headers, "enum-encoding=int" in query.get("$alt", ""))

    def client_error(self, e: Exception, query: dict[str, str]) -> Optional[ApiError]:
        if isinstance(e, (ValueError, json_format.ParseError)):
            return ApiError(400, f"Invalid JSON payload received. {e}")
        return None

    def crashed(self, e: Exception) -> ApiError:
        return ApiError(500, f"{self.NAME} crashed: {e!r}")
