"""The HTTP half shared by the JSON REST fakes of Google APIs (Cloud Run, Cloud Scheduler).

Template method (STYLE.md): ``RestFake.handle`` parses the request, finds its rpc in ``ROUTES``,
calls the subclass's ``answer`` under the fake's lock, maps errors to Google's JSON error body
(``ApiError``/``FakeApiError`` as raised; a body that does not parse is 400; anything else is a
bug in the fake: 500, remembered in ``internal_errors`` so the test fails) and records the call.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from google.protobuf import json_format

from tests.standins.cloudbuild import ApiError
from tests.standins.compute.model import RecordedRequest
from tests.standins.gcp_admin import FakeApiError


class RestFake:
    """Subclasses set ``NAME`` and ``ROUTES`` ((verb, path regex, rpc) rows) and write ``answer``."""

    NAME: ClassVar[str] = "fake"
    ROUTES: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.internal_errors: list[str] = []
        self._requests: list[RecordedRequest] = []

    def calls(self, rpc: str | None = None) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self._requests if rpc is None or r.rpc == rpc]

    def answer(self, rpc: str, args: dict[str, str], q: dict[str, str], body: bytes, headers: dict[str, str],
               int_enums: bool) -> str:
        """The JSON payload of a 200 answer to ``rpc``; raise ``ApiError`` for any other."""
        raise NotImplementedError

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        q = dict(parse_qsl(split.query, keep_blank_values=True))
        int_enums = "enum-encoding=int" in q.get("$alt", "")
        rpc, args = "unknown", {}
        for verb, pattern, name in self.ROUTES:
            m = re.fullmatch(pattern, path)
            if verb == method and m:
                rpc, args = name, m.groupdict()
                break
        started = time.time()
        with self.lock:
            try:
                payload, status = self.answer(rpc, args, q, body, headers, int_enums), 200
            except (ApiError, FakeApiError) as e:
                status, payload = e.code, json.dumps(e.body())
            except (ValueError, json_format.ParseError) as e:
                status, payload = 400, json.dumps(ApiError(400, f"Invalid JSON payload received. {e}").body())
            except Exception as e:  # noqa: BLE001 - a bug in the fake: answer, and remember it
                self.internal_errors.append(f"{method} {path}: {e!r}")
                status, payload = 500, json.dumps(ApiError(500, f"{self.NAME} crashed: {e!r}").body())
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            self._requests.append(RecordedRequest(method, path, q, parsed, started, rpc, status, headers))
        return status, payload
