"""The run record: the one contract the control plane and the in-container agent both speak.

Everything about a run lives under ``runs/<RUN_ID>/`` in the store (a GCS bucket or a local
directory). This module owns the object names, the JSON documents with their
``schema_version``, and the state machine. Both ``runner/`` and ``entrypoint/`` import it, and
it depends on nothing but the standard library and the store interface, so the agent can carry
it into any image.
"""

from __future__ import annotations

import enum
import json
import socket
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from entrypoint.store import PreconditionFailed, Store, StoreError

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
    # Specs written before ``settings`` existed pinned only these three (gpu_timeout,
    # stall_window, grace_period); ``attempt_settings`` still reads them there.
    timeouts: dict[str, float] = field(default_factory=dict)
    vm: dict[str, Any] = field(default_factory=dict)  # backend-specific options (GCE: disks, VM image...)
    settings: dict[str, Any] = field(default_factory=dict)  # an AttemptSettings, as written at submit
    created_at: float = field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def attempt_settings(self, fallback: AttemptSettings | None = None) -> AttemptSettings:
        """The settings every attempt of this run gets. ``fallback`` fills what an older spec did
        not pin (its restarts used the restarting supervisor's config then, as they still do)."""
        return AttemptSettings.from_dict({**self.timeouts, **self.settings}, fallback)


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
    # The event that journals this state: {"name": file name under events/, "doc": its JSON}.
    # Carried in the state so that whoever reads the state can write a missing event under the
    # same name (create-only: never twice), after its writer died between the two writes.
    last_event: dict[str, Any] | None = None
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


# Event names this process knows are stored: ``ensure_journaled`` then costs no request.
_JOURNALED: "OrderedDict[str, None]" = OrderedDict()
_JOURNALED_MAX = 4096


def _remember_journaled(name: str) -> None:
    _JOURNALED[name] = None
    _JOURNALED.move_to_end(name)
    while len(_JOURNALED) > _JOURNALED_MAX:
        _JOURNALED.popitem(last=False)


def _event_file(ts: float, actor: str) -> str:
    """``<ts>-<actor>-<random>.json``: sorts by time, and unique, so a create-only write of it
    that meets an existing object met itself (or the same event written by a repair)."""
    return f"{ts:017.6f}-{actor}-{uuid.uuid4().hex[:12]}.json"


# A submit writes spec.json and then state.json within a second; a spec.json alone for this long
# belongs to a submit that died, and a new submit may replace it.
ABANDONED_SPEC_AFTER = 600.0


class RunRecord:
    """One run's objects in the store, with the write rules of the contract.

    Guarantees: ``transition`` is compare-and-swap on ``state.json`` (two actors racing on the
    same run: exactly one wins, the other gets ``PreconditionFailed`` or ``IllegalTransition``);
    events are create-only and never rewritten; missing objects read as ``None``.

    The journal holds every transition exactly once, even when a writer dies between writing
    the state and its event: the state carries its own event (``last_event``), every
    transition first makes sure the event of the state it replaces is stored, ``events()``
    shows a missing latest one from the state, and ``ensure_journaled`` stores it (the
    supervisor calls it each pass, for terminal states that no one transitions again).
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
        """Create-only: two submits racing on a new run id cannot mix one's spec with the other's state.

        A spec.json without a state.json is a submit that has not finished: the same submit
        run again completes it (an equal spec is adopted), and one that died long ago
        (``ABANDONED_SPEC_AFTER``) no longer holds the run id. Anything else is
        ``PreconditionFailed`` with what to do.
        """
        doc = asdict(spec)
        try:
            self.store.write(self.name(self.SPEC), _dump(doc), if_generation_match=0)
            return
        except PreconditionFailed:
            blob = self.store.read(self.name(self.SPEC))
            if blob is None or self.read_state() is not None:
                raise PreconditionFailed(
                    f"run {self.run_id} already has a spec.json: submit it with --restart, or "
                    "choose another --run-id"
                ) from None
        theirs = json.loads(blob.data)
        if _same_spec(theirs, doc):
            return  # the same submit, again, after it died or lost its reply: carry on
        age = utcnow() - float(theirs.get("created_at") or 0)
        if age > ABANDONED_SPEC_AFTER:
            self.store.write(self.name(self.SPEC), _dump(doc), if_generation_match=blob.generation)
            return
        raise PreconditionFailed(
            f"run {self.run_id}: another submit wrote its spec.json {age:.0f}s ago with a different "
            "command or settings and has not created the run yet; choose another --run-id, or "
            f"submit again after {ABANDONED_SPEC_AFTER:.0f}s if that submit died"
        )

    # ---- state ----
    def read_state(self) -> tuple[RunState, int] | None:
        """The current state and the generation to pass back to ``transition``."""
        blob = self.store.read(self.name(self.STATE))
        if blob is None:
            return None
        return RunState.from_dict(json.loads(blob.data)), blob.generation

    def create_state(self, actor: str) -> RunState:
        st = RunState(state=State.PENDING, updated_by=actor)
        st.last_event = self._event_for(st, actor, None, "submitted", attempt=None)
        self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=0)
        self._journal(st.last_event)
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
        # The state we replace must be in the journal before it is gone from state.json.
        self.ensure_journaled(st)
        old = st.state
        st.state = new
        st.reason = reason
        st.updated_by = actor
        for k, v in changes.items():
            setattr(st, k, v)
        st.last_event = self._event_for(st, actor, old, reason)
        new_gen = self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        self._journal(st.last_event)
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
        self.ensure_journaled(st)
        old = st.state
        st.state = State.PENDING
        st.reason = reason
        st.exit_code = None
        st.failures = 0
        st.restarts = 0
        st.updated_by = actor
        st.last_event = self._event_for(st, actor, old, reason)
        self.store.write(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        self._journal(st.last_event)
        return st

    # ---- events (append-only journal) ----
    _SAME = -1

    def _event_for(self, st: RunState, actor: str, old: State | None, reason: str | None,
                   attempt: int | None = _SAME) -> dict[str, Any]:
        """The event that journals ``st`` (stamps ``st.updated_at`` with the event's time).
        ``attempt``: what the event says (the state's attempt unless given)."""
        st.updated_at = utcnow()
        doc = self._event_doc(st.updated_at, actor, old, st.state, reason,
                              st.attempt if attempt == self._SAME else attempt)
        return {"name": _event_file(st.updated_at, actor), "doc": doc}

    @staticmethod
    def _event_doc(ts: float, actor: str, old: State | None, new: State | None, reason: str | None,
                   attempt: int | None, **extra: Any) -> dict[str, Any]:
        return {
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

    def _journal(self, event: dict[str, Any]) -> None:
        """Store a state's event after the state itself landed.

        A failure here is not the transition's failure (the state is the truth and it is
        written): it is said on stderr, and the next transition or ``ensure_journaled`` stores
        the event under the same name.
        """
        name = self.name(self.EVENTS + event["name"])
        try:
            self.store.write(name, _dump(event["doc"]), if_generation_match=0)
        except PreconditionFailed:
            pass  # a repair stored it first: the same event, under the same name
        except StoreError as e:
            print(f"runner: {self.run_id}: state {event['doc'].get('to')} written, its journal entry "
                  f"not yet ({e}); the next writer or supervisor pass adds it", file=sys.stderr)
            return
        _remember_journaled(name)

    def ensure_journaled(self, st: RunState, strict: bool = True) -> bool:
        """Store ``st``'s own event if it is missing; True if this call had to store it.

        Idempotent and cheap: one stat per event per process, none once known stored.
        ``strict=False`` (a supervisor's repair pass) says a store failure on stderr instead of
        raising: the next pass tries again.
        """
        if not st.last_event:
            return False  # written by a version that journaled without it
        name = self.name(self.EVENTS + st.last_event["name"])
        if name in _JOURNALED:
            return False
        wrote = False
        try:
            if self.store.stat(name) is None:
                try:
                    self.store.write(name, _dump(st.last_event["doc"]), if_generation_match=0)
                    wrote = True
                except PreconditionFailed:
                    pass
        except StoreError as e:
            if strict:
                raise
            print(f"runner: {self.run_id}: could not journal {st.state.value} yet ({e})", file=sys.stderr)
            return False
        _remember_journaled(name)
        return wrote

    def event(
        self,
        actor: str,
        old: State | None,
        new: State | None,
        reason: str | None,
        attempt: int | None = None,
        **extra: Any,
    ) -> None:
        """A journal entry that is not a state change (a note such as "create failed")."""
        ts = utcnow()
        name = self.name(self.EVENTS + _event_file(ts, actor))
        doc = self._event_doc(ts, actor, old, new, reason, attempt, **extra)
        try:
            self.store.write(name, _dump(doc), if_generation_match=0)
        except PreconditionFailed:
            pass  # the name is unique to this call: what is there is this very event

    def events(self, after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events in time order (the names sort by timestamp). ``after``: a name already seen.

        The current state's own event is included even if its writer died before storing it
        (read-only: it is taken from state.json, under the name it will be stored as). The
        state is read before the listing, so an event stored in between is listed, not lost.
        """
        cur = self.read_state()
        listed = set(self.store.list(self.name(self.EVENTS)))
        pending: dict[str, dict[str, Any]] = {}
        if cur is not None and cur[0].last_event:
            name = self.name(self.EVENTS + cur[0].last_event["name"])
            if name not in listed:
                pending[name] = cur[0].last_event["doc"]
        for name in sorted(listed | set(pending)):
            if after is not None and name <= after:
                continue
            if name in pending:
                yield name, pending[name]
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


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two specs describe the same run (when they were written does not matter)."""
    skip = {"created_at"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def list_run_ids(store: Store) -> list[str]:
    """All run ids in the store, from one delimiter listing (one API call on GCS)."""
    return sorted(p.rstrip("/").split("/")[-1] for p in store.list_prefixes("runs/"))
