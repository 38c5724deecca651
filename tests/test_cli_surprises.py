"""No silent surprises at the command line (issue 20 §1-§3), through the CLI as a user types it.

§1 a misspelled runner option became the job's command (and used up the run id), and a job's own
   ``--max-restarts 3`` was taken by the runner; §2 a build nobody named tagged the configured
   image, the base the README puts in ``FROM``; §3 a re-submit of a live run with another command
   said "its recorded command is kept" and exited 0.

Commands that must not reach Docker run with ``DOCKER_HOST`` pointing nowhere, so that even the old
behaviour under test cannot tag or start anything on this machine's daemon.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import types
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

NO_DOCKER = "unix:///nonexistent/docker.sock"


def runner(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "DOCKER_HOST": NO_DOCKER, **env}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


def _no_run(store: Path, run_id: str) -> bool:
    return not (store / "runs" / run_id).exists()


# ---- §1: runner options end at the job's first word ----------------------------------------------

@pytest.mark.parametrize("typo, meant", [("--detatch", "--detach"), ("--imgae", "--image")])
def test_a_misspelled_option_is_a_usage_error_that_says_did_you_mean_and_leaves_the_run_id_free(
        typo, meant, store, tmp_path):
    args = [typo] if typo == "--detatch" else [typo, "img:1"]
    p = runner("submit", "--run-id", "typo", "--store", str(store), *args, "python3", "-c", "pass", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert f"No such option '{typo}'" in p.stderr and meant in p.stderr.split("Did you mean", 1)[1], p.stderr
    assert "after its program (or after `--`)" in p.stderr
    assert _no_run(store, "typo")


def test_options_after_the_jobs_first_word_are_the_jobs_own(store, tmp_path):
    p = runner("submit", "--run-id", "own", "--store", str(store), "--image", "img:1", "--dry-run",
               "python3", "train.py", "--max-restarts", "3", "--detach", "--", "--x", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # The exact container the run would get: every word after `python3` reaches the job.
    assert p.stdout.rstrip("\n").endswith(" img:1 python3 train.py --max-restarts 3 --detach -- --x"), p.stdout
    assert not (store / "runs").exists()


def test_a_command_that_starts_with_a_dash_is_refused_with_the_double_dash_form(store, tmp_path):
    p = runner("submit", "--run-id", "dash", "--store", str(store), "--image", "img:1",
               "--", "--steps", "3", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert line.startswith("runner: ") and "'--steps'" in line and "-- PROGRAM ARGS" in line, line
    assert _no_run(store, "dash")


# ---- §2: a build nobody named never tags the configured or base image ------------------------------

def test_an_unnamed_build_is_named_after_its_folder():
    from runner.build.image_name import image_for_context

    assert image_for_context("/x/My_Job v2", local_only=True, configured_image="cos-spot-runner/workload:dev",
                             base_image=None) == "my-job-v2:dev"
    assert image_for_context("/x/myjob", local_only=False, configured_image="us-docker.pkg.dev/p/runs/trainer:v1",
                             base_image=None) == "us-docker.pkg.dev/p/runs/myjob"


@pytest.mark.parametrize("folder, local_only, configured, base", [
    ("workload", True, "workload:dev", None),                      # the folder is named like the configured image
    ("base", True, None, "base:dev"),                               # ... like the base image
    ("trainer", False, "us-docker.pkg.dev/p/runs/trainer@sha256:" + "0" * 64, None),
    ("myjob", False, None, None),                                   # a push with nowhere configured to go
    ("myjob", False, "cos-spot-runner/workload:dev", None),         # ... or no registry in the configured image
    ("___", True, None, None),                                      # nothing to name it after
])
def test_an_unnamed_build_that_would_land_on_a_name_it_was_not_given_is_refused(folder, local_only, configured, base):
    from runner.build.image_name import UnnamedBuild, image_for_context

    with pytest.raises(UnnamedBuild, match="--image"):
        image_for_context(f"/x/{folder}", local_only=local_only, configured_image=configured, base_image=base)


def test_submit_without_an_image_builds_under_the_folders_name_not_the_configured_image(store, tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    p = runner("submit", "--run-id", "auto", "--store", str(store), "--", "python3", "-c", "pass",
               cwd=project, RUNNER_IMAGE="cos-spot-runner/workload:dev")
    assert "building my-project:dev first" in p.stderr, p.stderr
    assert "cos-spot-runner/workload:dev" not in p.stderr.replace("--skip-build to run the configured one", ""), p.stderr
    assert p.returncode == 1 and _no_run(store, "auto")  # Docker is unreachable here: the build fails, said


def _image_id(docker_client, ref: str) -> str | None:
    import docker

    try:
        return docker_client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


@pytest.mark.docker
def test_build_local_without_an_image_leaves_the_configured_image_alone(docker_client, tmp_path):
    """The outcome in Docker: the configured tag still names the image it named, and the build is
    tagged after its folder. ``FROM scratch`` needs no registry, so this runs offline."""
    uid = uuid.uuid4().hex[:8]
    configured = f"cos-spot-runner/i20-configured-{uid}:dev"
    before_ctx, job = tmp_path / "before", tmp_path / f"i20-job-{uid}"
    for ctx, content in ((before_ctx, "configured\n"), (job, "job\n")):
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY marker /marker\n")
        (ctx / "marker").write_text(content)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_IMAGE": configured}
    derived = f"i20-job-{uid}:dev"
    try:
        subprocess.run(["docker", "build", "-q", "-t", configured, str(before_ctx)], check=True, capture_output=True)
        configured_id = _image_id(docker_client, configured)
        p = subprocess.run([sys.executable, "-m", "runner.cli", "build", "--local", "--context", str(job)],
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert _image_id(docker_client, configured) == configured_id
        assert p.stdout.strip() == _image_id(docker_client, derived) != configured_id
        assert f"tagging this build {derived}" in p.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", configured, derived], capture_output=True)


# ---- §3: a live run keeps its command, and says so by refusing another ----------------------------

def _live_run(store: Path, run_id: str, command: list[str]) -> None:
    """A run that is live (PENDING), written through the run record as submit would."""
    from entrypoint.record import RunRecord, RunSpec
    from entrypoint.store_local import LocalStore

    rec = RunRecord(LocalStore(str(store)), run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:" + "0" * 64, command=command, backend="local"))
    rec.create_state("test")


def test_resubmitting_a_live_run_with_another_command_shows_the_recorded_one_and_changes_nothing(store, tmp_path):
    old, new = ["python3", "-c", "print('old run')"], ["python3", "-c", "print('new')"]
    _live_run(store, "live", old)
    run_dir = store / "runs" / "live"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    p = runner("submit", "--run-id", "live", "--store", str(store), "--detach", "--", *new, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert f"with the command {shlex.join(old)}, not {shlex.join(new)}" in line, line
    assert f"runner submit --run-id NEW -- {shlex.join(new)}" in line, line
    assert {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert json.loads((run_dir / "spec.json").read_text())["command"] == old


@pytest.mark.parametrize("command", [[], ["python3", "-c", "print('old run')"]])
def test_resubmitting_a_live_run_without_a_command_or_with_its_own_resumes_it(command, store):
    from entrypoint.store_local import LocalStore
    from runner.launch.submit import submit

    _live_run(store, "live", ["python3", "-c", "print('old run')"])
    result = submit(types.SimpleNamespace(store=LocalStore(str(store))), "live", command,  # type: ignore[arg-type]
                    image=None, restart=False)
    assert result.resumed and "resuming it" in result.message
