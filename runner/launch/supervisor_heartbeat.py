"""``supervisor/heartbeat.json``: who last supervised this store, where, when, and how it went.

Why: a preempted run is restarted only while some supervisor passes over the store. When none
does (the laptop slept, the hosted schedule was removed), the run sits PREEMPTED with nothing
saying so. Every pass, wherever it runs (a laptop loop, a Cloud Run execution), overwrites this
one object, and ``ops status``/``list``/``watch`` and ``submit --detach`` judge it: older than two
of its own announced intervals means nobody is watching, said plainly with the fixing command.

Each pass announces ``every``, the seconds until the next pass is due: ``poll_interval`` for a
loop, the schedule period (60 s) for the hosted supervisor. The judgement uses that, not the
reader's config, so a laptop with ``poll_interval = 3`` does not cry wolf at a hosted supervisor
that passes once a minute.

Concurrent supervisors overwrite each other (last writer wins); the newest pass is what matters.

A supervisor that steps one run only (an attached ``runner submit``, ``supervise --run-id``)
writes ``runs/ID/supervisor/heartbeat.json`` instead: it keeps that run alive, and no other, so
it counts for that run (``ops status``, and that run's line of judgement in ``ops list``/``watch``)
and for no other.

A warning is for a live run nobody supervises: a run that has ended needs nobody, so neither its
``ops status`` nor a list of ended runs warns (issue 20 §9).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

from entrypoint.record import RUNS, STORE_SUPERVISOR_HEARTBEAT, RunPaths, iso, run_prefix
from entrypoint.store import Store

if TYPE_CHECKING:
    from entrypoint.record import RunState

HEARTBEAT = STORE_SUPERVISOR_HEARTBEAT
SCHEMA_VERSION = 1
# A pass older than this many announced intervals means nobody is supervising.
STALE_INTERVALS = 2.0
FIX_HOSTED = "runner supervise --deploy"
# A time stamped further ahead of the reader's clock than this did not happen "just now": two
# clocks disagree (NTP keeps machines within a second or so), and an age cannot be told.
FUTURE_TOLERANCE = 30.0
FIX_LOCAL = "runner supervise"


@dataclass
class SupervisorPass:
    """One pass as recorded in the store."""

    actor: str
    where: str
    started_at: float
    finished_at: float
    every: float
    runs_seen: int = 0
    unfinished: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    hosted: bool = False
    run_id: str | None = None  # set when the pass stepped this one run only
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def where_running(env: dict[str, str] | None = None) -> str:
    """Where this process runs, as a person would look for it.

    Cloud Run jobs set ``CLOUD_RUN_JOB`` and ``CLOUD_RUN_EXECUTION`` in every task's environment
    (https://cloud.google.com/run/docs/container-contract#jobs-env-vars).
    """
    env = dict(os.environ) if env is None else env
    if env.get("CLOUD_RUN_JOB"):
        return f"Cloud Run job {env['CLOUD_RUN_JOB']} (execution {env.get('CLOUD_RUN_EXECUTION', '?')})"
    return f"host {socket.gethostname()} (pid {os.getpid()})"


def is_hosted(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return bool(env.get("CLOUD_RUN_JOB"))


def heartbeat_name(run_id: str | None = None) -> str:
    return HEARTBEAT if run_id is None else run_prefix(run_id) + RunPaths.SUPERVISOR_HEARTBEAT


def write_pass(store: Store, p: SupervisorPass) -> None:
    """Overwrite the heartbeat (the run's own for a one-run pass) with this pass (last writer wins)."""
    store.write(heartbeat_name(p.run_id), p.to_json())


def read_pass(store: Store, run_id: str | None = None) -> SupervisorPass | None:
    """The last recorded pass (over the store, or over ``run_id`` alone), or None when none was."""
    blob = store.read(heartbeat_name(run_id))
    if blob is None:
        return None
    try:
        raw = json.loads(blob.data)
        known = {k: raw[k] for k in SupervisorPass.__dataclass_fields__ if k in raw}
        p = SupervisorPass(**known)
        _check_types(p)
        return p
    except (ValueError, TypeError) as e:
        print(f"runner: warning: {HEARTBEAT} in {store.url} is unreadable ({e}); treating it as absent",
              file=sys.stderr)
        return None


def _check_types(p: SupervisorPass) -> None:
    """Anyone who can write the bucket can leave a heartbeat; judge only one of the right shape."""
    numbers = (p.started_at, p.finished_at, p.every, p.runs_seen, p.unfinished, p.error_count)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
        raise TypeError("a time, interval or count is not a number")
    if not (isinstance(p.actor, str) and isinstance(p.where, str) and isinstance(p.errors, list)
            and all(isinstance(e, str) for e in p.errors) and isinstance(p.run_id, (str, type(None)))):
        raise TypeError("actor, where or errors has the wrong type")


class PassRunner(Protocol):
    """What ``run_pass`` reads and resets on the supervisor (``runner.launch.supervisor.Supervisor``),
    named here so this module need not import the supervisor that imports it."""

    actor: str
    store: Store
    settings: Any  # SupervisorSettings: its poll_interval is the announced interval by default
    pass_errors: list[str]
    pass_error_count: int

    def note_error(self, msg: str) -> None: ...


def run_pass(sup: PassRunner, body: Callable[[], dict[str, "RunState"]],
             run_id: str | None = None) -> dict[str, "RunState"]:
    """Run one reconcile pass (``body``; over ``run_id`` alone when given) and record it, failed
    or not, in the heartbeat.

    A pass that raises (the instance list failed) is recorded with that error, then re-raised:
    the heartbeat then says "a supervisor runs but fails", which is a different fix from
    "nobody runs". A heartbeat that cannot be written is a warning, never a failed pass.
    """
    started = time.time()
    sup.pass_errors.clear()
    sup.pass_error_count = 0
    states: dict[str, Any] = {}
    try:
        states = body()
        return states
    except Exception as e:
        sup.note_error(f"pass failed: {type(e).__name__}: {e}")
        raise
    finally:
        p = SupervisorPass(
            actor=sup.actor, where=where_running(), started_at=started, finished_at=time.time(),
            every=float(getattr(sup, "pass_every", None) or sup.settings.poll_interval),
            runs_seen=len(states), unfinished=sum(1 for s in states.values() if not s.state.terminal),
            errors=list(sup.pass_errors), error_count=sup.pass_error_count, hosted=is_hosted(), run_id=run_id)
        try:
            write_pass(sup.store, p)
        except Exception as e:  # noqa: BLE001 - supervising matters more than reporting it
            print(f"runner: warning: could not write {HEARTBEAT} ({type(e).__name__}: {e}); "
                  "ops status will say nobody supervises", file=sys.stderr)


@dataclass(frozen=True)
class Watchfulness:
    """The judgement on the heartbeat: is anybody supervising, and what to do if not."""

    alive: bool
    text: str  # one line: who, where, when
    warning: str = ""  # empty when alive
    fix: str = ""
    last: SupervisorPass | None = None
    age_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "text": self.text, "warning": self.warning, "fix": self.fix,
                "age_s": self.age_s, "last": asdict(self.last) if self.last else None}


def age_text(seconds: float) -> str:
    """``3m ago`` for an age in seconds: the largest whole unit. A time well in the future (a
    negative age) is said as such, with the clock skew it implies, never as ``0s ago``."""
    if seconds < -FUTURE_TOLERANCE:
        return f"in the future (clock skew of {int(-seconds)} s?)"
    s = max(0, int(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def judge(p: SupervisorPass | None, now: float | None = None, can_host: bool = True) -> Watchfulness:
    """Alive when the last pass is younger than ``STALE_INTERVALS`` of its announced interval
    (plus the pass's own duration, so a slow pass is not mistaken for a dead supervisor).

    ``can_host``: the store is one Cloud Run can reach (gs://), so the hosted fix is offered."""
    now = time.time() if now is None else now
    if p is None:
        return Watchfulness(
            False, "no supervisor has ever passed over this store",
            "nobody is supervising: a preempted run will not be restarted",
            f"{FIX_HOSTED}   (or keep `{FIX_LOCAL}` running)" if can_host else f"keep `{FIX_LOCAL}` running")
    age = now - p.finished_at
    took = max(0.0, p.finished_at - p.started_at)
    errs = f", {p.error_count} error(s): {p.errors[0]}" if p.error_count else ""
    seen = f"following {p.run_id} only" if p.run_id else f"{p.runs_seen} run(s) seen"
    text = f"last pass {iso(p.finished_at)} ({age_text(age)}) by {p.actor} on {p.where}, {seen}{errs}"
    if age < -FUTURE_TOLERANCE:
        # Stamped by a clock ahead of ours: when that pass was, and so whether anybody still
        # supervises, cannot be told from here. Not "alive": that would hide a dead supervisor.
        return Watchfulness(
            False, text,
            f"cannot tell whether anybody is supervising: the last pass is stamped {-age:.0f}s in the "
            f"future of this machine's clock, so the clocks here and on {p.where} disagree",
            "sync the clocks (`timedatectl status` shows whether NTP is on, on both machines)",
            p, round(age, 1))
    if age <= STALE_INTERVALS * p.every + took:
        return Watchfulness(True, text, last=p, age_s=round(age, 1))
    fix = FIX_HOSTED if p.hosted else (f"{FIX_LOCAL}   (or `{FIX_HOSTED}` to supervise without a laptop)"
                                       if can_host else FIX_LOCAL)
    if p.hosted:
        fix += "   (then `runner supervise --status` shows the job's last error)"
    return Watchfulness(
        False, text,
        f"nobody is supervising: no pass for {age_text(age).removesuffix(' ago')} "
        f"(expected every {p.every:g}s); a preempted run will not be restarted",
        fix, p, round(age, 1))


def watchfulness(store: Store, now: float | None = None, run_id: str | None = None) -> Watchfulness:
    """The store's judgement; for ``run_id``, a supervisor of that run alone also counts.

    For a run, its own supervisor (an attached ``submit``) is what is said when it is alive, or
    when it passed later than any store-wide supervisor: "no supervisor has ever passed over
    this store" is false of a run an attached submit followed to its end."""
    can_host = store.url.startswith("gs://")
    overall = judge(read_pass(store), now, can_host=can_host)
    if run_id is None or overall.alive:
        return overall
    own = read_pass(store, run_id)
    if own is None:
        return overall
    mine = judge(own, now, can_host=can_host)
    later = overall.last is None or own.finished_at > overall.last.finished_at
    return mine if mine.alive or later else overall


def run_watchfulness(store: Store, run_id: str, live: bool, now: float | None = None) -> Watchfulness:
    """``watchfulness`` of one run, with no warning when the run has ended (``live`` False): a
    finished run needs nobody, so "nobody is supervising" under it is a false alarm."""
    w = watchfulness(store, now, run_id)
    return w if live else replace(w, warning="", fix="")


def unwatched(store: Store, live_run_ids: list[str], now: float | None = None,
              workers: int = 16) -> tuple[Watchfulness, list[str]]:
    """The store's judgement, and which of ``live_run_ids`` nobody supervises: none when a
    store-wide supervisor is alive, else those without a live supervisor of their own (an
    attached submit).

    One read; while no store-wide supervisor is alive, one listing of the runs' own supervisor
    heartbeats too, and a read of each live run's that exists, ``workers`` at a time: a run
    without one is unwatched with no read. Read one after another, 100 live runs at 20-50 ms a
    read on GCS added seconds to every ``ops list`` just when nobody supervises."""
    from concurrent.futures import ThreadPoolExecutor

    overall = watchfulness(store, now)
    if overall.alive or not live_run_ids:
        return overall, []
    own = store.read_listed(RUNS, f"{RUNS}*/{RunPaths.SUPERVISOR_HEARTBEAT}")
    have = [r for r in live_run_ids if heartbeat_name(r) in own]
    alive: set[str] = set()
    if have:
        with ThreadPoolExecutor(max_workers=min(workers, len(have))) as pool:
            alive = {r for r, ok in zip(have, pool.map(lambda r: watchfulness(store, now, r).alive, have)) if ok}
    return overall, [r for r in live_run_ids if r not in alive]


def unwatched_lines(overall: Watchfulness, unwatched_ids: list[str]) -> list[str]:
    """What ``ops list``/``ops watch`` print about supervision: who last passed, and a warning
    only when some live run is unwatched, naming it (runs that ended need no supervisor)."""
    out = [f"supervisor {overall.text}"]
    if unwatched_ids:
        shown = ", ".join(unwatched_ids[:5]) + (f" and {len(unwatched_ids) - 5} more" if len(unwatched_ids) > 5 else "")
        out.append(f"warning    {overall.warning} (live, unwatched: {shown})")
        out.append(f"    fix:   {overall.fix}")
    return out


def report_lines(w: dict[str, Any]) -> list[str]:
    """What ``ops status``/``ops list`` print about supervision (``Watchfulness.to_dict()``)."""
    out = [f"supervisor {w['text']}"]
    if w["warning"]:  # none for a run that has ended (``run_watchfulness``)
        out.append(f"warning    {w['warning']}")
        out.append(f"    fix:   {w['fix']}")
    return out
