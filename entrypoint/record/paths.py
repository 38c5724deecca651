"""Every object name of the run record. Nothing else builds a path under ``runs/`` or parses a
journal file name: the layout is part of the contract, and one module keeps it in one piece."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

RUNS = "runs/"
# Store-wide: who last supervised the whole store (a one-run pass writes the run's own, below).
STORE_SUPERVISOR_HEARTBEAT = "supervisor/heartbeat.json"


def run_prefix(run_id: str) -> str:
    return f"{RUNS}{run_id}/"


def run_id_of_prefix(prefix: str) -> str:
    """The run id of a ``runs/<ID>/`` prefix as a delimiter listing returns it."""
    return prefix.rstrip("/").split("/")[-1]


HEARTBEAT_OF_RANK0 = "heartbeat.json"


class RunPaths:
    """Names relative to ``runs/<ID>/``, with who writes each."""

    SPEC = "spec.json"  # submit, create-only
    STATE = "state.json"  # every actor, compare-and-swap
    HEARTBEAT = HEARTBEAT_OF_RANK0  # agent (a gang's rank 0), last writer wins
    NODES = "nodes/"  # a gang's other nodes: nodes/<rank>/heartbeat.json, each its own agent
    STOP = ".stop"  # ops delete / submit --restart removes it
    EVENTS = "events/"  # every actor, create-only
    CHECKPOINTS = "checkpoints/"  # agent
    RESULTS = "results/"  # agent
    SUPERVISOR_BACKOFF = "supervisor/backoff.json"  # supervisor, last writer wins (advice)
    SUPERVISOR_HEARTBEAT = "supervisor/heartbeat.json"  # a supervisor that steps only this run
    SUPERVISOR_OBSERVED = "supervisor/observed.json"  # supervisors, compare-and-swap: each clock's sighting
    NOTIFIED = "notified/"  # supervisor's notifier, one create-only claim per announced event
    DAMAGED = "damaged.json"  # supervisor, last writer wins: the record cannot be read (advice, for ops)

    @staticmethod
    def manifest_name(attempt: int) -> str:
        return f"attempts/{attempt}/manifest.json"

    @staticmethod
    def log_name(attempt: int, rank: int = 0) -> str:
        """The job's output of one attempt; a gang's nodes other than rank 0 each have their own."""
        return f"logs/{attempt}.log" if rank == 0 else f"logs/{attempt}.node{rank}.log"

    @staticmethod
    def node_heartbeat_name(rank: int) -> str:
        """A gang node's heartbeat (agent of that node, last writer wins). Rank 0's is ``HEARTBEAT``:
        it is the run's, judged by the stall watchdog; the others say each node is there and, when
        it ended on its own, how (``phase`` "exited", with its exit code)."""
        return HEARTBEAT_OF_RANK0 if rank == 0 else f"nodes/{rank}/heartbeat.json"

    @staticmethod
    def startup_name(attempt: int, rank: int = 0) -> str:
        """Written by the VM's startup script (plain JSON, no CAS): how far boot got, or why it failed.
        A gang's other nodes write their own (gcp/startup.sh ``record_name``); rank 0's is judged."""
        return f"attempts/{attempt}/startup.json" if rank == 0 else f"attempts/{attempt}/nodes/{rank}/startup.json"

    @staticmethod
    def claim_name(attempt: int) -> str:
        """The supervisor's create-only claim on creating this attempt's instance."""
        return f"attempts/{attempt}/create.json"

    @staticmethod
    def attempt_dir(attempt: int) -> str:
        """Everything of one attempt but its log: manifest, startup.json, claim, phase marks."""
        return f"attempts/{attempt}/"

    @staticmethod
    def phases_dir(attempt: int) -> str:
        return f"attempts/{attempt}/phases/"

    @staticmethod
    def phase_name(attempt: int, phase: str) -> str:
        """One mark of the attempt's recovery timeline, create-only (see ``entrypoint.record.phases``)."""
        return f"attempts/{attempt}/phases/{phase}.json"

    @staticmethod
    def notified_name(event_id: str) -> str:
        return f"{RunPaths.NOTIFIED}{event_id}"


@dataclass(frozen=True)
class EventName:
    """What a journal file name says: ``<ts>-<actor>-<random>.json``."""

    time: float
    actor: str


def event_file(ts: float, actor: str) -> str:
    """``<ts>-<actor>-<random>.json``: sorts by time, and unique, so a create-only write of it
    that meets an existing object met itself (or the same event written by a repair)."""
    return f"{ts:017.6f}-{actor}-{uuid.uuid4().hex[:12]}.json"


def event_id(name: str) -> str:
    """The file name of an event (what ``notified/`` claims are named by) from its full object name."""
    return name.rsplit("/", 1)[-1]


def parse_event_name(name: str) -> EventName:
    """The time and actor an event's name carries (full object name or bare file name).

    The actor may contain dashes; the random suffix never does.
    """
    base = event_id(name)
    ts, rest = base.split("-", 1)
    actor = rest.rsplit("-", 1)[0] if "-" in rest else rest
    return EventName(float(ts), actor)
