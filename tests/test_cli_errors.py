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
               RUNNER_POLL_INTERVAL="1", RUNNER_STALL_POLLS="10", RUNNER_GPU_TIMEOUT="60")
    assert p.returncode == 2
    line = one_line_error(p)
    assert "stall_polls" in line and "at least 60" in line


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
