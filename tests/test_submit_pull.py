"""`runner submit … --pull DIR`: run remotely, get the outputs back, in one command."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import trainer


@pytest.mark.docker
def test_submit_with_pull_brings_the_results_home_when_the_run_succeeds(runner, run_id, tmp_path):
    image = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    dest = tmp_path / "out"
    p = runner("submit", "--run-id", run_id, "--image", image, "--pull", str(dest), "--", *trainer(6, 3, 0.01))
    assert p.returncode == 0, p.stderr
    summary = json.loads((dest / run_id / "results" / "summary.json").read_text())
    assert summary["steps"] == 6, summary
    assert "pulled" in p.stderr


def test_submit_with_pull_refuses_detach(runner, tmp_path):
    p = runner("submit", "--run-id", "r", "--detach", "--pull", str(tmp_path / "out"), "--", "true")
    assert p.returncode == 2 and "--pull needs the run followed" in p.stderr
    assert not (runner.store_dir / "runs" / "r").exists()
