"""Bad input gets one clear line on stderr and the documented exit code; nothing is created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IMAGE, ROOT


def runner(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("runner: ") or lines[0].startswith("Error: "), lines[0]
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.mark.parametrize("bad", ["", "a/b", "tab\there", "x" * 129, ".."])
def test_an_invalid_run_id_is_rejected_before_anything_happens(bad, store, tmp_path):
    p = runner("submit", "--run-id", bad, "--store", str(store), "--", "true", cwd=tmp_path)
    assert p.returncode == 2
    assert "run id" in one_line_error(p).lower()
    assert not (store / "runs").exists()


def test_an_unknown_config_key_names_the_key_and_a_suggestion(store, tmp_path):
    (tmp_path / "runner.toml").write_text('pol_interval = 2\n')
    p = runner("ops", "list", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 2
    line = one_line_error(p)
    assert "pol_interval" in line and "poll_interval" in line


def test_a_misaligned_stall_window_is_rejected_with_the_fix(store, tmp_path):
    p = runner("ops", "list", "--store", str(store), cwd=tmp_path,
               RUNNER_POLL_INTERVAL="1", RUNNER_STALL_POLLS="10", RUNNER_GPU_TIMEOUT="60",
               RUNNER_BACKEND="gce", RUNNER_GPU="nvidia-tesla-t4")
    assert p.returncode == 2
    line = one_line_error(p)
    assert "stall_polls" in line and "at least 60" in line


def test_a_short_stall_window_is_fine_where_no_gpu_wait_exists(store, tmp_path):
    p = runner("ops", "list", "--store", str(store), cwd=tmp_path, RUNNER_POLL_INTERVAL="1")
    assert p.returncode == 0, p.stderr


def test_a_missing_store_directory_says_how_to_create_it(tmp_path):
    missing = tmp_path / "nope"
    p = runner("ops", "list", "--store", f"file://{missing}", cwd=tmp_path)
    assert p.returncode == 2
    assert f"mkdir -p {missing}" in one_line_error(p)


def test_status_of_an_unknown_run_exits_3(store, tmp_path):
    p = runner("ops", "status", "--run-id", "ghost", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 3
    assert "no run 'ghost'" in one_line_error(p)


def test_unreachable_docker_is_reported_with_how_to_start_it(store, tmp_path):
    p = runner("submit", "--run-id", "r", "--store", str(store), "--image", IMAGE, "--", "true",
               cwd=tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert p.returncode == 1
    assert "Docker is not reachable" in one_line_error(p)
    assert not (store / "runs" / "r").exists()


@pytest.mark.docker
def test_a_missing_image_is_reported_with_how_to_build_it(store, tmp_path, docker_client):
    p = runner("submit", "--run-id", "r", "--store", str(store), "--image", "no/such:image", "--", "true",
               cwd=tmp_path)
    assert p.returncode == 1
    assert "make image" in one_line_error(p)
    assert not (store / "runs" / "r").exists()


def test_dry_run_prints_the_exact_container_and_creates_nothing(store, tmp_path):
    p = runner("submit", "--run-id", "Exp 1", "--store", str(store), "--image", "img:1", "--dry-run",
               "--", "python3", "-c", "print('a b')", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("docker run -d --name runner-exp-1-")
    assert "-e RUNNER_RUN_ID=Exp 1" in p.stdout and "img:1 python3 -c print('a b')" in p.stdout
    assert not (store / "runs").exists()


def test_help_teaches_the_command_form(tmp_path):
    p = runner("submit", "--help", cwd=tmp_path)
    assert p.returncode == 0
    assert "runner submit --run-id" in p.stdout and "--" in p.stdout


# --- hostile input (issue 10 §5): one line, the documented exit code, nothing written ----------


def _nothing_written(store: Path) -> None:
    assert not (store / "runs").exists() or not any((store / "runs").iterdir())


def test_a_binary_config_file_is_a_config_error_not_a_traceback(store, tmp_path):
    (tmp_path / "runner.toml").write_bytes(b"\x00\x01\xff\xfe binary \x80")
    p = runner("ops", "list", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 2
    line = one_line_error(p)
    assert "runner.toml" in line and "UTF-8" in line


@pytest.mark.parametrize("run_id", [
    "😀" * 100,  # 100 characters but 400 bytes: a directory name the filesystem refuses
    "é" * 128,  # 128 characters, 256 bytes
])
def test_a_run_id_too_long_in_bytes_is_refused_before_anything_is_written(run_id, store, tmp_path):
    p = runner("submit", "--run-id", run_id, "--store", str(store), "--image", "img:1", "--detach",
               "--", "true", cwd=tmp_path)
    assert p.returncode == 2
    assert "bytes" in one_line_error(p)
    _nothing_written(store)


@pytest.mark.parametrize("run_id", ["a\u202eb", "zero\u200bwidth", " padded", "padded ", "\ufeffbom"])
def test_run_ids_with_invisible_characters_or_edge_spaces_are_refused(run_id, store, tmp_path):
    p = runner("submit", "--run-id", run_id, "--store", str(store), "--image", "img:1", "--detach",
               "--", "true", cwd=tmp_path)
    assert p.returncode == 2
    assert "run id" in one_line_error(p)
    _nothing_written(store)


def test_supervising_an_unknown_run_exits_3(store, tmp_path):
    p = runner("supervise", "--run-id", "ghost", "--once", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 3
    assert "no run 'ghost'" in one_line_error(p)


@pytest.mark.parametrize(("flag", "value", "key"), [
    ("--max-restarts", "-1", "max_restarts"),
    ("--retry-on-failure", "-5", "retry_on_failure"),
])
def test_negative_counts_on_the_command_line_are_refused_like_in_the_config(flag, value, key, store, tmp_path):
    for extra in ((), ("--dry-run",)):
        p = runner("submit", "--run-id", "neg", "--store", str(store), "--image", "img:1", "--detach",
                   flag, value, *extra, "--", "true", cwd=tmp_path)
        assert p.returncode == 2, (extra, p.stdout, p.stderr)
        line = one_line_error(p)
        assert key in line and flag in line and "negative" in line
    _nothing_written(store)


def test_a_store_path_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a store")
    p = runner("ops", "list", "--store", str(f), cwd=tmp_path)
    assert p.returncode == 2
    line = one_line_error(p)
    assert "not a directory" in line and "does not exist" not in line


def test_a_store_path_with_a_colon_is_refused_at_submit(tmp_path):
    d = tmp_path / "a:b"
    d.mkdir()
    for extra in (("--detach",), ("--dry-run",)):
        p = runner("submit", "--run-id", "colon", "--store", str(d), "--image", "img:1", *extra,
                   "--", "true", cwd=tmp_path)
        assert p.returncode == 2, (extra, p.stdout, p.stderr)
        assert "':'" in one_line_error(p)
    _nothing_written(d)


def _read_only(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` with ``path`` mounted read-only (a private mount namespace: needs root)."""
    cmd = " ".join(["exec", sys.executable, "-m", "runner.cli", *(f"'{a}'" for a in args)])
    script = f"mount --bind '{path}' '{path}' && mount -o remount,ro,bind '{path}' '{path}' && {cmd}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=path.parent,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)


def _can_mount_read_only(tmp_path: Path) -> bool:
    d = tmp_path / "probe"
    d.mkdir()
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {d} {d} && mount -o remount,ro,bind {d} {d}"],
                          capture_output=True).returncode == 0


def test_read_only_commands_work_on_a_read_only_store(store, tmp_path):
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs a private mount namespace (root) to mount the store read-only")
    # A store that was never written: not even .tmp/.locks exist yet.
    p = _read_only(store, "ops", "list", "--store", str(store))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    p = _read_only(store, "ops", "status", "--run-id", "ghost", "--store", str(store))
    assert p.returncode == 3
    assert "no run 'ghost'" in one_line_error(p)


def _failed_run(store: Path, run_id: str, command: list[str]) -> None:
    """A run that already ended FAILED, written through the run record as submit would."""
    from entrypoint.record import RunRecord, RunSpec, State
    from entrypoint.store_local import LocalStore

    rec = RunRecord(LocalStore(str(store)), run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:" + "0" * 64, command=command, backend="local"))
    rec.create_state("test")
    rec.transition(State.FAILED, "test", reason="job exited with code 1", exit_code=1)


def test_a_write_to_a_read_only_store_is_one_line_not_a_traceback(store, tmp_path):
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs a private mount namespace (root) to mount the store read-only")
    _failed_run(store, "ro", ["true"])
    p = _read_only(store, "submit", "--run-id", "ro", "--store", str(store), "--restart", "--detach")
    assert p.returncode == 1
    assert "read-only" in one_line_error(p).lower()


def test_restart_with_a_different_command_is_refused_and_the_run_is_untouched(store, tmp_path):
    _failed_run(store, "old", ["python3", "-c", "raise SystemExit(1)"])
    before = (store / "runs" / "old" / "state.json").read_bytes()
    p = runner("submit", "--run-id", "old", "--store", str(store), "--restart", "--detach",
               "--", "python3", "-c", "print('new')", cwd=tmp_path)
    assert p.returncode == 2
    line = one_line_error(p)
    assert "command" in line and "--run-id" in line
    assert (store / "runs" / "old" / "state.json").read_bytes() == before
