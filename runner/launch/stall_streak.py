"""Repeated stalls: a job that stalls at the same progress on consecutive attempts ends FAILED.

The rule: when ``SAME_PROGRESS_STALLS`` (3) attempts in a row each stall while the job reports
the same progress (the heartbeat's ``progress``, e.g. step 40), no restart will do better: it
resumes from a checkpoint at or before that step and hangs there again. Without the rule such a
run is restarted ``max_restarts`` times, each after a full stall window (10 x 600 s of billed GPU
on GCE). Three, not two: a hang once can be the machine (a bad GPU, a stuck NFS read); twice in
a row at the same step on different VMs is likely, three times is the job.

Only stalls of a job that reported progress count: a still-booting attempt (driver install,
image pull) says nothing about the job, and ends the streak because the next counted stall is
then not on the directly following attempt. The streak lives in the run's ``state.json`` (as
``stall_streak``, a field older agents keep untouched), written by the same compare-and-swap as
the STALLED transition, so two supervisors cannot count one stall twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from entrypoint.record import Heartbeat, RunState

SAME_PROGRESS_STALLS = 3
STATE_FIELD = "stall_streak"


@dataclass(frozen=True)
class StallStreak:
    """``count`` consecutive attempts, the last being ``attempt`` (with ``restarts`` spent before
    it), stalled with the job reporting ``progress``."""

    progress: str
    attempt: int
    restarts: int
    count: int

    @property
    def gives_up(self) -> bool:
        return self.count >= SAME_PROGRESS_STALLS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self, run_id: str) -> str:
        return (f"stalled {self.count} attempts in a row at the same progress {self.progress} (the rule: "
                f"{SAME_PROGRESS_STALLS} consecutive stalls at the same progress end the run, since a restart "
                f"resumes before that point and hangs there again); see `runner ops logs {run_id}`, fix the "
                f"job, then `runner submit --restart --run-id {run_id}`")


def progress_key(hb: Heartbeat | None, st: RunState) -> str | None:
    """The job's reported progress for this attempt, canonical; None when there is none to compare
    (no heartbeat of this attempt, or a job that reports no progress)."""
    if hb is None or hb.attempt != st.attempt or not hb.progress:
        return None
    return json.dumps(hb.progress, sort_keys=True, default=str)


def next_streak(st: RunState, hb: Heartbeat | None) -> StallStreak | None:
    """The streak once the running attempt in ``st`` is declared stalled, or None if this stall
    does not count (nothing reported to compare)."""
    progress = progress_key(hb, st)
    if progress is None:
        return None
    before = _read(st.extra.get(STATE_FIELD))
    # Consecutive: the stall before was on the attempt directly before this one, and the restart
    # between was the one that stall spent (a user's --restart resets the restarts, and the streak).
    follows = (before is not None and before.progress == progress and before.attempt == st.attempt - 1
               and before.restarts == st.restarts - 1)
    return StallStreak(progress, st.attempt, st.restarts, before.count + 1 if follows and before else 1)


def _read(doc: Any) -> StallStreak | None:
    """A recorded streak, or None for none or a malformed one (a damaged count only restarts the
    streak: it can delay the rule, never end a run early)."""
    if not isinstance(doc, dict):
        return None
    try:
        streak = StallStreak(str(doc["progress"]), int(doc["attempt"]), int(doc["restarts"]), int(doc["count"]))
    except (KeyError, TypeError, ValueError):
        return None
    return streak if streak.count >= 1 else None
