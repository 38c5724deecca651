"""The JSON documents of the run record, each with its ``schema_version``.

Readers keep what they do not know: images are pinned per run, so an older agent routinely
rewrites a ``state.json`` that a newer runner wrote, and must not drop (and so reset) its fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from entrypoint.record.damaged import check_fields
from entrypoint.record.states import State

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))

SCHEMA_VERSION = 1


def utcnow() -> float:
    return time.time()


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def dump(doc: Any) -> bytes:
    """How every record document is serialised (stable key order, so equal documents are equal bytes)."""
    return json.dumps(doc, indent=1, sort_keys=True).encode()


@dataclass(frozen=True)
class AttemptSettings:
    """Everything that shapes each attempt of a run, pinned in its spec at submit.

    Why pinned: a run is recreated by whichever supervisor notices its preemption (a laptop loop,
    the hosted Cloud Run job, another operator's), each with its own config. The run's grace
    period, intervals, shm size, stall window and recovery strategy must be the ones it was
    submitted with, whoever restarts it; a supervisor's config shapes only the supervisor.
    """

    grace_period: float = 25.0
    heartbeat_interval: float = 5.0
    sync_interval: float = 10.0
    shm_size: str = "2g"
    stall_window: float = 600.0
    gpu_timeout: float = 600.0
    recovery: str = "in-order"  # runner.launch.recovery's strategy name: the zone order per attempt
    # Progress from the job's own output lines (entrypoint.progress_pattern), None: not asked for.
    progress_regex: str | None = None
    progress_total: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], fallback: "AttemptSettings | None" = None) -> "AttemptSettings":
        """Known keys from ``d``, the rest from ``fallback`` (or the defaults)."""
        base = asdict(fallback or cls())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{**base, **{k: v for k, v in d.items() if k in known and v is not None}})


@dataclass
class RunSpec:
    """Everything needed to recreate the run's VM or container, written once at submit.

    ``image`` is pinned to a digest (or a local image id), never a moving tag, so every
    restart runs exactly the code the first attempt ran.
    """

    run_id: str
    image: str
    command: list[str]
    backend: str
    max_restarts: int = 10
    retry_on_failure: int = 0
    checkpoint_dir: str = "/var/lib/runner/checkpoints"
    results_dir: str = "/var/lib/runner/results"
    env: dict[str, str] = field(default_factory=dict)
    machine_type: str | None = None
    gpu: str | None = None
    zones: list[str] = field(default_factory=list)
    # Instances per attempt: 1, or a gang's N (every attempt a generation of N nodes, rank 0 the
    # one that records the run's state). Specs written before gangs read as 1.
    nodes: int = 1
    # The queue (runner.launch.admission): a higher priority is admitted first, then submit
    # order. ``sweep`` names the sweep the run belongs to (runner sweep); ``max_concurrent``
    # caps how many runs of that sweep may hold VMs at once (None: no cap).
    priority: int = 0
    sweep: str | None = None
    max_concurrent: int | None = None
    # Specs written before ``settings`` existed pinned only these three (gpu_timeout,
    # stall_window, grace_period); ``attempt_settings`` still reads them there.
    timeouts: dict[str, float] = field(default_factory=dict)
    vm: dict[str, Any] = field(default_factory=dict)  # backend-specific options (GCE: disks, VM image...)
    settings: dict[str, Any] = field(default_factory=dict)  # an AttemptSettings, as written at submit
    # ``--data``: [{"source": "gs://B/P" or "file:///DIR", "mount": "/data"}], staged before every
    # attempt's job starts (``entrypoint.staging``); specs written before it read as none.
    data: list[dict[str, str]] = field(default_factory=list)
    # The second checkpoint tier (entrypoint.mirror): a store URL, or None (specs written before it).
    mirror: str | None = None
    created_at: float = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        """``ValueError``/``TypeError`` for a missing or wrong-typed field (the reader names the object)."""
        check_fields(d, _SPEC_TYPES)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def attempt_settings(self, fallback: AttemptSettings | None = None) -> AttemptSettings:
        """The settings every attempt of this run gets. ``fallback`` (the restarting supervisor's
        config) fills what a spec written before ``settings`` existed did not pin: the heartbeat
        and sync intervals and the shm size; its ``timeouts`` are its own."""
        return AttemptSettings.from_dict({**self.timeouts, **self.settings}, fallback)


@dataclass
class RunState:
    """``state.json``. ``restarts`` and ``failures`` are the run's two budgets, spent and judged
    here (``restarts_exhausted``, ``may_retry_failure``) and counted by the named transitions."""

    state: State
    attempt: int = 0
    instance: str | None = None  # the first of ``instances``, for readers older than the list
    zone: str | None = None  # likewise
    reason: str | None = None
    exit_code: int | None = None
    failures: int = 0  # job failures retried (ERRORED) since the run was (re)submitted
    restarts: int = 0  # restarts after preemption/stall since the run was (re)submitted
    # QUEUED only: the state it waits after (PENDING, PREEMPTED, STALLED, ERRORED) and since
    # when it waits (the queue's first-come order); None otherwise.
    queued_after: str | None = None
    queued_since: float | None = None
    # The attempt's instances, each {"name", "zone", "rank"} (one today; a gang has several).
    instances: list[dict[str, Any]] = field(default_factory=list)
    updated_at: float = field(default_factory=utcnow)
    updated_by: str = ""
    # The event that journals this state: {"name": file name under events/, "doc": its JSON}.
    # Carried in the state so that whoever reads the state can write a missing event under the
    # same name (create-only: never twice), after its writer died between the two writes.
    last_event: dict[str, Any] | None = None
    # The running summary of the whole history (billed and lost seconds, restarts), folded in
    # by each transition's own compare-and-swap; see ``entrypoint.record.history``. None for a
    # run that predates it (its readers rebuild it from the journal).
    history: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    # Fields this version does not know, kept as they were. Images are pinned per run, so an
    # older agent routinely rewrites state.json written by a newer runner: it must not drop
    # (and so reset) what it does not understand, such as the restart counter.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        """``ValueError``/``KeyError`` for a missing, unknown or wrong-typed field (the reader names the object)."""
        check_fields(d, _STATE_TYPES)
        known = {f for f in cls.__dataclass_fields__} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        try:
            kw["state"] = State(kw["state"])
        except ValueError:
            raise ValueError(f"field 'state' is {kw['state']!r}, not a state this version knows") from None
        if not all(isinstance(i, dict) for i in kw.get("instances", [])):
            raise ValueError("field 'instances' holds something other than objects")
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["state"] = self.state.value
        return {**extra, **d}

    # ---- the two budgets, judged in one place ----
    def restarts_exhausted(self, max_restarts: int) -> bool:
        """Whether a lost attempt (preempted, stalled) may not be followed by another.

        A failed job (ERRORED) spends the failure budget instead, judged by the agent.
        """
        return self.state != State.ERRORED and self.restarts >= max_restarts

    def may_retry_failure(self, retry_on_failure: int) -> bool:
        """Whether a job that exited non-zero gets another attempt (ERRORED) rather than FAILED."""
        return self.failures < retry_on_failure

    def set_instances(self, instances: list[dict[str, Any]]) -> None:
        """The attempt's instances; ``instance``/``zone`` mirror the first, for older readers."""
        self.instances = [dict(i) for i in instances]
        first = self.instances[0] if self.instances else {}
        self.instance = first.get("name")
        self.zone = first.get("zone")


@dataclass
class Heartbeat:
    """Liveness plus progress. The stall watchdog reads ``progress_changed_at``, not ``time``."""

    time: float
    attempt: int
    phase: str
    progress: dict[str, Any] = field(default_factory=dict)
    progress_changed_at: float | None = None
    sync: dict[str, Any] = field(default_factory=dict)
    gpu_util: float | None = None
    rate: float | None = None  # steps per second this attempt (for ETAs); None until measurable
    # The run's staged data (``entrypoint.staging.StagingProgress``): files and bytes done of
    # the total, copied and kept; None for a run without --data.
    data: dict[str, Any] | None = None
    # A gang node's: which instance it is, and (phase "exited") how its job ended.
    instance: str | None = None
    exit_code: int | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Heartbeat":
        """``ValueError``/``TypeError`` for a missing or wrong-typed field (the reader names the object)."""
        check_fields(d, _HEARTBEAT_TYPES)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# The types each document's fields must have to be read at all. Checked at the read so that a
# damaged document fails there, named, instead of in some caller's arithmetic (see
# ``entrypoint.record.damaged``). Only what our code relies on; unknown fields are kept as they are.
_SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "image": (str,), "command": (list,), "backend": (str,), "max_restarts": (int,),
    "retry_on_failure": (int,), "checkpoint_dir": (str,), "results_dir": (str,), "env": (dict,),
    "machine_type": _OPT_STR, "gpu": _OPT_STR, "zones": (list,), "nodes": (int,), "priority": (int,),
    "sweep": _OPT_STR, "max_concurrent": _OPT_INT, "timeouts": (dict,), "vm": (dict,),
    "settings": (dict,), "created_at": _NUM, "data": (list,), "mirror": _OPT_STR,
}
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,), "attempt": (int,), "instance": _OPT_STR, "zone": _OPT_STR, "reason": _OPT_STR,
    "exit_code": _OPT_INT, "failures": (int,), "restarts": (int,), "instances": (list,),
    "queued_after": _OPT_STR, "queued_since": _NUM + (type(None),),
    "updated_at": _NUM, "updated_by": _OPT_STR, "last_event": (dict, type(None)),
}
_HEARTBEAT_TYPES: dict[str, tuple[type, ...]] = {
    "time": _NUM, "attempt": (int,), "phase": (str,), "progress": (dict,), "progress_changed_at": _OPT_NUM,
    "sync": (dict,), "gpu_util": _OPT_NUM, "rate": _OPT_NUM, "data": (dict, type(None)),
}
