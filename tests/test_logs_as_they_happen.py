"""Logs as they happen (issue 20, item 12), on GCE's stand-ins: no Docker.

On GCE the job's output reaches the laptop only through the store: the agent uploads its log every
heartbeat (the container logs to the VM's json-file driver, gcp/startup.sh). These tests play the
agent's part by writing that log and its transitions, and wait for lines to appear, never for a
fixed time. The local backend's faster path (Docker's own log) is in test_logs_live_local.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

from entrypoint.record import RunRecord, State
from tests.conftest import ROOT, wait_for
from tests.test_gce_backend import IMAGE, PROJECT, agent_reports_running, gce, submit, vms  # noqa: F401 - gce is a fixture

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _agent_prints(ctx, run_id: str, attempt: int, data: bytes) -> None:
    """What the agent's heartbeat does: upload the whole log so far."""
    rec = RunRecord(ctx.store, run_id)
    ctx.store.write(rec.name(RunRecord.log_name(attempt)), data)


def _cli(fake, gcs_emulator, store_url, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_COMPUTE_ENDPOINT": fake.endpoint,
           "STORAGE_EMULATOR_HOST": gcs_emulator, "GOOGLE_CLOUD_PROJECT": "local",
           "RUNNER_STORE": store_url, "RUNNER_BACKEND": "gce", "CLOUDSDK_CONFIG": "/nonexistent",
           "RUNNER_POLL_INTERVAL": "0.3", "RUNNER_STALL_POLLS": "600", "RUNNER_GPU_TIMEOUT": "60"}
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_an_attached_follow_shows_the_jobs_lines_between_its_transitions(gce):
    from runner.launch.follow import follow_run

    ctx, _fake = gce
    submit(ctx, "exp-o")
    shown: list[str] = []  # transitions and output in the order a user sees them
    t = threading.Thread(target=lambda: follow_run(ctx.supervisor(), "exp-o", 0.2, shown.append,
                                                   show_output=lambda a, line: shown.append(f"[{a}] {line}")))
    t.start()
    wait_for(lambda: "runner-exp-o-a1" in vms(_fake), timeout=30, desc="the VM")
    agent_reports_running(ctx, "exp-o")
    _agent_prints(ctx, "exp-o", 1, b"step 1\nstep 2\nhalf")
    wait_for(lambda: "[1] step 2" in shown, timeout=30, desc="the job's second line")
    assert "[1] half" not in shown  # a line is shown once it ends, not in pieces
    _agent_prints(ctx, "exp-o", 1, b"step 1\nstep 2\nhalf a line, then the end")
    RunRecord(ctx.store, "exp-o").transition(State.FAILED, "agent", exit_code=3, reason="exit code 3")
    t.join(timeout=30)
    assert not t.is_alive()
    out = [s for s in shown if s.startswith("[1]")]
    assert out == ["[1] step 1", "[1] step 2", "[1] half a line, then the end"]
    running = next(i for i, s in enumerate(shown) if "-> RUNNING" in s)
    assert running < shown.index("[1] step 1")  # the job's lines come after the transition that started it


def test_a_failed_attached_submit_ends_with_the_jobs_last_lines_and_the_logs_command(gce, gcs_store, gcs_emulator):
    ctx, fake = gce
    lines = b"".join(f"line {i}\n".encode() for i in range(1, 16)) + b"Traceback: boom\n"
    sub = _cli(fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "exp-f", "--project", PROJECT,
               "--zones", "us-central1-a", "--machine-type", "n1-standard-4", "--gpu", "nvidia-tesla-t4",
               "--image", IMAGE, "--", "python3", "train.py")
    wait_for(lambda: "runner-exp-f-a1" in vms(fake), timeout=60, desc="the VM")
    agent_reports_running(ctx, "exp-f")
    _agent_prints(ctx, "exp-f", 1, lines)
    RunRecord(ctx.store, "exp-f").transition(State.FAILED, "agent", exit_code=1, reason="exit code 1")
    _, err = sub.communicate(timeout=60)
    assert sub.returncode == 1, err
    # Streamed while it ran, each line prefixed with its run and attempt...
    assert "exp-f[1] | line 1\n" in err
    # ...and after the verdict, the last ten lines again and where the rest is.
    tail = err[err.index("last 10 line(s) of attempt 1's output:"):]
    assert "    line 7\n" in tail and "    Traceback: boom\n" in tail and "    line 6\n" not in tail
    assert f"all its output: runner ops logs --run-id exp-f --project {PROJECT}\n" in tail


def test_quiet_hides_the_output_but_not_how_a_failed_run_ended(gce, gcs_store, gcs_emulator):
    ctx, fake = gce
    sub = _cli(fake, gcs_emulator, gcs_store.url, "submit", "--quiet", "--run-id", "exp-q", "--project", PROJECT,
               "--zones", "us-central1-a", "--machine-type", "n1-standard-4", "--gpu", "nvidia-tesla-t4",
               "--image", IMAGE, "--", "python3", "train.py")
    wait_for(lambda: "runner-exp-q-a1" in vms(fake), timeout=60, desc="the VM")
    agent_reports_running(ctx, "exp-q")
    _agent_prints(ctx, "exp-q", 1, b"loading\nout of memory\n")
    RunRecord(ctx.store, "exp-q").transition(State.FAILED, "agent", exit_code=1, reason="exit code 1")
    _, err = sub.communicate(timeout=60)
    assert sub.returncode == 1, err
    assert "exp-q[1] |" not in err and "-> RUNNING" in err
    assert "    out of memory\n" in err and "runner ops logs --run-id exp-q" in err


def test_following_logs_with_timestamps_starts_each_line_with_its_arrival_time(gce, gcs_store, gcs_emulator):
    ctx, fake = gce
    submit(ctx, "exp-t")
    ctx.supervisor().reconcile("exp-t")
    agent_reports_running(ctx, "exp-t")
    follow = _cli(fake, gcs_emulator, gcs_store.url, "ops", "logs", "--run-id", "exp-t", "--follow", "--timestamps",
                   "--project", PROJECT)
    _agent_prints(ctx, "exp-t", 1, b"step 1\nstep")
    _agent_prints(ctx, "exp-t", 1, b"step 1\nstep 2\n")
    RunRecord(ctx.store, "exp-t").transition(State.SUCCEEDED, "agent", exit_code=0)
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    body = out.split("===== attempt 1: job output =====\n", 1)[1]
    assert re.fullmatch(rf"{STAMP} step 1\n{STAMP} step 2\n", body), out


def test_timestamps_without_follow_is_a_usage_error_that_says_why(gce, gcs_store, gcs_emulator):
    ctx, fake = gce
    p = _cli(fake, gcs_emulator, gcs_store.url, "ops", "logs", "--run-id", "exp-t", "--timestamps")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--timestamps needs --follow" in err and "the stored log keeps no times" in err
