"""The supervisor's stop and clean-up rules (runner/launch/supervisor.py): ``.stop`` is checked
before every create and again after it, so a stopped run is never restarted and what a create
made while the stop landed goes at once; a stopped run's instance gets its grace period; a
finished run leaves no instance behind; a startup script that gave up fails the run.

World: the in-memory backend and a local store on the test's clock (tests/standins/
supervised_runs.py).
"""

from __future__ import annotations

import pytest

from entrypoint.record import State
from runner.launch.supervisor import SELF_DELETE_WAIT
from tests.standins.supervised_runs import GRACE

A1 = "runner-exp-1-a1"


def test_a_run_stopped_before_its_first_create_creates_nothing(supervised):
    w = supervised
    rec = w.submit()
    rec.request_stop("user@test")
    w.supervisor().reconcile("exp-1")
    assert w.state(rec).state == State.STOPPED and w.backend.creates() == []


def test_a_stop_that_lands_while_the_instance_is_being_created_removes_it_at_once(supervised):
    w = supervised
    rec = w.submit()
    w.backend.on_create = lambda plan: rec.request_stop("user@test")  # after the checks, before the reply
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.settle()
    assert w.backend.creates() == [A1] and w.backend.instances() == {}
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.STOPPED


def test_a_stopped_running_run_gives_its_job_the_grace_period_then_ends_stopped(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.agent_running(rec)
    rec.request_stop("user@test")
    sup.reconcile("exp-1")
    w.settle()
    assert w.state(rec).state == State.STOPPED
    assert ("delete", A1, GRACE) in w.backend.calls and set(w.backend.instances()) == {A1}  # its grace
    w.clock.advance(GRACE)
    assert w.backend.instances() == {}


def test_a_preempted_run_that_was_stopped_is_never_restarted(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.agent_running(rec)
    w.backend.begin_preemption(A1)
    w.agent_preempted(rec)
    w.backend.finish_notice(A1)
    rec.request_stop("user@test")
    for _ in range(3):
        sup.reconcile("exp-1")
    assert w.state(rec).state == State.STOPPED and w.backend.creates() == [A1]


@pytest.mark.parametrize("outcome", [State.SUCCEEDED, State.FAILED])
def test_a_finished_runs_instance_is_removed_a_live_one_after_its_grace(supervised, outcome):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.agent_running(rec)
    rec.transition(outcome, "agent", expect_attempt=1, reason="the job exited")
    sup.reconcile("exp-1")  # just ended: its VM is left to delete itself (no racing delete)
    w.settle()
    assert [c for c in w.backend.calls if c[0] == "delete"] == [] and set(w.backend.instances()) == {A1}
    w.clock.advance(SELF_DELETE_WAIT + 1)  # (the record stamps the wall clock, a little ahead)
    sup.reconcile("exp-1")  # it did not: the agent may still be finishing its final sync: grace
    w.settle()
    assert ("delete", A1, GRACE) in w.backend.calls and set(w.backend.instances()) == {A1}
    w.clock.advance(GRACE)
    assert w.backend.instances() == {}


def test_a_finished_runs_instance_that_no_longer_runs_is_removed_without_waiting(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.agent_running(rec)
    rec.transition(State.SUCCEEDED, "agent", expect_attempt=1)
    w.backend.end(A1, exit_code=0)
    sup.reconcile("exp-1")
    w.settle()
    assert ("delete", A1, 0) in w.backend.calls and w.backend.instances() == {}


def test_a_startup_failure_fails_the_run_with_the_scripts_reason_and_leaves_no_instance(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.startup_failed(rec, "gpu-wait", "gpu_timeout")
    sup.reconcile("exp-1")
    w.settle()
    st = w.state(rec)
    assert st.state == State.FAILED and st.reason == "startup failed in phase gpu-wait: gpu_timeout"
    assert w.backend.instances() == {} and w.backend.creates() == [A1]
