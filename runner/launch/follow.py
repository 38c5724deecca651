"""Attached supervision: reconcile one run every poll and print its transitions as they happen,
with the job's output between them."""

from __future__ import annotations

import time
from typing import Callable

from entrypoint.record import RunRecord, RunState, iso
from runner.launch.job_output import FOLLOW_POLL_S, LineSplitter, OutputCursor
from runner.launch.supervisor import Supervisor
from runner.launch.supervisor_heartbeat import run_pass


def format_event(ev: dict) -> str:
    head = f"{iso(ev['time'])}  attempt {ev.get('attempt') or '-'}"
    if ev.get("from") is None and ev.get("to") is None:  # a note or a provider operation
        return f"{head}  {'':>12}    {'':<12} [{ev['actor']}]  {ev.get('reason') or ''}"
    line = f"{head}  {ev.get('from') or '-':>12} -> {ev.get('to') or '-':<12} [{ev['actor']}]"
    return line + (f"  {ev['reason']}" if ev.get("reason") else "")


ShowLine = Callable[[int, str], None]  # (attempt, one line of the job's output without its newline)


def follow_run(sup: Supervisor, run_id: str, poll_interval: float, say: Callable[[str], None],
               once: bool = False, show_output: ShowLine | None = None) -> RunState:
    """Supervise ``run_id`` until it reaches a terminal state; returns that state.

    With ``show_output``, each line the job prints is handed to it as it arrives (looked for
    every ``FOLLOW_POLL_S`` between passes, so a line does not wait for the next pass), in order
    with the transitions: an attempt's output comes before the events that ended it.

    Returns only after the supervisor's background deletes finished, so a run that ended has no
    instance left when the caller reports it. A Ctrl-C (``KeyboardInterrupt``) is raised at once,
    without that wait: the caller first says that the run goes on, then waits for the deletes or
    says it left them (``runner.cli.cmd_submit``).
    """
    try:
        final = _follow(sup, run_id, poll_interval, say, once, show_output)
    except KeyboardInterrupt:
        raise
    except BaseException:
        sup.drain()
        raise
    sup.drain()
    return final


def _follow(sup: Supervisor, run_id: str, poll_interval: float, say: Callable[[str], None],
            once: bool, show_output: ShowLine | None) -> RunState:
    news = _News(RunRecord(sup.store, run_id), say,
                 _OutputLines(sup, run_id, show_output) if show_output is not None else None)

    def step() -> dict[str, RunState]:
        one = sup.reconcile(run_id)
        return {run_id: one} if one is not None else {}

    while True:
        st = run_pass(sup, step, run_id=run_id).get(run_id)  # recorded: ops status sees it supervised
        if st is None:  # a pass that failed (said on stderr), or a record that is gone
            view = news.record.view(heartbeat=False)
            if view is None:
                raise LookupError(f"run {run_id} vanished from the store")
            st = view.state
        news.catch_up(st.attempt)
        if st.state.terminal:
            # The step may have judged the run live just before its agent recorded the end: one
            # more step removes what is left (drained before we return), so nothing bills.
            sup.reconcile(run_id)
            news.catch_up(st.attempt, final=True)
            return st
        if once:
            return st
        if news.output is None:
            time.sleep(poll_interval)
            continue
        # Between passes the job's lines (and the events that come with them) are shown every
        # FOLLOW_POLL_S: a line need not wait for the next pass. Earlier attempts: each pass.
        until = time.monotonic() + poll_interval
        while (left := until - time.monotonic()) > 0:
            time.sleep(min(FOLLOW_POLL_S, left))
            try:
                news.catch_up(st.attempt, only_current=True)
            except Exception:  # noqa: BLE001 - a store hiccup between passes: the next pass looks again
                pass


class _News:
    """Transitions and the job's lines in the order they happened: an attempt's lines after the
    event that started it, and before the one that took it out of RUNNING."""

    def __init__(self, record: RunRecord, say: Callable[[str], None], output: "_OutputLines | None") -> None:
        self.record = record
        self.say = say
        self.output = output
        self.seen: str | None = None
        # Attempts whose "-> RUNNING" was shown. The events are read before the output, so a
        # line can be read whose start was not: it waits for the next look (or the end).
        self.running: set[int] = set()

    def catch_up(self, attempt: int, final: bool = False, only_current: bool = False) -> None:
        for name, ev in self.record.events(after=self.seen):
            if self.output is not None and ev.get("from") == "RUNNING":  # its lines before its end
                self.output.show(min(ev.get("attempt") or attempt, attempt), only_current=only_current)
            self.say(format_event(ev))
            self.seen = name
            if ev.get("to") == "RUNNING" and ev.get("attempt"):
                self.running.add(ev["attempt"])
        if self.output is None:
            return
        if final or attempt in self.running:
            self.output.show(attempt, final=final, only_current=only_current)
        elif not only_current:
            self.output.show(attempt - 1)


class _OutputLines:
    """The job's output as whole lines, each attempt's shown once, partial lines held back until
    they end (or the attempt does)."""

    def __init__(self, sup: Supervisor, run_id: str, show: ShowLine) -> None:
        # No startup console: an attached submit shows the job, `ops logs` shows the VM's boot.
        self.cursor = OutputCursor(sup.store, run_id, sup.backend, startup_console=False)
        self.show_line = show
        self.lines: dict[int, LineSplitter] = {}

    def show(self, last_attempt: int, final: bool = False, only_current: bool = False) -> None:
        try:
            chunks = self.cursor.new(last_attempt, first_attempt=last_attempt if only_current else 1)
        except Exception:  # noqa: BLE001 - output is a courtesy: never let it stop the supervision
            return
        for a, _kind, chunk in chunks:
            split = self.lines.setdefault(a, LineSplitter())
            for ln in split.feed(chunk):
                self.show_line(a, ln.decode("utf-8", "replace").rstrip("\n"))
        for a, split in self.lines.items():
            if final or a < last_attempt:  # an attempt that is over keeps no half line
                for ln in split.flush():
                    self.show_line(a, ln.decode("utf-8", "replace").rstrip("\n"))
