"""The agent records each outcome through its named transitions, as the agent role (issue 16 §3).

The real agent runs as a process on a real local store (as in test_agent_start_failure), so what
is checked is what a supervisor would read: the state, its counters, the attempt's instances.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_agent_start_failure import agent_env


def _run_agent(tmp_path: Path, *command: str, retries: int = 0) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {**agent_env(tmp_path, *command, retries=retries),
           "RUNNER_INSTANCE": "vm-1", "RUNNER_ZONE": "zone-a"}
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", *command], env=env, capture_output=True,
                       text=True, timeout=60)
    return p, json.loads((tmp_path / "store/runs/r/state.json").read_text())


@pytest.mark.parametrize(("code", "retries", "state", "failures"), [
    (0, 0, "SUCCEEDED", 0),
    (3, 1, "ERRORED", 1),  # the failure budget allows one more try, and is spent by it
    (3, 0, "FAILED", 0),
])
def test_the_agent_records_its_jobs_outcome_and_spends_the_failure_budget(tmp_path, code, retries, state, failures):
    p, st = _run_agent(tmp_path, sys.executable, "-c", f"raise SystemExit({code})", retries=retries)
    assert p.returncode == code, p.stderr
    assert (st["state"], st["exit_code"], st["failures"], st["updated_by"]) == (state, code, failures, "agent"), st
    events = sorted((tmp_path / "store/runs/r/events").iterdir())
    assert [json.loads(e.read_text())["to"] for e in events] == ["PENDING", "PROVISIONING", "RUNNING", state]


def test_the_agent_records_its_instance_in_the_attempts_instances(tmp_path):
    p, st = _run_agent(tmp_path, sys.executable, "-c", "pass")
    assert p.returncode == 0, p.stderr
    assert st["instances"] == [{"name": "vm-1", "zone": "zone-a", "rank": 0}]
    assert (st["instance"], st["zone"]) == ("vm-1", "zone-a")


def test_an_agent_whose_attempt_was_replaced_says_why_it_records_nothing(tmp_path):
    # The job itself plays the supervisor: it declares the attempt lost and begins the next one.
    race = ("import os; from entrypoint.record import RunRecord, Role; "
            "from entrypoint.stores import open_store; "
            "rec = RunRecord(open_store(os.environ['RUNNER_STORE']), 'r'); "
            "rec.preempted(Role.SUPERVISOR, 'sup-x', reason='lost'); "
            "rec.begin_attempt(Role.SUPERVISOR, 'sup-x', instances=['vm-2'])")
    p, st = _run_agent(tmp_path, sys.executable, "-c", race)
    assert (st["state"], st["attempt"], st["updated_by"]) == ("PROVISIONING", 2, "sup-x"), st
    # Either the agent's heartbeat sees attempt 2 first (it stops the job and records nothing) or the
    # job ends first (its SUCCEEDED is refused): which one is a race, and each says why.
    said_refused = "not recording SUCCEEDED" in p.stderr and "state written by sup-x" in p.stderr
    said_moved_on = "moved on to attempt 2" in p.stderr and "not syncing or recording anything" in p.stderr
    assert said_refused or said_moved_on, p.stderr
