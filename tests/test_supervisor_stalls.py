"""The supervisor's stall rules (runner/launch/supervisor.py): a running job is judged by when its
reported progress last changed, not by its heartbeat alone; a job that reports no progress is
judged by its heartbeat; syncing phases are not stalls; an instance still booting past its boot
window is stalled (a GPU VM's window covers its driver wait). A stalled attempt is replaced only
once its instance, given its grace period, no longer runs.

World: the in-memory backend and a local store on the test's clock (tests/standins/
supervised_runs.py).
"""

from __future__ import annotations

from entrypoint.record import Heartbeat, State
from tests.standins.supervised_runs import GRACE, STALL_WINDOW

A1, A2 = "runner-exp-1-a1", "runner-exp-1-a2"


def test_a_live_job_whose_progress_stopped_is_stalled_and_replaced_after_its_grace(supervised):
    w = supervised
    rec, sup = w.running()
    w.heartbeat(rec, step=5)
    stuck_since = w.clock()
    w.clock.advance(STALL_WINDOW + 1)
    w.heartbeat(rec, step=5, progress_changed_at=stuck_since)  # alive, but no step for a minute
    sup.reconcile("exp-1")
    st = w.state(rec)
    assert st.state == State.STALLED and st.reason.startswith("no progress for 61s")
    w.settle()
    # The stalled instance is given its grace period, and nothing is created beside it meanwhile.
    assert ("delete", A1, GRACE) in w.backend.calls and w.backend.creates() == [A1]
    sup.reconcile("exp-1")
    assert w.backend.creates() == [A1] and w.state(rec).state == State.STALLED
    w.clock.advance(GRACE)  # the job ignored SIGTERM: killed at the end of its grace
    sup.reconcile("exp-1")
    st = w.state(rec)
    assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 2, 1)
    assert set(w.backend.instances()) == {A2}


def test_a_job_making_progress_is_never_stalled_however_long_it_runs(supervised):
    w = supervised
    rec, sup = w.running()
    for step in range(1, 11):
        w.clock.advance(STALL_WINDOW * 0.9)
        w.heartbeat(rec, step=step)
        sup.reconcile("exp-1")
    assert w.state(rec).state == State.RUNNING and w.backend.creates() == [A1]


def test_a_job_that_reports_no_progress_is_judged_by_its_heartbeat(supervised):
    w = supervised
    rec, sup = w.running()
    for _ in range(3):
        w.clock.advance(STALL_WINDOW * 0.9)
        w.heartbeat(rec, step=None)
        sup.reconcile("exp-1")
    assert w.state(rec).state == State.RUNNING
    w.clock.advance(STALL_WINDOW + 1)  # the heartbeat stopped too
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.STALLED


def test_restoring_or_finishing_a_checkpoint_is_not_a_stall(supervised):
    w = supervised
    rec, sup = w.running()
    w.heartbeat(rec, step=5)
    stuck_since = w.clock()
    for phase in ("restoring", "finishing"):
        w.clock.advance(STALL_WINDOW + 1)
        w.heartbeat(rec, step=5, phase=phase, progress_changed_at=stuck_since)
        sup.reconcile("exp-1")
        assert w.state(rec).state == State.RUNNING, phase


def test_a_heartbeat_of_an_older_attempt_does_not_keep_the_current_one_alive(supervised):
    w = supervised
    rec, sup = w.running()
    w.backend.begin_preemption(A1)
    w.backend.finish_notice(A1)
    sup.reconcile("exp-1")
    w.agent_running(rec)  # attempt 2 started, then hung without a heartbeat of its own
    w.clock.advance(STALL_WINDOW + 1)
    # Attempt 1's agent, still syncing somewhere, writes a fresh heartbeat with fresh progress.
    rec.write_heartbeat(Heartbeat(time=w.clock(), attempt=1, phase="running", progress={"step": 9},
                                  progress_changed_at=w.clock()))
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.STALLED


def test_an_instance_still_booting_past_the_stall_window_is_stalled(supervised):
    w = supervised
    rec = w.submit()
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.clock.advance(STALL_WINDOW - 1)
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.PROVISIONING
    w.clock.advance(2)
    sup.reconcile("exp-1")
    assert w.reasons(rec, "STALLED")[0].startswith("still booting after 61s (window 60s)")


def test_a_gpu_vm_may_boot_for_its_whole_driver_wait_whatever_the_stall_window(supervised):
    w = supervised
    rec = w.submit(backend="gce", gpu="nvidia-tesla-t4", timeouts={"gpu_timeout": 300})
    sup = w.supervisor()
    sup.reconcile("exp-1")
    w.clock.advance(290)
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.PROVISIONING
    w.clock.advance(20)
    sup.reconcile("exp-1")
    assert w.reasons(rec, "STALLED")[0].endswith("(window 300s)")


def test_supervisors_minutes_off_the_vms_clock_judge_stalls_by_their_own_sightings(supervised):
    """Two supervisors on one store, 5 minutes ahead of and behind the VM, taking turns: neither
    stalls a run that makes progress, and a run whose progress stops is stalled once the window
    has passed, by every clock (issue 17 §4; the faketime version is tests/chaos/test_clock_skew.py)."""
    w = supervised
    rec, first = w.running()
    ahead, behind = w.supervisor(actor="ahead"), w.supervisor(actor="behind")
    for sup, skew in ((ahead, 300.0), (behind, -300.0)):
        sup.now = lambda skew=skew: w.clock() + skew
        sup.clock = f"skew{skew:+.0f}"
    for step in range(1, 7):
        w.clock.advance(STALL_WINDOW * 0.4)
        w.heartbeat(rec, step=step)
        (ahead if step % 2 else behind).reconcile("exp-1")
        assert w.state(rec).state == State.RUNNING, step
    stuck_since = w.clock()
    for turn in range(4):  # hung: heartbeats go on, step 6 stays
        w.clock.advance(STALL_WINDOW * 0.4)
        w.heartbeat(rec, step=6, progress_changed_at=stuck_since)
        (ahead if turn % 2 else behind).reconcile("exp-1")
        stalled = w.reasons(rec, "STALLED")
        assert bool(stalled) == (w.clock() - stuck_since > STALL_WINDOW), (turn, stalled)
    assert w.reasons(rec, "STALLED")[0].startswith("no progress for 72s")  # 3 turns of 24 s: exact, by its own clock


def test_a_damaged_sighting_record_delays_a_stall_but_never_invents_one(supervised):
    w = supervised
    rec, sup = w.running()
    w.heartbeat(rec, step=3)
    sup.reconcile("exp-1")
    w.store.write(rec.name("supervisor/observed.json"), b"{not json")
    w.clock.advance(STALL_WINDOW + 1)
    w.heartbeat(rec, step=3, progress_changed_at=w.clock())  # the agent's own word: just moved
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.RUNNING
    w.clock.advance(STALL_WINDOW + 1)
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.STALLED


# ---- issue 20 item 5: stalling the same way every time ends the run early ---------------------

def _stall_at(w, rec, sup, step: int) -> None:
    """The current attempt starts, reports ``step`` and hangs there past the stall window."""
    if w.state(rec).state == State.PROVISIONING:
        w.agent_running(rec)
    w.heartbeat(rec, step=step)
    stuck_since = w.clock()
    w.clock.advance(STALL_WINDOW + 1)
    w.heartbeat(rec, step=step, progress_changed_at=stuck_since)
    sup.reconcile("exp-1")


def _next_attempt(w, rec, sup) -> None:
    """The stalled instance is killed after its grace period and the next attempt is created."""
    w.settle()
    w.clock.advance(GRACE)
    sup.reconcile("exp-1")
    assert w.state(rec).state == State.PROVISIONING


def test_three_consecutive_stalls_at_the_same_step_end_the_run_failed_with_the_rule(supervised):
    w = supervised
    rec, sup = w.running(max_restarts=10)
    for attempt in (1, 2):
        _stall_at(w, rec, sup, step=40)
        assert w.state(rec).state == State.STALLED, attempt
        _next_attempt(w, rec, sup)
    _stall_at(w, rec, sup, step=40)
    st = w.state(rec)
    assert (st.state, st.attempt, st.restarts) == (State.FAILED, 3, 2)  # not 10 restarts later
    assert st.reason.startswith('stalled 3 attempts in a row at the same progress {"step": 40}')
    assert "3 consecutive stalls at the same progress end the run" in st.reason
    assert "runner submit --restart --run-id exp-1" in st.reason
    w.clock.advance(GRACE)
    sup.reconcile("exp-1")
    w.settle()
    assert not any(i.alive for i in w.backend.instances().values())  # no VM left billing
    assert len(w.backend.creates()) == 3


def test_stalls_at_different_steps_or_not_in_a_row_are_only_restarted(supervised):
    w = supervised
    rec, sup = w.running(max_restarts=10)
    for step in (40, 40, 41, 41):  # progress moved on between the second and third stall
        _stall_at(w, rec, sup, step=step)
        assert w.state(rec).state == State.STALLED, step
        _next_attempt(w, rec, sup)
    w.agent_running(rec)
    w.agent_preempted(rec)  # an attempt lost another way breaks the streak too
    sup.reconcile("exp-1")
    _next_attempt(w, rec, sup)
    _stall_at(w, rec, sup, step=41)
    assert w.state(rec).state == State.STALLED
