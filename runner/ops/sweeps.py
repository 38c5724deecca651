"""``ops list --sweep`` and ``ops delete --sweep``: a sweep's members, read from its document.

The members come from ``sweeps/<ID>.json`` (one read), not from scanning every run's spec; each
member's row is then read in parallel, as ``ops list`` reads runs.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from entrypoint.record import DamagedRecord, RunRecord
from entrypoint.record.sweeps import SweepDoc, read_sweep
from entrypoint.store import Store
from runner.launch.backends.base import ComputeBackend
from runner.ops.runs import RunNotFound, delete_run, run_row

WORKERS = 8  # as ops.runs.list_runs: within the storage client's 10 connections
SUMMARY_FILE = "summary.json"  # what a job writes into its results dir (examples/trainer.py, torch_train.py)
NOT_SUBMITTED = "NOT_SUBMITTED"  # a member the sweep named but never created (cut short: rerun it)

# How the summary counts states. The queue's QUEUED (and any state this version does not know,
# written by a newer runner) counts as queued: it holds no VM yet.
_DONE, _FAILED, _STOPPED = "SUCCEEDED", "FAILED", "STOPPED"
_RUNNING = {"PROVISIONING", "BOOTING", "RUNNING", "PREEMPTED", "STALLED", "ERRORED"}
CATEGORIES = ("queued", "running", "done", "failed", "stopped", "not_submitted", "damaged")


def category(row: dict[str, Any]) -> str:
    """The summary column a member's row counts in."""
    if "error" in row:
        return "damaged"
    state = row.get("state")
    if state == NOT_SUBMITTED:
        return "not_submitted"
    if state == _DONE:
        return "done"
    if state == _FAILED:
        return "failed"
    if state == _STOPPED:
        return "stopped"
    return "running" if state in _RUNNING else "queued"


def sweep_of(store: Store, sweep_id: str) -> SweepDoc:
    """The sweep's document, or ``RunNotFound`` (exit 3) saying how to find sweeps."""
    found = read_sweep(store, sweep_id)
    if found is None:
        raise RunNotFound(f"no sweep {sweep_id!r} in {store.url} (its runs are named {sweep_id}-NNN; "
                          "`runner ops list` shows every run)")
    return found[0]


def sweep_status(store: Store, sweep_id: str, price_table: str | None = None,
                 workers: int = WORKERS) -> dict[str, Any]:
    """One row per member (``ops list``'s row plus ``params``, ``cost`` and ``metric``) and a
    ``summary``: counts per category, the total cost so far, and the best member by the sweep's
    metric (the value its job wrote under that key in ``results/summary.json``).

    Reads per member: state, heartbeat, the cost's few objects, and ``results/summary.json``
    when the sweep names a metric; in parallel, ``workers`` at a time.
    """
    from runner.ops.cost import annotate_row

    doc = sweep_of(store, sweep_id)
    metric = doc.metric
    now = time.time()

    def row_for(member: dict[str, Any]) -> dict[str, Any]:
        rid = member["run_id"]
        row = run_row(store, rid, now) or {"run_id": rid, "state": NOT_SUBMITTED, "attempt": None,
                                            "restarts": None, "progress": {}, "eta_s": None}
        row["params"] = member.get("params", {})
        if row["state"] != NOT_SUBMITTED:
            annotate_row(row, store, price_table, now)
        row["metric"] = metric_value(store, rid, metric["name"]) if metric and "error" not in row \
            and row["state"] != NOT_SUBMITTED else None
        return row

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(doc.runs)))) as pool:
        rows = list(pool.map(row_for, doc.runs))
    return {"sweep_id": sweep_id, "command": doc.command, "image": doc.image, "metric": metric,
            "max_concurrent": doc.max_concurrent, "priority": doc.priority, "runs": rows,
            "summary": summarize(rows, metric)}


def metric_value(store: Store, run_id: str, name: str) -> float | None:
    """The number the job wrote as ``name`` in ``results/summary.json``; None when it wrote no
    such file (yet: results are synced at the end), no such key, or not a finite number."""
    import json

    rec = RunRecord(store, run_id)
    blob = store.read(rec.name(RunRecord.RESULTS + SUMMARY_FILE))
    if blob is None:
        return None
    try:
        v = json.loads(blob.data).get(name)
    except (ValueError, AttributeError):
        return None  # not a JSON object: the job's file, not the record; nothing to rank by
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def summarize(rows: list[dict[str, Any]], metric: dict[str, str] | None) -> dict[str, Any]:
    """Counts per category, total cost (known estimates summed; how many unknown), best metric."""
    counts = {c: 0 for c in CATEGORIES}
    total, unknown, currency = 0.0, 0, "USD"
    for r in rows:
        counts[category(r)] += 1
        if r.get("state") == NOT_SUBMITTED:
            continue
        c = r.get("cost") or {}
        if c.get("so_far") is None:
            unknown += 1
        else:
            total += c["so_far"]
            currency = c.get("currency", currency)
    best = None
    scored = [r for r in rows if r.get("metric") is not None]
    if metric and scored:
        pick = min if metric.get("goal", "minimize") == "minimize" else max
        b = pick(scored, key=lambda r: r["metric"])
        best = {"run_id": b["run_id"], "name": metric["name"], "goal": metric.get("goal", "minimize"),
                "value": b["metric"], "params": b["params"], "state": b["state"]}
    return {"runs": len(rows), "counts": counts, "cost": {"so_far": round(total, 6), "currency": currency,
                                                          "unknown": unknown},
            "best": best}


def delete_sweep(store: Store, backend: ComputeBackend, sweep_id: str, grace_for: Callable[[str], float],
                 workers: int = WORKERS) -> dict[str, Any]:
    """Stop every member for good, as ``ops delete`` stops one run (``.stop`` first, then its
    instances), ``workers`` at a time: a queued member is never started, a running one gets its
    own grace period (``grace_for(run_id)``). Members never created are skipped.

    Returns ``stopped`` (members this delete moved to STOPPED), ``already_ended`` (finished
    before it), ``not_submitted`` and ``errors`` (run id → what went wrong), and each ``runs``
    entry as ``ops delete --json`` gives it.
    """
    doc = sweep_of(store, sweep_id)

    def stop(rid: str) -> dict[str, Any]:
        try:
            before = _state_name(store, rid)
            out = delete_run(store, backend, rid, grace_for(rid))
            return {**out, "before": before}
        except RunNotFound:
            return {"run_id": rid, "state": NOT_SUBMITTED, "removed": []}
        except Exception as e:  # noqa: BLE001 - one member's failure must not leave the others running
            return {"run_id": rid, "state": None, "removed": [], "error": f"{type(e).__name__}: {e}"}

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(doc.runs)))) as pool:
        outs = list(pool.map(stop, doc.run_ids))
    ended = {"SUCCEEDED", "FAILED", "STOPPED"}
    return {
        "sweep_id": sweep_id,
        "stopped": sum(1 for o in outs if o["state"] == "STOPPED" and o.get("before") not in ended),
        "already_ended": sum(1 for o in outs if o.get("before") in ended),
        "not_submitted": [o["run_id"] for o in outs if o["state"] == NOT_SUBMITTED],
        "errors": {o["run_id"]: o["error"] for o in outs if o.get("error")},
        "removed": [n for o in outs for n in o.get("removed", [])],
        "runs": outs,
    }


def _state_name(store: Store, run_id: str) -> str | None:
    try:
        cur = RunRecord(store, run_id).read_state()
    except DamagedRecord:
        return None
    return cur[0].state.value if cur else None
