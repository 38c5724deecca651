"""Pulling results (issue 20 item 7): a pull that copies no file says why, so a user who expected
outputs learns where the job should have written them (runner/ops/runs.py ``pull_run``)."""

from __future__ import annotations

import os
import subprocess

import pytest

from entrypoint.record import RunRecord, RunSpec, State
from runner.ops.runs import pull_run

IMAGE = "sha256:" + "0" * 64


def _run(store, run_id: str, state: State) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image=IMAGE, command=["true"], backend="local",
                           results_dir="/var/lib/runner/results"))
    rec.create_state("t")
    rec.transition(state, "t", reason="test")
    return rec


def test_a_pull_of_a_run_that_wrote_no_results_says_where_results_must_be_written(local_store, tmp_path):
    _run(local_store, "quiet", State.SUCCEEDED)
    out = pull_run(local_store, "quiet", str(tmp_path / "dest"))
    assert out["copied"] == []
    assert "wrote no file to $RUNNER_RESULTS_DIR (/var/lib/runner/results)" in out["why_nothing"]


def test_a_pull_of_a_running_run_says_results_come_at_the_end(local_store, tmp_path):
    _run(local_store, "busy", State.PROVISIONING)
    out = pull_run(local_store, "busy", str(tmp_path / "dest"))
    assert "the run is PROVISIONING: its results are uploaded when the job ends" in out["why_nothing"]


def test_a_repeated_pull_says_everything_is_already_here(local_store, tmp_path):
    _run(local_store, "done", State.SUCCEEDED)
    local_store.write("runs/done/results/a.txt", b"alpha")
    first = pull_run(local_store, "done", str(tmp_path / "dest"))
    assert first["copied"] == ["results/a.txt"] and "why_nothing" not in first
    second = pull_run(local_store, "done", str(tmp_path / "dest"))
    assert second["why_nothing"] == f"all 1 file(s) of the run are already up to date in {tmp_path / 'dest' / 'done'}"


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_results_keep_their_executable_bit_through_upload_and_pull(kind, request, tmp_path):
    """The agent's results sync (DirectorySync) records each file's mode with the object; a pull
    restores it (the issue: 755 became 644)."""
    from entrypoint.checkpoints import DirectorySync

    store = request.getfixturevalue(f"{kind}_store")
    _run(store, "modes", State.SUCCEEDED)
    results = tmp_path / "results"
    (results / "bin").mkdir(parents=True)
    (results / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (results / "bin" / "tool").chmod(0o755)
    (results / "data.txt").write_bytes(b"data")
    (results / "data.txt").chmod(0o640)
    assert DirectorySync(store, str(results), "runs/modes/results/").sync_once()
    out = pull_run(store, "modes", str(tmp_path / "dest"))
    pulled = tmp_path / "dest" / "modes" / "results"
    assert sorted(out["copied"]) == ["results/bin/tool", "results/data.txt"]
    assert (pulled / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (pulled / "data.txt").stat().st_mode & 0o777 == 0o640
    assert subprocess.run([str(pulled / "bin" / "tool")], capture_output=True).stdout == b"tool\n"


@pytest.mark.docker
def test_submit_pull_of_a_job_that_wrote_nothing_says_why(runner, run_id, tmp_path):
    image = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    p = runner("submit", "--run-id", run_id, "--image", image, "--pull", str(tmp_path / "out"),
               "--", "python3", "-c", "print('done, wrote nothing')")
    assert p.returncode == 0, p.stderr
    assert "pulled 0 file(s)" in p.stderr
    assert "nothing copied" in p.stderr and "$RUNNER_RESULTS_DIR" in p.stderr


@pytest.mark.docker
def test_an_executable_result_is_still_executable_after_submit_pull(runner, run_id, tmp_path):
    """Whole path: the job in its container writes a 755 script to $RUNNER_RESULTS_DIR, the agent
    uploads it, `submit --pull` brings it home runnable. Needs the agent of this tree in the image
    (RUNNER_TEST_IMAGE built from it)."""
    image = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    script = ('cd "$RUNNER_RESULTS_DIR" && printf "#!/bin/sh\\necho pulled-ok\\n" > run.sh '
              '&& chmod 755 run.sh && echo plain > notes.txt && chmod 644 notes.txt')
    p = runner("submit", "--run-id", run_id, "--image", image, "--pull", str(tmp_path / "out"),
               "--", "sh", "-c", script)
    assert p.returncode == 0, p.stderr
    pulled = tmp_path / "out" / run_id / "results"
    assert (pulled / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (pulled / "notes.txt").stat().st_mode & 0o777 == 0o644
    assert subprocess.run([str(pulled / "run.sh")], capture_output=True).stdout == b"pulled-ok\n"
