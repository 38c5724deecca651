"""What each attempt of a run was billed for and lost, in seconds: the price-free half of a cost
estimate, from the attempt's journal marks, its manifest, its create claim and (rarely) its log.

Two readers share it so they cannot disagree: ``runner.ops.cost`` (the full read of an old run,
and the one open attempt of any run) and ``entrypoint.record.history`` (the running summary in
state.json, which folds each attempt in once, when the next one begins). Money is not here:
prices are the runner's, and the agent carries this package into images without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from entrypoint.progress import parse_progress_line
from entrypoint.record.documents import RunState
from entrypoint.record.paths import RunPaths
from entrypoint.record.states import LEGACY_STATES, State
from entrypoint.store import Store

# Transitions that open and close an attempt's time on a machine (events carry the attempt).
# (old journals may say BOOTING, never written by this version: it counts as PROVISIONING)
STARTS = {State.PROVISIONING.value} | {old for old, new in LEGACY_STATES.items() if new is State.PROVISIONING}
ENDS = {s.value for s in (State.PREEMPTED, State.STALLED, State.ERRORED,
                          State.SUCCEEDED, State.FAILED, State.STOPPED)}
LOST_TO_PREEMPTION = {State.PREEMPTED.value, State.STALLED.value}


@dataclass
class Attempt:
    n: int
    provisioned_at: float | None = None  # first PROVISIONING/BOOTING event
    running_at: float | None = None      # first RUNNING event
    ended_at: float | None = None        # first end event after the start
    end_state: str | None = None
    start: float | None = None           # billing start, once decided
    end: float | None = None             # billing end (``now`` while it runs)
    manifest: dict[str, Any] = field(default_factory=dict)

    def mark(self, to: str, t: float) -> None:
        """Take one journal entry of this attempt into account (only the first of each kind counts)."""
        if to in STARTS and self.provisioned_at is None:
            self.provisioned_at = t
        elif to == State.RUNNING.value and self.running_at is None:
            self.running_at = t
        elif to in ENDS and self.ended_at is None:
            self.ended_at, self.end_state = t, to

    @property
    def seconds(self) -> float:
        """Billed seconds, once ``bill`` decided the window."""
        if self.start is None or self.end is None:
            return 0.0
        return self.end - self.start

    def marks(self) -> dict[str, Any]:
        return {"n": self.n, "provisioned_at": self.provisioned_at, "running_at": self.running_at,
                "ended_at": self.ended_at, "end_state": self.end_state}

    @classmethod
    def from_marks(cls, d: dict[str, Any]) -> "Attempt":
        return cls(n=int(d["n"]), provisioned_at=d.get("provisioned_at"), running_at=d.get("running_at"),
                   ended_at=d.get("ended_at"), end_state=d.get("end_state"))


def event_mark(ev: dict[str, Any]) -> tuple[int, str, float] | None:
    """(attempt, to, time) of a journal entry that marks an attempt, else None."""
    n, to, t = ev.get("attempt"), ev.get("to"), ev.get("time")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or to is None \
            or isinstance(t, bool) or not isinstance(t, (int, float)):
        return None
    return n, to, t


def timeline(events: list[tuple[str, dict[str, Any]]]) -> dict[int, Attempt]:
    attempts: dict[int, Attempt] = {}
    for _, ev in events:
        m = event_mark(ev)
        if m is not None:
            attempts.setdefault(m[0], Attempt(m[0])).mark(m[1], m[2])
    return attempts


def bill(a: Attempt, *, claimed_at: float | None, current: bool, st: RunState,
         next_provisioned_at: float | None, now: float) -> None:
    """Decide the attempt's billed [start, end) (``a.manifest`` read already)."""
    # The create claim is written just before the successful create (a failed create
    # releases it), so it is when the machine began to exist; the PROVISIONING event can be
    # much earlier when every zone was out of capacity for a while.
    if claimed_at is not None:
        a.start = claimed_at
    elif current and st.state == State.PROVISIONING and a.running_at is None:
        a.start = None  # nothing created yet (waiting out a backoff): nothing billed
    else:
        a.start = a.provisioned_at or a.running_at or a.manifest.get("started_at")
    if a.ended_at is not None:
        a.end = a.ended_at
    elif current and not st.state.terminal:
        a.end = now
    elif current:
        a.end = a.manifest.get("finished_at") or st.updated_at
    else:
        a.end = a.manifest.get("finished_at") or next_provisioned_at
    if a.start is not None and a.end is not None and a.end < a.start:
        a.end = a.start


def boot_lost(a: Attempt, prev_end_state: str | None) -> float:
    """Seconds of ``a``'s boot lost to a preemption: all of it when the attempt before was lost
    (creation → RUNNING; an attempt that never ran is all boot), else none."""
    if prev_end_state not in LOST_TO_PREEMPTION or a.start is None:
        return 0.0
    boot_end = a.running_at or a.manifest.get("started_at") or a.end
    return max(0.0, min(boot_end or a.start, a.end or a.start) - a.start)


# ---------------------------------------------------------------- work redone after a preemption

# Parsed RUNNER_PROGRESS steps by (store url, log object name): (first, last, log is final).
# ``ops watch`` asks again every few seconds; an ended attempt's log and any attempt's first
# step no longer change, so they are read once.
_log_steps_cache: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {}


def log_steps(store: Store, prefix: str, n: int, final: bool) -> tuple[float | None, float | None]:
    """First and last ``step`` the job printed in attempt ``n``'s log (None: none printed).

    ``final``: the attempt has ended, so its log is complete (else only the first step is sure).
    """
    name = prefix + RunPaths.log_name(n)
    key = (store.url, name)
    hit = _log_steps_cache.get(key)
    if hit is not None and (hit[2] or (not final and hit[0] is not None)):
        return hit[0], hit[1]
    blob = store.read(name)
    first = last = None
    if blob is not None:
        for line in blob.data.decode("utf-8", "replace").splitlines():
            if "RUNNER_PROGRESS" not in line:
                continue
            step = _number((parse_progress_line(line) or {}).get("step"))
            if step is not None:
                first = step if first is None else first
                last = step
    if final or first is not None:
        _log_steps_cache[key] = (first, last, final)
    return first, last


def _number(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _step_at(doc: Any) -> tuple[float | None, float | None]:
    """(step, time) of a manifest's ``first_progress``/``last_progress`` entry."""
    if not isinstance(doc, dict):
        return None, None
    return _number(doc.get("step")), _number(doc.get("time"))


def work_redone(store: Store, prefix: str, a: Attempt, nxt: Attempt | None) -> tuple[float | None, str]:
    """Seconds of attempt ``a``'s work that have to be (or were) done again, and how we know.

    ``nxt`` is the next attempt whose job started (it restored the newest checkpoint in the
    bucket, so everything ``a`` did after that checkpoint was written is done twice).
    In order of preference:
    1. the next attempt restored nothing (``resumed_from`` empty): all of ``a``'s work is redone;
    2. ``a``'s manifest says when its newest published checkpoint was written
       (``checkpoint_at``): the work after it is redone (all of it if ``a`` published none);
    3. steps: ``a``'s last reported step minus the first step the next attempt reported, at
       ``a``'s own rate (steps per second). From the manifests' ``last_progress`` /
       ``first_progress`` when present, else from the ``RUNNER_PROGRESS`` lines in the logs.
       The first step a job reports comes a little after its resume point, so this errs low by
       up to one report interval; from logs, the rate assumes steady steps over the attempt.
    Never more than the attempt's own job time. ``None`` when the record cannot tell.
    """
    m = a.manifest
    work_start = m.get("started_at") or a.running_at
    if work_start is None:
        return 0.0, "the job never started"
    work_end = m.get("finished_at") or a.end
    if work_end is None:
        return None, "no end time recorded"
    worked = max(0.0, work_end - work_start)
    if nxt is not None and nxt.manifest and nxt.manifest.get("resumed_from") == []:
        return worked, "the next attempt restored no checkpoint"
    if "checkpoint_at" in m:
        ckpt = _number(m["checkpoint_at"])
        if ckpt is None or ckpt < work_start:
            return worked, "this attempt published no checkpoint"
        return min(worked, max(0.0, work_end - ckpt)), "time since its last checkpoint"
    if nxt is None:
        return None, "no next attempt yet, and no checkpoint time recorded"

    first_a, t_first_a = _step_at(m.get("first_progress"))
    last_a, t_last_a = _step_at(m.get("last_progress"))
    resumed, _ = _step_at(nxt.manifest.get("first_progress"))
    basis = "steps redone / step rate (manifests)"
    if None in (first_a, last_a, t_first_a, t_last_a, resumed):
        first_a, last_a = log_steps(store, prefix, a.n, final=True)
        resumed, _ = log_steps(store, prefix, nxt.n, final=False)
        t_first_a, t_last_a = work_start, work_end
        basis = "steps redone / step rate (RUNNER_PROGRESS lines in the logs)"
    if None in (first_a, last_a, resumed):
        return None, "no checkpoint time or step progress recorded for it"
    assert first_a is not None and last_a is not None and resumed is not None
    assert t_first_a is not None and t_last_a is not None
    if last_a <= first_a or t_last_a <= t_first_a:
        return None, "too little progress in the attempt to measure its step rate"
    rate = (last_a - first_a) / (t_last_a - t_first_a)
    return min(worked, max(0.0, (last_a - resumed) / rate)), basis
