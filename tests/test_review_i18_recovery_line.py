"""Review of issue 18 (the recovery line): a job that reports no progress.

Progress reporting is optional (README, "jobs that report no progress are judged by the heartbeat
alone"), so such a job never gets a ``first_step`` mark. ``ops status`` then shows its current
attempt as "recovery (in progress, 3h00m so far)" for as long as the job trains: the line's
"so far" grows with the job's own run time, and the recovery that took ~45 s is never given a
total. A user reads that the run has been recovering for hours.

Uses test_ops_recovery's record helpers (the local store, a clock for the record).
"""

from __future__ import annotations

import time

from entrypoint.record.phases import CHECKPOINT_RESTORED
from runner.ops.runs import run_status
from tests.test_ops_recovery import (  # noqa: F401 - clock is a fixture
    NoInstances, clock, first_attempt, new_run, preempted_at, second_attempt,
)


def test_a_running_job_that_reports_no_steps_is_not_shown_recovering_for_hours(local_store, clock):
    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    lost = time.time() - 3 * 3600  # preempted three hours ago; back (RUNNING) 46 s later
    preempted_at(rec, clock, lost)
    second_attempt(rec, clock, lost, upto=CHECKPOINT_RESTORED)  # RUNNING; the job never reports a step
    s = run_status(local_store, "r1", NoInstances())  # type: ignore[arg-type]
    assert s["state"] == "RUNNING"
    text = s["recovery"]["text"]
    assert not text.startswith("recovery (in progress"), (
        f"a job that has been running for three hours is shown as still recovering: {text!r}")
