"""After a one-shot pass: wait out the shutdown notices it saw, so that one execution replaces a
preempted run instead of leaving it to the next one.

Why: a preempted VM asks the hosted supervisor for a pass at once (gcp/shutdown.sh), and that
pass finds the VM STOPPING, in its notice, which nobody may act on (``recovery.decide``: WAIT;
deleting it would cut the final sync short, a replacement would run beside it). A ``once``
execution that ended there would leave the restart to the next scheduled minute: the VM's request
would buy nothing. So after its pass the execution watches the runs whose current attempt is in
its notice and steps each again as soon as the listing no longer shows it in the notice, within
a bound (the notice plus a margin for power-off and the listing's lag).

It does so for every one-shot pass that finds a notice, not only one a VM asked for: the VM
cannot tell the execution that it asked (per-execution overrides need
``run.jobs.runWithOverrides``, a role that may also change what the job runs, too much for a VM
account), and a scheduled pass that happens to land in a notice gains the same time. The cost is
bounded: only while a notice is running, at most ``DEFAULT_WAIT_S`` of one execution per
preemption. Every step is the supervisor's own compare-and-swap ``reconcile``, so a scheduled
pass running at the same time cannot make a second attempt.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

from runner.launch.backends.base import Attempt, group_attempts
from runner.naming import label_value

if TYPE_CHECKING:
    from entrypoint.record import RunState
    from runner.launch.supervisor import Supervisor

# GCE gives a preempted VM about 30 s between the ACPI soft-off and the power-off
# (https://cloud.google.com/compute/docs/instances/spot#preemption-process).
NOTICE_S = 30.0
# STOPPING to TERMINATED after the power-off, and a listing that lags the state by a few seconds.
MARGIN_S = 15.0
DEFAULT_WAIT_S = NOTICE_S + MARGIN_S
POLL_S = 2.0


def in_notice(sup: "Supervisor", states: dict[str, "RunState"]) -> set[str]:
    """The unfinished runs among ``states`` whose current attempt is in its shutdown notice now."""
    listed = _attempts_by_run(sup, states) or {}
    return {run_id for run_id, st in states.items()
            if not st.state.terminal and _going_away(listed.get(run_id, {}).get(st.attempt))}


def wait_out_notices(sup: "Supervisor", states: dict[str, "RunState"], budget_s: float = DEFAULT_WAIT_S,
                     poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Step again each run of ``states`` (a pass's result) whose current attempt was in its notice,
    once it is no longer; give up on the others after ``budget_s`` (the next pass has them).
    Returns the runs stepped, in the order they were."""
    deadline = clock() + budget_s
    # The runs the pass left in their notice, and any in it now: a notice that ended between the
    # pass and this listing must still be acted on here (else it waits for the next minute).
    waiting = in_notice(sup, states) | {r for r in sup.left_in_notice
                                        if r in states and not states[r].state.terminal}
    stepped: list[str] = []
    while waiting and clock() < deadline:
        sleep(max(0.0, min(poll_s, deadline - clock())))
        listed = _attempts_by_run(sup, {r: states[r] for r in waiting})
        if listed is None:
            continue  # the listing failed: ask again next round
        for run_id in sorted(waiting):
            if _going_away(listed.get(run_id, {}).get(states[run_id].attempt)):
                continue
            waiting.discard(run_id)
            sup.reconcile(run_id)  # lists the run afresh and decides on its state now
            stepped.append(run_id)
    return stepped


def _going_away(att: Attempt | None) -> bool:
    return att is not None and att.going_away


def _attempts_by_run(sup: "Supervisor", states: dict[str, "RunState"]) -> dict[str, dict[int, Attempt]] | None:
    """One listing for every run of ``states``, grouped by run and attempt (None: it failed)."""
    by_label = {label_value(run_id): run_id for run_id in states}
    try:
        instances = sup.backend.list()
    except Exception as e:  # noqa: BLE001 - one failed listing must not end the wait
        print(f"runner: listing instances failed while waiting out a shutdown notice ({type(e).__name__}: {e})",
              file=sys.stderr)
        return None
    grouped: dict[str, list] = {}
    for inst in instances:
        run_id = by_label.get(inst.run_label)
        if run_id is not None:
            grouped.setdefault(run_id, []).append(inst)
    return {run_id: group_attempts(insts) for run_id, insts in grouped.items()}
