"""The agent's marks on the recovery timeline (issue 18): ``checkpoint_restored`` right after the
restore, with what it cost, and ``first_step`` when the job first reports progress.

The agent runs as the real process (as the container runs it) on a real local store; the run's
attempt 1 is the one a real supervisor over the in-memory backend created.
"""

from __future__ import annotations

import os
import subprocess
import shutil
import sys
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, State
from entrypoint.record.phases import CHECKPOINT_RESTORED, FIRST_STEP
from entrypoint.store_local import LocalStore
from tests.conftest import ROOT
from tests.standins.supervised_runs import SupervisedRuns

# The job reports step 41 and then waits (for at most 60 s) until the agent's first_step mark is
# in the store: so the mark is shown to come from the running agent, not from its final steps.
WAIT_FOR_MARK = """
import os, sys, time
print("RUNNER_PROGRESS step=41 total=100", flush=True)
deadline = time.time() + 60
while not os.path.exists(sys.argv[1]) and time.time() < deadline:
    time.sleep(0.05)
print("saw the mark" if os.path.exists(sys.argv[1]) else "no mark", flush=True)
"""


def run_agent(store: LocalStore, run_id: str, vm: Path, *command: str,
              **env: str) -> subprocess.CompletedProcess[str]:
    """The real agent of attempt 1, as a process, to its end."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_RUN_ID": run_id, "RUNNER_STORE": store.url,
            "RUNNER_ATTEMPT": "1", "RUNNER_CHECKPOINT_DIR": str(vm / "ckpt"),
            "RUNNER_RESULTS_DIR": str(vm / "results"), "RUNNER_INSTANCE": "vm-1",
            "RUNNER_HEARTBEAT_INTERVAL": "0.2", "RUNNER_SYNC_INTERVAL": "3600", **env}
    return subprocess.run([sys.executable, "-m", "entrypoint", "--", *command], env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def vm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm")


def attempt_one(supervised: SupervisedRuns, run_id: str) -> RunRecord:
    rec = supervised.submit(run_id)
    supervised.supervisor().reconcile(run_id)  # attempt 1: PROVISIONING
    return rec


def test_the_agent_marks_checkpoint_restored_then_first_step(supervised: SupervisedRuns, vm: Path) -> None:
    rec = attempt_one(supervised, "marks")
    ckpt = {"last.pt": os.urandom(300_000), "opt.pt": os.urandom(20_000)}
    for rel, data in ckpt.items():
        supervised.store.write(rec.name(RunRecord.CHECKPOINTS + rel), data)
    prestaged = vm / "prestaged"
    prestaged.mkdir()
    (prestaged / "last.pt").write_bytes(ckpt["last.pt"])  # what the startup script fetched
    mark_file = Path(supervised.store.root) / rec.name(rec.phase_name(1, FIRST_STEP))

    p = run_agent(supervised.store, "marks", vm, sys.executable, "-c", WAIT_FOR_MARK, str(mark_file),
                  RUNNER_PRESTAGED_DIR=str(prestaged))

    assert p.returncode == 0, p.stderr[-3000:]
    assert "saw the mark" in p.stdout
    phases = rec.phases(1)
    restored, first = phases[CHECKPOINT_RESTORED], phases[FIRST_STEP]
    assert restored["actor"] == first["actor"] == "agent:vm-1"
    detail = restored["detail"]
    assert (detail["files"], detail["bytes"], detail["prestaged"]) == (2, 300_000 + 20_000, 1)
    assert detail["seconds"] >= 0 and detail["streams"] >= 1
    assert first["detail"] == {"step": 41}
    assert restored["time"] <= first["time"]
    assert (vm / "ckpt" / "last.pt").read_bytes() == ckpt["last.pt"]
    assert supervised.state(rec).state == State.SUCCEEDED
    supervised.settle()


def test_a_first_run_marks_an_empty_restore_and_a_job_that_ends_at_once_still_gets_first_step(
    supervised: SupervisedRuns, vm: Path
) -> None:
    rec = attempt_one(supervised, "fresh")
    p = run_agent(supervised.store, "fresh", vm, sys.executable, "-c",
                  "print('RUNNER_PROGRESS step=0', flush=True)", RUNNER_HEARTBEAT_INTERVAL="3600")
    assert p.returncode == 0, p.stderr[-3000:]
    phases = rec.phases(1)
    assert phases[CHECKPOINT_RESTORED]["detail"] == {
        "files": 0, "bytes": 0, "seconds": phases[CHECKPOINT_RESTORED]["detail"]["seconds"],
        "streams": 0, "prestaged": 0}
    assert phases[FIRST_STEP]["detail"] == {"step": 0}
    supervised.settle()


def test_a_mark_the_store_refuses_is_a_warning_and_the_job_still_runs(supervised: SupervisedRuns, vm: Path) -> None:
    rec = attempt_one(supervised, "refused")
    # A file where the phases directory would go: every mark's write fails.
    blocker = Path(supervised.store.root) / rec.name(rec.phases_dir(1)).rstrip("/")
    shutil.rmtree(blocker, ignore_errors=True)  # the supervisor's replacement_requested mark
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a directory")
    p = run_agent(supervised.store, "refused", vm, sys.executable, "-c",
                  "print('RUNNER_PROGRESS step=3', flush=True)")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "could not mark phase checkpoint_restored of attempt 1" in p.stderr
    assert "could not mark phase first_step of attempt 1" in p.stderr
    assert "Traceback" not in p.stderr
    assert supervised.state(rec).state == State.SUCCEEDED
    supervised.settle()
