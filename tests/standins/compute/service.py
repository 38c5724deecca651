"""The fake itself: its state and switches, and the dispatch of one request (route, authorize,
inject faults, call the resource's handler, record it). The handlers live in one module per
resource, mixed in here."""

from __future__ import annotations

import itertools
import queue
import random
import re
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import unquote

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from tests.standins.compute.advice import CapacityAdvice
from tests.standins.compute.bulk import BulkInsertRecords
from tests.standins.compute.catalogue import COS_IMAGES, DEFAULT_REGION_QUOTAS, ZONES, _catalogue
from tests.standins.compute.disks import DiskRecords
from tests.standins.compute.firewalls import FirewallRecords
from tests.standins.compute.errors import ApiError, _invalid, _not_found, _retryable_error, to_json
from tests.standins.compute.filters import FilterError
from tests.standins.compute.iam import IamChecks
from tests.standins.compute.images import ImageRecords
from tests.standins.compute.instances import InstanceRecords, _UUID_RE
from tests.standins.compute.model import (
    Guest, IamPolicySource, RecordedRequest, SERIAL_RETAIN_BYTES, _Op, _Scheduled, _Vm,
)
from tests.standins.compute.networks import NetworkRecords
from tests.standins.compute.operations import OperationRecords
from tests.standins.compute.quotas import QuotaRules
from tests.standins.compute.images import IMAGE_READY_SECONDS
from tests.standins.compute.routes import _GLOBAL_MUTATIONS, _MUTATIONS, _ROUTES, _SETTERS
from tests.standins.compute.timeline import PreemptionTimeline
from tests.standins.google_api import Answer, RoutedApi


class ComputeFake(RoutedApi, InstanceRecords, BulkInsertRecords, DiskRecords, OperationRecords, ImageRecords, QuotaRules,
                  IamChecks, PreemptionTimeline, NetworkRecords, FirewallRecords, CapacityAdvice):
    """State and switches of the fake; served over HTTP by ``run_compute_fake``.

    Switches are plain attributes, read under the fake's lock on every request, so a test can
    flip them between (or during) supervisor passes:

    - ``stockout_zones``: inserts (and starts) there fail with ZONE_RESOURCE_POOL_EXHAUSTED, as
      an operation error, or as HTTP 503 when ``stockout_as_http`` is true.
    - ``spot_stockout_zones``: like ``stockout_zones`` for spot VMs only: a standard (on-demand)
      insert there succeeds. Spot capacity is Compute Engine's excess capacity ("Spot VMs are
      available at a discount ... Compute Engine might preempt Spot VMs if it needs to reclaim
      those resources", https://cloud.google.com/compute/docs/instances/spot), so a zone can be
      out of spot capacity and still take a standard VM.
    - ``capacity_scores`` / ``capacity_advice_denied``: what ``advice.capacity`` answers (advice.py).
    - ``zone_capacity``: zone -> how many more VMs it can take (absent: no limit); an insert or
      ``bulkInsert`` beyond it is a stockout (bulk.py: all or nothing down to ``minCount``).
    - ``lose_reply(rpc)``: the next such request is carried out and its answer lost (HTTP 503),
      so the client retries a write that happened ("A write can succeed while its reply is
      lost"; ``requestId`` is what makes the retry safe).
    - ``quota_zones``: inserts there fail with HTTP 403 ``quotaExceeded`` naming the GPU quota.
    - ``project_quotas`` (``set_project_quota``): project-wide quotas served by ``projects.get``;
      ``GPUS_ALL_REGIONS`` is enforced on insert and start in every zone (quotas.py).
    - ``unreachable_zones``: ``aggregatedList`` cannot read them (partial success, instances.py).
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
    - ``org_project()``, ``skip_default_network``, ``external_ip_denied``: a project of a 2024+
      organisation (no ``default`` network; no VM may have an external IP): ``networks``.
    """


    def __init__(self, project: str = "test-project", *, seed: int = 0) -> None:
        self.project = project
        self.stockout_zones: set[str] = set()
        self.spot_stockout_zones: set[str] = set()
        self.capacity_scores: dict[str, float] = {}  # zone -> obtainability advice.capacity gives it
        self.capacity_advice_denied = False
        self.stockout_as_http = False
        self.zone_capacity: dict[str, int] = {}
        self.bulk_rollback_leaves: dict[str, int] = {}  # fault injection (bulk.py)
        self._lost_replies: list[str] = []
        self.quota_zones: set[str] = set()
        self.unreachable_zones: set[str] = set()  # aggregatedList cannot read them (quotas.py)
        # Project-wide quotas (projects.get): metric -> (limit, usage outside the fake).
        self.project_quotas: dict[str, tuple[float, float]] = {"GPUS_ALL_REGIONS": (64.0, 0.0)}
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
        self._image_ready_at: dict[tuple[str, str], float] = {}  # PENDING images: when READY
        self.image_ready_seconds = IMAGE_READY_SECONDS  # x time_scale
        self._disks: dict[tuple[str, str, str], compute_v1.Disk] = {}
        self._guest_events: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._guest_thread: Optional[threading.Thread] = None
        self._init_networks()
        self._init_firewalls()
        for family, name in COS_IMAGES:
            self.add_image("cos-cloud", name, family=family)

    # ---- inspection -------------------------------------------------------------------------

    # ``requests``, ``reset_requests`` and ``calls(rpc, ok=)`` come from RoutedApi.

    def client_kwargs(self) -> dict[str, Any]:
        """``client_options`` and ``credentials`` for any compute_v1 client: ``Client(**kw)``."""
        return {"client_options": ClientOptions(api_endpoint=self.endpoint),
                "credentials": AnonymousCredentials()}

    def fail_next(self, code: int = 503, times: int = 1, rpc: Optional[str] = None,
                  reason: Optional[str] = None) -> None:
        """The next ``times`` requests (to ``rpc`` only, if given) get HTTP ``code`` unprocessed.

        ``403`` is a rate limit in GCE's shape (``reason`` ``rateLimitExceeded``, the default,
        or ``userRateLimitExceeded``); ``reason="forbidden"`` makes it a missing permission.
        """
        with self.lock:
            self._fail_next.extend([(code, rpc, reason)] * times)

    def lose_reply(self, rpc: str, times: int = 1) -> None:
        """The next ``times`` requests to ``rpc`` are carried out, then answered with HTTP 503."""
        with self.lock:
            self._lost_replies.extend([rpc] * times)

    # ---- dispatch ---------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)(/.*)?", path)
        if not m:
            return None
        project, rest = unquote(m.group(1)), m.group(2) or ""
        for verb, pattern, rpc in _ROUTES:
            if verb == method:
                mm = re.fullmatch(pattern, rest)
                if mm:
                    return rpc, {"project": project,
                                 **{k: unquote(v) for k, v in mm.groupdict().items()}}
        return None

    # ---- one request (the template is tests/standins/google_api.py's RoutedApi.handle) -------

    def request_path(self, raw: str) -> str:
        return raw  # routed as sent: path arguments are unquoted one by one (``_route``)

    def find_route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        return self._route(method, path)

    def before(self) -> None:
        self._tick()

    def not_implemented(self, method: str, path: str) -> ApiError:
        return ApiError(501, "notImplemented", f"compute fake: {method} {path} is not implemented")

    def client_error(self, e: Exception, query: dict[str, str]) -> Optional[ApiError]:
        if isinstance(e, FilterError):
            # GCE's words exactly (the reason stays with the fake: GCE does not give one).
            return _invalid("filter", query.get("filter", ""), "Invalid list filter expression.")
        return None

    def crashed(self, e: Exception) -> ApiError:
        return ApiError(500, "internalError", f"compute fake crashed: {e!r}")

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> Answer:
        self._authorize(rpc, args, headers, body)
        self._inject_error(rpc)
        result = self._dispatch(rpc, args, query, body)
        if rpc in self._lost_replies:  # done, but the client never hears so
            self._lost_replies.remove(rpc)
            raise _retryable_error(503)
        if isinstance(result, _Op):  # zoneOperations.wait: sleep outside the lock
            return lambda: self._wait(result)
        return to_json(result)

    def _wait(self, wait_for: _Op) -> str:
        # Until DONE or GCE's ~2 min cap; polled because a shutdown ends the operation at a
        # time nobody scheduled (when the guest halts).
        give_up = time.monotonic() + self.wait_timeout
        while True:
            with self.lock:
                self._tick()
                done = time.monotonic() >= wait_for.done_at
                if done or time.monotonic() >= give_up:
                    return to_json(self._render_op(wait_for))
            time.sleep(min(0.02, max(0.0, wait_for.done_at - time.monotonic())))

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
        if request_id and (rpc in _MUTATIONS or rpc in _SETTERS or rpc in _GLOBAL_MUTATIONS):
            if not _UUID_RE.fullmatch(request_id) or set(request_id) <= {"0", "-"}:
                raise _invalid("requestId", request_id, "Must be a valid UUID other than the "
                               "zero UUID.")
            seen = self._request_ids.get(rid_key)
            ttl = self.request_id_ttl * (self.time_scale or 1.0)
            if seen is not None and time.monotonic() - seen[1] < ttl and \
                    (p, zone or "global", seen[0]) in self._ops:
                return self._render_op(self._ops[(p, zone or "global", seen[0])])  # type: ignore[index]
        if rpc == "instances.insert":
            result = self._h_insert(p, zone, q, body)  # type: ignore[arg-type]
        elif rpc == "instances.bulkInsert":
            result = self._h_bulk_insert(p, zone, body)  # type: ignore[arg-type]
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
        elif rpc == "images.insert":
            result = self._h_images_insert(p, q, body)
        elif rpc == "images.delete":
            result = self._h_images_delete(p, a["image"])
        elif rpc == "globalOperations.get":
            return self._render_op(self._h_global_op(p, op_name))  # type: ignore[arg-type]
        elif rpc == "globalOperations.wait":
            return self._h_global_op(p, op_name)  # type: ignore[arg-type]
        elif rpc == "regions.get":
            return self._h_region(p, a["region"])
        elif rpc == "advice.capacity":
            return self._h_capacity_advice(p, a["region"], body)
        elif rpc.startswith("networks."):
            result = self._h_networks(rpc, p, a, q, body)
            if not isinstance(result, compute_v1.Operation):
                return result
        elif rpc.startswith("firewalls."):
            result = self._h_firewalls(rpc, p, a, q, body)
            if not isinstance(result, compute_v1.Operation):
                return result
        elif rpc.startswith("subnetworks."):
            return self._h_subnetworks(rpc, p, a, q, body)
        elif rpc == "projects.get":
            return self._h_project(p)
        else:
            return _catalogue(rpc, p, a, q)
        if request_id and isinstance(result, compute_v1.Operation):
            self._request_ids[rid_key] = (result.name, time.monotonic())
        return result
