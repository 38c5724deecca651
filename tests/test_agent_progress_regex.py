"""The agent applies the run's pinned --progress-regex to its job's output (entrypoint/agent.py).

The real agent runs as a process on a real local store (as in test_agent_start_failure); what is
checked is what a supervisor and `ops status` read: heartbeat.json and the attempt's manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from tests.conftest import ROOT

# nanoGPT's log line, and its eval line, which must not count as a step ("step N: train loss").
NANOGPT_LIKE = ("for i in range(1, 4):\n"
                "    print(f'iter {i}: loss {3.0 / i:.4f}, time 10.00ms, mfu -100.00%')\n"
                "print('step 500: train loss 1.0, val loss 1.1')\n")


def _run(tmp_path: Path, settings: dict) -> tuple[subprocess.CompletedProcess[str], Path]:
    command = [sys.executable, "-c", NANOGPT_LIKE]
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    rec = RunRecord(LocalStore(str(store_dir)), "r")
    rec.write_spec(RunSpec(run_id="r", image="-", command=command, backend="local", settings=settings))
    rec.create_state("test")
    rec.transition(State.PROVISIONING, "test", attempt=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_RUN_ID": "r", "RUNNER_STORE": f"file://{store_dir}",
           "RUNNER_ATTEMPT": "1", "RUNNER_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "RUNNER_RESULTS_DIR": str(tmp_path / "results"), "RUNNER_HEARTBEAT_INTERVAL": "0.2",
           "RUNNER_SYNC_INTERVAL": "0.2"}
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", *command], env=env, capture_output=True,
                       text=True, timeout=60)
    return p, tmp_path / "store" / "runs" / "r"


def test_the_agent_reports_steps_from_lines_matching_the_runs_pattern(tmp_path):
    p, run = _run(tmp_path, {"progress_regex": r"^iter (\d+):", "progress_total": 9})
    assert p.returncode == 0, p.stderr
    hb = json.loads((run / "heartbeat.json").read_text())
    assert hb["progress"] == {"step": 3, "total": 9}, hb
    manifest = json.loads((run / "attempts" / "1" / "manifest.json").read_text())
    assert manifest["first_progress"]["step"] == 1 and manifest["last_progress"]["step"] == 3, manifest


def test_a_bad_pinned_pattern_is_logged_and_the_job_still_runs(tmp_path):
    p, run = _run(tmp_path, {"progress_regex": "iter (.+)"})
    assert p.returncode == 0, p.stderr
    assert "not reading progress from the job's output" in p.stderr and "more than digits" in p.stderr
    assert json.loads((run / "state.json").read_text())["state"] == "SUCCEEDED"
    assert json.loads((run / "heartbeat.json").read_text())["progress"] == {}
