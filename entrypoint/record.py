"""The run record: the one contract the control plane and the in-container agent both speak.

Everything about a run lives under ``runs/<RUN_ID>/`` in the store (a GCS bucket or a local
directory). This module owns the object names, the JSON documents with their
``schema_version``, and the state machine. Both ``runner/`` and ``entrypoint/`` import it, and
it depends on nothing but the standard library and the store interface, so the agent can carry
it into any image.
"""

from __future__ import annotations

import enum
import itertools
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from entrypoint.store import PreconditionFailed, Store

SCHEMA_VERSION = 1


class State(str, enum.Enum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    BOOTING = "BOOTING"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    STALLED = "STALLED"
    ERRORED = "ERRORED"  # the job exited non-zero and --retry-on-failure allows another try
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def needs_restart(self) -> bool:
        """A state after which the supervisor brings up a new attempt (unless stopped)."""
        return self in (State.PREEMPTED, State.STALLED, State.ERRORED)


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.STOPPED})

# Every transition an actor may make. Anything else is refused, so a late writer (an agent
# that wakes after its VM was replaced, say) cannot drag a run backwards.
_ALLOWED: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.PROVISIONING}),
    State.PROVISIONING: frozenset({State.BOOTING, State.RUNNING, State.PREEMPTED, State.STALLED}),
    State.BOOTING: frozenset({State.RUNNING, State.PREEMPTED, State.STALLED}),
    State.RUNNING: frozenset({State.PREEMPTED, State.STALLED, State.ERRORED}),
    State.PREEMPTED: frozenset({State.PROVISIONING}),
    State.STALLED: frozenset({State.PROVISIONING}),
    State.ERRORED: frozenset({State.PROVISIONING}),
}
# Any live state may end: success, failure or an explicit stop.
for _s in list(_ALLOWED):
    _ALLOWED[_s] = _ALLOWED[_s] | TERMINAL


class IllegalTransition(Exception):
    """A write that the state machine forbids (for example, anything after a terminal state)."""


def check_transition(current: State, new: State) -> None:
    if current.terminal:
        raise IllegalTransition(f"run is {current.value}; terminal states are never overwritten")
    if new not in _ALLOWED[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not a legal transition")


def utcnow() -> float:
    return time.time()


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


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
    timeouts: dict[str, float] = field(default_factory=dict)
    vm: dict[str, Any] = field(default_factory=dict)  # backend-specific options (GCE: disks, VM image...)
    created_at: float = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RunState:
    state: State
    attempt: int = 0
    instance: str | None = None
    zone: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    failures: int = 0
    restarts: int = 0  # restarts after preemption/stall since the run was (re)submitted
    updated_at: float = field(default_factory=utcnow)
    updated_by: str = ""
    schema_version: int = SCHEMA_VERSION

    # Fields this version does not know, kept as they were. Images are pinned per run, so an
    # older agent routinely rewrites state.json written by a newer runner: it must not drop
    # (and so reset) what it does not understand, such as the restart counter.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        known = {f for f in cls.__dataclass_fields__} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["state"] = State(kw["state"])
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["state"] = self.state.value
        return {**extra, **d}


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
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Heartbeat":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()


_event_seq = itertools.count()


class RunRecord:
    """One run's objects in the store, with the write rules of the contract.

    Guarantees: ``transition`` is compare-and-swap on ``state.json`` (two actors racing on the
    same run: exactly one wins, the other gets ``PreconditionFailed`` or ``IllegalTransition``);
    events are create-only and never rewritten; missing objects read as ``None``.
    """

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.prefix = f"runs/{run_id}/"

    # ---- object names (the layout is part of the contract) ----
    def name(self, rel: str) -> str:
        return self.prefix + rel

    SPEC = "spec.json"
    STATE = "state.json"
    HEARTBEAT = "heartbeat.json"
    STOP = ".stop"
    EVENTS = "events/"
    CHECKPOINTS = "checkpoints/"
    RESULTS = "results/"

    @staticmethod
    def manifest_name(attempt: int) -> str:
        return f"attempts/{attempt}/manifest.json"

    @staticmethod
    def log_name(attempt: int) -> str:
        return f"logs/{attempt}.log"

    @staticmethod
    def startup_name(attempt: int) -> str:
        """Written by the VM's startup script (plain JSON, no CAS): how far boot got, or why it failed."""
        return f"attempts/{attempt}/startup.json"

    # ---- spec ----
    def read_spec(self) -> RunSpec | None:
        blob = self.store.read(self.name(self.SPEC))
        return None if blob is None else RunSpec.from_dict(json.loads(blob.data))

    def write_spec(self, spec: RunSpec) -> None:
        """Create-only: two submits racing on a new run id cannot mix one's spec with the other's state."""
        self.store.write(self.name(self.SPEC), _dump(asdict(spec)), if_generation_match=0)

    # ---- state ----
    def read_state(self) -> tuple[RunState, int] | None:
        """The current state and the generation to pass back to ``transition``."""
        blob = self.store.read(self.name(self.STATE))
        if blob is None:
            return None
        return RunState.from_dict(json.loads(blob.data)), blob.generation

    def create_state(self, actor: str) -> RunState:
        st = RunState(state=State.PENDING, updated_by=actor)
        self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=0)
        self.event(actor, None, State.PENDING, "submitted")
        return st

    def transition(
        self,
        new: State,
        actor: str,
        *,
        expect_attempt: int | None = None,
        expected: tuple[RunState, int] | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> tuple[RunState, int]:
        """Move the run to ``new`` with a compare-and-swap write, and journal it.

        ``expected`` is the (state, generation) the caller based its decision on: the write
        succeeds only if nobody wrote since, so a decision made on a stale read never lands.
        Without it the state is re-read here. ``expect_attempt`` guards against a writer from an
        older attempt: an agent of attempt 1 that wakes after attempt 2 began gets
        ``IllegalTransition``, never overwrites.
        Raises ``PreconditionFailed`` if someone else wrote in between; callers re-read and decide.
        Returns the new state and its generation, ready to be the next ``expected``.
        """
        cur = expected if expected is not None else self.read_state()
        if cur is None:
            raise IllegalTransition(f"run {self.run_id} has no state.json; submit it first")
        st, gen = RunState.from_dict(cur[0].to_dict()), cur[1]
        if expect_attempt is not None and st.attempt != expect_attempt:
            raise IllegalTransition(
                f"state belongs to attempt {st.attempt}, writer is attempt {expect_attempt}"
            )
        check_transition(st.state, new)
        old = st.state
        st.state = new
        st.reason = reason
        st.updated_at = utcnow()
        st.updated_by = actor
        for k, v in changes.items():
            setattr(st, k, v)
        new_gen = self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        self.event(actor, old, new, reason, attempt=st.attempt)
        return st, new_gen

    def reopen(self, actor: str, reason: str) -> RunState:
        """The one way out of a terminal state: an explicit user ``submit --restart``.

        Keeps the attempt counter (so instance names never repeat) and journals who did it.
        """
        # .stop goes first, while the run is still terminal: a supervisor that saw PENDING and
        # .stop together would end the run again.
        self.store.delete(self.name(self.STOP))
        cur = self.read_state()
        if cur is None:
            raise IllegalTransition(f"run {self.run_id} has no state.json")
        st, gen = cur
        old = st.state
        st.state = State.PENDING
        st.reason = reason
        st.exit_code = None
        st.failures = 0
        st.restarts = 0
        st.updated_at = utcnow()
        st.updated_by = actor
        self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        self.event(actor, old, State.PENDING, reason, attempt=st.attempt)
        return st

    # ---- events (append-only journal) ----
    def event(
        self,
        actor: str,
        old: State | None,
        new: State | None,
        reason: str | None,
        attempt: int | None = None,
        **extra: Any,
    ) -> None:
        ts = utcnow()
        doc = {
            "time": ts,
            "actor": actor,
            "from": old.value if old else None,
            "to": new.value if new else None,
            "reason": reason,
            "attempt": attempt,
            "host": socket.gethostname(),
            "schema_version": SCHEMA_VERSION,
            **extra,
        }
        for _ in range(5):
            n = f"{os.getpid()}{next(_event_seq):04d}"
            name = self.name(f"{self.EVENTS}{ts:017.6f}-{actor}-{n}.json")
            try:
                self.store.write(name, _dump(doc), if_generation_match=0)
                return
            except PreconditionFailed:
                continue

    def events(self, after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events in time order (the names sort by timestamp). ``after``: a name already seen."""
        for name in sorted(self.store.list(self.name(self.EVENTS))):
            if after is not None and name <= after:
                continue
            blob = self.store.read(name)
            if blob is not None:
                yield name, json.loads(blob.data)

    # ---- heartbeat, manifest, stop ----
    def write_heartbeat(self, hb: Heartbeat) -> None:
        self.store.write(self.name(self.HEARTBEAT), _dump(asdict(hb)))

    def read_heartbeat(self) -> Heartbeat | None:
        blob = self.store.read(self.name(self.HEARTBEAT))
        return None if blob is None else Heartbeat.from_dict(json.loads(blob.data))

    def write_manifest(self, attempt: int, doc: dict[str, Any]) -> None:
        doc = {"schema_version": SCHEMA_VERSION, **doc}
        self.store.write(self.name(self.manifest_name(attempt)), _dump(doc))

    def read_manifest(self, attempt: int) -> dict[str, Any] | None:
        blob = self.store.read(self.name(self.manifest_name(attempt)))
        return None if blob is None else json.loads(blob.data)

    @staticmethod
    def claim_name(attempt: int) -> str:
        return f"attempts/{attempt}/create.json"

    def claim_create(self, attempt: int, actor: str) -> bool:
        """Create-only claim on creating this attempt's instance: one creator per attempt, even
        when two supervisors would pick different zones (GCE names are unique per zone only)."""
        try:
            self.store.write(self.name(self.claim_name(attempt)),
                             _dump({"time": utcnow(), "actor": actor}), if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    def read_claim(self, attempt: int) -> dict[str, Any] | None:
        blob = self.store.read(self.name(self.claim_name(attempt)))
        return None if blob is None else json.loads(blob.data)

    def release_claim(self, attempt: int) -> None:
        self.store.delete(self.name(self.claim_name(attempt)))

    def read_startup(self, attempt: int) -> dict[str, Any] | None:
        blob = self.store.read(self.name(self.startup_name(attempt)))
        if blob is None:
            return None
        try:
            doc = json.loads(blob.data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def request_stop(self, actor: str, reason: str = "stopped by user") -> None:
        self.store.write(self.name(self.STOP), _dump({"time": utcnow(), "actor": actor, "reason": reason}))

    def stop_requested(self) -> bool:
        return self.store.exists(self.name(self.STOP))


def list_run_ids(store: Store) -> list[str]:
    """All run ids in the store, from one delimiter listing (one API call on GCS)."""
    return sorted(p.rstrip("/").split("/")[-1] for p in store.list_prefixes("runs/"))
