"""A hosted ``once`` pass that finds a run's VM in its preemption notice waits it out and replaces
the run in the same execution (runner/launch/notice_wait.py), so the pass a preempted VM asks
for (gcp/shutdown.sh) restarts the run in seconds instead of leaving it to the next minute.

World: the in-memory backend on the test's clock (tests/standins/memory_backend.py models GCE's
notice: STOPPING for 30 s, then powered off); the wait's sleep advances that clock, so the
figures below are the modelled seconds, not this machine's.
"""

from __future__ import annotations

import pytest

from entrypoint.record import State
from runner.launch.notice_wait import DEFAULT_WAIT_S, POLL_S, wait_out_notices

A1, A2 = "runner-exp-1-a1", "runner-exp-1-a2"


def _waited(w, sup, states, budget=DEFAULT_WAIT_S):
    """wait_out_notices on the world's clock; returns (runs stepped, modelled seconds waited)."""
    t0 = w.clock()
    stepped = wait_out_notices(sup, states, budget, sleep=w.clock.advance, clock=w.clock)
    w.settle()
    return stepped, w.clock() - t0


@pytest.mark.parametrize("action", ["DELETE", "STOP"])
def test_a_pass_that_finds_the_notice_replaces_the_run_once_the_vm_is_off(supervised, action):
    w = supervised
    rec, sup = w.running(termination_action=action)
    w.clock.advance(5)
    w.backend.begin_preemption(A1)  # the VM's shutdown script asks for a pass now
    w.agent_preempted(rec)
    w.clock.advance(2)  # Cloud Run starts the execution
    states = sup.reconcile_all()
    assert (w.state(rec).state, w.state(rec).attempt) == (State.PREEMPTED, 1)  # the notice: it waits
    stepped, waited = _waited(w, sup, states)
    assert stepped == ["exp-1"]
    st = w.state(rec)
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    # Replaced within a poll of the power-off (28 s of the notice were left), not a minute later.
    assert 28 <= waited <= 28 + POLL_S
    assert set(w.backend.instances()) == ({A1} if action == "STOP" else {A2})


def test_the_wait_is_bounded_and_leaves_a_longer_notice_to_the_next_pass(supervised):
    w = supervised
    rec, sup = w.running()
    w.backend.notice_seconds = 600  # a VM that stays STOPPING far longer than GCE's notice
    w.backend.begin_preemption(A1)
    states = sup.reconcile_all()
    stepped, waited = _waited(w, sup, states, budget=45)
    assert stepped == [] and waited <= 45
    assert w.backend.creates() == [A1] and w.state(rec).attempt == 1  # never a second VM beside it


def test_a_pass_that_finds_no_notice_does_not_wait(supervised):
    w = supervised
    rec, sup = w.running()
    states = sup.reconcile_all()
    stepped, waited = _waited(w, sup, states)
    assert stepped == [] and waited == 0
    assert w.state(rec).state == State.RUNNING


@pytest.mark.parametrize("agent_wrote_first", [True, False])
def test_a_notice_that_ends_before_the_wait_looks_still_replaces_the_run(supervised, agent_wrote_first):
    """The pass saw the notice; the VM powered off before the wait's first listing (a loaded
    execution, a late pass in the notice): the wait must still step the run, not find "no notice"
    and leave the restart to the next minute's tick."""
    w = supervised
    rec, sup = w.running()
    w.backend.begin_preemption(A1)
    if agent_wrote_first:
        w.agent_preempted(rec)
    w.clock.advance(29)  # the pass lands in the last second of the notice
    states = sup.reconcile_all()
    assert w.state(rec).attempt == 1  # the notice: it waits
    w.clock.advance(5)  # powered off before the wait looks
    w.settle()
    stepped, waited = _waited(w, sup, states)
    assert stepped == ["exp-1"], "the pass left the run in its notice; the wait forgot it"
    st = w.state(rec)
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    assert waited <= POLL_S
