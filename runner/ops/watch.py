"""``runner ops watch``: a live table of runs, or a stream of JSON lines for scripts.

The table is redrawn in place (rich's ``Live``), one render per poll, so the terminal never
flickers and scroll-back is not flooded. The JSON stream prints a line only when something a
script could act on changed (state, attempt, zone, progress, restarts...), never merely because
a heartbeat got one second older.

When an attempt that began while watching reaches its first step, its run's row carries the
recovery (``recovery``: ``runs.recovery_entry``), shown under the table and in the JSON stream
(``RecoveryLines`` says what that costs).

A run whose record cannot be read is an error row (``runs.error_row``): shown as DAMAGED with
the object it names under the table, or as its ``{"run_id", "error"}`` line; every other run
shows as usual.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

from entrypoint.record import DamagedRecord, RunRecord, State
from entrypoint.record.phases import FIRST_STEP
from entrypoint.record.timeline import duration
from entrypoint.store import Store, StoreError
from runner.launch.supervisor_heartbeat import FUTURE_TOLERANCE
from runner.ops.runs import attempt_recovery, list_runs, recovery_entry

# What makes a row "changed" for --json: everything except values that move with the clock.
_VOLATILE = ("heartbeat_age_s", "updated_age_s", "eta_s", "heartbeat_at", "sync", "cost", "cost_text")

Row = dict[str, Any]
Enrich = Callable[[Row], None]


class RecoveryLines:
    """Adds to a run's row the recovery of an attempt that began while watching, once that
    attempt's first step is marked (``recovery``), and keeps it there until the next one.

    Cheap by construction: nothing is read for a run whose attempt has not changed since the
    watch began (unless it was then being provisioned); while an attempt waits for its first
    step, one existence check of that mark per frame; once it is there, the attempt's marks
    once (a listing and up to eight reads), never again.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._attempt: dict[str, int] = {}  # run -> the attempt its row showed last
        self._waiting: dict[str, int] = {}  # run -> the attempt whose first step is awaited
        self._shown: dict[str, Row] = {}  # run -> the recovery its row carries

    def annotate(self, rows: list[Row]) -> None:
        for row in rows:
            if "error" in row:
                continue
            run, attempt = row["run_id"], row["attempt"]
            before = self._attempt.get(run)
            self._attempt[run] = attempt
            if (before is not None and attempt > before) or (before is None and row["state"] == "PROVISIONING"):
                self._waiting[run] = attempt
            if self._waiting.get(run) == attempt and attempt >= 1:
                self._look(run, attempt, row["state"])
            if run in self._shown:
                row["recovery"] = self._shown[run]

    def _look(self, run: str, attempt: int, state: str) -> None:
        rec = RunRecord(self.store, run)
        try:
            found = self.store.exists(rec.name(rec.phase_name(attempt, FIRST_STEP)))
            r = attempt_recovery(self.store, run, attempt) if found else None
        except (StoreError, DamagedRecord):
            return  # a store hiccup: look again next frame; a watch must not die of it
        if found:
            if r is not None:
                self._shown[run] = recovery_entry(r, live=False)
            del self._waiting[run]
        elif State(state).terminal:
            del self._waiting[run]  # it will never take a first step now


def snapshots(store: Store, run_ids: list[str] | None, interval: float,
              enrich: Enrich | None = None) -> Iterator[list[Row]]:
    """The runs' rows every ``interval`` seconds, forever (the caller decides when to stop), with
    the recovery of each attempt that reached its first step while watching (``RecoveryLines``)."""
    recoveries = RecoveryLines(store)
    while True:
        rows = list_runs(store, run_ids)
        recoveries.annotate(rows)
        for row in rows:
            if enrich is not None:
                enrich(row)
        yield rows
        time.sleep(interval)


def changes(rows: list[Row], seen: dict[str, str]) -> list[Row]:
    """The rows that differ from what was last emitted for their run (updates ``seen``)."""
    out = []
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k not in _VOLATILE}, sort_keys=True, default=str)
        if seen.get(row["run_id"]) != key:
            seen[row["run_id"]] = key
            out.append(row)
    return out


def all_done(rows: list[Row], run_ids: list[str] | None) -> bool:
    """With named runs: every one of them has reached a terminal state, or cannot be read (a
    damaged record does not mend itself while we watch: waiting on it would never end)."""
    terminal = {"SUCCEEDED", "FAILED", "STOPPED"}
    return bool(run_ids) and len(rows) == len(run_ids) and all(
        "error" in r or r["state"] in terminal for r in rows)


_STATE_STYLE = {
    "RUNNING": "green", "SUCCEEDED": "bold green", "FAILED": "bold red", "STOPPED": "dim",
    "PREEMPTED": "yellow", "STALLED": "red", "ERRORED": "red", "PENDING": "cyan",
    "PROVISIONING": "cyan",
}


def _progress_cell(p: dict[str, Any]) -> str:
    step, total = p.get("step"), p.get("total")
    if step is None:
        return "-"
    # The job's own progress file: free-form, so only numbers get a percentage.
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total:
        return f"{step}/{total} {100 * step / total:.0f}%"
    return str(step)


def _age_cell(age_s: float) -> str:
    """How old a heartbeat is; one stamped well ahead of this clock is said so, not shown as 0s."""
    if age_s < -FUTURE_TOLERANCE:
        return f"in {duration(-age_s)} (clock skew?)"
    return duration(age_s)


def render_table(rows: list[Row], title: str) -> Any:
    """The rich ``Table`` for ``rows`` (imported lazily: plain ``runner --help`` stays fast)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for col, just in (("RUN", "left"), ("STATE", "left"), ("ATT", "right"), ("ZONE", "left"),
                      ("HEARTBEAT", "right"), ("PROGRESS", "right"), ("RATE", "right"),
                      ("ETA", "right"), ("RESTARTS", "right"), ("COST", "right")):
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        if "error" in r:
            t.add_row(r["run_id"], "[bold red]DAMAGED[/]", *["-"] * 8)
            continue
        live = r["state"] not in ("SUCCEEDED", "FAILED", "STOPPED")
        hb = _age_cell(r["heartbeat_age_s"]) if live and r["heartbeat_age_s"] is not None else "-"
        rate = f"{r['rate']:.2f}/s" if r.get("rate") else "-"
        t.add_row(
            r["run_id"], f"[{_STATE_STYLE.get(r['state'], '')}]{r['state']}[/]", str(r["attempt"]),
            r.get("zone") or "-", hb, _progress_cell(r["progress"]), rate, duration(r.get("eta_s")),
            str(r.get("restarts", 0)), r.get("cost_text", "-"),
        )
    if not rows:
        t.add_row("(no runs yet)", "", "", "", "", "", "", "", "", "")
    return t


def damage_lines(rows: list[Row]) -> list[str]:
    """One line per error row: the run, and the object that cannot be read and why."""
    return [f"{r['run_id']}: cannot read its record: {r['error']}" for r in rows if "error" in r]


def recovery_lines(rows: list[Row]) -> list[str]:
    """One line per run whose row carries a recovery: ``RUN attempt N: recovery 1m12s: ...``."""
    return [f"{r['run_id']} attempt {r['recovery']['attempt']}: {r['recovery']['text']}"
            for r in rows if r.get("recovery")]


def watch_table(frames: Iterator[list[Row]], run_ids: list[str] | None, store_url: str,
                console: Any = None, caption: Callable[[list[Row]], str] | None = None) -> list[Row]:
    """Draw ``frames`` in place until the named runs end (or forever); returns the last rows.

    ``caption`` (read each frame, given its rows) goes under the table: who last supervised, and
    a warning when a live run of those rows is unwatched."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    rows: list[Row] = []
    title = f"runs in {store_url} — Ctrl-C to quit"
    if not console.is_terminal:
        # No cursor control (a pipe, a log file): print a table only when something changed.
        seen: dict[str, str] = {}
        for rows in frames:
            if changes(rows, seen):
                console.print(_captioned(render_table(rows, f"{time.strftime('%H:%M:%S')} {title}"), caption, rows))
            if all_done(rows, run_ids):
                break
        return rows
    with Live(console=console, auto_refresh=False, transient=False) as live:
        for rows in frames:
            live.update(_captioned(render_table(rows, f"{time.strftime('%H:%M:%S')} {title}"), caption, rows),
                        refresh=True)
            if all_done(rows, run_ids):
                break
    return rows


def _captioned(table: Any, caption: Callable[[list[Row]], str] | None, rows: list[Row] | None = None) -> Any:
    from rich.markup import escape

    lines = [f"[red]{escape(ln)}[/]" for ln in damage_lines(rows or [])]
    lines += [escape(ln) for ln in recovery_lines(rows or [])]
    if caption is not None:
        lines.append(caption(rows or []))
    if lines:
        table.caption, table.caption_justify = "\n".join(lines), "left"
    return table


def watch_json(frames: Iterator[list[Row]], run_ids: list[str] | None, emit: Callable[[str], None]) -> list[Row]:
    """One JSON line per run per change, with the time of the observation; returns the last rows."""
    seen: dict[str, str] = {}
    rows: list[Row] = []
    for rows in frames:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for row in changes(rows, seen):
            emit(json.dumps({"observed_at": now, **row}, default=str))
        if all_done(rows, run_ids):
            break
    return rows
