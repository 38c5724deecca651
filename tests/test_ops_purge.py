"""Forgetting a run (issue 20 item 4): ``runner ops delete --purge`` stops the run as ``delete``
does, then (confirmed, or with ``--yes``) removes its record so the id can be used again; a run
whose VM or container may still be alive is never purged (runner/ops/purge.py).

World: the in-memory backend and a local store (tests/standins/supervised_runs.py); the CLI
tests use the local backend on the real Docker engine (only its container listing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, RunSpec, State, run_prefix
from entrypoint.store_local import LocalStore
from runner.launch.backends.base import BackendError
from runner.ops.purge import PurgeRefused, purge_run
from runner.ops.runs import RunNotFound
from tests.conftest import ROOT
from tests.standins.supervised_runs import GRACE

A1 = "runner-exp-1-a1"


def test_purging_a_live_run_stops_it_removes_its_vm_and_frees_the_id(supervised):
    w = supervised
    rec, sup = w.running()
    w.heartbeat(rec, step=3)
    out = purge_run(w.store, w.backend, "exp-1", grace_period=0)
    assert out["removed"] == [A1] and out["purged_objects"] > 0
    assert w.backend.instances() == {}
    assert w.store.list(run_prefix("exp-1")) == []
    assert RunRecord(w.store, "exp-1").read_state() is None
    # The id is free: a new run of that name starts from nothing, and a supervisor pass does
    # not resurrect the old one.
    fresh = w.submit("exp-1")
    assert (w.state(fresh).state, w.state(fresh).attempt, w.state(fresh).restarts) == (State.PENDING, 0, 0)


def test_a_run_whose_vm_is_still_being_deleted_keeps_its_record(supervised, monkeypatch):
    """A GCE delete is a long-running operation: the VM is listed (STOPPING) for a while after
    the call returns (https://cloud.google.com/compute/docs/reference/beta/instances/delete).
    Its agent could still write into the record, so nothing of it may go yet."""
    w = supervised
    rec, sup = w.running()
    w.backend.delete = lambda inst, grace_period=0: w.backend.begin_preemption(inst.name)  # slow delete
    with pytest.raises(PurgeRefused, match="still exists .* run the same command again"):
        purge_run(w.store, w.backend, "exp-1", grace_period=GRACE)
    st = w.state(rec)
    assert st.state == State.STOPPED and rec.stop_requested()  # stopped, as delete would have
    assert w.store.exists(rec.name(RunRecord.SPEC))


def test_a_failed_listing_refuses_the_purge(supervised):
    w = supervised
    rec, sup = w.running()
    listings = {"n": 0}
    real_list = w.backend.list

    def list_failing_after_the_stop(run_id=None):
        listings["n"] += 1
        if listings["n"] > 2:  # the stop (delete_run) lists twice; the purge's own check fails
            raise BackendError("listing instances failed (injected)")
        return real_list(run_id)

    w.backend.list = list_failing_after_the_stop
    with pytest.raises(PurgeRefused, match="could not list the instances"):
        purge_run(w.store, w.backend, "exp-1", grace_period=0)
    assert w.store.exists(rec.name(RunRecord.STATE))


def test_purging_an_unknown_run_says_so(supervised):
    with pytest.raises(RunNotFound):
        purge_run(supervised.store, supervised.backend, "ghost", grace_period=0)


def test_a_purge_cut_short_is_finished_by_running_it_again(supervised):
    """Only ``.stop`` left (the purge died before its last delete): the same command ends it."""
    w = supervised
    rec = w.submit()
    rec.request_stop("ops-delete", "deleted by user")
    for name in w.store.list(run_prefix("exp-1")):
        if not name.endswith("/.stop"):
            w.store.delete(name)
    purge_run(w.store, w.backend, "exp-1", grace_period=0)
    assert w.store.list(run_prefix("exp-1")) == []


# ---- the command, as a user runs it --------------------------------------------------------------

def _runner(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def _failed_run(store: Path, run_id: str) -> None:
    rec = RunRecord(LocalStore(str(store)), run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:" + "0" * 64, command=["false"], backend="local"))
    rec.create_state("test")
    rec.transition(State.FAILED, "test", reason="job exited with code 1", exit_code=1)


@pytest.mark.docker
def test_cli_purge_asks_first_and_without_a_terminal_needs_yes(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    _failed_run(store, "old")
    p = _runner("ops", "delete", "--run-id", "old", "--purge", "--store", str(store), cwd=tmp_path, stdin="")
    assert p.returncode == 2 and "pass --yes" in p.stderr
    assert (store / "runs" / "old" / "state.json").exists()
    p = _runner("ops", "delete", "--run-id", "old", "--purge", "--yes", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "purged" in p.stdout and "free for a new run" in p.stdout
    assert not (store / "runs" / "old").exists() or not any((store / "runs" / "old").rglob("*.json"))
    p = _runner("ops", "status", "--run-id", "old", "--store", str(store), cwd=tmp_path)
    assert p.returncode == 3


def test_cli_yes_without_purge_is_a_usage_error(tmp_path):
    p = _runner("ops", "delete", "--run-id", "old", "--yes", "--store", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "--yes only confirms --purge" in p.stderr


@pytest.mark.docker
@pytest.mark.parametrize("answer, purged", [("n", False), ("y", True)])
def test_cli_purge_at_a_terminal_does_what_the_answer_says(tmp_path, answer, purged):
    """At a terminal the purge asks; "n" leaves the run exactly as it was (not even stopped)."""
    import pty

    store = tmp_path / "store"
    store.mkdir()
    _failed_run(store, "old")
    master, slave = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())
        p = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "delete", "--run-id", "old", "--purge",
                            "--store", str(store)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdin=slave, capture_output=True, text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert "remove its record" in p.stderr and "This cannot be undone" in p.stderr
    assert (p.returncode == 0) is purged, p.stderr
    assert (store / "runs" / "old" / "state.json").exists() is not purged
    assert not (store / "runs" / "old" / ".stop").exists()  # declined: not even stopped; purged: gone
