"""Submitting a sweep: N runs from one command template, one pinned image, one sweep id.

Each member is an ordinary run (``runs/<SWEEP_ID>-<NNN>/``, made by ``submit.create_run``), whose
spec carries the sweep's id, ``max_concurrent`` and ``priority`` for the queue to enforce. The
sweep document (``sweeps/<ID>.json``, ``entrypoint.record.sweeps``) names every member before
any is created, so a sweep cut short still says which runs it meant; running it again with the
same ``--sweep-id`` creates the missing members and leaves the others untouched.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from entrypoint.record import DamagedRecord, RunRecord, RunSpec, utcnow
from entrypoint.record.sweeps import SweepDoc, create_sweep, read_sweep, update_sweep
from entrypoint.store import PreconditionFailed
from runner.launch.context import Context
from runner.launch.submit import SubmitRefused, create_run, new_run_spec, resolve_image
from runner.launch.sweep_file import SweepPlan, check_command, render, sweep_env
from runner.naming import validate_run_id

# Members are written by a bounded pool: on GCS each spec and state write is a round trip of tens
# of milliseconds, so 1,000 members one after another would take a minute. The storage client is
# safe to share across threads (https://github.com/googleapis/google-cloud-python/issues/5685)
# and keeps 10 connections per host (urllib3's pool_maxsize, https://github.com/googleapis/python-storage/issues/253):
# 8 workers reuse connections rather than open and discard them (as ``ops.runs.list_runs`` does).
MEMBER_WORKERS = 8
# A default sweep id stays short so its members' instance names stay readable: GCE names are at
# most 63 characters (https://cloud.google.com/compute/docs/naming-resources#resource-name-format),
# and runner.naming hashes an id that does not fit beside "runner-" and "-aN".
_STEM_MAX = 24


@dataclass
class SweepResult:
    """What a ``submit_sweep`` did: members it created, found already there, and could not make."""

    sweep_id: str
    image: str
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    resumed: bool = False  # the sweep document was there already (a rerun)
    doc: SweepDoc | None = None


def default_sweep_id(path: str) -> str:
    """``<file stem>-<4 hex>``: readable, lower-case, and new each time (``--sweep-id`` to choose)."""
    import os

    stem = os.path.splitext(os.path.basename(path))[0].lower()
    stem = re.sub("-+", "-", re.sub(r"[^a-z0-9-]", "-", stem)).strip("-")[:_STEM_MAX].rstrip("-")
    if not stem or not stem[0].isalpha():
        stem = "sweep" + (f"-{stem}" if stem else "")
    return f"{stem}-{secrets.token_hex(2)}"


def member_ids(sweep_id: str, n: int) -> list[str]:
    """``<sweep-id>-<index>``, zero-padded to at least three digits so they sort in index order."""
    width = max(3, len(str(n - 1)))
    return [f"{sweep_id}-{i:0{width}d}" for i in range(n)]


def check_sweep_id(sweep_id: str, n: int) -> None:
    """The sweep id names ``sweeps/<ID>.json`` and starts every member's run id: both must be
    valid run ids (``InvalidRunId`` says why)."""
    validate_run_id(sweep_id)
    validate_run_id(member_ids(sweep_id, n)[-1])  # the longest member id


def submit_sweep(ctx: Context, sweep_id: str, plan: SweepPlan, command: list[str], image: str | None, *,
                 env: dict[str, str] | None = None, max_restarts: int | None = None,
                 retry_on_failure: int | None = None, priority: int = 0, max_concurrent: int | None = None,
                 workers: int = MEMBER_WORKERS, actor: str = "sweep") -> SweepResult:
    """Create the sweep's document and every member that does not exist yet.

    ``image``: the image for a new sweep (pinned here, once); a rerun runs the image its document
    pinned, whatever ``image`` says, so every member runs the same code. A rerun whose file or
    command differs from the document's is refused (``SubmitRefused``): same id, same sweep.
    Members that fail to be created are in ``failed`` with the reason; the others are made.
    """
    check_command(command, plan)
    check_sweep_id(sweep_id, len(plan.points))
    members = [{"run_id": rid, "params": p} for rid, p in zip(member_ids(sweep_id, len(plan.points)), plan.points)]
    found = read_sweep(ctx.store, sweep_id)
    if found is None:
        doc = SweepDoc(sweep_id=sweep_id, command=list(command), runs=members, image=resolve_image(ctx, image),
                       max_concurrent=max_concurrent, priority=priority, metric=plan.metric, source=plan.source)
        try:
            create_sweep(ctx.store, doc)
        except PreconditionFailed:  # another sweep of this id was created a moment ago: compare with it
            found = read_sweep(ctx.store, sweep_id)
            if found is None:
                raise SubmitRefused(f"sweep {sweep_id} could not be created; try again") from None
    if found is not None:
        doc = found[0]
        _check_same(doc, command, members)
    result = SweepResult(sweep_id, doc.image, resumed=found is not None, doc=doc)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(members)))) as pool:
        there = list(pool.map(lambda m: _has_record(ctx, m["run_id"]), members))
    missing = [m for m, t in zip(members, there) if not t]
    result.existing = _ours([m["run_id"] for m, t in zip(members, there) if t], ctx, sweep_id, result.failed)
    if missing:
        first = missing[0]
        template = new_run_spec(ctx, first["run_id"], render(command, first["params"]), doc.image,
                                max_restarts=max_restarts, retry_on_failure=retry_on_failure, env=dict(env or {}),
                                priority=doc.priority, sweep=sweep_id, max_concurrent=doc.max_concurrent)

        def make(m: dict[str, Any]) -> tuple[str, str | None, bool]:
            spec = member_spec(template, m["run_id"], command, m["params"], env or {})
            try:
                out = create_run(ctx, spec, actor)
            except Exception as e:  # noqa: BLE001 - one member's failure is reported; the rest go on
                return m["run_id"], f"{type(e).__name__}: {e}" if not isinstance(e, SubmitRefused) else str(e), False
            return m["run_id"], None, out.resumed

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            for rid, err, joined in pool.map(make, missing):
                if err is not None:
                    result.failed[rid] = err
                else:
                    (result.existing if joined else result.created).append(rid)
    result.doc = _record_submitted(ctx, sweep_id, set(result.created) | set(result.existing))
    return result


def member_spec(template: RunSpec, run_id: str, command: list[str], params: dict[str, Any],
                env: dict[str, str]) -> RunSpec:
    """One member's spec: the template's pinned image and settings, its own argv and
    ``SWEEP_<NAME>`` env (a parameter wins over an ``--env`` of the same name)."""
    return dataclasses.replace(template, run_id=run_id, command=render(command, params),
                               env={**env, **sweep_env(params)}, created_at=utcnow())


def _has_record(ctx: Context, run_id: str) -> bool:
    """Whether the member exists (a torn state.json counts: it is there, and never overwritten)."""
    try:
        return RunRecord(ctx.store, run_id).read_state() is not None
    except DamagedRecord:
        return True


def _check_same(doc: SweepDoc, command: list[str], members: list[dict[str, Any]]) -> None:
    """A rerun must be the same sweep: same command template, same points in the same order."""
    if doc.command != list(command):
        import shlex

        raise SubmitRefused(f"sweep {doc.sweep_id} exists with the command {shlex.join(doc.command)}, not "
                            f"{shlex.join(command)}; nothing was submitted: rerun it with its own command, "
                            "or choose another --sweep-id")
    if [(r["run_id"], r.get("params")) for r in doc.runs] != [(m["run_id"], m["params"]) for m in members]:
        raise SubmitRefused(f"sweep {doc.sweep_id} exists with other parameters ({len(doc.runs)} runs from "
                            f"{doc.source or 'its file'}); nothing was submitted: rerun it with the same file, "
                            "or choose another --sweep-id")


def _ours(run_ids: list[str], ctx: Context, sweep_id: str, failed: dict[str, str]) -> list[str]:
    """The existing members that are this sweep's; a run of that id made by something else (a
    plain submit) is left alone and reported, never counted as a member."""
    def sweep_of(rid: str) -> str | None:
        try:
            spec = RunRecord(ctx.store, rid).read_spec()
        except DamagedRecord:
            return sweep_id  # a torn spec of a member: left alone, and ops list --sweep shows it damaged
        return None if spec is None else spec.sweep

    if not run_ids:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(MEMBER_WORKERS, len(run_ids)))) as pool:
        owners = list(pool.map(sweep_of, run_ids))
    mine = []
    for rid, owner in zip(run_ids, owners):
        if owner == sweep_id:
            mine.append(rid)
        else:
            failed[rid] = (f"run id {rid} is taken by a run that is not part of sweep {sweep_id}"
                           + (f" (it belongs to sweep {owner})" if owner else "")
                           + "; choose another --sweep-id")
    return mine


def _record_submitted(ctx: Context, sweep_id: str, submitted: set[str]) -> SweepDoc:
    """Add ``submitted`` to the document's list, compare-and-swap: a concurrent rerun's
    additions are merged, never overwritten."""
    for _ in range(20):
        found = read_sweep(ctx.store, sweep_id)
        if found is None:
            raise SubmitRefused(f"sweep {sweep_id}'s document vanished while its runs were submitted")
        doc, gen = found
        merged = set(doc.submitted) | submitted
        order = {rid: i for i, rid in enumerate(doc.run_ids)}
        if merged == set(doc.submitted):
            return doc  # nothing new to say (a rerun that found every member there)
        doc.submitted = sorted(merged, key=lambda r: order.get(r, len(order)))
        try:
            update_sweep(ctx.store, doc, gen)
            return doc
        except PreconditionFailed:
            continue
    raise SubmitRefused(f"sweep {sweep_id}: its document kept changing under this submit; run it again")
