"""The whole life of a run on the local backend: real Docker, real files, the real CLI."""

from __future__ import annotations

import random
import re

import pytest

from examples.trainer import decode_checkpoint
from tests.conftest import IMAGE, trainer

pytestmark = pytest.mark.docker

STEPS, EVERY = 60, 5


def last_step_in_log(text: str) -> int:
    steps = [int(m) for m in re.findall(r"RUNNER_PROGRESS step=(\d+)", text)]
    return max(steps, default=0)


def test_run_preempted_twice_at_random_points_succeeds_with_exact_steps_and_bounded_redo(runner, run_id):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    points = sorted(rng.sample(range(8, STEPS - 8), 2))
    # Each attempt waits at its point for the notice (--hold-at): a loaded machine cannot let the
    # job run past the point, or to its end, before `ops preempt` lands.
    holds = [arg for point in points for arg in ("--hold-at", str(point))]
    sub = runner.popen("submit", "--run-id", run_id, "--image", IMAGE, "--",
                       *trainer(STEPS, EVERY, 0.1, *holds))
    for attempt, point in enumerate(points, start=1):
        runner.wait_for(lambda: runner.state(run_id).get("attempt") == attempt
                        and runner.state(run_id).get("state") == "RUNNING"
                        and runner.step(run_id) >= point,
                        desc=f"attempt {attempt} to reach step {point} (seed {seed})")
        out = runner("ops", "preempt", "--run-id", run_id)
        assert out.returncode == 0, out.stderr
    sub.wait(timeout=120)
    stderr = sub.stderr.read()
    assert sub.returncode == 0, stderr

    state = runner.state(run_id)
    assert state["state"] == "SUCCEEDED" and state["attempt"] == 3, (state, seed)
    summary = runner.read_json(run_id, "results/summary.json")
    assert summary["steps"] == STEPS
    starts = summary["starts"]
    assert len(starts) == 3 and starts[0] == 0
    for attempt in (1, 2):
        reached = last_step_in_log((runner.run_dir(run_id) / f"logs/{attempt}.log").read_text())
        redone = reached - starts[attempt]
        assert 0 <= redone <= EVERY, f"attempt {attempt + 1} redid {redone} steps (seed {seed})"
    # The transitions were shown on the terminal, and nothing is left running.
    assert "PREEMPTED" in stderr and "SUCCEEDED" in stderr
    assert runner.containers(run_id) == []
    ckpt = decode_checkpoint((runner.run_dir(run_id) / "checkpoints/last.pt").read_bytes())
    assert ckpt["step"] == STEPS - STEPS % EVERY or ckpt["step"] == STEPS
