"""Issue 20 §11: ``runner submit -f task.yaml`` says what the flags say, flags override it, and
every problem in the file is refused with its line before anything is created.

Through the CLI, as a user types it; no Docker (the dry run plans without it, and every refusal
comes before the store or the engine is touched).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_cli_surprises import runner

GCE = ("--backend", "gce", "--project", "p", "--store", "gs://bucket/runs")


def readme_task_file() -> str:
    """The complete example under the README's "Task files" heading, exactly as documented."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Task files", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def docker_run_line(stdout: str) -> list[str]:
    """The local dry run's one `docker run` line, as words."""
    lines = [line for line in stdout.splitlines() if line.startswith("docker run ")]
    assert len(lines) == 1, stdout
    return lines[0].split()


def test_the_readme_task_file_dry_runs_as_written(tmp_path, store):
    write(tmp_path, readme_task_file())

    local = runner("submit", "-f", "task.yaml", "--dry-run", "--store", str(store), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    words = docker_run_line(local.stdout)
    assert "runner-exp-1-a1" in words  # run_id
    assert words[words.index("cos-spot-runner/workload:dev"):] == [
        "cos-spot-runner/workload:dev", "python3", "-m", "examples.trainer", "--steps", "100"]
    assert "LEARNING_RATE=3e-4" in words and "WANDB_MODE=offline" in words  # env, as written

    gce = runner("submit", "-f", "task.yaml", "--dry-run", *GCE, cwd=tmp_path)
    assert gce.returncode == 0, gce.stderr
    plan = json.loads(gce.stdout)
    assert [p["zone"] for p in plan] == ["us-central1-a", "us-central1-b"]
    for p in plan:
        assert p["instance"]["machine_type"].endswith("/machineTypes/g2-standard-8")
        assert p["instance"]["scheduling"]["instance_termination_action"] == "STOP"
    assert list(store.iterdir()) == []  # a dry run writes nothing


def test_the_readme_says_truly_which_line_a_refused_value_is_on(tmp_path, store):
    # The README promises `max_restarts: -1` is refused naming task.yaml line 19: hold it to that.
    example = readme_task_file()
    assert "max_restarts: 10 " in example
    write(tmp_path, example.replace("max_restarts: 10 ", "max_restarts: -1 "))
    p = runner("submit", "-f", "task.yaml", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "task.yaml line 19 (max_restarts)" in p.stderr and "must not be negative" in p.stderr
    assert list(store.iterdir()) == []  # refused before the store was touched


def test_flags_override_the_task_file_key_by_key(tmp_path, store):
    write(tmp_path, """\
        run_id: from-file
        image: cos-spot-runner/workload:dev
        command: [python3, train.py, --resume, no, "010"]
        env: {KEEP: yes, REPLACE: file}
        resources: {machine_type: g2-standard-8, zones: [us-central1-a]}
        max_restarts: -1
        """)
    # Without flags the file's own max_restarts is refused; a flag replaces it before the check.
    assert runner("submit", "-f", "task.yaml", "--dry-run", "--store", str(store), cwd=tmp_path).returncode == 2
    p = runner("submit", "-f", "task.yaml", "--dry-run", "--store", str(store), "--run-id", "from-flag",
               "--env", "REPLACE=flag", "--max-restarts", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    words = docker_run_line(p.stdout)
    assert "runner-from-flag-a1" in words
    assert "KEEP=yes" in words and "REPLACE=flag" in words and "REPLACE=file" not in words
    # The job's words and env as written, never retyped by YAML 1.1 (no → False, 010 → 8).
    assert words[-5:] == ["python3", "train.py", "--resume", "no", "010"]

    p = runner("submit", "-f", "task.yaml", "--dry-run", "--max-restarts", "2", "--machine-type",
               "n2-standard-4", *GCE, "--", "python3", "other.py", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (plan,) = json.loads(p.stdout)
    assert plan["instance"]["machine_type"].endswith("/machineTypes/n2-standard-4")

    local = runner("submit", "-f", "task.yaml", "--dry-run", "--max-restarts", "2", "--store", str(store),
                   "--", "python3", "other.py", cwd=tmp_path)
    assert docker_run_line(local.stdout)[-2:] == ["python3", "other.py"]  # `--` replaces the command


@pytest.mark.parametrize("text, line, says", [
    ("run_id: a\ncomand: [python3]\n", 2, "unknown key 'comand' in the task file; did you mean 'command'?"),
    ("run_id: a\ncommand: [python3]\nrun_id: b\n", 3, "'run_id' is set twice in the task file (first on line 1)"),
    ("run_id: a\ncommand: python3 train.py --steps 100\n", 2, "command must be a list of words"),
    ("run_id: a\ncommand: [python3]\nenv:\n  A: 1\n  A: 2\n", 5, "env 'A' is set twice (first on line 4)"),
    ("run_id: a\nimage: x\nbuild: .\ncommand: [python3]\n", 3, "both image and build are set"),
    ("run_id: a\ncommand: [python3]\nenv:\n  TOKEN:\n", 4, "env TOKEN has no value"),
    ("run_id: a\ncommand: [python3]\nbuild: nowhere\n", 3, "has no Dockerfile"),
    ("run_id: a\ncommand: [python3]\nresources:\n  nodes: 0\n", 4, "must be between 1 and 64"),
    ("run_id: a\ncommand: [python3]\nresources:\n  gpus: 1\n", 4, "unknown key 'gpus' in resources; did you mean 'gpu'?"),
    ("run_id: a\ncommand: [python3]\nresources:\n  termination_action: KEEP\n", 4,
     "(resources.termination_action)"),
    ("run_id: a\ncommand: [python3]\nresources:\n  zones: [US_CENTRAL1]\n", 4, "(resources.zones)"),
    ("run_id: a\ncommand: [python3\nimage: x\n", 3, "not valid YAML"),
])
def test_a_problem_in_the_task_file_is_refused_naming_its_line(tmp_path, store, text, line, says):
    write(tmp_path, text)
    p = runner("submit", "-f", "task.yaml", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert f"task.yaml line {line}" in p.stderr and says in p.stderr, p.stderr
    assert list(store.iterdir()) == []  # nothing created


def test_a_task_file_without_a_run_id_needs_the_flag(tmp_path, store):
    write(tmp_path, "image: x\ncommand: [python3]\n")
    p = runner("submit", "-f", "task.yaml", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 2 and "pass --run-id ID or set run_id in task.yaml" in p.stderr, p.stderr
    assert list(store.iterdir()) == []


def test_a_task_file_given_as_the_command_is_refused_with_the_f_form(tmp_path, store):
    # After item 1 the first word is the job's program; a YAML file is not one, and running it
    # (or building the folder to run it) would be the surprise. The fix is in the message.
    write(tmp_path, "run_id: a\nimage: x\ncommand: [python3]\n")
    p = runner("submit", "--run-id", "a", "--store", str(store), "task.yaml", cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "runner submit -f task.yaml" in p.stderr
    assert list(store.iterdir()) == []


def test_build_is_the_folder_relative_to_the_task_file_not_the_working_directory(tmp_path, store):
    # Without Docker the build itself fails (exit 1), after naming the image it would build: the
    # name comes from the folder the file points at, found from another working directory.
    (tmp_path / "proj" / "myjob").mkdir(parents=True)
    (tmp_path / "proj" / "myjob" / "Dockerfile").write_text("FROM scratch\n")
    write(tmp_path / "proj", "run_id: b1\nbuild: myjob\ncommand: [python3, train.py]\n")
    (tmp_path / "elsewhere").mkdir()
    p = runner("submit", "-f", "../proj/task.yaml", "--store", str(store), cwd=tmp_path / "elsewhere")
    assert "building myjob:dev first" in p.stderr, p.stderr
    assert p.returncode == 1 and not (store / "runs" / "b1").exists()


def test_a_dry_run_prints_the_jobs_env_given_by_flag(tmp_path, store):
    # The request submit sends carries --env (local: `docker run -e`); the dry run dropped it.
    p = runner("submit", "--run-id", "e1", "--env", "SEED=7", "--dry-run", "--store", str(store),
               "--image", "cos-spot-runner/workload:dev", "--", "python3", "train.py", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "SEED=7" in docker_run_line(p.stdout)


@pytest.mark.docker
def test_a_task_file_run_gets_its_env_command_and_restart_settings(docker_client, tmp_path, store):
    """The outcome in Docker: the job sees the file's env and runs the file's command (its result
    pulled back), and the run's spec.json holds the file's restart settings."""
    run_id = f"i20-task-{uuid.uuid4().hex[:8]}"
    write(tmp_path, f"""\
        run_id: {run_id}
        image: {os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")}
        command: [python3, -c, "import os; open(os.environ['RUNNER_RESULTS_DIR'] + '/seen.txt', 'w').write(os.environ['SEED'] + ' ' + os.environ['MODE'])"]
        env: {{SEED: 0123, MODE: no}}
        max_restarts: 3
        retry_on_failure: 1
        """)
    p = runner("submit", "-f", "task.yaml", "--store", str(store), "--pull", "out", "--poll-interval", "0.5",
               cwd=tmp_path, DOCKER_HOST=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / run_id / "results" / "seen.txt").read_text() == "0123 no"  # as written
    spec = json.loads((store / "runs" / run_id / "spec.json").read_text())
    assert (spec["max_restarts"], spec["retry_on_failure"]) == (3, 1)
