"""Review of issue 18 (the supervisor's phase marks): a ``noticed`` mark written for an attempt
that the same pass then never begins.

``Supervisor._restart`` marks ``noticed`` on attempt N+1 before it knows whether N+1 will begin:
when the run has used its restarts (FAILED) or has a stop request (STOPPED), N+1 is never begun,
yet its mark stays (create-only: "the first mark stands"). ``submit --restart`` keeps the attempt
counter (RunRecord.reopen), so the user's restart hours later begins exactly that N+1, whose
timeline then starts at the old loss: ``ops status`` shows a "recovery" of hours for a VM that
came up in seconds, and bench/ops sums count it.

World: tests/standins/supervised_runs.py (memory backend, the test's clock).
"""

from __future__ import annotations

from entrypoint.record import State
from entrypoint.record.phases import NOTICED
from entrypoint.record.timeline import build_recovery

A1 = "runner-exp-1-a1"
HOURS = 3 * 3600.0


def test_a_restart_hours_after_a_run_gave_up_is_not_timed_from_the_old_loss(supervised):
    w = supervised
    rec, sup = w.running(max_restarts=0)
    w.backend.begin_preemption(A1)
    w.agent_preempted(rec)
    sup.reconcile("exp-1")  # in the notice: WAIT
    w.clock.advance(31)  # the notice is over, the VM gone
    sup.reconcile("exp-1")
    w.settle()
    assert w.state(rec).state == State.FAILED  # max_restarts=0: it gives up, attempt 2 never begins
    assert w.state(rec).attempt == 1

    w.clock.advance(HOURS)
    restarted_at = w.clock()
    rec.reopen("user@test", "restart requested by user")  # `runner submit --restart`
    sup.reconcile("exp-1")
    w.settle()
    st = w.state(rec)
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    r = build_recovery(2, rec.phases(2))
    noticed = rec.phases(2).get(NOTICED)
    assert r.origin is not None and r.origin >= restarted_at - 1, (
        f"attempt 2 (begun by the user's restart) is timed from {restarted_at - r.origin:.0f} s before "
        f"that restart: its '{NOTICED}' mark ({noticed}) was written when the run gave up")
