"""A local Compute Engine fake that the real ``google-cloud-compute`` REST clients can talk to.

Why a fake server rather than mocks: the supervisor's bugs live in how it *uses* the Compute API
(which filter it sends, how many calls a pass costs, whether it waits on the right operation,
whether it recognises a stockout that arrives as an operation error rather than an exception).
Mocking ``InstancesClient`` methods would test our assumptions about the library instead of the
library. So this module serves the compute v1 REST paths on ``127.0.0.1`` and lets product code
point its real clients at it::

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    opts = ClientOptions(api_endpoint=fake.endpoint)          # "http://127.0.0.1:PORT"
    instances = compute_v1.InstancesClient(client_options=opts, credentials=AnonymousCredentials())
    zone_ops = compute_v1.ZoneOperationsClient(client_options=opts, credentials=AnonymousCredentials())

Every response body is a message type of the library itself (``compute_v1.Instance``,
``compute_v1.Operation``, ...) serialized with ``type(msg).to_json``; request bodies are parsed
with ``compute_v1.Instance.from_json``. The fake therefore cannot drift from what the client
parses, and what it stores is exactly what the product sent plus the fields GCE fills in.

Behaviour kept from GCE because product code depends on it:

- Mutations answer with a ``compute#operation``. Insert failures caused by capacity
  (``ZONE_RESOURCE_POOL_EXHAUSTED``) arrive as an *operation error*, the way GCE reports them;
  ``stockout_as_http`` switches to an HTTP 503 instead. ``quota_zones`` forces an HTTP 403
  ``quotaExceeded`` in a zone; real quota accounting is below.
- Rate limits come in Compute's shape: 403 with reason ``rateLimitExceeded`` (or
  ``userRateLimitExceeded``, domain ``usageLimits``) as well as 429 (``fail_next(403, ...)``,
  ``error_codes``, ``queries_per_second``), so a client that reads every 403 as "permission
  denied" is caught.
- A preemption is a timeline, not an event. ``simulateMaintenanceEvent`` (or ``preempt``/
  ``preempt_after``) records a ``compute.instances.preempted`` zone operation (how a supervisor
  tells preemption from a crash), puts the VM in ``STOPPING`` and sends the guest an ACPI soft-off
  (``Guest.on_shutdown``: the shutdown script runs); when the guest has halted, or at the latest
  after the notice, the VM is powered off (``Guest.on_power_off``) and becomes ``TERMINATED``
  (``instanceTerminationAction=STOP``) or is deleted (``DELETE``). ``stop`` and ``delete`` take
  the same path, and their operation is DONE only once the VM is off (``stop``) or gone
  (``delete``). The notice is GCE's: 30 s for spot VMs and 120 s for standard ones between ACPI
  G2 soft off and G3 mechanical off (``Scheduling.skipGuestOsShutdown`` in the compute v1 API
  reference; "preemption process" in the Spot VMs docs), multiplied by ``time_scale``.
  ``STOPPING`` is "a temporary status; the instance moves to TERMINATED once it has stopped"
  (instance lifecycle docs). Without a guest the fake assumes the shutdown script used the whole
  notice. ``time_scale = 0`` (the default) collapses the timeline: the VM is off within the
  request, as before this was modelled; tests of the timeline set e.g. ``time_scale = 0.02``.
- The serial console keeps the last 1 MiB; ``start`` offsets older than that are moved forward
  and the response's ``start`` says so, so log followers can detect the gap.
- Regional quotas are enforced from what ``regions.get`` reports (``region_quotas``: limit and
  usage outside the fake, plus what the fake's own live VMs use). An ``insert`` or ``start`` that
  would exceed ``CPUS`` or ``NVIDIA_*_GPUS`` (spot VMs: ``PREEMPTIBLE_*`` when the project has a
  non-zero preemptible limit, the standard metric otherwise, as the Spot VMs quota docs say)
  fails with the operation error ``QUOTA_EXCEEDED`` "Quota 'M' exceeded.  Limit: L in region R."
  (HTTP status 403 in the operation), the way gcloud shows it. TERMINATED VMs use no CPU/GPU
  quota. A metric the region does not list is not limited (a simplification: GCE has them all).
- ``scheduling.maxRunDuration`` must lie between 30 seconds and 120 days and needs an
  ``instanceTerminationAction`` (gcloud ``--max-run-duration``; "Limit the run time of a VM").
  When a VM enters RUNNING, ``resourceStatus.scheduling.terminationTimestamp`` is set; when it
  is reached the VM is stopped or deleted through the usual shutdown. Stopping clears it; a
  start counts afresh. The duration runs scaled by ``time_scale`` (in real seconds when
  ``time_scale`` is 0). Not modelled: ``terminationTime`` (an absolute time limit).
- Disks are resources of their own (``disks.insert/get/list/delete``, ``add_disk``, ``disks()``,
  ``instances.attachDisk/detachDisk``).
  An instance's ``initializeParams`` disk is created with it (409 if a disk of that name exists
  in the zone); a ``source`` disk must exist (404), be in the instance's zone (400), and a
  ``READ_WRITE`` disk attaches to one instance only (400 ``resourceInUseByAnotherResource``),
  as the disks docs say of read-write mode. ``autoDelete`` defaults to false in the API (gcloud
  sets it for boot disks, the API does not): a deleted VM leaves such disks behind, with no
  users, which is what ``disks()`` lets tests assert against. A disk in use cannot be deleted.
- ``requestId`` makes mutations idempotent, so retried inserts do not create two VMs. It must
  be a UUID other than the zero UUID, is remembered per method and zone (the same id sent to
  another zone or method is another request) for 60 minutes (``request_id_ttl``, scaled by
  ``time_scale`` when that is set), as the compute v1 reference says of ``requestId``.
- Validation that real GCE does and that catches real bugs (``strict=True``): instance and label
  names, machine/accelerator types given as zonal URLs that exist in that zone, GPUs requiring
  ``onHostMaintenance=TERMINATE``, spot VMs not being auto-restarted, metadata size limits.

Authorization (opt-in: set ``iam``): every request carries an identity, the bearer token of its
``Authorization`` header looked up in ``tokens`` (``mint_token``: e.g. what a VM's metadata
server hands its service account), or ``operator`` when there is none (the product's clients
use anonymous credentials against an http:// endpoint). The identity's roles come from the IAM
policy ``iam.policy(project)`` (the admin fake that ``runner init`` writes to), custom roles
from ``iam.role_permissions``; a request whose permission none of them carries is answered as
GCE does: 403 ``forbidden``, "Required 'compute.instances.delete' permission for 'projects/...'"
(an unknown token: 401 ``authError``). Inserting a VM that runs as a service account also
needs ``iam.serviceAccounts.actAs`` (``roles/iam.serviceAccountUser``). Predefined roles are
modelled by the compute permissions they carry (IAM "basic and predefined roles" reference),
public images (``cos-cloud``) are readable by anyone, and conditions are evaluated for the
subset ``runner init`` writes (``resource.type ==`` and ``resource.name[.extract(...)]
.startsWith(...)`` joined by ``&&``); any other condition grants nothing (a 403 a test sees).

A ``guest`` (see ``Guest``) lets a test run a simulated VM behind each instance: it is told when
the VM enters RUNNING (after insert or start), when the soft-off comes, and when power is cut.
Callbacks run on the fake's own threads, never under its lock, in the order the events happened.

Known simplifications: operations finish instantly unless ``operation_seconds`` is set; GET
echoes ``disks[].initializeParams`` (real GCE drops it); filters implement the common subset
(``=``, ``!=``, ``:``, ``<``/``>``, ``eq``/``ne`` regex, ``AND``/``OR``/``NOT``, parentheses)
and ``:`` on a string means "contains". Unimplemented paths answer HTTP 501 so gaps are loud.
"""

from __future__ import annotations

import base64
import fnmatch
import itertools
import json
import os
import random
import re
import socket
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit

import queue
from typing import Protocol

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from tests.standins.json_http_server import serve

API = "https://www.googleapis.com/compute/v1"
SERIAL_RETAIN_BYTES = 1 << 20
MAX_RESULTS = 500
# Seconds between ACPI G2 soft off and G3 mechanical off (Scheduling.skipGuestOsShutdown, compute
# v1 reference): what a shutdown script gets before power is cut.
SPOT_SHUTDOWN_NOTICE_S = 30.0
STANDARD_SHUTDOWN_NOTICE_S = 120.0
_PACIFIC = timezone(timedelta(hours=-7))  # GCE timestamps carry the US/Pacific offset

InstancePredicate = Callable[[compute_v1.Instance], bool]


# ---------------------------------------------------------------------------------------------
# Seed catalogue: small, but shaped like the real thing (zones differ in what they offer).
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MachineSpec:
    cpus: int
    memory_mb: int
    description: str
    accelerator: Optional[tuple[str, int]] = None  # bundled GPU: (type, count)
    cpu_platform: str = "Intel Broadwell"


MACHINE_TYPES: dict[str, _MachineSpec] = {
    "n1-standard-4": _MachineSpec(4, 15360, "4 vCPUs, 15 GB RAM"),
    "n1-standard-8": _MachineSpec(8, 30720, "8 vCPUs, 30 GB RAM"),
    "e2-standard-4": _MachineSpec(4, 16384, "Efficient Instance, 4 vCPUs, 16 GB RAM", None,
                                  "AMD Rome"),
    "g2-standard-8": _MachineSpec(8, 32768, "8 vCPUs, 32 GB RAM, 1 GPU", ("nvidia-l4", 1),
                                  "Intel Cascade Lake"),
    "a2-highgpu-1g": _MachineSpec(12, 87040, "Accelerator Optimized: 1 NVIDIA Tesla A100 GPU, "
                                  "12 vCPUs, 85GB RAM", ("nvidia-tesla-a100", 1),
                                  "Intel Cascade Lake"),
    "a3-highgpu-8g": _MachineSpec(208, 1916928, "Accelerator Optimized: 8 NVIDIA H100 80GB GPUs, "
                                  "208 vCPUs, 1872GB RAM", ("nvidia-h100-80gb", 8),
                                  "Intel Sapphire Rapids"),
}

ACCELERATOR_TYPES: dict[str, tuple[str, int]] = {  # name -> (description, max cards)
    "nvidia-tesla-t4": ("NVIDIA T4", 4),
    "nvidia-l4": ("NVIDIA L4", 8),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8),
}

# What each zone offers. europe-west4-a has no T4 and us-central1-b no A3/H100, on purpose:
# zone-selection code must consult the catalogue instead of assuming.
ZONES: dict[str, dict[str, tuple[str, ...]]] = {
    "us-central1-a": {"machine_types": tuple(MACHINE_TYPES),
                      "accelerators": tuple(ACCELERATOR_TYPES)},
    "us-central1-b": {"machine_types": ("n1-standard-4", "n1-standard-8", "e2-standard-4",
                                        "g2-standard-8", "a2-highgpu-1g"),
                      "accelerators": ("nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100")},
    "us-central1-c": {"machine_types": ("n1-standard-4", "n1-standard-8", "e2-standard-4",
                                        "g2-standard-8", "a2-highgpu-1g"),
                      "accelerators": ("nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100")},
    "europe-west4-a": {"machine_types": tuple(MACHINE_TYPES),
                       "accelerators": ("nvidia-l4", "nvidia-tesla-a100", "nvidia-h100-80gb")},
}

# (family, image name) in release order; the last non-deprecated one is what the family serves.
COS_IMAGES: list[tuple[str, str]] = [
    ("cos-stable", "cos-stable-117-18613-164-4"),
    ("cos-stable", "cos-stable-121-18867-90-38"),
    ("cos-beta", "cos-beta-125-19216-0-40"),
    ("cos-121-lts", "cos-121-18867-90-38"),
    ("cos-117-lts", "cos-117-18613-164-4"),
]

_QUOTA_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
}

DEFAULT_REGION_QUOTAS: dict[str, tuple[float, float]] = {
    "CPUS": (24.0, 0.0), "PREEMPTIBLE_CPUS": (0.0, 0.0),
    "NVIDIA_T4_GPUS": (1.0, 0.0), "PREEMPTIBLE_NVIDIA_T4_GPUS": (1.0, 0.0),
    "NVIDIA_L4_GPUS": (1.0, 0.0), "PREEMPTIBLE_NVIDIA_L4_GPUS": (1.0, 0.0),
}

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
_METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")


# ---------------------------------------------------------------------------------------------
# Serialization and errors
# ---------------------------------------------------------------------------------------------

def to_json(msg: Any) -> str:
    """Serialize a compute_v1 message the way GCE writes it: camelCase, enum names, no empties.

    ``to_json``'s defaults (integer enums, every empty repeated field printed) also parse, but
    GCE sends ``"status": "DONE"`` and omits empty fields, and product code that inspects raw
    JSON or checks field presence should see the same.
    """
    try:
        return type(msg).to_json(msg, use_integers_for_enums=False,
                                 always_print_fields_with_no_presence=False)
    except TypeError:  # proto-plus < 1.24 names the option differently
        return type(msg).to_json(msg, use_integers_for_enums=False,
                                 including_default_value_fields=False)


def _as_dict(msg: Any) -> dict[str, Any]:
    return json.loads(to_json(msg))


def _copy(msg: Any) -> Any:
    """A detached copy, so callers of the inspection helpers cannot mutate the fake's state."""
    cls = type(msg)
    return cls.deserialize(cls.serialize(msg))


class ApiError(Exception):
    """An HTTP error answered with a GCE JSON error body (api_core maps it to an exception)."""

    def __init__(self, code: int, reason: str, message: str, domain: str = "global") -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message, self.domain = code, reason, message, domain

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message,
                          "errors": [{"reason": self.reason, "message": self.message,
                                      "domain": self.domain}]}}


def _not_found(resource: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


def _invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {why}")


_RETRYABLE = {
    429: ("rateLimitExceeded", "Rate Limit Exceeded"),
    500: ("backendError", "Internal error. Please try again or contact Google Support."),
    502: ("backendError", "Bad Gateway"),
    503: ("backendError", "The service is currently unavailable."),
    504: ("backendError", "Deadline exceeded."),
}
# Compute answers most rate limits with 403, not 429 (the "Queries per minute" quota of
# compute.googleapis.com; "API rate limits" in the Compute docs), in the classic error shape
# with domain usageLimits and reason rateLimitExceeded or userRateLimitExceeded (per user).
_RATE_LIMITS = {
    "rateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                         "minute' of service 'compute.googleapis.com'.",
    "userRateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                             "minute per user' of service 'compute.googleapis.com'.",
}
# What an injected 403 is when no reason is given: a rate limit, the usual transient 403.
_FORBIDDEN = ("forbidden", "Required 'compute.instances.list' permission for "
              "'projects/{project}'")


def _retryable_error(code: int, reason: Optional[str] = None) -> ApiError:
    """An injected error in GCE's shape: 429/5xx, or 403 rate limits (``reason`` picks which;
    ``reason="forbidden"`` makes a 403 a permission error instead)."""
    if code == 403:
        reason = reason or "rateLimitExceeded"
        if reason in _RATE_LIMITS:
            return ApiError(403, reason, _RATE_LIMITS[reason], domain="usageLimits")
        return ApiError(403, reason, _FORBIDDEN[1].format(project="the project"))
    default_reason, message = _RETRYABLE.get(code, ("backendError", HTTPStatus(code).phrase))
    return ApiError(code, reason or default_reason, message)


def _now_ts() -> str:
    return datetime.now(_PACIFIC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------
# List filters
# ---------------------------------------------------------------------------------------------

class FilterError(ValueError):
    """The filter string is not one the fake (or GCE) understands; answered as HTTP 400."""


_OPS = ("!=", "<=", ">=", "=", ":", "<", ">")


class _FilterParser:
    """Recursive-descent parser for the GCE list ``filter`` syntax (the commonly used subset).

    Grammar: ``expr := and (OR and)*``, ``and := unary ([AND] unary)*``,
    ``unary := NOT unary | '(' expr ')' | FIELD OP VALUE``. Adjacent terms are ANDed, as in
    ``(labels.a = x) (status = RUNNING)``.
    """

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def parse(self) -> Callable[[dict[str, Any]], bool]:
        node = self._or()
        self._ws()
        if self.pos != len(self.text):
            raise FilterError(f"unexpected {self.text[self.pos:]!r}")
        return node

    def _ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _keyword(self, word: str) -> bool:
        self._ws()
        m = re.compile(rf"{word}(?=[\s(])").match(self.text, self.pos)
        if m:
            self.pos = m.end()
            return True
        return False

    def _or(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._and()]
        while self._keyword("OR"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda r: any(p(r) for p in parts))

    def _and(self) -> Callable[[dict[str, Any]], bool]:
        parts = [self._unary()]
        while True:
            self._ws()
            if self.pos >= len(self.text) or self.text[self.pos] == ")":
                break
            if re.compile(r"OR(?=[\s(])").match(self.text, self.pos):
                break
            self._keyword("AND")
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else (lambda r: all(p(r) for p in parts))

    def _unary(self) -> Callable[[dict[str, Any]], bool]:
        self._ws()
        if self._keyword("NOT"):
            inner = self._unary()
            return lambda r: not inner(r)
        if self.text.startswith("(", self.pos):
            self.pos += 1
            node = self._or()
            self._ws()
            if not self.text.startswith(")", self.pos):
                raise FilterError("missing ')'")
            self.pos += 1
            return node
        return self._term()

    def _term(self) -> Callable[[dict[str, Any]], bool]:
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*").match(self.text, self.pos)
        if not m:
            raise FilterError(f"expected a field name at {self.text[self.pos:]!r}")
        path, self.pos = m.group(), m.end()
        self._ws()
        op = next((o for o in _OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            m = re.compile(r"(eq|ne)\s+").match(self.text, self.pos)
            if not m:
                raise FilterError(f"expected an operator after {path!r}")
            op = m.group(1)
        self.pos += len(op)
        self._ws()
        value = self._value()
        return _term_matcher(path, op, value)

    def _value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            end = self.pos + 1
            out = []
            while end < len(self.text) and self.text[end] != quote:
                if self.text[end] == "\\" and end + 1 < len(self.text):
                    end += 1
                out.append(self.text[end])
                end += 1
            if end >= len(self.text):
                raise FilterError("unterminated string")
            self.pos = end + 1
            return "".join(out)
        m = re.compile(r"[^\s()]+").match(self.text, self.pos)
        if not m:
            raise FilterError("expected a value")
        self.pos = m.end()
        return m.group()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _resolve(resource: Any, path: list[str]) -> list[Any]:
    """All leaf values at ``path`` (lists fan out), accepting snake_case or camelCase names."""
    if not path:
        return resource if isinstance(resource, list) else [resource]
    if isinstance(resource, list):
        return [v for item in resource for v in _resolve(item, path)]
    if not isinstance(resource, dict):
        return []
    key = path[0]
    if key not in resource:
        key = _camel(key)
    if key not in resource:
        return []
    return _resolve(resource[key], path[1:])


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _term_matcher(path: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    parts = path.split(".")
    if op in ("eq", "ne"):
        try:
            rx = re.compile(value)
        except re.error as e:
            raise FilterError(f"bad regex {value!r}: {e}") from e

    def compare(v: Any) -> bool:
        s = _scalar(v)
        if op == "=":
            return fnmatch.fnmatchcase(s, value) if "*" in value else s == value
        if op == ":":
            if value == "*":
                return v not in (None, "", [], {})
            return value in s if isinstance(v, str) else s == value
        if op == "eq":
            return rx.fullmatch(s) is not None
        try:
            a, b = float(s), float(value)
        except ValueError:
            a, b = s, value  # type: ignore[assignment]
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]  # type: ignore[operator]

    def match(resource: dict[str, Any]) -> bool:
        values = _resolve(resource, parts)
        if op == "!=":
            return not any(_scalar(v) == value or ("*" in value and fnmatch.fnmatchcase(
                _scalar(v), value)) for v in values)
        if op == "ne":
            return not any(rx.fullmatch(_scalar(v)) for v in values)
        if op == ":" and isinstance(values, list) and values and isinstance(values[0], dict):
            return value == "*" or any(value in d for d in values)  # map key presence
        return any(compare(v) for v in values)

    return match


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile a GCE list filter to a predicate over a resource's camelCase JSON dict."""
    if not text or not text.strip():
        return lambda _r: True
    return _FilterParser(text.strip()).parse()


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------

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


class IamPolicySource(Protocol):
    """Where the fake reads IAM from: ``tests.standins.gcp_admin.GcpAdminFake`` is one."""

    def policy(self, project: str) -> dict[str, Any]: ...

    def role_permissions(self, role: str) -> Optional[frozenset[str]]: ...


class Guest(Protocol):
    """What runs inside the fake's VMs: the hook a whole-path test uses to simulate COS VMs.

    Set ``fake.guest`` to an object with these three methods (``None``, the default, means the
    VMs run nothing). The fake calls them from its own dispatcher thread, never under its lock,
    so a guest may call back into the fake (``append_serial``, HTTP requests) freely; events for
    one VM arrive in the order they happened (running → shutdown → power off → running ...).
    """

    def on_running(self, project: str, zone: str, name: str,
                   instance: compute_v1.Instance) -> None:
        """The VM entered RUNNING after ``insert`` or ``start``: boot it from ``instance``'s
        metadata (a copy: startup-script, shutdown-script, the runner's keys). Must not block:
        start the simulated VM and return."""

    def on_shutdown(self, project: str, zone: str, name: str, notice_seconds: float) -> None:
        """ACPI soft off (preemption, ``stop``, ``delete``): run the shutdown script and return
        when the guest has halted. Called on a thread of its own; the fake waits for it at
        most ``notice_seconds`` and then cuts power whether or not it returned."""

    def on_power_off(self, project: str, zone: str, name: str) -> None:
        """Power is cut (G3 mechanical off): kill whatever still runs on this VM, at once.
        Called after ``on_shutdown`` returned or its notice ran out, whichever came first."""


@dataclass
class _Shutdown:
    """A VM in STOPPING: what happens at power off, and when that is at the latest."""

    action: str  # "STOP" (→ TERMINATED) or "DELETE" (→ gone)
    deadline: float  # monotonic time of the G3 mechanical off
    halted: threading.Event  # set when the guest's shutdown finished (it halted early)
    ops: list["_Op"] = field(default_factory=list)  # operations DONE only at power off


@dataclass
class _Vm:
    project: str
    zone: str
    instance: compute_v1.Instance
    serial: bytearray = field(default_factory=bytearray)
    serial_base: int = 0  # byte offset of serial[0] in the whole console history
    boot_started: float = 0.0
    boot_seconds: float = 0.0
    shutdown: Optional[_Shutdown] = None
    run_deadline: float = 0.0  # monotonic time maxRunDuration ends (0: none)
    guest_running: bool = False  # the guest was told on_running and not yet on_power_off


@dataclass
class _Op:
    project: str
    zone: str
    op: compute_v1.Operation
    done_at: float  # monotonic time at which it reports DONE


@dataclass
class _Scheduled:
    due: float
    match: Union[str, InstancePredicate]
    zone: Optional[str]
    project: Optional[str]


class ComputeFake:
    """State and switches of the fake; served over HTTP by ``run_compute_fake``.

    Switches are plain attributes, read under the fake's lock on every request, so a test can
    flip them between (or during) supervisor passes:

    - ``stockout_zones``: inserts (and starts) there fail with ZONE_RESOURCE_POOL_EXHAUSTED, as
      an operation error, or as HTTP 503 when ``stockout_as_http`` is true.
    - ``quota_zones``: inserts there fail with HTTP 403 ``quotaExceeded`` naming the GPU quota.
    - ``queries_per_second``: above this many requests in any one-second window (0: no
      limit), a request is refused with 403 ``rateLimitExceeded``, the way Compute enforces its
      per-minute "Queries" quota; time to back off, not a missing permission.
    - ``error_rate``/``error_codes``: that fraction of requests first gets a retryable error
      (seeded RNG, so a failing run replays identically; 403 in ``error_codes`` is a
      ``rateLimitExceeded``, as Compute sends); ``fail_next`` injects exact failures.
    - ``boot_seconds``: new and restarted VMs pass PROVISIONING → STAGING → RUNNING over this long.
    - ``operation_seconds``: operations report RUNNING for this long before DONE.
    - ``serial_retain_bytes``: serial console history kept per VM (1 MiB, like GCE).
    - ``strict``: validate insert bodies the way GCE does (on by default).
    - ``region_quotas``: region -> {metric: (limit, usage)}, served by ``regions.get``
      (``set_quota`` edits it); starts as a new project's: 1 T4 and 1 L4, spot and standard.
    - ``time_scale``: the one factor applied to GCE's own durations (the 30 s / 120 s shutdown
      notice); 0 collapses them (the default, for tests that do not look at the timeline).
    - ``guest``: a ``Guest`` run behind every VM (None: the VMs run nothing).
    """

    def __init__(self, project: str = "test-project", *, seed: int = 0) -> None:
        self.project = project
        self.stockout_zones: set[str] = set()
        self.stockout_as_http = False
        self.quota_zones: set[str] = set()
        self.quota_metric = "NVIDIA_T4_GPUS"  # named when the request has no GPU to blame
        self.error_rate = 0.0
        self.queries_per_second = 0.0
        self._recent: list[float] = []  # monotonic times of requests in the last second
        self.error_codes: tuple[int, ...] = (429, 503)
        self.boot_seconds = 0.0
        self.operation_seconds = 0.0
        self.wait_timeout = 120.0  # zoneOperations.wait returns early after this, like GCE's ~2 min
        self.serial_retain_bytes = SERIAL_RETAIN_BYTES
        self.strict = True
        self.time_scale = 0.0
        self.guest: Optional[Guest] = None
        self.iam: Optional[IamPolicySource] = None  # None: every request is allowed
        self.operator = "user:operator@example.com"
        self.tokens: dict[str, str] = {}
        self.region_quotas: dict[str, dict[str, tuple[float, float]]] = {
            region: dict(DEFAULT_REGION_QUOTAS) for region in {z.rsplit("-", 1)[0] for z in ZONES}}
        self.endpoint = ""  # set by run_compute_fake
        self.internal_errors: list[str] = []  # crashes of the fake itself; the fixture fails on any
        self.lock = threading.RLock()
        self._rng = random.Random(seed)
        self._ids = itertools.count(1_000_000_000_000_000_001, 7919)
        self._op_seq = itertools.count(1)
        self._vms: dict[tuple[str, str, str], _Vm] = {}
        self._ops: dict[tuple[str, str, str], _Op] = {}
        self.request_id_ttl = 3600.0
        # (project, zone, rpc, requestId) -> (op name, monotonic time first seen)
        self._request_ids: dict[tuple[str, str, str, str], tuple[str, float]] = {}
        self._requests: list[RecordedRequest] = []
        self._scheduled: list[_Scheduled] = []
        self._fail_next: list[tuple[int, Optional[str], Optional[str]]] = []
        self._images: dict[tuple[str, str], compute_v1.Image] = {}
        self._disks: dict[tuple[str, str, str], compute_v1.Disk] = {}
        self._guest_events: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._guest_thread: Optional[threading.Thread] = None
        for family, name in COS_IMAGES:
            self.add_image("cos-cloud", name, family=family)

    # ---- inspection -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self.lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    def calls(self, rpc: Optional[str] = None, *, ok: Optional[bool] = None) -> list[RecordedRequest]:
        """Recorded requests for one logical method (all if None); ``ok`` filters on status<400."""
        return [r for r in self.requests if (rpc is None or r.rpc == rpc)
                and (ok is None or (r.status < 400) == ok)]

    def instances(self, project: Optional[str] = None) -> list[compute_v1.Instance]:
        """Copies of the stored instances (what the product sent plus GCE-filled fields)."""
        with self.lock:
            self._tick()
            return [_copy(vm.instance) for key, vm in sorted(self._vms.items())
                    if project is None or vm.project == project]

    def instance(self, zone: str, name: str, project: Optional[str] = None
                 ) -> Optional[compute_v1.Instance]:
        with self.lock:
            self._tick()
            vm = self._vms.get((project or self.project, zone, name))
            return _copy(vm.instance) if vm else None

    def operations(self, zone: Optional[str] = None, project: Optional[str] = None
                   ) -> list[compute_v1.Operation]:
        """Copies of recorded zone operations, oldest first."""
        with self.lock:
            self._tick()
            ops = [o for o in self._ops.values() if (zone is None or o.zone == zone)
                   and (project is None or o.project == project)]
            return [self._render_op(o) for o in sorted(ops, key=lambda o: o.op.name)]

    def disks(self, project: Optional[str] = None) -> list[compute_v1.Disk]:
        """Copies of every disk, attached or not: a leaked disk shows here with no ``users``."""
        with self.lock:
            self._tick()
            return [_copy(d) for (pp, _z, _n), d in sorted(self._disks.items())
                    if project is None or pp == project]

    def add_disk(self, zone: str, name: str, size_gb: int = 100,
                 project: Optional[str] = None) -> compute_v1.Disk:
        """Create a blank disk, as ``gcloud compute disks create`` would."""
        with self.lock:
            return _copy(self._new_disk(project or self.project, zone, name, size_gb, ""))

    def client_kwargs(self) -> dict[str, Any]:
        """``client_options`` and ``credentials`` for any compute_v1 client: ``Client(**kw)``."""
        return {"client_options": ClientOptions(api_endpoint=self.endpoint),
                "credentials": AnonymousCredentials()}

    # ---- switches that act ------------------------------------------------------------------

    def mint_token(self, member: str) -> str:
        """A bearer token that identifies ``member`` (``serviceAccount:EMAIL``) to this fake."""
        token = f"ya29.fake-{self._rng.getrandbits(64):016x}"
        with self.lock:
            self.tokens[token] = member
        return token

    def fail_next(self, code: int = 503, times: int = 1, rpc: Optional[str] = None,
                  reason: Optional[str] = None) -> None:
        """The next ``times`` requests (to ``rpc`` only, if given) get HTTP ``code`` unprocessed.

        ``403`` is a rate limit in GCE's shape (``reason`` ``rateLimitExceeded``, the default,
        or ``userRateLimitExceeded``); ``reason="forbidden"`` makes it a missing permission.
        """
        with self.lock:
            self._fail_next.extend([(code, rpc, reason)] * times)

    def append_serial(self, zone: str, name: str, text: Union[str, bytes],
                      project: Optional[str] = None) -> None:
        """Write to a VM's serial port 1, as its startup script would."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        with self.lock:
            vm = self._vms.get((project or self.project, zone, name))
            if vm is None:
                raise KeyError(f"no instance {zone}/{name}")
            vm.serial += data
            excess = len(vm.serial) - self.serial_retain_bytes
            if excess > 0:
                del vm.serial[:excess]
                vm.serial_base += excess

    def preempt(self, zone: str, name: str, project: Optional[str] = None) -> compute_v1.Operation:
        """Preempt a running spot VM now, exactly as a GCE preemption looks to the API."""
        with self.lock:
            self._tick()
            vm = self._vms.get((project or self.project, zone, name))
            if vm is None:
                raise KeyError(f"no instance {zone}/{name}")
            if not _is_spot(vm.instance):
                raise ValueError(f"{zone}/{name} is not a spot/preemptible VM")
            if vm.instance.status not in ("PROVISIONING", "STAGING", "RUNNING"):
                raise ValueError(f"{zone}/{name} is {vm.instance.status}; only a live VM can be "
                                 "preempted")
            return self._preempt(vm)

    def preempt_after(self, name_or_predicate: Union[str, InstancePredicate], seconds: float,
                      *, zone: Optional[str] = None, project: Optional[str] = None) -> None:
        """In ``seconds``, preempt every running spot VM with that name (or matching predicate).

        It takes effect at the fake's next clock tick (every 50 ms while served), or at the
        first request or inspection helper call after the deadline, whichever comes first.
        """
        with self.lock:
            self._scheduled.append(_Scheduled(time.monotonic() + seconds, name_or_predicate,
                                              zone, project))

    def set_quota(self, region: str, metric: str, limit: float, usage: float = 0.0) -> None:
        with self.lock:
            self.region_quotas.setdefault(region, {})[metric] = (limit, usage)

    def add_image(self, project: str, name: str, *, family: Optional[str] = None,
                  deprecated: bool = False) -> compute_v1.Image:
        """Register an image; the newest non-deprecated one of a family is what it resolves to."""
        with self.lock:
            image = compute_v1.Image(
                kind="compute#image", id=next(self._ids), name=name,
                self_link=f"{API}/projects/{project}/global/images/{name}",
                creation_timestamp=_now_ts(), status="READY", architecture="X86_64",
                disk_size_gb=10, archive_size_bytes=1_500_000_000,
                description=f"{family or name} image", source_type="RAW",
                labels={}, licenses=[f"{API}/projects/{project}/global/licenses/{family or name}"],
            )
            if family:
                image.family = family
            if deprecated:
                image.deprecated = compute_v1.DeprecationStatus(state="DEPRECATED")
            for (p, _n), older in self._images.items():  # a new release deprecates the old one
                if p == project and family and older.family == family and not older.deprecated.state:
                    older.deprecated = compute_v1.DeprecationStatus(
                        state="DEPRECATED", replacement=image.self_link)
            self._images[(project, name)] = image
            return image

    def seed_instance(self, zone: str, instance: compute_v1.Instance,
                      project: Optional[str] = None) -> compute_v1.Instance:
        """Store a VM directly (no request recorded, no validation): state that predates a test."""
        with self.lock:
            vm = self._create_vm(project or self.project, zone, _copy(instance))
            return _copy(vm.instance)

    # ---- internals: time-driven state --------------------------------------------------------

    def _tick(self) -> None:
        """Apply what time has made true: boots that finished, shutdowns whose guest halted or
        whose notice ran out, scheduled preemptions."""
        now = time.monotonic()
        for vm in list(self._vms.values()):
            self._boot_status(vm, now)
            sd = vm.shutdown
            if sd is not None and (now >= sd.deadline or sd.halted.is_set()):
                self._power_off(vm)
            elif sd is None and vm.run_deadline and now >= vm.run_deadline and \
                    vm.instance.status == "RUNNING":
                action = vm.instance.scheduling.instance_termination_action or "STOP"
                self._begin_shutdown(vm, "DELETE" if action == "DELETE" else "STOP")
        due = [s for s in self._scheduled if s.due <= now]
        self._scheduled = [s for s in self._scheduled if s.due > now]
        for s in due:
            for vm in list(self._vms.values()):
                if s.zone and vm.zone != s.zone or s.project and vm.project != s.project:
                    continue
                hit = (vm.instance.name == s.match if isinstance(s.match, str)
                       else s.match(_copy(vm.instance)))
                live = vm.instance.status in ("PROVISIONING", "STAGING", "RUNNING")
                if hit and _is_spot(vm.instance) and live:
                    self._preempt(vm)

    def _boot_status(self, vm: _Vm, now: float) -> None:
        if vm.instance.status not in ("PROVISIONING", "STAGING"):
            return
        elapsed = now - vm.boot_started
        if elapsed >= vm.boot_seconds:
            self._enter_running(vm)
        elif elapsed >= vm.boot_seconds / 2:
            vm.instance.status = "STAGING"

    def _boot(self, vm: _Vm) -> None:
        vm.boot_started, vm.boot_seconds = time.monotonic(), self.boot_seconds
        vm.instance.last_start_timestamp = _now_ts()
        if self.boot_seconds > 0:
            vm.instance.status = "PROVISIONING"
        else:
            self._enter_running(vm)

    def _enter_running(self, vm: _Vm) -> None:
        vm.instance.status = "RUNNING"
        mrd = vm.instance.scheduling.max_run_duration
        if "max_run_duration" in vm.instance.scheduling and (mrd.seconds or mrd.nanos):
            seconds = mrd.seconds + mrd.nanos / 1e9
            vm.run_deadline = time.monotonic() + seconds * (self.time_scale or 1.0)
            vm.instance.resource_status.scheduling.termination_timestamp = (
                datetime.now(_PACIFIC) + timedelta(seconds=seconds)).isoformat(
                timespec="milliseconds")
        if self.guest is not None:
            vm.guest_running = True
            guest, snap = self.guest, _copy(vm.instance)
            key = (vm.project, vm.zone, vm.instance.name)
            self._to_guest(lambda: guest.on_running(*key, snap))

    def _preempt(self, vm: _Vm) -> compute_v1.Operation:
        op = self._new_op(vm.project, vm.zone, "compute.instances.preempted", vm.instance,
                          user="system", status_message="Instance was preempted.", immediate=True)
        action = vm.instance.scheduling.instance_termination_action or "STOP"
        self._begin_shutdown(vm, "DELETE" if action == "DELETE" else "STOP")
        return op

    def _notice_seconds(self, vm: _Vm) -> float:
        base = SPOT_SHUTDOWN_NOTICE_S if _is_spot(vm.instance) else STANDARD_SHUTDOWN_NOTICE_S
        return base * self.time_scale

    def _begin_shutdown(self, vm: _Vm, action: str, op: Optional["_Op"] = None) -> None:
        """ACPI soft off: STOPPING now, power off when the guest halts or the notice runs out.

        A second stop/delete while STOPPING joins the shutdown in progress (a delete upgrades
        a stop); a TERMINATED VM has nothing to shut down, so a delete removes it at once.
        """
        if op is not None:
            op.done_at = float("inf")  # DONE when the power goes off, not before
        sd = vm.shutdown
        if sd is not None:
            if action == "DELETE":
                sd.action = "DELETE"
            if op is not None:
                sd.ops.append(op)
            return
        if vm.instance.status == "TERMINATED":
            vm.shutdown = _Shutdown(action, time.monotonic(), threading.Event(),
                                    [op] if op else [])
            self._power_off(vm)
            return
        notice = self._notice_seconds(vm) if vm.guest_running or self.guest is None else 0.0
        sd = _Shutdown(action, time.monotonic() + notice, threading.Event(), [op] if op else [])
        vm.shutdown = sd
        vm.instance.status = "STOPPING"
        if self.guest is not None and vm.guest_running:
            guest, key = self.guest, (vm.project, vm.zone, vm.instance.name)

            def soft_off() -> None:
                def script() -> None:
                    try:
                        guest.on_shutdown(*key, notice)
                    except Exception as e:  # noqa: BLE001 - a broken guest fails the test
                        self.internal_errors.append(f"guest on_shutdown failed: {e!r}")
                    finally:
                        sd.halted.set()
                threading.Thread(target=script, name=f"guest-shutdown-{key[2]}",
                                 daemon=True).start()
            self._to_guest(soft_off)
        self._power_off_if_due(vm)

    def _power_off_if_due(self, vm: _Vm) -> None:
        sd = vm.shutdown
        if sd is not None and (time.monotonic() >= sd.deadline or sd.halted.is_set()):
            self._power_off(vm)

    def _power_off(self, vm: _Vm) -> None:
        """G3 mechanical off: the guest is killed, then the VM is TERMINATED or deleted."""
        sd, vm.shutdown = vm.shutdown, None
        assert sd is not None
        key = (vm.project, vm.zone, vm.instance.name)
        if vm.guest_running and self.guest is not None:
            guest = self.guest
            self._to_guest(lambda: guest.on_power_off(*key))
        vm.guest_running = False
        vm.run_deadline = 0.0
        if "resource_status" in vm.instance:
            del vm.instance.resource_status  # terminationTimestamp: cleared when stopped
        if sd.action == "DELETE":
            self._vms.pop(key, None)
            self._release_disks(vm)
        else:
            vm.instance.status = "TERMINATED"
            vm.instance.last_stop_timestamp = _now_ts()
        now = time.monotonic()
        for op in sd.ops:
            op.done_at = now

    # ---- internals: the guest's dispatcher -----------------------------------------------

    def _to_guest(self, call: Callable[[], None]) -> None:
        """Queue a guest callback; one daemon thread delivers them in order, outside the lock."""
        if self._guest_thread is None or not self._guest_thread.is_alive():
            self._guest_thread = threading.Thread(target=self._deliver, name="compute-fake-guest",
                                                  daemon=True)
            self._guest_thread.start()
        self._guest_events.put(call)

    def _deliver(self) -> None:
        while True:
            call = self._guest_events.get()
            if call is None:
                return
            try:
                call()
            except Exception as e:  # noqa: BLE001 - a broken guest must fail the test, loudly
                self.internal_errors.append(f"guest callback failed: {e!r}")

    def close(self) -> None:
        """Stop the guest dispatcher (after delivering what is queued)."""
        if self._guest_thread is not None and self._guest_thread.is_alive():
            self._guest_events.put(None)
            self._guest_thread.join(timeout=30)

    # ---- internals: operations --------------------------------------------------------------

    def _new_op(self, project: str, zone: str, op_type: str, target: compute_v1.Instance, *,
                error: Optional[tuple[str, str, int, str]] = None, user: str = "",
                status_message: str = "", immediate: bool = False) -> compute_v1.Operation:
        seq = next(self._op_seq)
        name = (f"operation-{int(time.time() * 1000)}-{seq:013x}-"
                f"{self._rng.getrandbits(32):08x}-{self._rng.getrandbits(32):08x}")
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        ts = _now_ts()
        op = compute_v1.Operation(
            kind="compute#operation", id=next(self._ids), name=name, zone=zone_url,
            operation_type=op_type, target_link=target.self_link, target_id=target.id or None,
            user=user or f"fake-user@{project}.iam.gserviceaccount.com", status="DONE",
            progress=100, insert_time=ts, start_time=ts, end_time=ts,
            self_link=f"{zone_url}/operations/{name}",
        )
        if status_message:
            op.status_message = status_message
        if error:
            code, message, http_code, http_message = error
            op.error = compute_v1.Error(errors=[compute_v1.Errors(code=code, message=message)])
            op.http_error_status_code, op.http_error_message = http_code, http_message
        done_at = time.monotonic() + (0 if immediate else self.operation_seconds)
        self._ops[(project, zone, name)] = _Op(project, zone, op, done_at)
        return self._render_op(self._ops[(project, zone, name)])

    def _render_op(self, rec: _Op) -> compute_v1.Operation:
        op = _copy(rec.op)
        if time.monotonic() < rec.done_at:
            op.status, op.progress = "RUNNING", 0
            for name in ("end_time", "error", "http_error_status_code", "http_error_message"):
                delattr(op, name)  # absent, not empty: errors show only once DONE
        return op

    # ---- internals: instances ---------------------------------------------------------------

    def _create_vm(self, project: str, zone: str, inst: compute_v1.Instance) -> _Vm:
        """Fill in what GCE fills in on insert, and store."""
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        inst.kind = "compute#instance"
        inst.id = next(self._ids)
        inst.self_link = f"{zone_url}/instances/{inst.name}"
        inst.zone = zone_url
        inst.creation_timestamp = _now_ts()
        inst.fingerprint = _fingerprint(self._rng)
        inst.cpu_platform = spec.cpu_platform if spec else "Intel Broadwell"
        inst.start_restricted = False
        inst.deletion_protection = bool(inst.deletion_protection)
        inst.can_ip_forward = bool(inst.can_ip_forward)
        if inst.machine_type:
            inst.machine_type = f"{zone_url}/machineTypes/{_last(inst.machine_type)}"
        if spec and spec.accelerator and not inst.guest_accelerators:
            inst.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=spec.accelerator[0], accelerator_count=spec.accelerator[1])]
        for acc in inst.guest_accelerators:
            acc.accelerator_type = f"{zone_url}/acceleratorTypes/{_last(acc.accelerator_type)}"
        _fill_scheduling(inst.scheduling)
        inst.label_fingerprint = _fingerprint(self._rng)
        inst.metadata.kind = "compute#metadata"
        inst.metadata.fingerprint = _fingerprint(self._rng)
        if inst.tags.items:
            inst.tags.fingerprint = _fingerprint(self._rng)
        for i, disk in enumerate(inst.disks):
            disk.kind, disk.index = "compute#attachedDisk", i
            disk.type_ = disk.type_ or "PERSISTENT"
            disk.mode = disk.mode or "READ_WRITE"
            disk.interface = disk.interface or "SCSI"
            disk_name = disk.initialize_params.disk_name or (
                inst.name if i == 0 else f"{inst.name}-{i}")
            disk.device_name = disk.device_name or f"persistent-disk-{i}"
            created = not disk.source
            disk.source = _full(disk.source or f"zones/{zone}/disks/{disk_name}", project)
            disk.disk_size_gb = disk.disk_size_gb or disk.initialize_params.disk_size_gb or 10
            ref = _disk_ref(disk.source, project)
            rec = self._disks.get(ref) if ref else None
            if rec is None and ref is not None and (created or ref[1] == zone):
                rec = self._new_disk(ref[0], ref[1], ref[2], disk.disk_size_gb,
                                     disk.initialize_params.source_image,
                                     _last(disk.initialize_params.disk_type) or "pd-standard")
            if rec is not None:
                rec.users.append(inst.self_link)
                rec.last_attach_timestamp = _now_ts()
        region = zone.rsplit("-", 1)[0]
        for i, nic in enumerate(inst.network_interfaces):
            nic.kind, nic.name = "compute#networkInterface", f"nic{i}"
            nic.network = _full(nic.network or "global/networks/default", project)
            nic.subnetwork = _full(nic.subnetwork or f"regions/{region}/subnetworks/"
                                   f"{_last(nic.network)}", project)
            n = len(self._vms) + 2
            nic.network_i_p = nic.network_i_p or f"10.128.{n // 250}.{n % 250 + 2}"
            nic.stack_type = nic.stack_type or "IPV4_ONLY"
            nic.fingerprint = _fingerprint(self._rng)
            for ac in nic.access_configs:
                ac.kind = "compute#accessConfig"
                ac.type_ = ac.type_ or "ONE_TO_ONE_NAT"
                ac.name = ac.name or "External NAT"
                ac.network_tier = ac.network_tier or "PREMIUM"
                ac.nat_i_p = ac.nat_i_p or f"34.{n % 250}.{(n * 7) % 250}.{(n * 13) % 250 + 1}"
        vm = _Vm(project, zone, inst)
        self._boot(vm)
        self._vms[(project, zone, inst.name)] = vm
        return vm

    def _new_disk(self, project: str, zone: str, name: str, size_gb: int, source_image: str,
                  disk_type: str = "pd-standard") -> compute_v1.Disk:
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        disk = compute_v1.Disk(
            kind="compute#disk", id=next(self._ids), name=name, zone=zone_url,
            size_gb=int(size_gb), status="READY", creation_timestamp=_now_ts(),
            type_=f"{zone_url}/diskTypes/{disk_type}", self_link=f"{zone_url}/disks/{name}",
            label_fingerprint=_fingerprint(self._rng))
        if source_image:
            disk.source_image = _full(source_image, project)
        self._disks[(project, zone, name)] = disk
        return disk

    def _check_disks(self, project: str, zone: str, inst: compute_v1.Instance,
                     only: Optional[int] = None) -> None:
        """What GCE refuses about an instance's disks (or disk ``only``), before any change."""
        for i, d in enumerate(inst.disks):
            if only is not None and i != only:
                continue
            if d.source:
                ref = _disk_ref(d.source, project)
                if ref is None:
                    raise _invalid(f"resource.disks[{i}].source", d.source,
                                   "Must be a full or partial URL: zones/ZONE/disks/NAME.")
                if ref[1] != zone:
                    raise _invalid(f"resource.disks[{i}].source", d.source, f"Disk must be in "
                                   f"the same zone as the instance ('{zone}').")
                disk = self._disks.get(ref)
                if disk is None:
                    raise _not_found(f"projects/{ref[0]}/zones/{ref[1]}/disks/{ref[2]}")
                writers = [u for u in disk.users if self._attached_mode(u, disk) == "READ_WRITE"]
                if disk.users and ((d.mode or "READ_WRITE") == "READ_WRITE" or writers):
                    raise ApiError(400, "resourceInUseByAnotherResource",
                                   f"The disk resource 'projects/{ref[0]}/zones/{ref[1]}/disks/"
                                   f"{ref[2]}' is already being used by "
                                   f"'{_path(disk.users[0])}'")
            else:
                name = d.initialize_params.disk_name or (
                    inst.name if i == 0 else f"{inst.name}-{i}")
                if (project, zone, name) in self._disks:
                    raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/zones/"
                                   f"{zone}/disks/{name}' already exists")

    def _attached_mode(self, user: str, disk: compute_v1.Disk) -> str:
        m = re.search(r"projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$", user)
        vm = self._vms.get((m.group(1), m.group(2), m.group(3))) if m else None
        for d in vm.instance.disks if vm else []:
            if d.source == disk.self_link:
                return d.mode or "READ_WRITE"
        return "READ_WRITE"

    def _release_disks(self, vm: _Vm) -> None:
        """The VM is deleted: detach its disks, and delete those marked ``autoDelete``."""
        for d in vm.instance.disks:
            ref = _disk_ref(d.source, vm.project)
            disk = self._disks.get(ref) if ref else None
            if disk is None:
                continue
            if vm.instance.self_link in disk.users:
                disk.users.remove(vm.instance.self_link)
            disk.last_detach_timestamp = _now_ts()
            if d.auto_delete and not disk.users:
                del self._disks[ref]  # type: ignore[arg-type]

    def _validate_insert(self, project: str, zone: str, inst: compute_v1.Instance) -> None:
        """Reject what GCE rejects synchronously (HTTP 400), so product bugs surface in tests."""
        if not inst.name:
            raise _invalid("resource.name", "", "Must be specified.")
        if not _NAME_RE.fullmatch(inst.name):
            raise _invalid("resource.name", inst.name,
                           "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if not self.strict:
            return
        offered = ZONES[zone]
        mt = _zonal_ref(inst.machine_type, "machineTypes")
        if mt is None:
            raise _invalid("resource.machineType", inst.machine_type,
                           "Must be a full or partial URL: zones/ZONE/machineTypes/TYPE.")
        if mt[0] != zone or mt[1] not in offered["machine_types"]:
            raise _invalid("resource.machineType", inst.machine_type,
                           f"Machine type with name '{mt[1]}' does not exist in zone '{zone}'.")
        spec = MACHINE_TYPES[mt[1]]
        gpus = 0
        for acc in inst.guest_accelerators:
            ref = _zonal_ref(acc.accelerator_type, "acceleratorTypes")
            if ref is None or ref[0] != zone or ref[1] not in offered["accelerators"]:
                raise _invalid("resource.guestAccelerators[0].acceleratorType",
                               acc.accelerator_type,
                               f"Accelerator type does not exist in zone '{zone}'.")
            if spec.accelerator and (ref[1], acc.accelerator_count) != spec.accelerator:
                raise _invalid("resource.guestAccelerators", acc.accelerator_type,
                               f"Machine type {mt[1]} comes with {spec.accelerator[1]} x "
                               f"{spec.accelerator[0]}.")
            if not spec.accelerator and not mt[1].startswith("n1-"):
                raise _invalid("resource.guestAccelerators", acc.accelerator_type,
                               f"Accelerators are not supported for machine type {mt[1]}.")
            gpus += acc.accelerator_count
        gpus += spec.accelerator[1] if spec.accelerator else 0
        sched = inst.scheduling
        spot = _is_spot(inst)
        if spot and "automatic_restart" in sched and sched.automatic_restart:
            raise _invalid("resource.scheduling.automaticRestart", "true",
                           "Spot and preemptible instances cannot be automatically restarted.")
        if "max_run_duration" in sched:
            mrd = sched.max_run_duration
            seconds = mrd.seconds + mrd.nanos / 1e9
            if not 30 <= seconds <= 120 * 86400:
                raise _invalid("resource.scheduling.maxRunDuration.seconds", mrd.seconds,
                               "Must be between 30 seconds and 120 days (10368000 seconds).")
            if not sched.instance_termination_action:
                raise _invalid("resource.scheduling.instanceTerminationAction", "",
                               "Must be specified when maxRunDuration is set.")
        on_maint = sched.on_host_maintenance or ("TERMINATE" if spot else "MIGRATE")
        if on_maint == "MIGRATE" and (spot or gpus):
            raise ApiError(400, "invalid", "Instances with guest accelerators do not support "
                           "live migration." if gpus else "Spot instances cannot live-migrate; "
                           "onHostMaintenance must be TERMINATE.")
        if len(inst.labels) > 64:
            raise _invalid("resource.labels", len(inst.labels), "At most 64 labels.")
        for k, v in inst.labels.items():
            if not _LABEL_KEY_RE.fullmatch(k) or not _LABEL_VALUE_RE.fullmatch(v):
                raise _invalid("labels", f"{k}={v}", "Label keys must start with a lowercase "
                               "letter; keys and values may contain only lowercase letters, "
                               "digits, '_' and '-', at most 63 characters.")
        seen: set[str] = set()
        total = 0
        for item in inst.metadata.items:
            if not _METADATA_KEY_RE.fullmatch(item.key) or item.key in seen:
                raise _invalid("resource.metadata", item.key, "Invalid or duplicate metadata key.")
            seen.add(item.key)
            size = len(item.key.encode()) + len(item.value.encode())
            if len(item.value.encode()) > 256 * 1024:
                raise _invalid("resource.metadata", item.key, "Metadata value exceeds 256 KB.")
            total += size
        if total > 512 * 1024:
            raise _invalid("resource.metadata", "", "Metadata total size exceeds 512 KB.")
        if inst.disks and sum(1 for d in inst.disks if d.boot) != 1:
            raise _invalid("resource.disks", "", "Exactly one boot disk must be specified.")
        for d in inst.disks:
            src = d.initialize_params.source_image
            m = re.search(r"projects/cos-cloud/global/images/(family/)?([^/]+)$", src or "")
            if m and self._find_image("cos-cloud", m.group(2), family=bool(m.group(1))) is None:
                raise _invalid("resource.disks[0].initializeParams.sourceImage", src,
                               "The referenced image resource cannot be found.")

    def _find_image(self, project: str, name: str, *, family: bool) -> Optional[compute_v1.Image]:
        if not family:
            return self._images.get((project, name))
        candidates = [i for (p, _), i in self._images.items()
                      if p == project and i.family == name and i.deprecated.state != "DEPRECATED"]
        return candidates[-1] if candidates else None

    def _vm(self, project: str, zone: str, name: str) -> _Vm:
        vm = self._vms.get((project, zone, name))
        if vm is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return vm

    def _quota_error(self, zone: str, inst: compute_v1.Instance) -> ApiError:
        types = [_last(a.accelerator_type) for a in inst.guest_accelerators]
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        if spec and spec.accelerator:
            types.append(spec.accelerator[0])
        metric = next((_QUOTA_METRICS[t] for t in types if t in _QUOTA_METRICS), self.quota_metric)
        region = zone.rsplit("-", 1)[0]
        return ApiError(403, "quotaExceeded",
                        f"Quota '{metric}' exceeded.  Limit: 0.0 in region {region}.",
                        domain="usageLimits")

    def _quota_needs(self, inst: compute_v1.Instance) -> dict[str, float]:
        """The quota metrics (unprefixed) and amounts a running ``inst`` uses."""
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        needs: dict[str, float] = {"CPUS": float(spec.cpus if spec else 1)}
        gpus = [(_last(a.accelerator_type), a.accelerator_count) for a in inst.guest_accelerators]
        if spec and spec.accelerator and not gpus:
            gpus.append(spec.accelerator)
        for kind, count in gpus:
            metric = _QUOTA_METRICS.get(kind)
            if metric:
                needs[metric] = needs.get(metric, 0.0) + count
        return needs

    def _metric_for(self, region: str, metric: str, spot: bool) -> str:
        """Spot VMs draw on PREEMPTIBLE_<metric> when the project has a limit there."""
        pre = f"PREEMPTIBLE_{metric}"
        if spot and self.region_quotas.get(region, {}).get(pre, (0.0, 0.0))[0] > 0:
            return pre
        return metric

    def _live_usage(self, project: str, region: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for vm in self._vms.values():
            if vm.project != project or _region(vm.zone) != region or \
                    vm.instance.status in ("TERMINATED", "SUSPENDED"):
                continue
            for metric, amount in self._quota_needs(vm.instance).items():
                m = self._metric_for(region, metric, _is_spot(vm.instance))
                used[m] = used.get(m, 0.0) + amount
        return used

    def _quota_exceeded(self, project: str, zone: str, inst: compute_v1.Instance
                        ) -> Optional[str]:
        """The message of the first regional quota ``inst`` would exceed, or None."""
        region = _region(zone)
        quotas = self.region_quotas.get(region, {})
        live = self._live_usage(project, region)
        for metric, amount in self._quota_needs(inst).items():
            m = self._metric_for(region, metric, _is_spot(inst))
            if m not in quotas:
                continue
            limit, usage = quotas[m]
            if usage + live.get(m, 0.0) + amount > limit:
                return f"Quota '{m}' exceeded.  Limit: {limit:.1f} in region {region}."
        return None

    def _quota_op(self, project: str, zone: str, target: compute_v1.Instance, op_type: str,
                  message: str) -> compute_v1.Operation:
        return self._new_op(project, zone, op_type, target,
                            error=("QUOTA_EXCEEDED", message, 403, "FORBIDDEN"))

    def _stockout(self, project: str, zone: str, target: compute_v1.Instance,
                  op_type: str) -> compute_v1.Operation:
        message = (f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                   "available to fulfill the request.  Try a different zone, or try again later.")
        if self.stockout_as_http:
            raise ApiError(503, "ZONE_RESOURCE_POOL_EXHAUSTED", message)
        return self._new_op(project, zone, op_type, target, error=(
            "ZONE_RESOURCE_POOL_EXHAUSTED", message, 503, "SERVICE UNAVAILABLE"))

    # ---- request handlers (called under the lock) -------------------------------------------

    def _h_insert(self, p: str, zone: str, q: dict[str, str], body: bytes) -> Any:
        try:
            inst = compute_v1.Instance.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        self._validate_insert(p, zone, inst)
        if (p, zone, inst.name) in self._vms:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{inst.name}' "
                           "already exists")
        self._check_disks(p, zone, inst)
        if zone in self.quota_zones:  # membership, not iteration: safe while a test mutates
            raise self._quota_error(zone, inst)
        target = compute_v1.Instance(name=inst.name, id=next(self._ids),
                                     self_link=f"{API}/projects/{p}/zones/{zone}/instances/"
                                               f"{inst.name}")
        over = self._quota_exceeded(p, zone, inst)
        if over:
            return self._quota_op(p, zone, target, "insert", over)
        if zone in self.stockout_zones:
            return self._stockout(p, zone, target, "insert")
        vm = self._create_vm(p, zone, inst)
        return self._new_op(p, zone, "insert", vm.instance)

    def _h_get(self, p: str, zone: str, name: str) -> Any:
        return self._vm(p, zone, name).instance

    def _h_delete(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.deletion_protection:
            raise ApiError(400, "resourceInUseByAnotherResource",
                           "Invalid resource usage: 'Resource cannot be deleted if it's "
                           "protected against deletion.'")
        rec = self._op_record(p, zone, self._new_op(p, zone, "delete", vm.instance))
        self._begin_shutdown(vm, "DELETE", rec)
        return self._render_op(rec)

    def _h_stop(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        rec = self._op_record(p, zone, self._new_op(p, zone, "stop", vm.instance))
        if vm.instance.status != "TERMINATED" or vm.shutdown is not None:
            self._begin_shutdown(vm, "STOP", rec)
        return self._render_op(rec)

    def _op_record(self, p: str, zone: str, op: compute_v1.Operation) -> _Op:
        return self._ops[(p, zone, op.name)]

    def _h_start(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.status == "STOPPING":
            raise ApiError(400, "resourceNotReady",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{name}' is not "
                           "ready")
        if vm.instance.status == "TERMINATED":
            over = self._quota_exceeded(p, zone, vm.instance)
            if over:
                return self._quota_op(p, zone, vm.instance, "start", over)
            if zone in self.stockout_zones:
                return self._stockout(p, zone, vm.instance, "start")
            self._boot(vm)
        return self._new_op(p, zone, "start", vm.instance)

    def _h_attach(self, p: str, zone: str, name: str, q: dict[str, str], body: bytes) -> Any:
        """attachDisk (an existing disk, by ``source``) and detachDisk (by ``deviceName``)."""
        vm = self._vm(p, zone, name)
        inst = vm.instance
        if q.get("deviceName") is not None or body in (b"", b"{}"):  # detachDisk
            device = q.get("deviceName", "")
            att = next((d for d in inst.disks if d.device_name == device), None)
            if att is None:
                raise _invalid("deviceName", device, f"No attached disk found with device name "
                               f"'{device}'.")
            if att.boot:
                raise ApiError(400, "invalid", "The boot disk cannot be detached while the "
                               "instance exists.")
            ref = _disk_ref(att.source, p)
            disk = self._disks.get(ref) if ref else None
            if disk is not None and inst.self_link in disk.users:
                disk.users.remove(inst.self_link)
                disk.last_detach_timestamp = _now_ts()
            inst.disks = [d for d in inst.disks if d.device_name != device]
            return self._new_op(p, zone, "detachDisk", inst)
        try:
            att = compute_v1.AttachedDisk.from_json(body, ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        if not att.source:
            raise _invalid("resource.source", "", "Must be specified.")
        probe = compute_v1.Instance(name=inst.name, disks=[att])
        self._check_disks(p, zone, probe, only=0)
        index = len(inst.disks)
        att.kind, att.index = "compute#attachedDisk", index
        att.type_, att.mode = att.type_ or "PERSISTENT", att.mode or "READ_WRITE"
        att.device_name = att.device_name or f"persistent-disk-{index}"
        if any(d.device_name == att.device_name for d in inst.disks):
            raise _invalid("resource.deviceName", att.device_name, "Device name is already in "
                           "use on this instance.")
        att.source = _full(att.source, p)
        ref = _disk_ref(att.source, p)
        disk = self._disks[ref]  # type: ignore[index]
        att.disk_size_gb = disk.size_gb
        disk.users.append(inst.self_link)
        disk.last_attach_timestamp = _now_ts()
        inst.disks.append(att)
        return self._new_op(p, zone, "attachDisk", inst)

    def _h_set(self, rpc: str, p: str, zone: str, name: str, body: bytes) -> Any:
        """setMetadata / setLabels, with GCE's fingerprint check (412 on a stale fingerprint)."""
        vm = self._vm(p, zone, name)
        inst = vm.instance
        doc = json.loads(body or b"{}")
        if rpc == "instances.setMetadata":
            if doc.get("fingerprint") != inst.metadata.fingerprint:
                raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")
            inst.metadata = compute_v1.Metadata(items=[compute_v1.Items(key=i["key"], value=i.get("value", ""))
                                                       for i in doc.get("items", [])])
            inst.metadata.fingerprint = _fingerprint(self._rng)
            return self._new_op(p, zone, "setMetadata", inst)
        if doc.get("labelFingerprint") != inst.label_fingerprint:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed")
        inst.labels.clear()
        inst.labels.update(doc.get("labels", {}))
        inst.label_fingerprint = _fingerprint(self._rng)
        return self._new_op(p, zone, "setLabels", inst)

    def _h_maintenance(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.status != "RUNNING":
            raise ApiError(400, "resourceNotReady",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{name}' is not "
                           "ready")
        op = self._new_op(p, zone, "simulateMaintenanceEvent", vm.instance)
        if _is_spot(vm.instance):
            self._preempt(vm)
        elif vm.instance.scheduling.on_host_maintenance == "TERMINATE":
            self._new_op(p, zone, "compute.instances.terminateOnHostMaintenance", vm.instance,
                         user="system", immediate=True)
            if vm.guest_running and self.guest is not None:
                guest, key = self.guest, (p, zone, name)
                self._to_guest(lambda: guest.on_power_off(*key))
                vm.guest_running = False
            self._boot(vm)  # automaticRestart brings it back
        else:
            self._new_op(p, zone, "compute.instances.migrateOnHostMaintenance", vm.instance,
                         user="system", immediate=True)
        return op

    def _h_serial(self, p: str, zone: str, name: str, q: dict[str, str]) -> Any:
        vm = self._vm(p, zone, name)
        port = int(q.get("port", "1") or 1)
        if port not in (1, 2, 3, 4):
            raise _invalid("port", port, "Must be between 1 and 4.")
        buf, base = (vm.serial, vm.serial_base) if port == 1 else (bytearray(), 0)
        end = base + len(buf)
        try:
            start = int(q.get("start", "0") or 0)
        except ValueError as e:
            raise _invalid("start", q.get("start"), "Must be an integer.") from e
        if start < 0:  # "-N": the most recent N bytes
            start = max(end + start, base)
        start = min(max(start, base), end)  # discarded output: moved to the oldest retained byte
        contents = bytes(buf[start - base:]).decode("utf-8", errors="replace")
        return compute_v1.SerialPortOutput(
            kind="compute#serialPortOutput", contents=contents, start=start, next_=end,
            self_link=f"{vm.instance.self_link}/serialPort?port={port}")

    def _h_list(self, p: str, zone: str, q: dict[str, str]) -> Any:
        vms = sorted((vm for (pp, z, _), vm in self._vms.items() if pp == p and z == zone),
                     key=lambda vm: vm.instance.name)
        items, token = _page([vm.instance for vm in vms], q)
        return compute_v1.InstanceList(
            kind="compute#instanceList", id=f"projects/{p}/zones/{zone}/instances", items=items,
            self_link=f"{API}/projects/{p}/zones/{zone}/instances", next_page_token=token)

    def _h_aggregated(self, p: str, q: dict[str, str]) -> Any:
        vms = sorted((vm for (pp, _, _), vm in self._vms.items() if pp == p),
                     key=lambda vm: (vm.zone, vm.instance.name))
        zone_of = {id(vm.instance): vm.zone for vm in vms}
        items, token = _page([vm.instance for vm in vms], q)
        scoped = {f"zones/{z}": compute_v1.InstancesScopedList() for z in
                  sorted(set(ZONES) | {vm.zone for vm in vms})}
        for inst in items:
            scoped[f"zones/{zone_of[id(inst)]}"].instances.append(inst)
        for scope, lst in scoped.items():
            if not lst.instances:
                lst.warning = _no_results(scope)
        return compute_v1.InstanceAggregatedList(
            kind="compute#instanceAggregatedList", id=f"projects/{p}/aggregated/instances",
            items=scoped, self_link=f"{API}/projects/{p}/aggregated/instances",
            next_page_token=token)

    def _h_op(self, p: str, zone: str, name: str) -> Any:
        rec = self._ops.get((p, zone, name))
        if rec is None:
            raise _not_found(f"projects/{p}/zones/{zone}/operations/{name}")
        return self._render_op(rec)

    def _h_ops_list(self, p: str, zone: str, q: dict[str, str]) -> Any:
        ops = sorted((o for o in self._ops.values() if o.project == p and o.zone == zone),
                     key=lambda o: o.op.name)
        items, token = _page([self._render_op(o) for o in ops], q)
        return compute_v1.OperationList(
            kind="compute#operationList", id=f"projects/{p}/zones/{zone}/operations",
            items=items, self_link=f"{API}/projects/{p}/zones/{zone}/operations",
            next_page_token=token)

    def _h_op_delete(self, p: str, zone: str, name: str) -> Any:
        if self._ops.pop((p, zone, name), None) is None:
            raise _not_found(f"projects/{p}/zones/{zone}/operations/{name}")
        return compute_v1.DeleteZoneOperationResponse()

    def _h_disks(self, rpc: str, p: str, zone: str, name: str, q: dict[str, str],
                 body: bytes) -> Any:
        if rpc == "disks.list":
            disks = [d for (pp, z, _), d in sorted(self._disks.items()) if pp == p and z == zone]
            items, token = _page(disks, q)
            return compute_v1.DiskList(kind="compute#diskList", items=items, next_page_token=token,
                                       id=f"projects/{p}/zones/{zone}/disks",
                                       self_link=f"{API}/projects/{p}/zones/{zone}/disks")
        if rpc == "disks.insert":
            try:
                want = compute_v1.Disk.from_json(body or b"{}", ignore_unknown_fields=True)
            except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
                raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
            if not _NAME_RE.fullmatch(want.name or ""):
                raise _invalid("resource.name", want.name, "Must be a match of regex "
                               "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
            if (p, zone, want.name) in self._disks:
                raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/zones/{zone}/"
                               f"disks/{want.name}' already exists")
            disk = self._new_disk(p, zone, want.name, want.size_gb or 10, want.source_image,
                                  _last(want.type_) or "pd-standard")
            return self._new_op(p, zone, "insert", compute_v1.Instance(
                name=disk.name, id=disk.id, self_link=disk.self_link))
        disk = self._disks.get((p, zone, name))
        if disk is None:
            raise _not_found(f"projects/{p}/zones/{zone}/disks/{name}")
        if rpc == "disks.get":
            return disk
        if disk.users:  # disks.delete
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"The disk resource 'projects/{p}/zones/{zone}/disks/{name}' is already "
                           f"being used by '{_path(disk.users[0])}'")
        del self._disks[(p, zone, name)]
        return self._new_op(p, zone, "delete", compute_v1.Instance(
            name=disk.name, id=disk.id, self_link=disk.self_link))

    def _h_image(self, p: str, name: str, family: bool) -> Any:
        image = self._find_image(p, name, family=family)
        if image is None:
            what = f"family/{name}" if family else name
            raise _not_found(f"projects/{p}/global/images/{what}")
        return image

    def _h_region(self, p: str, region: str) -> Any:
        if region not in self.region_quotas:
            raise _not_found(f"projects/{p}/regions/{region}")
        live = self._live_usage(p, region)
        return compute_v1.Region(
            kind="compute#region", id=3000 + sorted(self.region_quotas).index(region),
            name=region, description=region, status="UP",
            zones=[f"{API}/projects/{p}/zones/{z}" for z in sorted(ZONES) if z.startswith(region + "-")],
            quotas=[compute_v1.Quota(metric=m, limit=lim, usage=use + live.get(m, 0.0))
                    for m, (lim, use) in sorted(self.region_quotas[region].items())],
            self_link=f"{API}/projects/{p}/regions/{region}")

    def _h_images_list(self, p: str, q: dict[str, str]) -> Any:
        images = [i for (pp, _), i in self._images.items() if pp == p]
        items, token = _page(images, q)
        return compute_v1.ImageList(kind="compute#imageList", id=f"projects/{p}/global/images",
                                    items=items, next_page_token=token,
                                    self_link=f"{API}/projects/{p}/global/images")

    # ---- dispatch ---------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)(/.*)", path)
        if not m:
            return None
        project, rest = unquote(m.group(1)), m.group(2)
        for verb, pattern, rpc in _ROUTES:
            if verb == method:
                mm = re.fullmatch(pattern, rest)
                if mm:
                    return rpc, {"project": project,
                                 **{k: unquote(v) for k, v in mm.groupdict().items()}}
        return None

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, str]:
        """Serve one request; returns (HTTP status, JSON body). Thread-safe."""
        started = time.time()
        split = urlsplit(raw_path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        routed = self._route(method, split.path)
        rpc, args = routed if routed else ("unknown", {})
        try:
            parsed_body = json.loads(body) if body else None
        except ValueError:
            parsed_body = None
        wait_for: Optional[_Op] = None
        with self.lock:
            self._tick()
            try:
                if routed is None:
                    raise ApiError(501, "notImplemented",
                                   f"compute fake: {method} {split.path} is not implemented")
                self._authorize(rpc, args, headers, body)
                self._inject_error(rpc)
                result = self._dispatch(rpc, args, query, body)
                if isinstance(result, _Op):  # zoneOperations.wait: sleep outside the lock
                    wait_for = result
                    status, payload = 200, ""
                else:
                    status, payload = 200, to_json(result)
            except ApiError as e:
                status, payload = e.code, json.dumps(e.body())
            except FilterError as e:
                err = _invalid("filter", query.get("filter", ""), f"Invalid list filter "
                               f"expression: {e}")
                status, payload = 400, json.dumps(err.body())
            except Exception as e:  # noqa: BLE001 - a bug in the fake: answer, and remember it
                self.internal_errors.append(f"{method} {split.path}: {e!r}")
                err = ApiError(500, "internalError", f"compute fake crashed: {e!r}")
                status, payload = 500, json.dumps(err.body())
            self._requests.append(RecordedRequest(method, split.path, query, parsed_body,
                                                  started, rpc, status, headers))
        if wait_for is not None:
            # Until DONE or GCE's ~2 min cap; polled because a shutdown ends the operation at a
            # time nobody scheduled (when the guest halts).
            give_up = time.monotonic() + self.wait_timeout
            while True:
                with self.lock:
                    self._tick()
                    done = time.monotonic() >= wait_for.done_at
                    if done or time.monotonic() >= give_up:
                        payload = to_json(self._render_op(wait_for))
                        break
                time.sleep(min(0.02, max(0.0, wait_for.done_at - time.monotonic())))
        return status, payload

    def _authorize(self, rpc: str, a: dict[str, str], headers: dict[str, str], body: bytes) -> None:
        """Refuse, as GCE does, a request whose identity lacks the permission (``iam`` set)."""
        if self.iam is None or rpc not in _PERMISSIONS:
            return
        p = a.get("project", "")
        if rpc.startswith("images.") and p in _PUBLIC_IMAGE_PROJECTS:
            return
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if auth:
            member = self.tokens.get(auth.removeprefix("Bearer ").strip())
            if member is None:
                raise ApiError(401, "authError", "Invalid Credentials")
        else:
            member = self.operator
        if "instance" in a:
            resource = f"projects/{p}/zones/{a.get('zone')}/instances/{a['instance']}"
        elif "zone" in a and rpc.startswith("instances."):
            name = ""
            if rpc == "instances.insert":
                try:
                    name = json.loads(body or b"{}").get("name", "")
                except ValueError:
                    name = ""
            resource = f"projects/{p}/zones/{a['zone']}/instances/{name}"
        else:
            resource = f"projects/{p}"
        permission = _PERMISSIONS[rpc]
        if not self._allowed(p, member, permission, resource):
            raise ApiError(403, "forbidden", f"Required '{permission}' permission for '{resource}'")
        if rpc == "instances.insert":
            try:
                accounts = [sa.get("email", "") for sa in json.loads(body or b"{}")
                            .get("serviceAccounts", [])]
            except (ValueError, AttributeError):
                accounts = []
            for email in accounts:
                if not self._allowed(p, member, "iam.serviceAccounts.actAs", f"projects/{p}"):
                    raise ApiError(403, "forbidden", f"The user does not have access to service "
                                   f"account '{email}'.  User: '{member.split(':', 1)[-1]}'.  Ask "
                                   "a project owner to grant you the iam.serviceAccountUser role "
                                   "on the service account")

    def _allowed(self, project: str, member: str, permission: str, resource: str) -> bool:
        assert self.iam is not None
        try:
            policy = self.iam.policy(project)
        except KeyError:
            return False
        for b in policy.get("bindings") or []:
            if member not in (b.get("members") or []):
                continue
            cond = b.get("condition")
            if cond and not _condition_holds(str(cond.get("expression", "")), resource):
                continue
            perms = _ROLE_PERMISSIONS.get(b["role"])
            if perms is None:
                perms = self.iam.role_permissions(b["role"]) or frozenset()
            if any(permission == g or (g.endswith("*") and permission.startswith(g[:-1]))
                   for g in perms):
                return True
        return False

    def _inject_error(self, rpc: str) -> None:
        if self.queries_per_second > 0:
            now = time.monotonic()
            self._recent = [t for t in self._recent if now - t < 1.0]
            if len(self._recent) >= self.queries_per_second:
                raise _retryable_error(403, "rateLimitExceeded")
            self._recent.append(now)
        for i, (code, only, reason) in enumerate(self._fail_next):
            if only is None or only == rpc:
                del self._fail_next[i]
                raise _retryable_error(code, reason)
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            raise _retryable_error(self._rng.choice(tuple(self.error_codes)))

    def _dispatch(self, rpc: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        p = a["project"]
        zone = a.get("zone")
        if zone is not None and zone not in ZONES:
            raise _not_found(f"projects/{p}/zones/{zone}")
        op_name = a.get("operation")
        name = a.get("instance", "")
        # requestId makes retried mutations idempotent, as in GCE.
        request_id = q.get("requestId")
        rid_key = (p, zone or "", rpc, request_id or "")
        if request_id and (rpc in _MUTATIONS or rpc in _SETTERS):
            if not _UUID_RE.fullmatch(request_id) or set(request_id) <= {"0", "-"}:
                raise _invalid("requestId", request_id, "Must be a valid UUID other than the "
                               "zero UUID.")
            seen = self._request_ids.get(rid_key)
            ttl = self.request_id_ttl * (self.time_scale or 1.0)
            if seen is not None and time.monotonic() - seen[1] < ttl and \
                    (p, zone, seen[0]) in self._ops:
                return self._render_op(self._ops[(p, zone, seen[0])])  # type: ignore[index]
        if rpc == "instances.insert":
            result = self._h_insert(p, zone, q, body)  # type: ignore[arg-type]
        elif rpc in ("instances.setMetadata", "instances.setLabels"):
            result = self._h_set(rpc, p, zone, name, body)  # type: ignore[arg-type]
        elif rpc in ("instances.attachDisk", "instances.detachDisk"):
            detach = rpc == "instances.detachDisk"
            result = self._h_attach(p, zone, name, q if detach else {},  # type: ignore[arg-type]
                                    b"" if detach else body)
        elif rpc.startswith("disks."):
            result = self._h_disks(rpc, p, zone, a.get("disk", ""), q,  # type: ignore[arg-type]
                                   body)
            if not isinstance(result, compute_v1.Operation):
                return result
        elif rpc in _MUTATIONS:
            result = getattr(self, _MUTATIONS[rpc])(p, zone, name)
        elif rpc == "instances.get":
            return self._h_get(p, zone, name)  # type: ignore[arg-type]
        elif rpc == "instances.list":
            return self._h_list(p, zone, q)  # type: ignore[arg-type]
        elif rpc == "instances.aggregatedList":
            return self._h_aggregated(p, q)
        elif rpc == "instances.getSerialPortOutput":
            return self._h_serial(p, zone, name, q)  # type: ignore[arg-type]
        elif rpc == "zoneOperations.get":
            return self._h_op(p, zone, op_name)  # type: ignore[arg-type]
        elif rpc == "zoneOperations.wait":
            self._h_op(p, zone, op_name)  # type: ignore[arg-type]
            return self._ops[(p, zone, op_name)]  # type: ignore[index]
        elif rpc == "zoneOperations.list":
            return self._h_ops_list(p, zone, q)  # type: ignore[arg-type]
        elif rpc == "zoneOperations.delete":
            return self._h_op_delete(p, zone, op_name)  # type: ignore[arg-type]
        elif rpc == "images.getFromFamily":
            return self._h_image(p, a["family"], family=True)
        elif rpc == "images.get":
            return self._h_image(p, a["image"], family=False)
        elif rpc == "images.list":
            return self._h_images_list(p, q)
        elif rpc == "regions.get":
            return self._h_region(p, a["region"])
        else:
            return _catalogue(rpc, p, a, q)
        if request_id and isinstance(result, compute_v1.Operation):
            self._request_ids[rid_key] = (result.name, time.monotonic())
        return result


_Z = r"/zones/(?P<zone>[^/]+)"
_I = _Z + r"/instances/(?P<instance>[^/]+)"
_O = _Z + r"/operations/(?P<operation>[^/]+)"
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", _Z + "/instances", "instances.insert"),
    ("GET", _Z + "/instances", "instances.list"),
    ("GET", _I, "instances.get"),
    ("DELETE", _I, "instances.delete"),
    ("GET", _I + "/serialPort", "instances.getSerialPortOutput"),
    ("POST", _I + "/simulateMaintenanceEvent", "instances.simulateMaintenanceEvent"),
    ("POST", _I + "/start", "instances.start"),
    ("POST", _I + "/stop", "instances.stop"),
    ("POST", _I + "/setMetadata", "instances.setMetadata"),
    ("POST", _I + "/setLabels", "instances.setLabels"),
    ("POST", _I + "/attachDisk", "instances.attachDisk"),
    ("POST", _I + "/detachDisk", "instances.detachDisk"),
    ("GET", "/aggregated/instances", "instances.aggregatedList"),
    ("POST", _Z + "/disks", "disks.insert"),
    ("GET", _Z + "/disks", "disks.list"),
    ("GET", _Z + "/disks/(?P<disk>[^/]+)", "disks.get"),
    ("DELETE", _Z + "/disks/(?P<disk>[^/]+)", "disks.delete"),
    ("GET", _Z + "/operations", "zoneOperations.list"),
    ("GET", _O, "zoneOperations.get"),
    ("DELETE", _O, "zoneOperations.delete"),
    ("POST", _O + "/wait", "zoneOperations.wait"),
    ("GET", "/global/images/family/(?P<family>[^/]+)", "images.getFromFamily"),
    ("GET", "/global/images/(?P<image>[^/]+)", "images.get"),
    ("GET", "/global/images", "images.list"),
    ("GET", _Z + "/machineTypes", "machineTypes.list"),
    ("GET", _Z + "/machineTypes/(?P<machine_type>[^/]+)", "machineTypes.get"),
    ("GET", "/aggregated/machineTypes", "machineTypes.aggregatedList"),
    ("GET", _Z + "/acceleratorTypes", "acceleratorTypes.list"),
    ("GET", _Z + "/acceleratorTypes/(?P<accelerator_type>[^/]+)", "acceleratorTypes.get"),
    ("GET", "/aggregated/acceleratorTypes", "acceleratorTypes.aggregatedList"),
    ("GET", "/zones", "zones.list"),
    ("GET", _Z, "zones.get"),
    ("GET", "/regions/(?P<region>[^/]+)", "regions.get"),
]

_SETTERS = ("instances.setMetadata", "instances.setLabels")
_MUTATIONS = {
    "instances.delete": "_h_delete",
    "instances.stop": "_h_stop",
    "instances.start": "_h_start",
    "instances.simulateMaintenanceEvent": "_h_maintenance",
    "instances.insert": "_h_insert",
    "disks.insert": "_h_disks",
    "disks.delete": "_h_disks",
    "instances.attachDisk": "_h_attach",
    "instances.detachDisk": "_h_attach",
}


# The permission each method needs (the compute v1 reference names it per method).
_PERMISSIONS: dict[str, str] = {
    "instances.insert": "compute.instances.create",
    "instances.list": "compute.instances.list",
    "instances.aggregatedList": "compute.instances.list",
    "instances.get": "compute.instances.get",
    "instances.delete": "compute.instances.delete",
    "instances.getSerialPortOutput": "compute.instances.getSerialPortOutput",
    "instances.simulateMaintenanceEvent": "compute.instances.simulateMaintenanceEvent",
    "instances.start": "compute.instances.start",
    "instances.stop": "compute.instances.stop",
    "instances.setMetadata": "compute.instances.setMetadata",
    "instances.setLabels": "compute.instances.setLabels",
    "zoneOperations.get": "compute.zoneOperations.get",
    "zoneOperations.wait": "compute.zoneOperations.get",
    "zoneOperations.list": "compute.zoneOperations.list",
    "zoneOperations.delete": "compute.zoneOperations.delete",
    "images.getFromFamily": "compute.images.getFromFamily",
    "images.get": "compute.images.get",
    "images.list": "compute.images.list",
    "machineTypes.get": "compute.machineTypes.get",
    "machineTypes.list": "compute.machineTypes.list",
    "machineTypes.aggregatedList": "compute.machineTypes.list",
    "acceleratorTypes.get": "compute.acceleratorTypes.get",
    "acceleratorTypes.list": "compute.acceleratorTypes.list",
    "acceleratorTypes.aggregatedList": "compute.acceleratorTypes.list",
    "zones.get": "compute.zones.get",
    "zones.list": "compute.zones.list",
    "regions.get": "compute.regions.get",
    "instances.attachDisk": "compute.instances.attachDisk",
    "instances.detachDisk": "compute.instances.detachDisk",
    "disks.insert": "compute.disks.create",
    "disks.list": "compute.disks.list",
    "disks.get": "compute.disks.get",
    "disks.delete": "compute.disks.delete",
}
_PUBLIC_IMAGE_PROJECTS = {"cos-cloud"}
# Predefined roles, by the permissions that matter here ("*" at the end: a prefix).
_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/owner": frozenset({"compute.*", "iam.serviceAccounts.actAs"}),
    "roles/editor": frozenset({"compute.*", "iam.serviceAccounts.actAs"}),
    "roles/compute.admin": frozenset({"compute.*"}),
    "roles/compute.instanceAdmin.v1": frozenset({
        "compute.instances.*", "compute.zoneOperations.*", "compute.disks.*",
        "compute.images.get", "compute.images.getFromFamily", "compute.images.list",
        "compute.machineTypes.*", "compute.acceleratorTypes.*", "compute.zones.*",
        "compute.regions.*"}),
    "roles/compute.viewer": frozenset({
        f"compute.{r}.{v}" for r in ("instances", "zoneOperations", "images", "machineTypes",
                                     "acceleratorTypes", "zones", "regions", "disks")
        for v in ("get", "list")} | {"compute.images.getFromFamily"}),
    "roles/iam.serviceAccountUser": frozenset({"iam.serviceAccounts.actAs"}),
}
_ROLE_PERMISSIONS["roles/viewer"] = _ROLE_PERMISSIONS["roles/compute.viewer"]


def _condition_holds(expression: str, resource: str) -> bool:
    """Evaluate the CEL subset ``runner init`` writes; anything else does not hold."""
    for clause in (c.strip() for c in expression.split("&&")):
        m = re.fullmatch(r'resource\.type\s*==\s*"([^"]+)"', clause)
        if m:
            kind = "compute.googleapis.com/Instance" if "/instances/" in resource else "project"
            if m.group(1) != kind:
                return False
            continue
        m = re.fullmatch(r'resource\.name(?:\.extract\("([^"]*)\{name\}"\))?'
                         r'\.startsWith\("([^"]*)"\)', clause)
        if m:
            value = resource
            if m.group(1) is not None:
                i = resource.find(m.group(1))
                value = resource[i + len(m.group(1)):] if i >= 0 else ""
            if not value.startswith(m.group(2)):
                return False
            continue
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Catalogue resources (stateless)
# ---------------------------------------------------------------------------------------------

def _machine_type(p: str, zone: str, name: str) -> compute_v1.MachineType:
    spec = MACHINE_TYPES[name]
    mt = compute_v1.MachineType(
        kind="compute#machineType", id=zlib.crc32(name.encode()), name=name,
        description=spec.description, guest_cpus=spec.cpus, memory_mb=spec.memory_mb,
        image_space_gb=0, maximum_persistent_disks=128, maximum_persistent_disks_size_gb=263168,
        zone=zone, is_shared_cpu=False, architecture="X86_64",
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        self_link=f"{API}/projects/{p}/zones/{zone}/machineTypes/{name}")
    if spec.accelerator:
        mt.accelerators = [compute_v1.Accelerators(guest_accelerator_type=spec.accelerator[0],
                                                   guest_accelerator_count=spec.accelerator[1])]
    return mt


def _accelerator_type(p: str, zone: str, name: str) -> compute_v1.AcceleratorType:
    desc, cards = ACCELERATOR_TYPES[name]
    return compute_v1.AcceleratorType(
        kind="compute#acceleratorType", id=zlib.crc32(name.encode()) % 10**5, name=name,
        description=desc, maximum_cards_per_instance=cards,
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        zone=f"{API}/projects/{p}/zones/{zone}",
        self_link=f"{API}/projects/{p}/zones/{zone}/acceleratorTypes/{name}")


def _zone(p: str, zone: str) -> compute_v1.Zone:
    region = zone.rsplit("-", 1)[0]
    return compute_v1.Zone(
        kind="compute#zone", id=2000 + sorted(ZONES).index(zone), name=zone,
        description=zone, status="UP", supports_pzs=True,
        region=f"{API}/projects/{p}/regions/{region}",
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        available_cpu_platforms=sorted({s.cpu_platform for s in MACHINE_TYPES.values()}),
        self_link=f"{API}/projects/{p}/zones/{zone}")


def _catalogue(rpc: str, p: str, a: dict[str, str], q: dict[str, str]) -> Any:
    zone = a.get("zone", "")
    if rpc == "machineTypes.get":
        if a["machine_type"] not in ZONES[zone]["machine_types"]:
            raise _not_found(f"projects/{p}/zones/{zone}/machineTypes/{a['machine_type']}")
        return _machine_type(p, zone, a["machine_type"])
    if rpc == "machineTypes.list":
        items, token = _page([_machine_type(p, zone, n) for n in ZONES[zone]["machine_types"]], q)
        return compute_v1.MachineTypeList(kind="compute#machineTypeList", items=items,
                                          next_page_token=token,
                                          id=f"projects/{p}/zones/{zone}/machineTypes",
                                          self_link=f"{API}/projects/{p}/zones/{zone}/machineTypes")
    if rpc == "machineTypes.aggregatedList":
        pred = parse_filter(q.get("filter", ""))
        return compute_v1.MachineTypeAggregatedList(
            kind="compute#machineTypeAggregatedList", id=f"projects/{p}/aggregated/machineTypes",
            items={f"zones/{z}": compute_v1.MachineTypesScopedList(machine_types=[
                mt for mt in (_machine_type(p, z, n) for n in ZONES[z]["machine_types"])
                if pred(_as_dict(mt))]) for z in ZONES})
    if rpc == "acceleratorTypes.get":
        if a["accelerator_type"] not in ZONES[zone]["accelerators"]:
            raise _not_found(f"projects/{p}/zones/{zone}/acceleratorTypes/{a['accelerator_type']}")
        return _accelerator_type(p, zone, a["accelerator_type"])
    if rpc == "acceleratorTypes.list":
        items, token = _page([_accelerator_type(p, zone, n) for n in ZONES[zone]["accelerators"]],
                             q)
        return compute_v1.AcceleratorTypeList(
            kind="compute#acceleratorTypeList", items=items, next_page_token=token,
            id=f"projects/{p}/zones/{zone}/acceleratorTypes",
            self_link=f"{API}/projects/{p}/zones/{zone}/acceleratorTypes")
    if rpc == "acceleratorTypes.aggregatedList":
        pred = parse_filter(q.get("filter", ""))
        return compute_v1.AcceleratorTypeAggregatedList(
            kind="compute#acceleratorTypeAggregatedList",
            id=f"projects/{p}/aggregated/acceleratorTypes",
            items={f"zones/{z}": compute_v1.AcceleratorTypesScopedList(accelerator_types=[
                at for at in (_accelerator_type(p, z, n) for n in ZONES[z]["accelerators"])
                if pred(_as_dict(at))]) for z in ZONES})
    if rpc == "zones.get":
        return _zone(p, zone)
    if rpc == "zones.list":
        items, token = _page([_zone(p, z) for z in sorted(ZONES)], q)
        return compute_v1.ZoneList(kind="compute#zoneList", items=items, next_page_token=token,
                                   id=f"projects/{p}/zones", self_link=f"{API}/projects/{p}/zones")
    raise ApiError(501, "notImplemented", f"compute fake: {rpc} is not implemented")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _page(items: list[Any], q: dict[str, str]) -> tuple[list[Any], str]:
    """Filter, then cut one page; the page token is an opaque offset, like GCE's."""
    pred = parse_filter(q.get("filter", ""))
    matching = [i for i in items if pred(_as_dict(i))]
    try:
        size = int(q.get("maxResults") or MAX_RESULTS)
    except ValueError as e:
        raise _invalid("maxResults", q.get("maxResults"), "Must be an integer.") from e
    if not 0 <= size <= MAX_RESULTS:
        raise _invalid("maxResults", size, f"Must be between 0 and {MAX_RESULTS}.")
    size = size or MAX_RESULTS
    token = q.get("pageToken", "")
    try:
        offset = int(base64.urlsafe_b64decode(token.encode()).decode()[len("o:"):]) if token else 0
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid("pageToken", token, "Invalid page token.") from e
    page = matching[offset:offset + size]
    nxt = offset + size
    next_token = base64.urlsafe_b64encode(f"o:{nxt}".encode()).decode() if nxt < len(matching) else ""
    return page, next_token


def _no_results(scope: str) -> compute_v1.Warning:
    return compute_v1.Warning(
        code="NO_RESULTS_ON_PAGE",
        message=f"There are no results for scope '{scope}' on this page.",
        data=[compute_v1.Data(key="scope", value=scope)])


def _disk_ref(url: str, project: str) -> Optional[tuple[str, str, str]]:
    """(project, zone, name) from a full or partial disk URL."""
    m = re.fullmatch(r"(?:.*/)?(?:projects/([^/]+)/)?zones/([^/]+)/disks/([^/]+)", url or "")
    return (m.group(1) or project, m.group(2), m.group(3)) if m else None


def _path(url: str) -> str:
    """``projects/...`` from a full resource URL."""
    i = url.find("projects/")
    return url[i:] if i >= 0 else url


def _region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] if url else ""


def _zonal_ref(url: str, collection: str) -> Optional[tuple[str, str]]:
    """(zone, name) from a full or partial zonal URL; None for a bare name (GCE rejects it)."""
    m = re.fullmatch(rf"(?:.*/)?zones/([^/]+)/{collection}/([^/]+)", url or "")
    return (m.group(1), m.group(2)) if m else None


def _full(url: str, project: str) -> str:
    if url.startswith("https://"):
        return url
    if url.startswith("projects/"):
        return f"{API}/{url}"
    return f"{API}/projects/{project}/{url}"


def _fingerprint(rng: random.Random) -> str:
    return base64.b64encode(rng.getrandbits(64).to_bytes(8, "big")).decode()


def _is_spot(inst: compute_v1.Instance) -> bool:
    return inst.scheduling.provisioning_model == "SPOT" or bool(inst.scheduling.preemptible)


def _fill_scheduling(s: compute_v1.Scheduling) -> None:
    """The scheduling defaults GCE reports back for spot and standard VMs."""
    spot = s.provisioning_model == "SPOT" or bool(s.preemptible)
    if spot:
        s.preemptible = True
        s.automatic_restart = False
        s.on_host_maintenance = s.on_host_maintenance or "TERMINATE"
        s.provisioning_model = s.provisioning_model or "SPOT"
        s.instance_termination_action = s.instance_termination_action or "STOP"
    else:
        s.preemptible = False
        if "automatic_restart" not in s:
            s.automatic_restart = True
        s.on_host_maintenance = s.on_host_maintenance or "MIGRATE"
        s.provisioning_model = s.provisioning_model or "STANDARD"


# ---------------------------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------------------------

@contextmanager
def run_compute_fake(project: str = "test-project", *, seed: int = 0) -> Iterator[ComputeFake]:
    """Serve a fresh ComputeFake on 127.0.0.1 (free port) for the duration of the block."""
    fake = ComputeFake(project, seed=seed)
    stop = threading.Event()

    def clock() -> None:
        # Time moves without requests too: a notice runs out, and the guest is powered off, even
        # while nobody asks (as on GCE). Requests still tick first, so what they see is current.
        while not stop.wait(0.05):
            with fake.lock:
                try:
                    fake._tick()
                except Exception as e:  # noqa: BLE001 - a bug in the fake: the fixture fails on it
                    fake.internal_errors.append(f"clock: {e!r}")
    ticker = threading.Thread(target=clock, name="compute-fake-clock", daemon=True)
    with serve(fake, "compute-fake") as endpoint:
        fake.endpoint = endpoint
        ticker.start()
        try:
            yield fake
        finally:
            stop.set()
            ticker.join(timeout=5)
            fake.close()


# ---------------------------------------------------------------------------------------------
# Guard against escaping to real Google endpoints
# ---------------------------------------------------------------------------------------------

class ExternalNetworkBlocked(RuntimeError):
    """Something tried to resolve a non-loopback host while the compute fake was in use."""


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


@contextmanager
def block_external_network() -> Iterator[list[str]]:
    """Refuse name resolution of anything but loopback; yields the list of blocked hosts.

    Every TCP client (requests/urllib3, http.client, google.auth's metadata probe) resolves its
    host through ``socket.getaddrinfo`` first, so this catches a client built with the default
    endpoint (``compute.googleapis.com``), a metadata-server probe (169.254.169.254) and token
    refreshes alike. The attempt raises, and is also recorded so a caller that swallows the
    exception (retry loops, google.auth's "am I on GCE?" check) still fails the test.
    Metadata env vars point at a closed loopback port so credential discovery fails fast.
    """
    blocked: list[str] = []
    original = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and h not in _LOOPBACK and not str(h).startswith("127."):
            blocked.append(str(h))
            raise ExternalNetworkBlocked(f"test tried to reach {h!r}; only the local compute "
                                         "fake (127.0.0.1) may be contacted")
        return original(host, *args, **kwargs)

    env = {"GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
           "NO_GCE_CHECK": "True"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    socket.getaddrinfo = guarded  # type: ignore[assignment]
    try:
        yield blocked
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def compute_fake() -> Iterator[ComputeFake]:
    """A fresh fake per test, with external network blocked; fails the test on any escape.

    Use through ``pytest_plugins = ["tests.standins.compute"]`` or ``from tests.standins.compute import
    compute_fake``. Build clients with ``compute_v1.InstancesClient(**compute_fake.client_kwargs())``.
    """
    with block_external_network() as blocked, run_compute_fake() as fake:
        yield fake
    if blocked:
        pytest.fail(f"requests escaped towards real endpoints: {sorted(set(blocked))}")
    if fake.internal_errors:
        pytest.fail(f"the compute fake crashed: {fake.internal_errors}")
