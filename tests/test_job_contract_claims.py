"""What README's "Package your own job" promises a job, checked against the code (issue 20 §14).

The real agent runs as a process on a real local store (as in test_agent_start_failure); the
local backend's container is read from `submit --dry-run` (no Docker needed).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from entrypoint.record import RunRecord
from entrypoint.store_local import LocalStore
from runner.cli.main import main as cli
from tests.test_agent_start_failure import agent_env

SHOW_ENV = ("import json, os; print('ENV ' + json.dumps({k: os.environ.get(k) for k in "
            "('RUNNER_CHECKPOINT_DIR', 'RUNNER_RESUME_FROM')} | {'cwd': os.getcwd()}))")


def _env_seen(p: subprocess.CompletedProcess[str]) -> dict:
    line = next(x for x in p.stdout.splitlines() if x.startswith("ENV "))
    return json.loads(line[4:])


def test_resume_from_is_the_checkpoint_dir_and_only_when_something_was_restored(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = agent_env(fresh, sys.executable, "-c", SHOW_ENV)
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", sys.executable, "-c", SHOW_ENV], env=env,
                       capture_output=True, text=True, timeout=60, cwd=fresh)
    assert p.returncode == 0, p.stderr
    seen = _env_seen(p)
    assert seen["RUNNER_RESUME_FROM"] is None and seen["RUNNER_CHECKPOINT_DIR"] == str(fresh / "ckpt")
    # The job runs where the agent was started: in a container, the image's WORKDIR.
    assert seen["cwd"] == str(fresh)

    again = tmp_path / "again"
    again.mkdir()
    env = agent_env(again, sys.executable, "-c", SHOW_ENV)
    rec = RunRecord(LocalStore(str(again / "store")), "r")
    (again / "last.pt").write_bytes(b"weights")
    rec.store.upload_file(rec.name(RunRecord.CHECKPOINTS) + "last.pt", str(again / "last.pt"))
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", sys.executable, "-c", SHOW_ENV], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    seen = _env_seen(p)
    assert seen["RUNNER_RESUME_FROM"] == seen["RUNNER_CHECKPOINT_DIR"] == str(again / "ckpt")
    assert (again / "ckpt" / "last.pt").read_bytes() == b"weights"


def test_a_job_that_ignores_sigterm_is_killed_after_60_percent_of_the_grace_and_preempted(tmp_path):
    job = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
           "print('ready', flush=True); time.sleep(60)")
    env = {**agent_env(tmp_path, sys.executable, "-c", job), "RUNNER_GRACE_PERIOD": "2"}
    agent = subprocess.Popen([sys.executable, "-m", "entrypoint", "--", sys.executable, "-c", job], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        for line in agent.stdout:  # the agent copies the job's output: it is running, SIGTERM ignored
            if line.strip() == "ready":
                break
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert "job ignored SIGTERM; killing it" in err, err
    st = json.loads((tmp_path / "store/runs/r/state.json").read_text())
    assert (st["state"], st["exit_code"]) == ("PREEMPTED", 137), st  # 128 + SIGKILL


def test_local_containers_have_no_network_and_keep_the_images_workdir(tmp_path):
    out = CliRunner().invoke(cli, ["submit", "--store", f"file://{tmp_path}", "--backend", "local", "--run-id",
                                   "c-1", "--dry-run", "--image", "img", "--", "python3", "train.py"])
    assert out.exit_code == 0, out.output
    argv = out.output.splitlines()[0].split()
    assert argv[argv.index("--network") + 1] == "none"
    assert not {"-w", "--workdir"} & set(argv)  # the job starts in the image's WORKDIR


def _package_section() -> str:
    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    return text[text.index("## Package your own job"):text.index("## Building the image")]


def test_the_packaging_section_says_what_the_job_finds(tmp_path):
    section = _package_section()
    for promise in ("`WORKDIR`", "`RUNNER_RESUME_FROM` is the same directory as `RUNNER_CHECKPOINT_DIR`",
                    "A job that ignores SIGTERM", "After 60% of `grace_period`", "PREEMPTED (exit code 137)",
                    "`--network none`", "--progress-regex '^iter (\\d+):'"):
        assert promise in section, promise


def test_the_nanogpt_recipe_picks_scratch_or_resume_and_its_pattern_reads_nanogpts_steps():
    import os
    import re

    from entrypoint.progress_pattern import ProgressPattern

    section = _package_section()
    choice = re.search(r"--init_from=(\$\(\[ .*? \] && echo resume \|\| echo scratch\))", section)
    assert choice, "the recipe's --init_from"
    # The recipe's own shell fragment, run both ways (a fresh start, and a restored checkpoint).
    for resume_from, expected in ((None, "scratch"), ("/var/lib/runner/checkpoints", "resume")):
        env = {k: v for k, v in os.environ.items() if k != "RUNNER_RESUME_FROM"}
        if resume_from:
            env["RUNNER_RESUME_FROM"] = resume_from
        out = subprocess.run(["sh", "-c", "echo " + choice.group(1)], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected
    pattern = ProgressPattern(r"^iter (\d+):", 5000)
    # nanoGPT's train.py log and eval lines (karpathy/nanoGPT train.py).
    assert pattern.values("iter 120: loss 2.3101, time 51.20ms, mfu 12.34%\n") == {"step": 120, "total": 5000}
    assert pattern.values("step 250: train loss 1.9, val loss 2.0\n") is None
