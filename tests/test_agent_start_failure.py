"""The agent records a job that cannot start as FAILED, with the reason, at once (issue 10 §4).

Before, it exited after writing RUNNING, so the supervisor took the run for lost and restarted
it max_restarts times, and `ops logs` had nothing to show. The real agent runs here as a
process on a real local store, as the bench does; no Docker needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from tests.conftest import ROOT


def agent_env(tmp_path: Path, *command: str, retries: int = 3) -> dict[str, str]:
    """A run ``r`` in a new local store under ``tmp_path``, at attempt 1, and the environment
    its agent gets (the real agent then runs as a process, as the bench does)."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    rec = RunRecord(LocalStore(str(store_dir)), "r")
    rec.write_spec(RunSpec(run_id="r", image="-", command=list(command), backend="local",
                           retry_on_failure=retries))
    rec.create_state("test")
    rec.transition(State.PROVISIONING, "test", attempt=1)
    return {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_RUN_ID": "r", "RUNNER_STORE": f"file://{store_dir}",
            "RUNNER_ATTEMPT": "1", "RUNNER_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
            "RUNNER_RESULTS_DIR": str(tmp_path / "results"), "RUNNER_HEARTBEAT_INTERVAL": "0.2",
            "RUNNER_SYNC_INTERVAL": "0.2"}


def _agent(tmp_path: Path, *command: str, retries: int = 3) -> tuple[subprocess.CompletedProcess[str], Path]:
    env = agent_env(tmp_path, *command, retries=retries)
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", *command], env=env, capture_output=True,
                       text=True, timeout=60)
    return p, tmp_path / "store" / "runs" / "r"


@pytest.mark.parametrize(("command", "code", "why"), [
    ("no-such-program-h7", 127, "No such file or directory"),
    ("{tmp}/not-executable", 126, "Permission denied"),
])
def test_a_job_that_cannot_start_is_failed_with_its_reason_and_not_retried(tmp_path, command, code, why):
    command = command.format(tmp=tmp_path)
    (tmp_path / "not-executable").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "not-executable").chmod(0o644)
    p, run = _agent(tmp_path, command, "--arg")
    assert p.returncode == code, p.stderr
    state = json.loads((run / "state.json").read_text())
    assert (state["state"], state["exit_code"], state["failures"]) == ("FAILED", code, 0), state
    assert command in state["reason"] and why in state["reason"]
    assert f"cannot start '{command}'" in (run / "logs/1.log").read_text()
    assert json.loads((run / "attempts/1/manifest.json").read_text())["exit_code"] == code
