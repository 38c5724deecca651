"""The fake's records (VMs, operations, scheduled events, recorded requests), what a test plugs in
(``Guest``, ``IamPolicySource``) and the small helpers on resource URLs and pages they share."""

from __future__ import annotations

import base64
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

from google.cloud import compute_v1

from tests.standins.compute.errors import _as_dict, _invalid
from tests.standins.compute.filters import parse_filter
from tests.standins.google_api import RecordedRequest  # noqa: F401 - re-exported: defined with the base


API = "https://www.googleapis.com/compute/v1"
SERIAL_RETAIN_BYTES = 1 << 20
MAX_RESULTS = 500
# Seconds between ACPI G2 soft off and G3 mechanical off (Scheduling.skipGuestOsShutdown, compute
# v1 reference): what a shutdown script gets before power is cut.
SPOT_SHUTDOWN_NOTICE_S = 30.0
STANDARD_SHUTDOWN_NOTICE_S = 120.0

InstancePredicate = Callable[[compute_v1.Instance], bool]


class IamPolicySource(Protocol):
    """Where the fake reads IAM from: ``tests.standins.gcp_admin.GcpAdminFake`` is one."""

    def policy(self, project: str) -> dict[str, Any]: ...

    def role_permissions(self, role: str) -> Optional[frozenset[str]]: ...


class Guest(Protocol):
    """What runs inside the fake's VMs: the hook a whole-path test uses to simulate COS VMs.

    Set ``fake.guest`` to an object with these methods (``None``, the default, means the
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

    def on_image_created(self, project: str, image: str, source_disk: str) -> None:
        """Optional (a guest without it is not told): ``images.insert`` made image ``image``
        from ``source_disk`` (``projects/P/zones/Z/disks/D``). Called in order with the other
        events, so the disk's content is copied before the VM it belongs to is deleted; a VM
        later booted from the image (its boot disk's ``initializeParams.sourceImage``) starts
        with that content."""


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


def _page(items: list[Any], q: dict[str, str]) -> tuple[list[Any], str]:
    """Filter, then cut one page; the page token is an opaque offset, like GCE's."""
    pred = parse_filter(q.get("filter", ""), each_in_parentheses=True)
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
