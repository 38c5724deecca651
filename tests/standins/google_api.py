"""What every Google API stand-in shares: one request's way through a route table, and Google's
JSON error body, built in one place.

Why one base: each stand-in used to parse, route, map errors, catch its own crashes and record
the call in its own copy of the same forty lines; a fix to one (a crash that must fail the test,
a body that does not parse) had to be made in four. ``RoutedApi.handle`` is the template
(docs/architecture.md#template-methods): a subclass says how a path maps to an rpc (``find_route``, by default its ``ROUTES``
table of (verb, path regex, rpc) rows), answers the rpc (``respond``), and names the few answers
that differ between services (not implemented, a client's malformed input, its own crash). Served by
``tests.standins.json_http_server.serve``.

Google's error body is ``{"error": {"code", "message", ...}}``; what follows depends on the API
generation, and each stand-in answers as its service does: the classic ``errors`` list
(``reason``/``domain``, Compute), the canonical ``status`` (Cloud Build, Cloud Run, Scheduler),
and ``details`` such as an ``ErrorInfo`` (the admin APIs). ``GoogleApiError`` builds all three.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit


class GoogleApiError(Exception):
    """An HTTP error answered with Google's JSON error body."""

    def __init__(self, code: int, message: str, *, status: Optional[str] = None,
                 errors: Optional[list[dict[str, Any]]] = None,
                 details: Optional[list[dict[str, Any]]] = None, summary: Optional[str] = None) -> None:
        super().__init__(summary or f"{code}: {message}")
        self.code, self.message = code, message
        self.status, self.errors, self.details = status, errors, details

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            err["errors"] = self.errors
        if self.status is not None:
            err["status"] = self.status
        if self.details:
            err["details"] = self.details
        return {"error": err}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached the fake, for asserting how many API calls a pass costs.

    ``rpc`` names the logical method (``"instances.aggregatedList"``, ``"zoneOperations.wait"``,
    ...) so tests need not pattern-match paths; ``status`` is the HTTP status answered
    (an injected error shows here as 429/503, which is how retries become countable).
    """

    method: str
    path: str
    query: dict[str, str]
    body: Optional[dict[str, Any]]
    time: float
    rpc: str
    status: int
    headers: dict[str, str] = field(default_factory=dict, repr=False)


# What ``respond`` returns: the JSON text of a 200 answer, or a function that produces it outside
# the stand-in's lock (a long poll such as zoneOperations.wait must not hold everyone up).
Answer = Union[str, Callable[[], str]]


class RoutedApi:
    """The template every stand-in's ``handle`` follows; see the module docstring. Thread-safe."""

    NAME: ClassVar[str] = "fake"
    ROUTES: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.internal_errors: list[str] = []  # crashes of the stand-in itself; fixtures fail on any
        self._requests: list[Any] = []

    # ---- inspection ----
    @property
    def requests(self) -> list[Any]:
        """A snapshot of every request received so far, oldest first."""
        with self.lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    def calls(self, rpc: Optional[str] = None, *, ok: Optional[bool] = None) -> list[Any]:
        """Recorded requests for one rpc (all if None); ``ok`` filters on status < 400."""
        return [r for r in self.requests if (rpc is None or r.rpc == rpc)
                and (ok is None or (r.status < 400) == ok)]

    # ---- what a subclass decides ----
    def find_route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        """(rpc, path arguments) of a request, None when no route matches."""
        for verb, pattern, rpc in self.ROUTES:
            m = re.fullmatch(pattern, path)
            if verb == method and m:
                return rpc, m.groupdict()
        return None

    def request_path(self, raw: str) -> str:
        """The path as routed and recorded (percent-decoded unless a service routes it raw)."""
        return unquote(raw)

    def before(self) -> None:
        """Under the lock, before each request (a stand-in whose world moves with time ticks)."""

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> Answer:
        """Answer ``rpc``; raise ``GoogleApiError`` for anything but 200."""
        raise NotImplementedError

    def not_implemented(self, method: str, path: str) -> GoogleApiError:
        return GoogleApiError(501, f"{self.NAME}: {method} {path} is not implemented")

    def client_error(self, e: Exception, query: dict[str, str]) -> Optional[GoogleApiError]:
        """The answer to an exception that is the client's fault (a bad filter...); None: a crash."""
        return None

    def crashed(self, e: Exception) -> GoogleApiError:
        return GoogleApiError(500, f"{self.NAME} crashed: {e!r}")

    def record(self, method: str, path: str, query: dict[str, str], body: Optional[Any], started: float,
               rpc: str, status: int, headers: dict[str, str]) -> None:
        self._requests.append(RecordedRequest(method, path, query, body, started, rpc, status, headers))

    # ---- the template ----
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """Serve one request; returns (HTTP status, JSON body)."""
        started = time.time()
        split = urlsplit(raw_path)
        path = self.request_path(split.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        routed = self.find_route(method, path)
        rpc, args = routed if routed else ("unknown", {})
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        answer: Answer
        with self.lock:
            self.before()
            try:
                if routed is None:
                    raise self.not_implemented(method, path)
                status, answer = 200, self.respond(rpc, args, query, body, headers)
            except GoogleApiError as e:
                status, answer = e.code, json.dumps(e.body())
            except Exception as e:  # noqa: BLE001 - sorted below: the client's fault, or a crash
                err = self.client_error(e, query)
                if err is None:  # a bug in the stand-in: answer, and remember it so the test fails
                    self.internal_errors.append(f"{method} {path}: {e!r}")
                    err = self.crashed(e)
                status, answer = err.code, json.dumps(err.body())
            self.record(method, path, query, parsed, started, rpc, status, headers)
        return status, answer if isinstance(answer, str) else answer()
