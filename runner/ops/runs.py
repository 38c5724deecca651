"""What ``runner ops`` shows and does: status, list, delete, preempt, logs.

Each function returns data (dicts, ready for ``--json``); the CLI decides how to print it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from entrypoint.markers import CONTAINER_RUNNING, phase_line, phases_in
from entrypoint.record import (
    ALL_EVENTS, DamagedRecord, PreconditionFailed, Role, RunRecord, RunView, State, iso, list_run_ids,
)
from entrypoint.record.listing import listed_runs
from entrypoint.record.timeline import Recovery, build_recovery, format_recovery
from entrypoint.store import Store
from runner.launch.backends.base import ComputeBackend
from runner.launch.job_output import FOLLOW_POLL_S, OutputCursor
from runner.naming import label_value
from runner.launch.supervisor_heartbeat import age_text, run_watchfulness


class RunNotFound(Exception):
    pass


def ago(ts: float | None, now: float | None = None) -> str:
    """``3m ago`` for a Unix time (``-`` for none)."""
    return "-" if ts is None else age_text((now or time.time()) - ts)


def _record(store: Store, run_id: str) -> RunRecord:
    rec = RunRecord(store, run_id)
    if rec.read_state() is None:
        raise RunNotFound(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    return rec


def _view(store: Store, run_id: str, **parts: Any) -> RunView:
    """The run's view (state only unless ``parts`` asks for more), or RunNotFound."""
    view = RunRecord(store, run_id).view(**{"heartbeat": False, **parts})
    if view is None:
        raise RunNotFound(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    return view


def run_status(store: Store, run_id: str, backend: ComputeBackend | None = None, *,
               price_table: str | None = None, with_cost: bool = False) -> dict[str, Any]:
    """``run_row`` plus what one run's page shows: sync health, the last event, startup phase, VMs,
    the current attempt's recovery (``recovery``: ``recovery_entry``; None before any phase is
    marked), and with ``with_cost`` its cost so far (``cost``, ``cost_text``: see
    ``cost.annotate_row``).

    Its store requests do not grow with the run's history: state, heartbeat, spec, .stop, one
    listing of the current attempt's folder (which says whether its startup.json is there to
    read), a read per phase mark of the current attempt (up to eight; never an older attempt's:
    those are for ``ops events``), one listing of the journal's end, who supervises (one or two)
    and, for the cost, the current attempt's manifest and claim. A run that predates the running
    summary costs a full read of its journal for the cost (``cost.history_note`` says so).
    """
    view = _view(store, run_id, events=1, stop=True, startup=True, phases=True, heartbeat=True, spec=with_cost)
    out = with_queue_places(store, [row_of(view)])[0]
    last_event = dict(view.last_event) if view.last_event is not None else None
    if last_event is not None:
        last_event["at"] = iso(last_event["time"])
    out.update({"stop_requested": view.stop_requested, "last_event": last_event})
    # A torn journal entry is left out of the last event; say which, rather than hide it.
    out["damaged"] = [str(e) for e in view.damaged]
    # Who last supervised it, and whether anyone does now (said as a warning only while it is live).
    out["supervisor"] = run_watchfulness(store, run_id, live=not view.state.state.terminal).to_dict()
    out["startup_phase"] = view.startup.get("phase") if view.startup else None
    out["recovery"] = (recovery_entry(build_recovery(view.state.attempt, view.phases),
                                      live=not view.state.state.terminal,
                                      job_running=view.state.state == State.RUNNING) if view.phases else None)
    from runner.ops.tiers_view import tiers_status

    out["checkpoint_tiers"] = tiers_status(view.phases, out.get("sync"))
    if backend is not None:
        listed = backend.list(run_id)
        inst = _current_of(listed, view.state.attempt)
        if inst is not None and inst.alive:
            phases = phases_in(backend.logs(inst, tail=300))
            if phases:
                out["startup_phase"] = phases[-1]
        out["instances"] = [
            {"name": i.name, "attempt": i.attempt, "status": i.status.value, "exit_code": i.exit_code,
             "zone": i.zone, "rank": i.rank}
            for i in listed
        ]
    if len(view.state.instances) > 1:
        out["nodes"] = gang_nodes(store, run_id, view, out.get("instances"))
    if with_cost:
        from runner.ops.cost import annotate_row

        annotate_row(out, store, price_table, view=view)
    return out


def gang_nodes(store: Store, run_id: str, view: RunView,
               listed: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One row per node of a gang's current attempt: its VM, zone, status (where the backend
    was asked), heartbeat and progress. Rank 0's heartbeat is the run's; each other node's its
    own (``nodes/<rank>/heartbeat.json``): one read per node."""
    rec = RunRecord(store, run_id)
    now = time.time()
    rows = []
    for inst in sorted(view.state.instances, key=lambda i: i.get("rank") or 0):
        rank = int(inst.get("rank") or 0)
        try:
            hb = view.current_heartbeat if rank == 0 else rec.read_heartbeat(rank)
        except DamagedRecord:
            hb = None
        if hb is not None and hb.attempt != view.state.attempt:
            hb = None  # an older attempt's (the file outlives its attempt)
        seen = next((i for i in (listed or []) if i["rank"] == rank and i["attempt"] == view.state.attempt), None)
        rows.append({
            "rank": rank, "name": inst.get("name"), "zone": (seen or {}).get("zone") or inst.get("zone"),
            "status": seen["status"] if seen else ("not listed" if listed is not None else None),
            "heartbeat_at": iso(hb.time) if hb else None, "heartbeat_age_s": (now - hb.time) if hb else None,
            "phase": hb.phase if hb else None, "exit_code": hb.exit_code if hb else None,
            "progress": dict(hb.progress) if hb else {},
        })
    return rows


def attempt_recovery(store: Store, run_id: str, attempt: int) -> Recovery | None:
    """How ``attempt`` came to be running (``entrypoint.record.timeline``); None if none of its
    phases is marked (a run from before the marks, or one not started yet).

    One listing of the attempt's marks and one read per mark (at most eight)."""
    phases = RunRecord(store, run_id).phases(attempt)
    return build_recovery(attempt, phases) if phases else None


def recovery_entry(r: Recovery, live: bool, now: float | None = None, job_running: bool = False) -> dict[str, Any]:
    """A recovery for ``--json`` (its numbers, ``Recovery.to_dict``) with its line (``text``).

    ``live``: the attempt is the run's current one and the run goes on, so a recovery without
    its first step yet is in progress (timed up to ``now``), not one that never got there.
    ``job_running``: that attempt's job runs (a job that reports no steps ends its line there)."""
    now = time.time() if now is None else now
    return {**r.to_dict(), "text": format_recovery(r, now if live else None, job_running=job_running)}


def run_row(store: Store, run_id: str, now: float | None = None) -> dict[str, Any] | None:
    """One run's line in ``ops list`` / ``ops watch`` (and the core of ``ops status``): two small
    reads, state and heartbeat.

    ``rate`` is the agent's own measure for the current attempt (steps per second); the ETA is
    only given while the run is live and the rate is known. A run whose state or heartbeat
    cannot be read is an ``error_row``: one torn object must not take the whole listing down.
    """
    try:
        view = RunRecord(store, run_id).view()
    except DamagedRecord as e:
        return error_row(store, run_id, e)
    return None if view is None else row_of(view, now)


def error_row(store: Store, run_id: str, err: DamagedRecord) -> dict[str, Any]:
    """``{"run_id", "error"}`` for a run whose record cannot be read, plus what a supervisor
    marked about it (``damaged.json``: since when, whether an instance still runs), if any.

    Costs one more read, on this path only."""
    from runner.launch.damaged_runs import read_mark

    row: dict[str, Any] = {"run_id": run_id, "error": str(err)}
    mark = read_mark(store, run_id)
    if mark is not None:
        row["supervisor"] = mark
    return row



def row_of(view: RunView, now: float | None = None) -> dict[str, Any]:
    """``run_row`` from a view read with its heartbeat."""
    st, hb = view.state, view.heartbeat
    now = time.time() if now is None else now
    live = not st.state.terminal
    progress = hb.progress if hb else {}
    rate = hb.rate if hb is not None and hb.attempt == st.attempt else None
    step, total = progress.get("step"), progress.get("total")
    eta = None
    if live and rate and isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > step:
        eta = round((total - step) / rate, 1)
    return {
        "run_id": view.run_id,
        "state": st.state.value,
        "attempt": st.attempt,
        "zone": st.zone,
        "instance": st.instance,
        "restarts": st.restarts,
        "reason": st.reason,
        "exit_code": st.exit_code,
        "progress": progress,
        "rate": round(rate, 4) if rate else None,
        "eta_s": eta,
        "sync": hb.sync if hb else {},
        "data": hb.data if hb else None,  # staged --data: files and bytes done of the total
        "heartbeat_at": iso(hb.time) if hb else None,
        "heartbeat_age_s": round(now - hb.time, 1) if hb else None,
        "updated_at": iso(st.updated_at),
        "updated_age_s": round(now - st.updated_at, 1),
    }


# Runs read at once by ``list_runs``. Each run costs two reads (state, heartbeat) of a round
# trip each (20-50 ms to GCS): 1,000 runs are 2,000 round trips, 2.5 s even 32 at a time at
# 40 ms. Within the storage client's connection pool (``store_gcs.CONNECTION_POOL_SIZE``), so
# every worker reuses its connection instead of opening one per request.
LIST_WORKERS = 32


def list_runs(store: Store, run_ids: list[str] | None = None, workers: int = LIST_WORKERS) -> list[dict[str, Any]]:
    """Every run (or ``run_ids``), in run-id order (``run_ids``: in that order).

    Each run's state and heartbeat come from listings (``entrypoint.record.listing``: one
    request per thousand objects on GCS, two for 1,000 runs) wherever the listing carries them;
    a run whose documents it does not carry (written by an older version) is read as
    ``run_row`` reads it, two requests, ``workers`` runs at a time: on GCS each read is a round
    trip of tens of milliseconds, and one after another 1,000 runs would take a minute.
    Named runs (``ops watch --run-id``) are read, not listed: a few reads cost less than
    listing every run of the store.
    """
    from concurrent.futures import ThreadPoolExecutor

    now = time.time()
    listed = listed_runs(store) if run_ids is None else {}
    ids = sorted(listed) if run_ids is None else run_ids

    def row(run_id: str) -> dict[str, Any] | None:
        seen = listed.get(run_id)
        if seen is None or not seen.complete:
            return run_row(store, run_id, now)  # not listed with its content: read it
        try:
            return row_of(seen.view(), now)
        except DamagedRecord as e:
            return error_row(store, run_id, e)

    unread = [r for r in ids if r not in listed or not listed[r].complete]
    if len(unread) <= 1:
        rows = [row(r) for r in ids]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(unread))) as pool:
            rows = list(pool.map(row, ids))
    return with_queue_places(store, [r for r in rows if r is not None])


def with_queue_places(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """QUEUED rows with their place and current reason (``queue``: position, reason, holds), as
    the last supervisor pass published them: one read for the whole listing."""
    if any(r.get("state") == "QUEUED" for r in rows):
        from runner.launch.queue_pass import read_queue

        places = read_queue(store)
        for r in rows:
            if r.get("state") == "QUEUED" and r["run_id"] in places:
                q = places[r["run_id"]]
                r["queue"] = {"position": q.get("position"), "reason": q.get("reason"), "holds": q.get("holds")}
    return rows


def when(ts_iso: str | None, age_s: float | None) -> str:
    """A timestamp as people read it here: UTC ISO-8601 and how long ago."""
    if not ts_iso or age_s is None:
        return "-"
    return f"{ts_iso} ({age_text(age_s)})"


# How long past its grace period a delete may still be at work (listing, the API's own delete
# time) before its ``.stop`` stops saying "in progress": a delete that died lapses by itself.
DELETE_MARGIN_S = 120.0


def delete_run(store: Store, backend: ComputeBackend, run_id: str, grace_period: float,
               actor: str = "ops-delete") -> dict[str, Any]:
    """Stop a run for good: ``.stop`` first, whatever else of the record can be read (so nothing
    resurrects it, and a job whose state.json is torn can still be stopped), then its instances,
    then its state.

    While the job has its grace period, ``.stop`` says the delete is in progress: a
    ``submit --restart`` meanwhile is refused rather than starting the next attempt beside a job
    that is still running (or removing ``.stop`` under this delete's feet).
    """
    rec = RunRecord(store, run_id)
    if not (store.exists(rec.name(RunRecord.STATE)) or store.exists(rec.name(RunRecord.SPEC))):
        raise RunNotFound(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    rec.request_stop(actor, "deleted by user", in_progress_for=grace_period + DELETE_MARGIN_S)
    removed = []
    for inst in backend.list(run_id):
        backend.delete(inst, grace_period)
        removed.append(inst.name)
    unreadable = None
    for _ in range(10):
        try:
            cur = rec.read_state()
        except DamagedRecord as e:  # a torn state.json
            unreadable = str(e)
            break
        if not rec.stop_requested():
            # Our .stop is gone: this delete outlived its in-progress marker (it was frozen, or a
            # delete took longer than the margin) and the user restarted the run, which removes
            # .stop first. That restart is the newer decision: stopping now would undo it and
            # kill the attempt it started (read after the state, so the state's CAS settles it).
            return _overtaken(rec, removed)
        if cur is None or cur[0].state.terminal:
            break
        try:
            rec.stopped(Role.OPS, actor, expected=cur, reason="deleted by user")
            break
        except PreconditionFailed:
            continue  # a supervisor or the agent wrote in between: look again
    # A supervisor that checked .stop just before we wrote it may have created one more.
    if not rec.stop_requested():
        return _overtaken(rec, removed)  # restarted meanwhile: its new attempt is not ours to delete
    for inst in backend.list(run_id):
        backend.delete(inst)
        removed.append(inst.name)
    rec.request_stop(actor, "deleted by user")  # done: a restart may now reopen the run
    out: dict[str, Any] = {"run_id": run_id, "state": _state_value(rec), "removed": removed}
    if unreadable:
        out["error"] = unreadable + "; .stop is written, so no supervisor restarts it"
    return out


def _state_value(rec: RunRecord) -> str | None:
    """The run's state name as a delete ends it; None when there is none or it cannot be read."""
    try:
        final = rec.read_state()
    except DamagedRecord:
        return None
    return final[0].state.value if final else None


def _overtaken(rec: RunRecord, removed: list[str]) -> dict[str, Any]:
    """What a delete says when a restart overtook it (see ``delete_run``): it left the run alone."""
    return {"run_id": rec.run_id, "state": _state_value(rec), "removed": removed,
            "error": "the run was restarted (`submit --restart`) while this delete was still at work, "
                     "after its in-progress mark had lapsed; the restart wins and the run goes on: "
                     f"run `runner ops delete --run-id {rec.run_id}` again to stop it"}


def preempt_run(store: Store, backend: ComputeBackend, run_id: str, grace_period: float,
                node: int | None = None) -> dict[str, Any]:
    """Simulate a spot preemption of the run's live instance (a gang: every node, or node
    ``node`` alone): SIGTERM, grace period, kill."""
    _record(store, run_id)
    live = [i for i in backend.list(run_id) if i.alive and (node is None or i.rank == node)]
    if not live:
        raise RunNotFound(f"run {run_id} has no live instance to preempt"
                          + (f" on node {node} (ranks start at 0; `runner ops status` lists the nodes)"
                             if node is not None else ""))
    for inst in live:
        backend.preempt(inst, grace_period)
    return {"run_id": run_id, "preempted": [i.name for i in live], "grace_period": grace_period}


def orphans(store: Store, backend: ComputeBackend) -> list[dict[str, Any]]:
    """Instances this tool made whose run is finished, stopped or unknown: billing for nothing."""
    by_label: dict[str, str] = {label_value(r): r for r in list_run_ids(store)}
    out = []
    for inst in backend.list():
        run_id = by_label.get(inst.run_label)
        why = None
        try:
            cur = RunRecord(store, run_id).read_state() if run_id else None
        except DamagedRecord as e:
            # Not judged: its run may be live. Listed, so that it is looked at, not deleted blindly.
            out.append({"name": inst.name, "zone": inst.zone, "status": inst.status.value, "run_id": run_id,
                        "why": f"not judged: its run's record cannot be read ({e}); check before deleting"})
            continue
        if cur is None:
            why = "no run record in this store"
        elif cur[0].state.terminal:
            why = f"run is {cur[0].state.value}"
        elif inst.attempt < cur[0].attempt:
            why = f"belongs to attempt {inst.attempt}, run is at attempt {cur[0].attempt}"
        if why:
            out.append({"name": inst.name, "zone": inst.zone, "status": inst.status.value,
                        "run_id": run_id, "why": why})
    return out


def run_events(store: Store, backend: ComputeBackend, run_id: str, since: float | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Our journal and the provider's operations on the run's instances, in time order: the
    newest ``limit`` (all, for None) from ``since`` on.

    Only those are read: the journal's end is listed from an offset and ``limit`` entries read
    (``RunRecord.newest_events``), and the provider is asked about the instances of the attempts
    they cover (and any that still exist), not every attempt the run ever had.

    Each attempt's recovery is one more entry (``recovery_events``), placed at its first step
    (or its newest mark while it has none) and counted in ``limit`` like the others. Only the
    attempts the journal entries read cover are asked (with ``limit`` or ``since``; the current
    one at least), each a listing and up to eight reads, eight attempts at a time.
    """
    view = _view(store, run_id, spec=True)
    rec = RunRecord(store, run_id)
    damaged: list[Any] = []
    ours = [ev for _, ev in rec.newest_events(view.expected, limit, since, damaged=damaged)]
    for e in damaged:  # said, not hidden; the rest of the journal still shows
        ours.append({"time": _damaged_time(e.name), "actor": "runner", "from": None, "to": None,
                     "reason": f"unreadable journal entry: {e}", "attempt": None, "damaged": e.name})
    attempts = [ev["attempt"] for ev in ours if isinstance(ev.get("attempt"), int)]
    oldest = min(attempts) if limit is not None and attempts else 1
    names = sorted({ev.get("instance") for ev in ours if ev.get("instance")} |
                   {i.name for i in backend.list(run_id)} | _instance_names(view, oldest))
    zones = sorted(set(view.spec.zones if view.spec else []))
    theirs = backend.provider_events(names, zones) if names and zones else []
    first = min(attempts, default=view.state.attempt) if limit is not None or since is not None else 1
    covered = [a for a in view.attempts if a >= first]
    recoveries = recovery_events(store, run_id, covered, live=not view.state.state.terminal)
    merged = sorted(ours + theirs + recoveries, key=lambda e: e["time"])
    merged = [e for e in merged if since is None or e["time"] >= since]
    return merged if limit is None else merged[-limit:] if limit > 0 else []


def recovery_events(store: Store, run_id: str, attempts: list[int], live: bool,
                    workers: int = 8) -> list[dict[str, Any]]:
    """One journal-shaped entry per attempt with any phase marked: ``reason`` is its recovery
    line, ``recovery`` its numbers (``recovery_entry``), ``time`` its first step or newest mark.

    ``live``: the run goes on, so its newest attempt's unfinished recovery is in progress.
    Attempts are read in parallel (each a listing plus a read per mark): on GCS each request is
    a round trip, and one attempt after another would add up for a long ``--all``.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not attempts:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(attempts))) as pool:
        found = list(pool.map(lambda a: attempt_recovery(store, run_id, a), attempts))
    newest, now = max(attempts), time.time()
    out = []
    for r in found:
        if r is None or r.at is None:
            continue
        entry = recovery_entry(r, live=live and r.attempt == newest, now=now)
        out.append({"time": r.at, "actor": "runner", "from": None, "to": None, "reason": entry["text"],
                    "attempt": r.attempt, "recovery": entry})
    return out


def _damaged_time(name: str) -> float:
    """Where an unreadable journal entry sorts: the time in its name (0 if even that is bad)."""
    from entrypoint.record import parse_event_name

    try:
        return parse_event_name(name).time
    except ValueError:
        return 0.0


def _instance_names(view: RunView, oldest: int = 1) -> set[str]:
    from runner.naming import resource_name

    return {resource_name(view.run_id, a) for a in view.attempts if a >= oldest}


def current_instance(store: Store, backend: ComputeBackend, run_id: str):  # type: ignore[no-untyped-def]
    view = _view(store, run_id)
    return _current_of(backend.list(run_id), view.state.attempt)


def _current_of(instances: list[Any], attempt: int):  # type: ignore[no-untyped-def]
    """The instance of ``attempt`` among ``instances``, else the newest one, else None."""
    live = sorted(instances, key=lambda i: i.attempt)
    return next((i for i in reversed(live) if i.attempt == attempt), live[-1] if live else None)


STARTUP_DONE = phase_line(CONTAINER_RUNNING)


def startup_console(backend: ComputeBackend | None, inst: Any) -> str | None:
    """The startup phase of a VM's serial console (up to the container start), or None.

    None where there is no such console (the local backend, a VM already deleted: GCE keeps
    serial output only while the VM exists). Best effort: an API error becomes a note, since
    the job's own output in the store is still worth showing.
    """
    if backend is None or inst is None or not backend.has_startup_console:
        return None
    try:
        text = backend.logs(inst, tail=5000)
    except Exception as e:  # noqa: BLE001 - a console we cannot read must not hide the job output
        return f"(serial console of {inst.name} unavailable: {e})\n"
    if not text:
        return None
    lines = text.splitlines(keepends=True)
    end = next((i for i, ln in enumerate(lines) if STARTUP_DONE in ln), len(lines) - 1)
    return "".join(lines[:end + 1]).rstrip("\n") + "\n"


def attempt_logs(store: Store, run_id: str, attempt: int | None = None,
                 backend: ComputeBackend | None = None, node: int = 0) -> list[dict[str, Any]]:
    """Each attempt's job output from the store and, on GCE, its VM's startup console (a gang's
    node ``node``: rank 0 by default).

    Returns ``[{"attempt", "instance", "startup": str | None, "output": bytes}]`` in attempt order.
    """
    rec = RunRecord(store, run_id)
    last = _view(store, run_id).state.attempt
    if attempt is not None and not 1 <= attempt <= max(last, 1):
        raise RunNotFound(f"run {run_id} has no attempt {attempt} (it is at attempt {last})")
    attempts = [attempt] if attempt is not None else list(range(1, last + 1))
    instances = {i.attempt: i for i in backend.list(run_id) if i.rank == node} if backend is not None else {}
    out = []
    for a in attempts:
        blob = store.read(rec.name(RunRecord.log_name(a, node)))
        inst = instances.get(a)
        out.append({"attempt": a, "instance": inst.name if inst else None,
                    "startup": startup_console(backend, inst), "output": blob.data if blob else b""})
    return out


def follow_logs(store: Store, run_id: str, poll: float = FOLLOW_POLL_S,
                backend: ComputeBackend | None = None) -> Iterator[tuple[int, str, bytes]]:
    """New output as it arrives, across attempts, until the run ends: ``(attempt, kind, bytes)``.

    ``kind`` is ``"startup"`` for a VM's serial console before its container starts (GCE only),
    then ``"output"`` for the job's output: straight from the instance where the backend can
    (local: Docker), else from the store (``runner.launch.job_output``).
    """
    _record(store, run_id)
    cursor = OutputCursor(store, run_id, backend)
    while True:
        st = _view(store, run_id).state
        yield from cursor.new(st.attempt)
        if st.state.terminal:
            # The agent uploads its log before it records the end: one more look takes the rest.
            yield from cursor.new(st.attempt)
            return
        time.sleep(poll)


def pull_run(store: Store, run_id: str, dest: str, checkpoints: bool = False,
             on_plan: Callable[[int, int], None] | None = None,
             on_file: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Copy the run's ``results/`` (and ``checkpoints/``) to ``dest/RUN_ID``; ``dest/latest`` points there.

    Files whose local CRC32C already matches the stored one are not transferred again, so a
    repeated pull moves only what changed. ``on_plan(files, bytes)`` is told what will move
    before anything does (for a progress bar), ``on_file(name, bytes)`` after each file.
    """
    import os

    from entrypoint.store import crc32c_of_file

    rec = _record(store, run_id)
    prefixes = [RunRecord.RESULTS] + ([RunRecord.CHECKPOINTS] if checkpoints else [])
    names = [n for p in prefixes for n in store.list(rec.name(p)) if "/.partial/" not in n]
    root = os.path.join(dest, run_id)
    todo, skipped = [], []
    for name in names:
        rel = name[len(rec.prefix):]
        local = os.path.join(root, rel)
        info = store.stat(name)
        if info is None:
            continue  # deleted since the listing
        if os.path.isfile(local) and crc32c_of_file(local) == info.crc32c:
            skipped.append(rel)
            _restore_mode(local, info.mode)
        else:
            todo.append((name, rel, local, info.size, info.mode))
    if on_plan:
        on_plan(len(todo), sum(t[3] for t in todo))
    copied, moved = [], 0
    for name, rel, local, size, mode in todo:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        store.download_file(name, local)
        _restore_mode(local, mode)
        copied.append(rel)
        moved += size
        if on_file:
            on_file(rel, size)
    os.makedirs(dest, exist_ok=True)
    latest = os.path.join(dest, "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        tmp = f"{latest}.tmp-{os.getpid()}"
        os.symlink(run_id, tmp)
        os.replace(tmp, latest)
    out = {"run_id": run_id, "dest": root, "copied": copied, "unchanged": skipped, "bytes": moved}
    if not copied:
        out["why_nothing"] = _why_nothing_copied(rec, names, skipped, root)
    return out


def _restore_mode(path: str, mode: int | None) -> None:
    """Give a pulled file the mode its uploader recorded (an executable stays executable); one
    without a recorded mode keeps what this machine's umask gave it."""
    import os

    if mode is not None:
        os.chmod(path, mode & 0o777)


def _why_nothing_copied(rec: RunRecord, names: list[str], unchanged: list[str], root: str) -> str:
    """Why a pull copied no file: a user who expected results must not guess between "none were
    written", "not uploaded yet" and "already here"."""
    if unchanged:
        return f"all {len(unchanged)} file(s) of the run are already up to date in {root}"
    spec, cur = rec.read_spec(), rec.read_state()
    results_dir = spec.results_dir if spec else "$RUNNER_RESULTS_DIR"
    if cur is not None and not cur[0].state.terminal:
        return (f"the run is {cur[0].state.value}: its results are uploaded when the job ends; pull "
                "again then (`runner ops pull`)")
    return (f"the run has no results in the store: its job wrote no file to $RUNNER_RESULTS_DIR "
            f"({results_dir}), the one directory uploaded as results (files in hidden folders, "
            "named .*, are skipped); have the job write its outputs there, e.g. "
            "`sh -c 'python3 train.py --out \"$RUNNER_RESULTS_DIR\"'`")
