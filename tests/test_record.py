"""The run record's state machine and write rules, on the local store."""

from __future__ import annotations

import threading

import pytest

from entrypoint.record import (
    IllegalTransition,
    RunRecord,
    RunSpec,
    State,
    check_transition,
    list_run_ids,
)
from entrypoint.store import PreconditionFailed


@pytest.fixture
def rec(local_store):
    r = RunRecord(local_store, "r1")
    r.write_spec(RunSpec(run_id="r1", image="sha256:abc", command=["true"], backend="local"))
    r.create_state("test")
    return r


def test_a_run_walks_the_happy_path_and_journals_every_step(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.transition(State.RUNNING, "agent", expect_attempt=1)
    rec.transition(State.SUCCEEDED, "agent", expect_attempt=1, exit_code=0)
    st, _ = rec.read_state()
    assert st.state == State.SUCCEEDED and st.exit_code == 0 and st.attempt == 1
    tos = [ev["to"] for _, ev in rec.events()]
    assert tos == ["PENDING", "PROVISIONING", "RUNNING", "SUCCEEDED"]


@pytest.mark.parametrize("terminal", [State.SUCCEEDED, State.FAILED, State.STOPPED])
@pytest.mark.parametrize("new", list(State))
def test_terminal_states_are_never_overwritten(terminal, new):
    with pytest.raises(IllegalTransition):
        check_transition(terminal, new)


def test_a_run_cannot_go_backwards_from_running_to_pending(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.transition(State.RUNNING, "agent")
    with pytest.raises(IllegalTransition):
        rec.transition(State.PENDING, "x")
    assert rec.read_state()[0].state == State.RUNNING


def test_an_agent_of_an_older_attempt_cannot_write_over_a_newer_one(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.transition(State.RUNNING, "agent")
    rec.transition(State.PREEMPTED, "sup")
    rec.transition(State.PROVISIONING, "sup", attempt=2)
    with pytest.raises(IllegalTransition):
        rec.transition(State.FAILED, "agent", expect_attempt=1)
    assert rec.read_state()[0].state == State.PROVISIONING


def test_a_decision_on_a_stale_read_does_not_land(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    stale = rec.read_state()
    rec.transition(State.RUNNING, "agent")
    with pytest.raises(PreconditionFailed):
        rec.transition(State.PREEMPTED, "sup", expected=stale)
    assert rec.read_state()[0].state == State.RUNNING


def test_two_racing_restarts_produce_exactly_one_new_attempt(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.transition(State.RUNNING, "agent")
    rec.transition(State.PREEMPTED, "agent")
    seen = rec.read_state()
    wins, barrier = [], threading.Barrier(8)

    def restart() -> None:
        barrier.wait()
        try:
            rec.transition(State.PROVISIONING, "sup", expected=seen, attempt=2)
            wins.append(1)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=restart) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert rec.read_state()[0].attempt == 2
    assert sum(1 for _, ev in rec.events() if ev["to"] == "PROVISIONING") == 2


def test_reopen_is_the_only_way_out_of_a_terminal_state_and_clears_stop(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.request_stop("ops")
    rec.transition(State.STOPPED, "ops")
    rec.reopen("user", "restart requested")
    st, _ = rec.read_state()
    assert st.state == State.PENDING and st.attempt == 1
    assert not rec.stop_requested()


def test_run_ids_are_listed_from_the_store(local_store):
    for rid in ("b", "a", "c"):
        RunRecord(local_store, rid).create_state("t")
    assert list_run_ids(local_store) == ["a", "b", "c"]


def test_missing_objects_read_as_none(local_store):
    r = RunRecord(local_store, "nope")
    assert r.read_state() is None and r.read_spec() is None and r.read_heartbeat() is None
    assert not r.stop_requested()


def test_a_file_written_after_the_job_was_killed_is_not_published(local_store, tmp_path):
    import os
    import time

    from entrypoint.checkpoints import DirectorySync

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"good" * 100)
    sync = DirectorySync(local_store, str(ckpt), "runs/r1/checkpoints/")
    assert sync.sync_once()
    killed_at = time.time()
    time.sleep(0.01)
    with open(ckpt / "last.pt", "r+b") as f:  # an in-place writer, killed half-way
        f.write(b"torn")
        f.truncate(50)
    os.utime(ckpt / "last.pt")
    sync.sync_once(modified_before=killed_at)
    assert local_store.read("runs/r1/checkpoints/last.pt").data == b"good" * 100


def test_a_restarted_run_gets_its_whole_restart_budget_back(rec):
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    rec.transition(State.PREEMPTED, "sup")
    rec.transition(State.PROVISIONING, "sup", attempt=2, restarts=1)
    rec.transition(State.FAILED, "sup")
    rec.reopen("user", "restart requested")
    st, _ = rec.read_state()
    assert (st.attempt, st.restarts) == (2, 0)


def test_fields_unknown_to_an_older_writer_survive_its_rewrite(rec):
    import json

    rec.transition(State.PROVISIONING, "sup", attempt=1, restarts=3)
    blob = rec.store.read(rec.name(RunRecord.STATE))
    doc = json.loads(blob.data)
    doc["added_in_a_later_version"] = {"x": 1}
    rec.store.write(rec.name(RunRecord.STATE), json.dumps(doc).encode(), if_generation_match=blob.generation)
    rec.transition(State.RUNNING, "agent", expect_attempt=1)
    after = json.loads(rec.store.read(rec.name(RunRecord.STATE)).data)
    assert after["added_in_a_later_version"] == {"x": 1} and after["restarts"] == 3
    assert after["state"] == "RUNNING"


def test_pull_copies_results_once_and_then_only_what_changed(local_store, tmp_path):
    import os

    from runner.ops import pull_run

    rec = RunRecord(local_store, "r9")
    rec.create_state("t")
    local_store.write("runs/r9/results/a.txt", b"alpha")
    local_store.write("runs/r9/results/sub/b.bin", b"b" * 1000)
    local_store.write("runs/r9/checkpoints/last.pt", b"ckpt")
    dest = tmp_path / "pulled"
    first = pull_run(local_store, "r9", str(dest))
    assert sorted(first["copied"]) == ["results/a.txt", "results/sub/b.bin"] and first["bytes"] == 1005
    assert (dest / "r9/results/sub/b.bin").read_bytes() == b"b" * 1000
    assert os.readlink(dest / "latest") == "r9" and not (dest / "r9/checkpoints").exists()
    local_store.write("runs/r9/results/a.txt", b"alpha, revised")
    second = pull_run(local_store, "r9", str(dest), checkpoints=True)
    assert sorted(second["copied"]) == ["checkpoints/last.pt", "results/a.txt"]
    assert second["unchanged"] == ["results/sub/b.bin"]
    assert (dest / "r9/results/a.txt").read_bytes() == b"alpha, revised"
