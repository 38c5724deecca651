"""What ``runner ops`` shows and does: status, list, delete, preempt, logs.

Each function returns data (dicts, ready for ``--json``); the CLI decides how to print it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from entrypoint.record import PreconditionFailed, RunRecord, State, iso, list_run_ids
from entrypoint.store import Store
from runner.backends.base import ComputeBackend
from runner.naming import label_value


class RunNotFound(Exception):
    pass


def ago(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    s = max(0, int((now or time.time()) - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _record(store: Store, run_id: str) -> RunRecord:
    rec = RunRecord(store, run_id)
    if rec.read_state() is None:
        raise RunNotFound(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    return rec


def run_status(store: Store, run_id: str, backend: ComputeBackend | None = None) -> dict[str, Any]:
    rec = _record(store, run_id)
    cur = rec.read_state()
    assert cur is not None
    st = cur[0]
    hb = rec.read_heartbeat()
    last_event = None
    names = store.list(rec.name(RunRecord.EVENTS))
    if names:
        blob = store.read(sorted(names)[-1])
        if blob is not None:
            import json

            last_event = json.loads(blob.data)
    out: dict[str, Any] = {
        "run_id": run_id,
        "state": st.state.value,
        "attempt": st.attempt,
        "instance": st.instance,
        "zone": st.zone,
        "reason": st.reason,
        "exit_code": st.exit_code,
        "updated_at": iso(st.updated_at),
        "heartbeat_at": iso(hb.time) if hb else None,
        "heartbeat_age_s": round(time.time() - hb.time, 1) if hb else None,
        "progress": hb.progress if hb else {},
        "sync": hb.sync if hb else {},
        "stop_requested": rec.stop_requested(),
        "last_event": last_event,
    }
    startup = rec.read_startup(st.attempt) if st.attempt else None
    out["startup_phase"] = startup.get("phase") if startup else None
    if backend is not None:
        inst = current_instance(store, backend, run_id)
        if inst is not None and inst.alive:
            phases = [ln.split("runner-phase:", 1)[1].strip()
                      for ln in backend.logs(inst, tail=300).splitlines() if "runner-phase:" in ln]
            if phases:
                out["startup_phase"] = phases[-1]
        out["instances"] = [
            {"name": i.name, "attempt": i.attempt, "status": i.status.value, "exit_code": i.exit_code,
             "zone": i.zone}
            for i in backend.list(run_id)
        ]
    return out


def list_runs(store: Store) -> list[dict[str, Any]]:
    rows = []
    for run_id in list_run_ids(store):
        rec = RunRecord(store, run_id)
        cur = rec.read_state()
        if cur is None:
            continue
        st = cur[0]
        hb = rec.read_heartbeat()
        rows.append({
            "run_id": run_id,
            "state": st.state.value,
            "attempt": st.attempt,
            "progress": hb.progress if hb else {},
            "heartbeat_at": iso(hb.time) if hb else None,
            "updated_at": iso(st.updated_at),
            "reason": st.reason,
        })
    return rows


def delete_run(store: Store, backend: ComputeBackend, run_id: str, grace_period: float,
               actor: str = "ops-delete") -> dict[str, Any]:
    """Stop a run for good: ``.stop`` first (so nothing resurrects it), then its instances."""
    rec = _record(store, run_id)
    rec.request_stop(actor)
    removed = []
    for inst in backend.list(run_id):
        backend.delete(inst, grace_period)
        removed.append(inst.name)
    for _ in range(10):
        cur = rec.read_state()
        assert cur is not None
        if cur[0].state.terminal:
            break
        try:
            rec.transition(State.STOPPED, actor, expected=cur, reason="deleted by user")
            break
        except PreconditionFailed:
            continue
    # A supervisor that checked .stop just before we wrote it may have created one more.
    for inst in backend.list(run_id):
        backend.delete(inst)
        removed.append(inst.name)
    final = rec.read_state()
    return {"run_id": run_id, "state": final[0].state.value if final else None, "removed": removed}


def preempt_run(store: Store, backend: ComputeBackend, run_id: str, grace_period: float) -> dict[str, Any]:
    """Simulate a spot preemption of the run's live instance: SIGTERM, grace period, kill."""
    _record(store, run_id)
    live = [i for i in backend.list(run_id) if i.alive]
    if not live:
        raise RunNotFound(f"run {run_id} has no live instance to preempt")
    for inst in live:
        backend.preempt(inst, grace_period)
    return {"run_id": run_id, "preempted": [i.name for i in live], "grace_period": grace_period}


def orphans(store: Store, backend: ComputeBackend) -> list[dict[str, Any]]:
    """Instances this tool made whose run is finished, stopped or unknown: billing for nothing."""
    by_label: dict[str, str] = {label_value(r): r for r in list_run_ids(store)}
    out = []
    for inst in backend.list():
        run_id = by_label.get(inst.run_label)
        cur = RunRecord(store, run_id).read_state() if run_id else None
        why = None
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


def run_events(store: Store, backend: ComputeBackend, run_id: str, since: float | None = None) -> list[dict[str, Any]]:
    """Our journal and the provider's operations on the run's instances, in time order."""
    rec = _record(store, run_id)
    ours = [ev for _, ev in rec.events()]
    names = sorted({ev.get("instance") for ev in ours if ev.get("instance")} |
                   {i.name for i in backend.list(run_id)} | _instance_names(rec))
    zones = sorted({z for z in (rec.read_spec().zones if rec.read_spec() else [])})
    theirs = backend.provider_events(names, zones) if names and zones else []
    merged = sorted(ours + theirs, key=lambda e: e["time"])
    return [e for e in merged if since is None or e["time"] >= since]


def _instance_names(rec: RunRecord) -> set[str]:
    from runner.naming import resource_name

    cur = rec.read_state()
    return {resource_name(rec.run_id, a) for a in range(1, (cur[0].attempt if cur else 0) + 1)}


def current_instance(store: Store, backend: ComputeBackend, run_id: str):  # type: ignore[no-untyped-def]
    rec = _record(store, run_id)
    cur = rec.read_state()
    assert cur is not None
    live = sorted(backend.list(run_id), key=lambda i: i.attempt)
    return next((i for i in reversed(live) if i.attempt == cur[0].attempt), live[-1] if live else None)


def attempt_logs(store: Store, run_id: str, attempt: int | None = None) -> list[tuple[int, bytes]]:
    rec = _record(store, run_id)
    cur = rec.read_state()
    assert cur is not None
    attempts = [attempt] if attempt is not None else list(range(1, cur[0].attempt + 1))
    out = []
    for a in attempts:
        blob = store.read(rec.name(RunRecord.log_name(a)))
        out.append((a, blob.data if blob else b""))
    return out


def follow_logs(store: Store, run_id: str, poll: float = 1.0) -> Iterator[tuple[int, bytes]]:
    """New log bytes as they reach the store, across attempts, until the run ends."""
    rec = _record(store, run_id)
    sent: dict[int, int] = {}
    while True:
        cur = rec.read_state()
        assert cur is not None
        st = cur[0]
        for a in range(1, st.attempt + 1):
            blob = store.read(rec.name(RunRecord.log_name(a)))
            if blob is None:
                continue
            done = sent.get(a, 0)
            if len(blob.data) > done:
                yield a, blob.data[done:]
                sent[a] = len(blob.data)
        if st.state.terminal:
            return
        time.sleep(poll)


__all__ = ["RunNotFound", "run_status", "list_runs", "delete_run", "preempt_run", "attempt_logs",
           "follow_logs", "ago", "label_value"]


def pull_run(store: Store, run_id: str, dest: str, checkpoints: bool = False,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Copy the run's ``results/`` (and ``checkpoints/``) to ``dest/RUN_ID``; ``dest/latest`` points there.

    Files whose local CRC32C already matches the stored one are not transferred again, so a
    repeated pull moves only what changed.
    """
    import os

    from entrypoint.store import crc32c_of_file

    rec = _record(store, run_id)
    prefixes = [RunRecord.RESULTS] + ([RunRecord.CHECKPOINTS] if checkpoints else [])
    names = [n for p in prefixes for n in store.list(rec.name(p)) if "/.partial/" not in n]
    root = os.path.join(dest, run_id)
    copied, skipped, moved = [], [], 0
    for i, name in enumerate(names, 1):
        rel = name[len(rec.prefix):]
        local = os.path.join(root, rel)
        info = store.stat(name)
        if info is None:
            continue
        if os.path.isfile(local) and crc32c_of_file(local) == info.crc32c:
            skipped.append(rel)
            continue
        os.makedirs(os.path.dirname(local), exist_ok=True)
        store.download_file(name, local)
        copied.append(rel)
        moved += info.size
        if say:
            say(f"[{i}/{len(names)}] {rel} ({info.size} bytes)")
    latest = os.path.join(dest, "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        tmp = f"{latest}.tmp-{os.getpid()}"
        os.symlink(run_id, tmp)
        os.replace(tmp, latest)
    return {"run_id": run_id, "dest": root, "copied": copied, "unchanged": skipped, "bytes": moved}
