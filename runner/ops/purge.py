"""Forgetting a run: ``runner ops delete --purge`` stops it as ``delete`` does, then removes its
whole record (``runs/<ID>/``) so that its id can be used for a new run.

Why a separate step from ``delete``: a deleted run keeps its record (checkpoints, results, logs)
so that ``submit --restart`` can resume it; a purge throws that away, so it asks first.

The one rule it never bends: a run whose VM or container may still be alive keeps its record.
An agent still running would go on writing into ``runs/<ID>/`` (heartbeats, checkpoints, a final
state) and mix itself into whatever run takes the id next. So the record goes only when, after
the stop, the backend lists no instance of the run at all (one still being deleted counts: a GCE
delete is a long-running operation, https://cloud.google.com/compute/docs/reference/beta/instances/delete)
and no create is in flight; a listing that fails refuses too.

A local run's staged data (``--data``, a folder per run under ``staging_dir`` on this machine,
kept across attempts as a VM's disk is) goes with the record: nothing else ever removes it, and
a purged run cannot be resumed to use it. On GCE it lived on the VM's disks, gone with the VM.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from entrypoint.record import DamagedRecord, RunRecord, run_prefix
from entrypoint.record.create_claim import CREATING
from entrypoint.record.documents import utcnow
from entrypoint.store import Store
from runner.launch.backends.base import ComputeBackend
from runner.ops.runs import RunNotFound, delete_run


class PurgeRefused(Exception):
    """The record must stay (the message says why and what to do)."""


@dataclass(frozen=True)
class RecordSummary:
    """What a purge would remove, for the confirmation question."""

    run_id: str
    state: str | None  # None: no readable state.json
    objects: int
    where: str  # the record's location, e.g. gs://bucket/runs/exp-1/


def summarize(store: Store, run_id: str) -> RecordSummary:
    """The run's record as it stands (RunNotFound when there is nothing under ``runs/<ID>/``)."""
    names = store.list(run_prefix(run_id))
    if not names:
        raise RunNotFound(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    try:
        cur = RunRecord(store, run_id).read_state()
    except DamagedRecord:
        cur = None  # a torn state.json is one of the reasons to purge: it must not block it
    state = cur[0].state.value if cur else None
    return RecordSummary(run_id, state, len(names), f"{store.url.rstrip('/')}/{run_prefix(run_id)}")


def purge_run(store: Store, backend: ComputeBackend, run_id: str, grace_period: float,
              actor: str = "ops-delete") -> dict[str, Any]:
    """Stop the run (``delete_run``: ``.stop``, instances removed), check nothing of it can still
    be alive, then remove every object of its record. Raises ``PurgeRefused`` (record untouched
    beyond the stop) or ``RunNotFound``. Safe to run again after an interruption."""
    summarize(store, run_id)  # RunNotFound before anything is written
    rec = RunRecord(store, run_id)
    staged = _local_staged_dir(rec)
    stopped: dict[str, Any] = {"run_id": run_id, "removed": []}
    if store.exists(rec.name(RunRecord.STATE)) or store.exists(rec.name(RunRecord.SPEC)):
        stopped = delete_run(store, backend, run_id, grace_period, actor=actor)
        if not rec.stop_requested():
            raise PurgeRefused(f"run {run_id} was restarted while it was being stopped, so its record stays: "
                               f"{stopped.get('error', '')}")
    _refuse_if_alive(store, backend, rec)
    removed = _remove_record(store, run_id)
    return {"run_id": run_id, "state": stopped.get("state"), "removed": stopped["removed"],
            "purged_objects": removed, "staged_data": _remove_staged(staged)}


def _local_staged_dir(rec: RunRecord) -> str | None:
    """The folder a local run staged its ``--data`` into, if it has one (read before the spec goes)."""
    from runner.launch.staged_data import local_staging_dir

    try:
        spec = rec.read_spec()
    except DamagedRecord:
        return None
    if spec is None or not spec.data or not isinstance((spec.vm or {}).get("staging_dir"), str):
        return None
    return local_staging_dir(spec)


def _remove_staged(path: str | None) -> dict[str, Any] | None:
    """Remove a purged run's staged data; what could not be removed is said, never hidden."""
    if path is None or not os.path.lexists(path):
        return None
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _f, p, e: errors.append(f"{p}: {e[1]}"))
    if errors:
        return {"path": path, "removed": False,
                "error": f"{errors[0]} (and {len(errors) - 1} more); its files were written by the run's "
                         f"container as root: remove it with `sudo rm -rf {path}`"}
    return {"path": path, "removed": True}


def _refuse_if_alive(store: Store, backend: ComputeBackend, rec: RunRecord) -> None:
    try:
        left = backend.list(rec.run_id)
    except Exception as e:  # noqa: BLE001 - whatever the reason, we cannot tell it is gone
        raise PurgeRefused(f"could not list the instances of run {rec.run_id} ({e}), so one may still be alive "
                           f"and writing to its record: the run is stopped; run the same command again to "
                           "remove the record") from None
    if left:
        names = ", ".join(f"{i.name} ({i.status.value})" for i in left)
        raise PurgeRefused(f"run {rec.run_id} is stopped, but {names} still exists (its delete takes a while), and "
                           "a live agent would keep writing to the record: run the same command again in a minute")
    try:
        cur = rec.read_state()
    except DamagedRecord:
        return  # nothing can be creating an attempt of a run whose state nobody can read
    claim = rec.read_claim(cur[0].attempt) if cur else None
    if claim is not None and claim.status == CREATING and claim.in_flight(utcnow()):
        raise PurgeRefused(f"a supervisor is creating an instance for run {rec.run_id} right now; it will see the "
                           ".stop and remove it: run the same command again in a minute")


def _remove_record(store: Store, run_id: str) -> int:
    """Every object under ``runs/<ID>/``. The state and spec go last but one and ``.stop`` last,
    so a purge cut short leaves a stopped run that nothing restarts, and that the same command
    finishes."""
    rec = RunRecord(store, run_id)
    last = [rec.name(RunRecord.STATE), rec.name(RunRecord.SPEC), rec.name(RunRecord.STOP)]
    removed = 0
    for _ in range(3):  # an object listed after our listing (a late event of the stop) goes too
        names = store.list(run_prefix(run_id))
        if not names:
            break
        for name in sorted(set(names) - set(last)) + [n for n in last if n in names]:
            store.delete(name)
            removed += 1
    return removed
