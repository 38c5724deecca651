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

    from runner.ops.runs import pull_run

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


# ---- lost replies and interrupted writers (issue 10 §3) ----------------------------------------
# Each runs on the local store and on GCS through the fault proxy (tests/standins/gcs_fault_proxy.py),
# which lets the emulator apply a write and then loses its reply, as GCS sometimes does.

TRANSITIONS = [  # (state, actor, changes): two preempted attempts, a stall, then success
    (State.PROVISIONING, "sup", {"attempt": 1}),
    (State.RUNNING, "agent", {}),
    (State.PREEMPTED, "sup", {}),
    (State.PROVISIONING, "sup", {"attempt": 2, "restarts": 1}),
    (State.RUNNING, "agent", {}),
    (State.STALLED, "sup", {}),
    (State.PROVISIONING, "sup", {"attempt": 3, "restarts": 2}),
    (State.RUNNING, "agent", {}),
    (State.PREEMPTED, "sup", {}),
    (State.PROVISIONING, "sup", {"attempt": 4, "restarts": 3}),
    (State.RUNNING, "agent", {}),
    (State.SUCCEEDED, "agent", {"exit_code": 0}),
]


@pytest.fixture(params=["local", "gcs"])
def lossy(request):
    """(store, proxy): GCS through the fault proxy, or the local store (proxy None)."""
    if request.param == "local":
        return request.getfixturevalue("local_store"), None
    return request.getfixturevalue("faulty_gcs_store"), request.getfixturevalue("fault_proxy")


def _spec(run_id: str = "r1", command: tuple[str, ...] = ("true",)) -> RunSpec:
    return RunSpec(run_id=run_id, image="sha256:abc", command=list(command), backend="local")


def _stored_events(rec: RunRecord) -> list[str]:
    """The transitions actually stored (not what ``events()`` may add from state.json)."""
    import json

    return [json.loads(rec.store.read(n).data)["to"] for n in rec.store.list(rec.name(rec.EVENTS))]


def test_every_transition_is_journaled_exactly_once_when_a_third_of_replies_are_lost(lossy):
    from tests.standins.gcs_fault_proxy import FaultRule

    store, proxy = lossy
    rec = RunRecord(store, "r1")
    if proxy is not None:
        proxy.add(FaultRule(action="drop_reply", rate=0.3))
    rec.write_spec(_spec())
    rec.create_state("submit")
    for state, actor, changes in TRANSITIONS:
        rec.transition(state, actor, **changes)
    expected = ["PENDING"] + [s.value for s, _, _ in TRANSITIONS]
    assert [ev["to"] for _, ev in rec.events()] == expected
    assert sorted(_stored_events(rec)) == sorted(expected)  # stored, once each
    if proxy is not None:
        assert proxy.stats.by_action.get("drop_reply", 0) >= 3, proxy.stats


def test_a_lost_reply_on_the_create_claim_still_wins_it_and_only_once(lossy):
    store, proxy = lossy
    rec = RunRecord(store, "r1")
    if proxy is not None:
        from tests.standins.gcs_fault_proxy import FaultRule

        proxy.add(FaultRule(action="drop_reply", match="create.json", times=1))
    assert rec.claim_create(1, "sup-a") is not None
    assert rec.claim_create(1, "sup-b") is None
    assert rec.read_claim(1).actor == "sup-a"


def test_a_lost_reply_on_spec_json_does_not_wedge_the_run_id(lossy):
    store, proxy = lossy
    rec = RunRecord(store, "r1")
    if proxy is not None:
        from tests.standins.gcs_fault_proxy import FaultRule

        proxy.add(FaultRule(action="drop_reply", match="spec.json", times=1))
    rec.write_spec(_spec())
    rec.create_state("submit")
    assert rec.read_spec().command == ["true"] and rec.read_state()[0].state == State.PENDING
    assert list_run_ids(store) == ["r1"]


def test_a_submit_that_died_after_spec_json_can_be_completed_by_the_same_submit(lossy):
    store, _ = lossy
    RunRecord(store, "r1").write_spec(_spec())  # ... and the process died here
    again = RunRecord(store, "r1")
    again.write_spec(_spec())  # the user runs the same submit again
    again.create_state("submit")
    assert again.read_state()[0].state == State.PENDING
    with pytest.raises(PreconditionFailed, match="spec.json"):
        RunRecord(store, "r1").write_spec(_spec(command=("other",)))  # the run exists now


def test_a_different_submit_racing_on_a_fresh_run_id_is_refused(lossy):
    store, _ = lossy
    RunRecord(store, "r1").write_spec(_spec())
    with pytest.raises(PreconditionFailed, match="another submit"):
        RunRecord(store, "r1").write_spec(_spec(command=("other",)))
    assert RunRecord(store, "r1").read_spec().command == ["true"]


def _block_event_writes(store, proxy, rec):
    """Make the next event write fail for good, as if its writer died after writing the state."""
    if proxy is not None:
        from tests.standins.gcs_fault_proxy import FaultRule

        proxy.add(FaultRule(action="400", match="/events/", times=1))
        return lambda: None
    import os
    import shutil

    events = os.path.join(store.root, rec.name(rec.EVENTS))
    moved = events.rstrip("/") + ".saved"
    shutil.move(events, moved)
    open(events.rstrip("/"), "w").close()  # a file where the directory was: every write fails

    def unblock() -> None:
        os.unlink(events.rstrip("/"))
        shutil.move(moved, events)

    return unblock


def test_a_writer_that_dies_between_state_and_event_loses_no_transition(lossy):
    store, proxy = lossy
    rec = RunRecord(store, "r1")
    rec.write_spec(_spec())
    rec.create_state("submit")
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    unblock = _block_event_writes(store, proxy, rec)
    rec.transition(State.RUNNING, "agent")  # state lands, its event does not
    unblock()
    assert "RUNNING" not in _stored_events(rec)
    assert [ev["to"] for _, ev in rec.events()] == ["PENDING", "PROVISIONING", "RUNNING"]
    RunRecord(store, "r1").transition(State.SUCCEEDED, "sup")  # the next writer repairs it
    assert sorted(_stored_events(rec)) == sorted(["PENDING", "PROVISIONING", "RUNNING", "SUCCEEDED"])
    assert [ev["to"] for _, ev in rec.events()] == ["PENDING", "PROVISIONING", "RUNNING", "SUCCEEDED"]


def test_a_terminal_state_whose_event_was_lost_is_journaled_by_the_next_reader_that_may_write(lossy):
    store, proxy = lossy
    rec = RunRecord(store, "r1")
    rec.write_spec(_spec())
    rec.create_state("submit")
    rec.transition(State.PROVISIONING, "sup", attempt=1)
    unblock = _block_event_writes(store, proxy, rec)
    rec.transition(State.SUCCEEDED, "agent", exit_code=0)
    unblock()
    assert "SUCCEEDED" not in _stored_events(rec)
    st, _ = RunRecord(store, "r1").read_state()
    assert RunRecord(store, "r1").ensure_journaled(st) is True
    assert RunRecord(store, "r1").ensure_journaled(st) is False  # once
    assert sorted(_stored_events(rec)) == sorted(["PENDING", "PROVISIONING", "SUCCEEDED"])


def test_a_note_whose_reply_is_lost_is_stored_once(lossy):
    store, proxy = lossy
    rec = RunRecord(store, "r1")
    if proxy is not None:
        from tests.standins.gcs_fault_proxy import FaultRule

        proxy.add(FaultRule(action="drop_reply", match="/events/", times=1))
    rec.event("sup", None, None, "create failed, retrying in 5s", attempt=1)
    assert len(store.list(rec.name(rec.EVENTS))) == 1


# ---- named transitions: who may do what (issue 16 §3) ------------------------------------------

from entrypoint.record import MOVES, Role, RunState, TransitionLost  # noqa: E402


def _walk_to(rec: RunRecord, state: State) -> None:
    """Bring a fresh run (PENDING) to ``state`` through the named transitions."""
    if state == State.PENDING:
        return
    rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-1"])
    if state == State.PROVISIONING:
        return
    rec.job_started(Role.AGENT, "agent", attempt=1, instance="vm-1", zone="z-a")
    if state != State.RUNNING:
        getattr(rec, {State.PREEMPTED: "preempted", State.STALLED: "stalled", State.ERRORED: "errored",
                      State.SUCCEEDED: "succeeded", State.FAILED: "failed",
                      State.STOPPED: "stopped"}[state])(
            *(Role.AGENT if state in (State.ERRORED, State.SUCCEEDED) else Role.SUPERVISOR, "x"),
            **({"attempt": 1} if state in (State.ERRORED, State.SUCCEEDED) else {}),
            **({"reason": "r"} if state != State.SUCCEEDED else {}),
            **({"exit_code": 1} if state == State.ERRORED else {}))
    assert rec.read_state()[0].state == state


_CALLS = {  # how each move is called, apart from role and actor
    "begin_attempt": {"instances": ["vm-2"]},
    "queued": {"reason": "r"},
    "job_started": {"attempt": 1, "instance": "vm-1", "zone": "z-a"},
    "preempted": {"reason": "r"},
    "stalled": {"reason": "r"},
    "errored": {"attempt": 1, "reason": "r", "exit_code": 1},
    "succeeded": {"attempt": 1},
    "failed": {"reason": "r"},
    "stopped": {"reason": "r"},
}


@pytest.mark.parametrize("move", sorted(_CALLS))
@pytest.mark.parametrize("role", list(Role))
def test_a_role_the_table_does_not_name_may_not_make_a_move(rec, move, role):
    start = State.PENDING if move in ("begin_attempt", "queued") else (
        State.PROVISIONING if move == "job_started" else State.RUNNING)
    _walk_to(rec, start)
    before = rec.read_state()
    call = getattr(rec, move)
    if role in MOVES[move].roles:
        st, _ = call(role, "someone", **_CALLS[move])
        assert st.state == MOVES[move].to and st.updated_by == "someone"
    else:
        with pytest.raises(IllegalTransition, match=f"{role.value} may not make {move}"):
            call(role, "someone", **_CALLS[move])
        assert rec.read_state() == before  # nothing written


def test_the_table_gives_every_move_to_the_roles_that_see_it_happen():
    assert {m: sorted(r.value for r in mv.roles) for m, mv in MOVES.items()} == {
        "begin_attempt": ["supervisor"],
        "queued": ["supervisor"],
        "job_started": ["agent"],
        "preempted": ["agent", "supervisor"],
        "stalled": ["supervisor"],
        "errored": ["agent"],
        "succeeded": ["agent"],
        "failed": ["agent", "supervisor"],
        "stopped": ["agent", "ops", "supervisor"],
        "reopen": ["submit"],
    }


def test_a_move_from_a_state_it_does_not_leave_is_refused_with_who_wrote_that_state(rec):
    _walk_to(rec, State.PROVISIONING)
    with pytest.raises(IllegalTransition, match="errored cannot start from PROVISIONING") as e:
        rec.errored(Role.AGENT, "agent", attempt=1, reason="r", exit_code=1)
    assert (e.value.current, e.value.new, e.value.holder) == (State.PROVISIONING, State.ERRORED, "sup")


def test_only_submit_may_reopen(rec):
    _walk_to(rec, State.FAILED)
    with pytest.raises(IllegalTransition):
        rec.reopen("sup", "again", role=Role.SUPERVISOR)
    assert rec.reopen("me", "again").state == State.PENDING


def test_a_lost_attempt_spends_a_restart_and_a_failed_job_spends_a_failure_not_a_restart(rec):
    _walk_to(rec, State.RUNNING)
    rec.preempted(Role.SUPERVISOR, "sup", reason="gone")
    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-2"])
    assert (st.attempt, st.restarts, st.failures, st.instance) == (2, 1, 0, "vm-2")
    rec.job_started(Role.AGENT, "agent", attempt=2, instance="vm-2", zone="z-b")
    st, _ = rec.errored(Role.AGENT, "agent", attempt=2, reason="exit 3", exit_code=3)
    assert (st.restarts, st.failures, st.exit_code) == (1, 1, 3)
    assert not st.restarts_exhausted(1)  # a failed job is judged by the failure budget
    assert st.may_retry_failure(2) and not st.may_retry_failure(1)
    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-3"])
    assert (st.attempt, st.restarts, st.failures, st.exit_code) == (3, 1, 1, None)
    rec.job_started(Role.AGENT, "agent", attempt=3, instance="vm-3", zone="z-c")
    st, _ = rec.stalled(Role.SUPERVISOR, "sup", reason="no progress")
    assert st.restarts_exhausted(1) and not st.restarts_exhausted(2)


def test_the_attempts_instances_are_recorded_and_mirrored_for_older_readers(rec):
    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-1"])
    assert st.instances == [{"name": "vm-1", "zone": None, "rank": 0}] and st.instance == "vm-1"
    st, _ = rec.job_started(Role.AGENT, "agent", attempt=1, instance="vm-1", zone="z-a")
    assert st.instances == [{"name": "vm-1", "zone": "z-a", "rank": 0}]
    assert (st.instance, st.zone) == ("vm-1", "z-a")
    assert RunState.from_dict(st.to_dict()).instances == st.instances


def test_an_agent_of_an_older_attempt_is_refused_by_its_named_transition_too(rec):
    _walk_to(rec, State.RUNNING)
    rec.preempted(Role.SUPERVISOR, "sup", reason="gone")
    rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-2"])
    with pytest.raises(IllegalTransition, match="attempt 2, writer is attempt 1"):
        rec.succeeded(Role.AGENT, "agent", attempt=1)


# ---- BOOTING: gone from the state machine, still readable (issue 16 §3) -----------------------

def _write_raw_state(rec: RunRecord, doc: dict) -> None:
    import json

    cur = rec.store.stat(rec.name(rec.STATE))
    rec.store.write(rec.name(rec.STATE), json.dumps(doc).encode(),
                    if_generation_match=cur.generation if cur else 0)


def test_a_state_json_that_says_booting_loads_as_provisioning_and_moves_on(rec):
    _walk_to(rec, State.PROVISIONING)
    doc = rec.read_state()[0].to_dict()
    doc["state"] = "BOOTING"
    _write_raw_state(rec, doc)
    assert rec.read_state()[0].state == State.PROVISIONING
    assert "BOOTING" not in {s.value for s in State}
    st, _ = rec.job_started(Role.AGENT, "agent", attempt=1, instance="vm-1", zone="z-a")
    assert st.state == State.RUNNING


def test_ops_and_cost_read_a_run_whose_old_journal_says_booting(rec):
    import json

    from entrypoint.record.attempts import timeline
    from runner.ops.runs import run_row

    _walk_to(rec, State.PROVISIONING)
    name = rec.name(rec.EVENTS + "0000000000.000001-old-000000000000.json")
    rec.store.write(name, json.dumps({"time": 1.0, "actor": "old", "from": "PROVISIONING", "to": "BOOTING",
                                      "reason": None, "attempt": 5}).encode(), if_generation_match=0)
    doc = rec.read_state()[0].to_dict()
    doc["state"] = "BOOTING"
    _write_raw_state(rec, doc)
    assert run_row(rec.store, rec.run_id)["state"] == "PROVISIONING"
    assert timeline(list(rec.events()))[5].provisioned_at == 1.0


def test_a_state_json_without_instances_or_counters_still_loads(rec):
    _write_raw_state(rec, {"state": "RUNNING", "attempt": 2, "instance": "vm-2", "zone": "z"})
    st = rec.read_state()[0]
    assert (st.instances, st.restarts, st.failures, st.instance) == ([], 0, 0, "vm-2")


# ---- a refused transition is reported, not swallowed (issue 16 §3) ----------------------------

def test_a_lost_compare_and_swap_is_reported_with_the_winner(rec, capsys):
    cur = rec.read_state()
    rec.begin_attempt(Role.SUPERVISOR, "sup-b", expected=cur, instances=["vm-1"])
    with pytest.raises(TransitionLost) as e:
        rec.begin_attempt(Role.SUPERVISOR, "sup-a", expected=cur, instances=["vm-1"])
    assert isinstance(e.value, PreconditionFailed)  # callers that catch the store's error still do
    line = rec.report_refused("sup-a", e.value)
    assert line == "runner: r1: sup-a's PENDING -> PROVISIONING refused: sup-b wrote PROVISIONING (attempt 1) first"
    assert line in capsys.readouterr().err


def test_a_supervisor_that_loses_a_race_says_so_on_stderr_and_leaves_one_attempt(local_store, capsys):
    from runner.launch.supervisor import Supervisor
    from tests.test_notify import MemoryBackend, settings

    rec = RunRecord(local_store, "exp-1")
    rec.write_spec(RunSpec(run_id="exp-1", image="img@sha256:" + "a" * 64, command=["true"], backend="memory"))
    rec.create_state("submit")

    class RacedBackend(MemoryBackend):
        """Another supervisor begins the attempt between this one's read and its write."""

        raced = False

        def list(self, run_id=None):
            if not self.raced:
                self.raced = True
                rec.begin_attempt(Role.SUPERVISOR, "sup-b", instances=["vm-b"])
            return super().list(run_id)

    Supervisor(local_store, RacedBackend(), settings(local_store), actor="sup-a").reconcile("exp-1")
    err = capsys.readouterr().err
    assert "exp-1: sup-a's PENDING -> PROVISIONING refused: sup-b wrote PROVISIONING (attempt 1) first" in err
    st = rec.read_state()[0]
    assert (st.attempt, st.updated_by, st.instance) == (1, "sup-b", "vm-b")


# ---- the one typed read --------------------------------------------------------------------------

def test_a_view_reads_what_it_is_asked_for_and_the_last_events(rec):
    from entrypoint.record import ALL_EVENTS, Heartbeat

    _walk_to(rec, State.RUNNING)
    rec.write_heartbeat(Heartbeat(time=1.0, attempt=1, phase="running", progress={"step": 3}))
    v = rec.view(events=2, stop=True)
    assert v.state.state == State.RUNNING and v.expected == rec.read_state()
    assert [ev["to"] for _, ev in v.events] == ["PROVISIONING", "RUNNING"]
    assert v.last_event["to"] == "RUNNING" and v.stop_requested is False and v.spec is None
    assert v.current_heartbeat.progress == {"step": 3} and v.attempts == [1]
    assert [ev["to"] for _, ev in rec.view(events=ALL_EVENTS).events] == ["PENDING", "PROVISIONING", "RUNNING"]
    assert RunRecord(rec.store, "nobody").view() is None


def test_event_names_carry_their_time_and_actor():
    from entrypoint.record import parse_event_name
    from entrypoint.record.paths import event_file

    name = "runs/r/events/" + event_file(1234.5, "sup@host-1")
    assert parse_event_name(name).time == 1234.5 and parse_event_name(name).actor == "sup@host-1"


def test_a_queued_restart_spends_its_restart_once_on_begin_and_keeps_its_attempt(rec):
    """PREEMPTED -> QUEUED -> PROVISIONING: the lost attempt's restart is counted when the next
    one begins (as PREEMPTED -> PROVISIONING does), not at the queue, and not twice."""
    _walk_to(rec, State.PREEMPTED)
    before = rec.read_state()[0]
    st, _ = rec.queued(Role.SUPERVISOR, "sup", reason="waiting for 1 × GPUS", since=123.0)
    assert (st.state, st.attempt, st.restarts) == (State.QUEUED, before.attempt, before.restarts)
    assert (st.queued_after, st.queued_since) == ("PREEMPTED", 123.0)
    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-2"])
    assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, before.attempt + 1, before.restarts + 1)
    assert (st.queued_after, st.queued_since) == (None, None)


def test_a_first_attempt_that_waited_in_the_queue_spends_no_restart(rec):
    st, _ = rec.queued(Role.SUPERVISOR, "sup", reason="waiting")
    assert st.queued_after == "PENDING" and st.queued_since is not None
    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup", instances=["vm-1"])
    assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 1, 0)
