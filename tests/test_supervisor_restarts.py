"""The supervisor's restart rules (runner/launch/supervisor.py): a preempted or lost attempt is
replaced by the next one, up to ``max_restarts``; a preemption is a timeline, so a supervisor
that looks during the notice (STOPPING) waits; a VM kept by terminationAction=STOP is started
again in place; a failed create keeps the run where it is and backs off.

World: the in-memory backend and a local store on the test's clock (tests/standins/
supervised_runs.py). The GCE code path of the same rules is tested in test_gce_backend.py.
"""

from __future__ import annotations

import pytest

from entrypoint.record import State
from runner.launch.backends.base import BackendError, InstanceStatus, PermanentBackendError

A1, A2, A3 = "runner-exp-1-a1", "runner-exp-1-a2", "runner-exp-1-a3"


def test_a_preempted_run_restarts_as_the_next_attempt_once_its_vm_is_gone(supervised):
    w = supervised
    rec, sup = w.running()
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)  # DELETE: the VM is gone at power-off
    sup.reconcile("exp-1")
    st = w.state(rec)
    assert (st.state, st.attempt, st.instance, st.restarts) == (State.PROVISIONING, 2, A2, 1)
    assert "after a GCE preemption" in w.reasons(rec, "PREEMPTED")[0]
    assert set(w.backend.instances()) == {A2}


@pytest.mark.parametrize("agent_recorded_it", [False, True], ids=["state-running", "state-preempted"])
@pytest.mark.parametrize("action", ["DELETE", "STOP"])
def test_a_supervisor_that_looks_during_the_preemption_notice_waits_then_restarts(
        supervised, action, agent_recorded_it):
    """Acting during STOPPING would delete the VM that STOP keeps, or start a second VM beside
    one whose agent is still in its final sync (DELETE)."""
    w = supervised
    rec, sup = w.running(termination_action=action)
    w.backend.begin_preemption(A1)
    if agent_recorded_it:
        w.agent_preempted(rec)
    before = list(w.backend.calls)
    w.clock.advance(w.backend.notice_seconds - 1)
    sup.reconcile("exp-1")
    w.settle()
    assert w.backend.calls == before, "the supervisor acted during the preemption notice"
    assert w.backend.instances()[A1].status == InstanceStatus.STOPPING

    w.clock.advance(1)  # power-off
    sup.reconcile("exp-1")
    w.settle()
    st = w.state(rec)
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    if action == "STOP":
        assert w.backend.creates() == [A1] and set(w.backend.instances()) == {A1}
    else:
        assert w.backend.creates() == [A1, A2] and set(w.backend.instances()) == {A2}


def test_with_stop_termination_a_preempted_vm_is_started_again_in_place_not_replaced(supervised):
    w = supervised
    rec, sup = w.running(termination_action="STOP")
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    assert w.backend.instances()[A1].status == InstanceStatus.TERMINATED  # kept, with its disk
    sup.reconcile("exp-1")
    st = w.state(rec)
    assert (st.state, st.attempt, st.instance) == (State.PROVISIONING, 2, A1)
    vm = w.backend.instances()[A1]
    assert (vm.status, vm.attempt) == (InstanceStatus.RUNNING, 2)
    assert w.backend.creates() == [A1] and ("restart", A1, 0.0) in w.backend.calls
    sup.reconcile("exp-1")  # the next pass finds attempt 2 on its VM and leaves it alone
    w.settle()
    assert set(w.backend.instances()) == {A1} and w.backend.creates() == [A1]


def test_a_kept_vm_that_cannot_be_started_again_is_replaced_by_a_fresh_one(supervised, monkeypatch):
    w = supervised
    rec, sup = w.running(termination_action="STOP")
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    monkeypatch.setattr(w.backend, "restart_in_place", lambda inst, plan: None)  # e.g. a stockout on start
    sup.reconcile("exp-1")
    w.settle()
    assert w.state(rec).attempt == 2 and set(w.backend.instances()) == {A2}


def test_a_run_preempted_more_than_max_restarts_times_fails_saying_so(supervised):
    w = supervised
    rec, sup = w.running(max_restarts=2)
    for attempt in (1, 2, 3):
        name = f"runner-exp-1-a{attempt}"
        w.backend.begin_preemption(name)
        w.backend.finish_notice(name)
        sup.reconcile("exp-1")
        if attempt < 3:
            assert w.state(rec).attempt == attempt + 1
            w.agent_running(rec)
    st = w.state(rec)
    assert st.state == State.FAILED and "gave up after 2 restarts (max_restarts=2)" in st.reason
    assert w.backend.creates() == [A1, A2, A3]


def test_an_instance_that_vanished_before_its_job_started_is_a_lost_attempt_after_the_create_grace(
        supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.backend.vanish(A1)
    sup.reconcile("exp-1")  # a fresh create may not be listed yet: wait
    assert (w.state(rec).state, w.backend.creates()) == (State.PROVISIONING, [A1])
    w.clock.advance(61)
    sup.reconcile("exp-1")
    st = w.state(rec)
    assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 2, 1)
    assert w.reasons(rec, "PREEMPTED") == ["instance vanished before the job started"]
    assert w.backend.creates() == [A1, A2]


def test_an_instance_that_ended_before_its_job_started_is_replaced(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.backend.end(A1, exit_code=125)
    sup.reconcile("exp-1")
    w.settle()
    assert "instance ended before the job started (exit 125)" in w.reasons(rec, "PREEMPTED")[0]
    assert w.state(rec).attempt == 2 and set(w.backend.instances()) == {A2}
    assert ("delete", A1, 0) in w.backend.calls  # it no longer runs: no grace to give


def test_an_older_attempts_instance_never_runs_beside_the_current_one(supervised):
    w = supervised
    rec, sup = w.running()
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    sup.reconcile("exp-1")
    # A late create of attempt 1 (a retried insert that landed after all) shows up again.
    spec = rec.read_spec()
    w.backend.create(w.backend.plan(spec, sup.launch_context(spec, 1)))
    sup.reconcile("exp-1")
    w.settle()
    assert set(w.backend.instances()) == {A2}


def test_a_failed_create_keeps_the_run_journals_why_and_backs_off_before_the_next(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    w.backend.create_errors.append(BackendError("ZONE_RESOURCE_POOL_EXHAUSTED in every zone"))
    sup.reconcile("exp-1")
    assert (w.state(rec).state, w.state(rec).attempt) == (State.PROVISIONING, 1)
    said = [ev["reason"] for _, ev in rec.events() if "create failed" in (ev.get("reason") or "")]
    assert said == ["create failed, retrying in 1s: ZONE_RESOURCE_POOL_EXHAUSTED in every zone"]
    sup.reconcile("exp-1")  # within the backoff: no second create
    assert w.backend.creates() == [A1] and w.backend.instances() == {}
    w.clock.advance(1.5)
    sup.reconcile("exp-1")
    assert w.backend.creates() == [A1, A1] and set(w.backend.instances()) == {A1}


def test_a_create_that_can_never_work_fails_the_run_with_the_fix(supervised):
    w = supervised
    rec = w.submit()
    w.backend.create_errors.append(PermanentBackendError("image gone: push it again, then resubmit"))
    w.supervisor().reconcile("exp-1")
    st = w.state(rec)
    assert st.state == State.FAILED and st.reason == "image gone: push it again, then resubmit"
    assert w.backend.instances() == {}
