"""Nobody watching is visible: `ops status`, `ops list`, `ops watch` and `submit --detach` say who
last supervised and when, and when nobody has for two intervals, say so with the fixing command.

The real CLI in subprocesses, against the Compute fake and the GCS emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from entrypoint.record import RunRecord, State
from runner.launch.supervisor_heartbeat import SupervisorPass, write_pass
from tests.conftest import ROOT

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64


@pytest.fixture
def cli(compute_fake, gcs_store, gcs_emulator, tmp_path):
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT,
           "RUNNER_STORE": gcs_store.url, "RUNNER_ZONES": "us-central1-a", "RUNNER_NO_GPU": "true",
           "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint, "RUNNER_POLL_INTERVAL": "3",
           "RUNNER_STALL_POLLS": "100000", "RUNNER_GPU_TIMEOUT": "300",
           "RUNNER_CONFIG": str(tmp_path / "none.toml")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)

    return run, gcs_store


def _stopped_supervisor(store, intervals: float, every: float = 60.0) -> None:
    """A supervisor whose last pass finished ``intervals`` of its announced ``every`` ago.

    ``every`` is a minute so that the time the CLI under test takes to start and read the
    store (seconds on a loaded machine) is a small part of an interval: a pass written 0.5
    intervals ago is still fresh when a slow `ops status` judges it, and one written 2.2
    intervals ago is stale however fast it runs."""
    now = time.time()
    write_pass(store, SupervisorPass(actor="supervisor@laptop.42", where="host laptop (pid 42)",
                                     started_at=now - intervals * every - 0.5, finished_at=now - intervals * every,
                                     every=every, runs_seen=1))


def test_ops_status_warns_when_the_supervisor_stopped_two_poll_intervals_ago(cli):
    run, store = cli
    assert run("submit", "--run-id", "exp-1", "--image", IMAGE, "--detach", "--", "true").returncode == 0
    _stopped_supervisor(store, intervals=2.2)
    out = run("ops", "status", "--run-id", "exp-1")
    assert out.returncode == 0, out.stderr
    assert "supervisor@laptop.42" in out.stdout and "host laptop" in out.stdout
    assert "nobody is supervising" in out.stdout and "fix:   runner supervise" in out.stdout
    _stopped_supervisor(store, intervals=0.5)
    fresh = run("ops", "status", "--run-id", "exp-1")
    assert "supervisor@laptop.42" in fresh.stdout and "nobody is supervising" not in fresh.stdout


def test_ops_list_and_watch_show_who_last_supervised(cli):
    run, store = cli
    run("submit", "--run-id", "exp-1", "--image", IMAGE, "--detach", "--", "true")
    _stopped_supervisor(store, intervals=5)
    listed = run("ops", "list")
    assert "supervisor@laptop.42" in listed.stdout and "nobody is supervising" in listed.stdout
    rec = RunRecord(store, "exp-1")
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="us-central1-a")
    rec.transition(State.SUCCEEDED, "agent", exit_code=0)
    watched = run("ops", "watch", "--run-id", "exp-1", "--interval", "0.2")
    # It has ended: who last supervised is shown, but an ended run needs nobody (issue 20 §9).
    assert "supervisor@laptop.42" in watched.stdout
    assert "nobody is supervising" not in " ".join(watched.stdout.split())  # unwrapped, or a wrap would hide it


def test_submit_detach_warns_when_no_supervisor_is_alive(cli):
    run, store = cli
    out = run("submit", "--run-id", "exp-1", "--image", IMAGE, "--detach", "--", "true")
    assert out.returncode == 0
    assert "warning: nobody is supervising" in out.stderr and "runner supervise --deploy" in out.stderr
    _stopped_supervisor(store, intervals=0.1)
    again = run("submit", "--run-id", "exp-2", "--image", IMAGE, "--detach", "--", "true")
    assert "nobody is supervising" not in again.stderr


def test_a_bounded_loop_passes_for_its_time_then_exits_announcing_its_schedule(cli):
    from runner.launch.supervisor_heartbeat import read_pass

    run, store = cli
    t0 = time.time()
    out = run("supervise", "--for", "2", "--poll-interval", "0.5", "--schedule-period", "60")
    took = time.time() - t0
    assert out.returncode == 0, out.stderr
    passes = out.stderr.count("supervised 0 run(s)")
    assert 3 <= passes <= 5 and took < 30
    p = read_pass(store)
    assert p is not None and p.every == 60


# ---- warn only where a live run is unwatched (issue 20 §9) ------------------------------------

def _finish(store, run_id: str) -> None:
    rec = RunRecord(store, run_id)
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="us-central1-a")
    rec.transition(State.SUCCEEDED, "agent", exit_code=0)


def _followed_by_attached_submit(store, run_id: str, ago: float) -> None:
    """What an attached ``submit`` records each step (runner/launch/follow.py: ``run_pass`` with
    ``run_id``): a pass over that run alone, in ``runs/ID/supervisor/heartbeat.json``."""
    now = time.time()
    # every=60: the pass stays fresh through this test's slowest CLI call on a loaded machine.
    write_pass(store, SupervisorPass(actor="submit@laptop.7", where="host laptop (pid 7)", started_at=now - ago - 0.2,
                                     finished_at=now - ago, every=60.0, runs_seen=1, run_id=run_id))


def test_runs_that_have_ended_raise_no_supervision_warning(cli):
    run, store = cli
    assert run("submit", "--run-id", "done-1", "--image", IMAGE, "--detach", "--", "true").returncode == 0
    _finish(store, "done-1")
    listed = run("ops", "list")
    assert listed.returncode == 0, listed.stderr
    assert "done-1" in listed.stdout and "no supervisor has ever passed" in listed.stdout
    assert "nobody is supervising" not in listed.stdout
    status = run("ops", "status", "--run-id", "done-1")
    assert status.returncode == 0 and "nobody is supervising" not in status.stdout
    watched = run("ops", "watch", "--once")
    assert "nobody is supervising" not in " ".join(watched.stdout.split())  # unwrapped, or a wrap would hide it
    # A live run beside it is unwatched: now the warning comes, naming that run only.
    assert run("submit", "--run-id", "live-1", "--image", IMAGE, "--detach", "--", "true").returncode == 0
    listed = run("ops", "list")
    assert "nobody is supervising" in listed.stdout and "(live, unwatched: live-1)" in listed.stdout
    watched = run("ops", "watch", "--once")
    said = " ".join(watched.stdout.split())  # the caption is wrapped to the terminal's width
    assert "nobody is supervising" in said and "(1 live run unwatched)" in said


def test_a_run_followed_by_an_attached_submit_counts_as_supervised(cli):
    run, store = cli
    for r in ("followed", "alone"):
        assert run("submit", "--run-id", r, "--image", IMAGE, "--detach", "--", "true").returncode == 0
    _followed_by_attached_submit(store, "followed", ago=0.5)
    listed = run("ops", "list")
    assert "(live, unwatched: alone)" in listed.stdout  # "followed" is watched by its submit
    status = run("ops", "status", "--run-id", "followed")
    assert "submit@laptop.7" in status.stdout and "following followed only" in status.stdout
    assert "nobody is supervising" not in status.stdout
    # The submit followed it to its end, long ago: its record names that submit, not "no
    # supervisor has ever passed", and warns of nothing, for the run has ended.
    _finish(store, "followed")
    _followed_by_attached_submit(store, "followed", ago=3600)
    ended = run("ops", "status", "--run-id", "followed")
    assert "submit@laptop.7" in ended.stdout and "no supervisor has ever passed" not in ended.stdout
    assert "nobody is supervising" not in ended.stdout
