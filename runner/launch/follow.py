"""Attached supervision: reconcile one run every poll and print its transitions as they happen."""

from __future__ import annotations

import time
from typing import Callable

from entrypoint.record import RunRecord, RunState, iso
from runner.launch.supervisor import Supervisor
from runner.launch.supervisor_heartbeat import run_pass


def format_event(ev: dict) -> str:
    head = f"{iso(ev['time'])}  attempt {ev.get('attempt') or '-'}"
    if ev.get("from") is None and ev.get("to") is None:  # a note or a provider operation
        return f"{head}  {'':>12}    {'':<12} [{ev['actor']}]  {ev.get('reason') or ''}"
    line = f"{head}  {ev.get('from') or '-':>12} -> {ev.get('to') or '-':<12} [{ev['actor']}]"
    return line + (f"  {ev['reason']}" if ev.get("reason") else "")


def follow_run(sup: Supervisor, run_id: str, poll_interval: float, say: Callable[[str], None],
               once: bool = False) -> RunState:
    """Supervise ``run_id`` until it reaches a terminal state; returns that state.

    Returns only after the supervisor's background deletes finished, so a run that ended has no
    instance left when the caller reports it. A Ctrl-C (``KeyboardInterrupt``) is raised at once,
    without that wait: the caller first says that the run goes on, then waits for the deletes or
    says it left them (``runner.cli.cmd_submit``).
    """
    try:
        final = _follow(sup, run_id, poll_interval, say, once)
    except KeyboardInterrupt:
        raise
    except BaseException:
        sup.drain()
        raise
    sup.drain()
    return final


def _follow(sup: Supervisor, run_id: str, poll_interval: float, say: Callable[[str], None],
            once: bool) -> RunState:
    rec = RunRecord(sup.store, run_id)
    seen: str | None = None

    def step() -> dict[str, RunState]:
        one = sup.reconcile(run_id)
        return {run_id: one} if one is not None else {}

    while True:
        st = run_pass(sup, step, run_id=run_id).get(run_id)  # recorded: ops status sees it supervised
        for name, ev in rec.events(after=seen):
            say(format_event(ev))
            seen = name
        if st is None:  # a pass that failed (said on stderr), or a record that is gone
            view = rec.view(heartbeat=False)
            if view is None:
                raise LookupError(f"run {run_id} vanished from the store")
            st = view.state
        if st.state.terminal:
            # The step may have judged the run live just before its agent recorded the end: one
            # more step removes what is left (drained before we return), so nothing bills.
            sup.reconcile(run_id)
            return st
        if once:
            return st
        time.sleep(poll_interval)
