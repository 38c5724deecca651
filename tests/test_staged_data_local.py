"""``runner submit --data`` whole, as a user runs it: the real CLI, real containers, the local backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import IMAGE

pytestmark = pytest.mark.docker

# Reads the data, proves it cannot write there, and (attempt 1) waits to be preempted.
JOB = ('cat /data/x; echo; if touch /data/y 2>/dev/null; then echo WROTE-INTO-DATA; exit 3; fi; '
       'echo read-only-ok; [ "$RUNNER_ATTEMPT" = 2 ] || sleep 300')


def test_staged_data_is_read_only_for_the_job_and_a_restart_copies_nothing_new(
        runner, run_id, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "dataset"
    (ds / "sub").mkdir(parents=True)
    payload = os.urandom(16).hex()
    (ds / "x").write_text(payload)
    (ds / "sub" / "y.bin").write_bytes(os.urandom(300_000))
    staged = tmp_path / "staged"
    env = {"RUNNER_STAGING_DIR": str(staged)}
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--data", f"file://{ds}:/data", "--detach",
                 "--", "sh", "-c", JOB, **env)
    assert out.returncode == 0, out.stderr
    spec = runner.read_json(run_id, "spec.json")
    assert spec["data"] == [{"source": f"file://{ds}", "mount": "/data"}]
    sup = runner.popen("supervise", "--run-id", run_id, **env)

    def log(attempt: int) -> str:
        path = runner.run_dir(run_id) / "logs" / f"{attempt}.log"
        return path.read_text() if path.exists() else ""

    runner.wait_for(lambda: "read-only-ok" in log(1) or "WROTE-INTO-DATA" in log(1), timeout=90,
                    desc="attempt 1 to read its data")
    assert payload in log(1) and "WROTE-INTO-DATA" not in log(1)
    manifest = staged / run_id / "0.manifest.json"
    first = json.loads(manifest.read_text())
    assert first["last"]["copied_files"] == 2 and sorted(first["files"]) == ["sub/y.bin", "x"]
    status = runner("ops", "status", "--run-id", run_id, **env)
    assert "data       done: 2/2 files" in status.stdout, status.stdout

    assert runner("ops", "preempt", "--run-id", run_id, **env).returncode == 0
    sup.wait(timeout=120)
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2), st
    assert payload in log(2) and "read-only-ok" in log(2)
    again = json.loads(manifest.read_text())
    assert (again["last"]["copied_files"], again["last"]["kept_files"]) == (0, 2)  # the kept disk: nothing copied
    mark = runner.read_json(run_id, "attempts/2/phases/data_staged.json")
    assert mark is not None and (mark["detail"]["copied_files"], mark["detail"]["kept_files"]) == (0, 2), mark
    hb = runner.read_json(run_id, "heartbeat.json")
    assert hb["data"]["copied_files"] == 0 and hb["data"]["files_done"] == 2

    # Purging the run removes its staged copy too: nothing else would, and no run can use it now.
    purged = runner("ops", "delete", "--run-id", run_id, "--purge", "--yes", **env)
    assert purged.returncode == 0, purged.stderr
    assert "removed its staged data" in purged.stdout and not (staged / run_id).exists()
    assert (ds / "x").read_text() == payload  # the source is the user's: untouched


def test_an_empty_data_directory_fails_the_run_at_once_with_the_reason(runner, run_id, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "empty"
    ds.mkdir()
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--data", f"file://{ds}:/data", "--quiet",
                 "--", "sh", "-c", "echo the job must not start", RUNNER_STAGING_DIR=str(tmp_path / "staged"))
    assert out.returncode != 0
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("FAILED", 1), st
    assert "holds no files" in st["reason"]


def test_gs_data_on_the_local_backend_is_refused_at_submit_with_what_to_do(runner, run_id) -> None:  # type: ignore[no-untyped-def]
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--data", "gs://some-bucket/sets:/data",
                 "--", "true")
    assert out.returncode != 0
    assert "gcloud storage cp -r gs://some-bucket/sets DIR" in out.stderr
    assert not runner.run_dir(run_id).exists()  # nothing written


def test_a_hostile_mount_is_refused_before_anything_is_written(runner, run_id, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--data", f"file://{tmp_path}:/proc/x", "--", "true")
    assert out.returncode == 2, out.stderr
    assert "/proc" in out.stderr
    assert not runner.run_dir(run_id).exists()
