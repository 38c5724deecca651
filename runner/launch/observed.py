"""What a supervisor has itself seen of a run, and when by its own clock
(``runs/ID/supervisor/observed.json``): the stall watchdog's memory, never across two clocks.

Why: the agent stamps its heartbeat and the RUNNING state with the VM's clock; the supervisor
used to subtract those from its own. A supervisor 5 minutes ahead then judged a healthy run
stalled after a second; 5 minutes behind, it never saw a hung one. A difference of two clocks
is not a duration. Two durations are honest, each taken on one clock:

- what the agent says itself: ``hb.time - hb.progress_changed_at``, both on the VM's clock
  ("no progress for D seconds when I wrote this"), a lower bound of the run's idle time;
- what this supervisor saw: the moment its own clock first saw the current progress (the
  *sighting*), kept here, so that ``now - since`` is a difference on one clock.

The watchdog's idle time is the larger of the two (both are lower bounds, so neither can call a
healthy run stalled, whatever the skew), and a run is stalled when that exceeds its window.

Why a record in the store, not the store's server-side object times (the other design weighed):
it costs one small read per live run and pass, and a write only when the progress moved (at
most one per quarter window) or an attempt began, with no change to the ``Store`` interface; it
needs no server clock (a local store has none but the reader's own); and it is honest with
one-shot passes (the hosted supervisor keeps no memory between passes: the sighting is here),
and with test clocks (a supervisor's injected ``now`` is the only clock it judges by).

Several supervisors, several clocks: the record keeps one sighting per *clock* (``clock_id``),
and each supervisor judges only by its own. A clock is a machine, not a process: successive
``supervise --once`` passes on one host (cron, the hosted job's executions) share one sighting.
Each writer drops the sightings of other clocks whose progress is no longer the current one
(they are stale; their clock records afresh when it next looks), so the record stays small.
Writes are compare-and-swap; one that loses is simply not made this pass (the next pass looks
again), so two supervisors never undo each other's sightings.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from entrypoint.record import Heartbeat, RunPaths, RunState, State, run_prefix
from entrypoint.store import PreconditionFailed, Store

CLOCK_ENV = "RUNNER_CLOCK_ID"
# A clock that reads more than this before a sighting it recorded itself has been set back (or
# another clock shares its id): its sighting is recorded again rather than trusted.
BACKWARDS_TOLERANCE = 1.0
BOOTING = "booting"


def clock_id(env: dict[str, str] | None = None) -> str:
    """Which clock this process reads: ``RUNNER_CLOCK_ID`` if set (two processes on one host with
    different clocks, as under ``faketime``), else the Cloud Run job (its executions run on
    Google's NTP-synced machines: one clock for the purpose), else this host."""
    env = dict(os.environ) if env is None else env
    if env.get(CLOCK_ENV):
        return env[CLOCK_ENV]
    if env.get("CLOUD_RUN_JOB"):
        return f"cloud-run:{env['CLOUD_RUN_JOB']}"
    return f"host:{socket.gethostname()}"


def _name(run_id: str) -> str:
    return run_prefix(run_id) + RunPaths.SUPERVISOR_OBSERVED


@dataclass(frozen=True)
class Looked:
    """What the watchdog sees of a run now: ``seen`` (what must change for the run to count as
    alive) and ``already`` (seconds the agent itself says it has been so, on the VM's clock)."""

    seen: str
    already: float = 0.0
    booting: bool = False  # no sign of the job yet: the boot window applies, not the stall window


def look(st: RunState, hb: Heartbeat | None) -> Looked:
    """What counts as "the same" for the stall watchdog, for a run in PROVISIONING or RUNNING.

    - Until the attempt's own first heartbeat: the attempt itself (booting; a heartbeat of an
      older attempt, still syncing somewhere, says nothing about this one).
    - Syncing (``restoring``, ``finishing``), or a job that reports no progress: liveness, i.e.
      the heartbeat's own time (it changes with every heartbeat).
    - Otherwise: the job's reported progress; ``already`` is how long the agent says it has not
      changed (``time - progress_changed_at``, one clock).
    """
    if hb is not None and hb.attempt == st.attempt and hb.phase == "staging" and isinstance(hb.data, dict):
        # Staging --data (before the job, so still PROVISIONING): booting, but each file copied
        # is something new, so only a copy that stops moving for the boot window is a stall.
        done = (hb.data.get("files_done"), hb.data.get("bytes_done"), hb.data.get("phase"))
        return Looked(f"attempt {st.attempt}: {BOOTING}, data staged {done}", booting=True)
    if st.state == State.PROVISIONING or hb is None or hb.attempt != st.attempt:
        return Looked(f"attempt {st.attempt}: {BOOTING}", booting=True)
    if hb.phase in ("restoring", "finishing") or not hb.progress or not hb.progress_changed_at:
        return Looked(f"attempt {st.attempt}: heartbeat {hb.time!r}")
    progress = json.dumps(hb.progress, sort_keys=True, default=str)
    return Looked(f"attempt {st.attempt}: progress {progress}",
                  already=max(0.0, float(hb.time) - float(hb.progress_changed_at)))


@dataclass
class Observations:
    """The record of one run: ``sightings[clock] = {"seen", "since", "actor"}``."""

    store: Store
    run_id: str
    sightings: dict[str, dict[str, Any]]
    generation: int = 0  # 0: no record yet (a create-only write)

    @classmethod
    def read(cls, store: Store, run_id: str) -> "Observations":
        blob = store.read(_name(run_id))
        if blob is None:
            return cls(store, run_id, {})
        try:
            raw = json.loads(blob.data)["sightings"]
            sightings = {str(k): v for k, v in raw.items()
                         if isinstance(v, dict) and isinstance(v.get("seen"), str)
                         and isinstance(v.get("since"), (int, float)) and not isinstance(v.get("since"), bool)}
        except (ValueError, KeyError, TypeError, AttributeError):
            sightings = {}  # damaged: every clock records afresh (a later stall, never a false one)
        return cls(store, run_id, sightings, blob.generation)

    def idle(self, clock: str, actor: str, looked: Looked, now: float, rewrite_after: float) -> float:
        """Seconds the run has shown nothing new, as far as ``clock`` (read as ``now``) can tell.

        Records a first sighting when what is seen changed. For a job that keeps moving (within
        one attempt, past its boot), the sighting is rewritten only once it is ``rewrite_after``
        old (the supervisor passes a quarter of the window): a hang that begins meanwhile is seen
        that much later, and a healthy run costs a write per quarter window, not one per pass.
        """
        mine = self.sightings.get(clock)
        set_back = mine is not None and mine["since"] > now + BACKWARDS_TOLERANCE
        if mine is not None and mine["seen"] == looked.seen and not set_back:
            return max(now - mine["since"], looked.already)
        moving = (mine is not None and not looked.booting and not mine["seen"].endswith(BOOTING)
                  and mine["seen"].split(":")[0] == looked.seen.split(":")[0])  # same attempt
        if not moving or set_back or now - mine["since"] >= rewrite_after:  # type: ignore[index]
            self.record(clock, actor, looked, now - looked.already)
        return looked.already

    def record(self, clock: str, actor: str, looked: Looked, since: float) -> None:
        """Write ``clock``'s sighting of ``looked`` at ``since`` (its time); drop other clocks'
        sightings of anything else (stale). A write that loses a race is not made: next pass."""
        keep = {c: s for c, s in self.sightings.items() if c != clock and s["seen"] == looked.seen}
        keep[clock] = {"seen": looked.seen, "since": since, "actor": actor}
        data = json.dumps({"sightings": keep}, sort_keys=True).encode()
        try:
            self.generation = self.store.write(_name(self.run_id), data, if_generation_match=self.generation)
        except PreconditionFailed:
            return  # another supervisor wrote first: this pass judges by what it read
        self.sightings = keep
