"""The queue's part of a supervisor pass: who waits, what the project has free, who begins.

``admission`` holds the rules (pure); this module gathers their inputs from one pass's reads
(every run's state and spec, one instance listing, one quota read) and publishes the outcome in
``supervisor/queue.json``, one small object that ``ops list`` and ``ops status`` read to say a
queued run's place and reason without a request per run.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Mapping

from entrypoint.record import RunSpec, RunState, State
from entrypoint.store import Store, StoreError
from runner.launch.admission import HOLD_AFTER_S, Decision, Quotas, Waiting, decide
from runner.launch.backends.base import BackendError, ComputeBackend, Instance

QUEUE_DOC = "supervisor/queue.json"

# The states whose next step is to begin an attempt, which the queue may hold back.
WAITS = frozenset({State.PENDING, State.QUEUED, State.PREEMPTED, State.STALLED, State.ERRORED})
HOLDS_VMS = frozenset({State.PROVISIONING, State.RUNNING})


def waiting(run_id: str, st: RunState, spec: RunSpec | None, backend: ComputeBackend) -> Waiting | None:
    """``run_id`` as the queue sees it, or None when it is not waiting to begin an attempt."""
    if st.state not in WAITS or spec is None:
        return None
    since = st.queued_since if st.state == State.QUEUED and st.queued_since is not None else st.updated_at
    return Waiting(run_id, spec.priority, since, backend.quota_needs(spec), spec.sweep, spec.max_concurrent)


def admit(views: Mapping[str, tuple[RunState, RunSpec | None]], listed: Mapping[str, list[Instance]] | None,
          backend: ComputeBackend, now: float, hold_after: float = HOLD_AFTER_S,
          say: Callable[[str], None] = lambda s: None) -> dict[str, Decision]:
    """This pass's decisions for every waiting run in ``views`` (run id → state, spec).

    ``listed``: the pass's instances by run id (None: the listing failed, so creates in flight
    cannot be told from made VMs, and none is counted). One quota read in all.
    """
    waits: list[Waiting] = []
    sweep_holding: dict[str, int] = {}
    in_flight: list[Mapping[str, float]] = []
    for run_id, (st, spec) in views.items():
        w = waiting(run_id, st, spec, backend)
        if w is not None:
            waits.append(w)
            continue
        if spec is None or st.state not in HOLDS_VMS:
            continue
        if spec.sweep:
            sweep_holding[spec.sweep] = sweep_holding.get(spec.sweep, 0) + 1
        if listed is not None and not any(i.attempt == st.attempt for i in listed.get(run_id, [])):
            needs = backend.quota_needs(spec)  # a create in flight: its VM is not in the usage yet
            if needs:
                in_flight.append(needs[0])
    if not waits:
        return {}
    keys = {k for w in waits for need in w.needs for k in need} | {k for need in in_flight for k in need}
    quotas: Quotas | None = None
    if keys:
        try:
            quotas = backend.read_quotas(keys)
        except BackendError as e:
            say(f"the queue could not read the quotas ({e}); runs begin as capacity allows this pass")
    if quotas is not None:
        for need in in_flight:
            quotas.take(need)
    return decide(waits, quotas, sweep_holding, now, hold_after)


def admit_one(run_id: str, st: RunState, spec: RunSpec | None, backend: ComputeBackend, now: float,
              say: Callable[[str], None] = lambda s: None) -> Decision:
    """The decision for one run stepped on its own (``runner submit`` following it): its quota
    alone, read now. Runs of other supervisors' passes and sweep caps are not seen here."""
    return admit({run_id: (st, spec)}, None, backend, now, say=say).get(run_id, Decision(True))


def publish(store: Store, decisions: Mapping[str, Decision], actor: str, now: float,
            last: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Write ``supervisor/queue.json`` when its content changed since ``last``; returns it."""
    rows = sorted(({"run_id": r, "position": d.position, "reason": d.reason, "holds": d.holds}
                   for r, d in decisions.items() if not d.admitted and not d.never),
                  key=lambda row: row["position"])
    if rows == last:
        return rows
    try:
        store.write(QUEUE_DOC, json.dumps({"updated_at": now, "by": actor, "runs": rows}, indent=1).encode())
    except StoreError as e:
        print(f"runner: warning: could not write {QUEUE_DOC} ({e}); ops list shows no queue places",
              file=sys.stderr)
        return last or []
    return rows


def read_queue(store: Store) -> dict[str, dict[str, Any]]:
    """Run id → {position, reason, holds, updated_at} from the last pass that wrote the queue."""
    try:
        raw = store.read(QUEUE_DOC)
    except StoreError:
        return {}
    if raw is None:
        return {}
    try:
        doc = json.loads(raw.data)
        return {row["run_id"]: {**row, "updated_at": doc.get("updated_at")} for row in doc.get("runs", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
