"""A job that hangs at the same step every time, run whole (real CLI, real containers): the run
ends FAILED after 3 consecutive stalls at that step, not after max_restarts of them
(issue 20 item 5; the rule is in runner/launch/stall_streak.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import IMAGE

pytestmark = pytest.mark.docker


def test_a_job_hanging_at_the_same_step_every_attempt_fails_after_three_stalls(runner, run_id):
    hang = ["python3", "-c", "import time; print('RUNNER_PROGRESS step=1', flush=True); time.sleep(600)"]
    sub = runner.popen("submit", "--run-id", run_id, "--image", IMAGE, "--max-restarts", "10", "--", *hang,
                       RUNNER_STALL_POLLS="6", RUNNER_POLL_INTERVAL="0.5", RUNNER_GPU_TIMEOUT="3")
    sub.wait(timeout=120)
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("FAILED", 3), st
    assert st["reason"].startswith('stalled 3 attempts in a row at the same progress {"step": 1}'), st["reason"]
    events = [json.loads(p.read_text()) for p in sorted((runner.run_dir(run_id) / "events").iterdir())]
    assert len([ev for ev in events if ev["to"] == "STALLED"]) == 3
    assert runner.containers(run_id) == []
