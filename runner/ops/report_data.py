"""The numbers a run report shows (``runner ops report``), from the run record alone.

Why a module of its own: the page (``report_html``) only draws; every figure it shows is
computed here, so the tests check the figures against the record and not against the page.
Nothing is recomputed that another reader already gives: the attempts' times come from the
journal (``entrypoint.record.attempts.timeline``), billing and what preemptions threw away from
the cost estimate (``runner.ops.cost.estimate_run_cost``, its full read: a row per attempt),
and each attempt's way in from its phase marks (``entrypoint.record.timeline``).

What the record keeps, and so what a report can draw: per attempt, when it was created, ran and
ended (events), the first and last step its job reported with their times and when its newest
checkpoint was written (its manifest, written at its end), and its recovery's phase marks. The
heartbeat adds the live attempt's latest step and sync state. There is no finer progress or sync
series in the record, so the progress chart joins those points, and the sync lag is the age of
the newest published checkpoint when each attempt ended (the work a preemption then would throw
away), plus now for a live run.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from entrypoint.record import ALL_EVENTS, DamagedRecord, RunRecord, RunView, State
from entrypoint.record.attempts import LOST_TO_PREEMPTION, timeline
from entrypoint.record.timeline import SEGMENT_NAMES, build_recovery, format_recovery
from entrypoint.store import Store
from runner.launch.backends.gce_provisioning import STANDARD
from runner.ops.cost import PriceTable, estimate_run_cost, load_prices

# The end states a timeline marks: a loss (preempted, stalled) or a job failure (errored, failed).
MARKED_ENDS = ("PREEMPTED", "STALLED", "ERRORED", "FAILED")


class ReportError(Exception):
    """No report can be made (no such run); the message says what to do."""


@dataclass
class Band:
    """One attempt on its VM: created at ``start``, its job running from ``running_at`` (None:
    never ran), ended at ``end`` as ``end_state`` (None: still going, up to ``end`` = now)."""

    attempt: int
    zone: str
    instance: str | None
    start: float
    running_at: float | None
    end: float
    end_state: str | None
    billed_s: float
    cost: float | None
    lost_s: float
    lost_cost: float | None
    lost_basis: str | None


@dataclass
class Marker:
    """A preemption, stall or failure: when the attempt ended that way, and the journal's reason."""

    time: float
    kind: str  # the end state, lower case: preempted, stalled, errored, failed
    attempt: int
    reason: str | None


@dataclass
class Phase:
    """One segment of an attempt's recovery on the time axis (``SEGMENT_NAMES``)."""

    attempt: int
    name: str
    start: float
    end: float


@dataclass
class ProgressPoint:
    time: float
    step: float
    attempt: int


@dataclass
class Redone:
    """Steps a lost attempt had done past the point its successor resumed from."""

    attempt: int  # the lost attempt
    last_step: float
    resumed_step: float
    steps: float


@dataclass
class SyncLag:
    """The attempt's work not yet in a checkpoint in the store at ``time``: seconds since its
    newest published checkpoint was written, or since the attempt's job started if it has
    published none (None: the record cannot tell). ``kind``: ``sample`` (the agent's series),
    ``end`` (when the attempt's job ended) or ``live`` (the live attempt's latest heartbeat)."""

    time: float
    attempt: int
    lag_s: float | None
    kind: str = "end"


@dataclass
class RunReport:
    run_id: str
    state: str
    reason: str | None
    exit_code: int | None
    attempt: int
    restarts: int
    live: bool
    now: float
    t0: float  # the axis: from the run's first event
    t1: float  # to its last event, or now while it is live
    backend: str
    machine: str | None
    gpu: str | None
    zones: list[str] = field(default_factory=list)  # the lanes, in order of first use
    bands: list[Band] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)  # Recovery.to_dict + "text"
    progress: list[ProgressPoint] = field(default_factory=list)
    total_steps: float | None = None
    rate: float | None = None  # steps per second while a job ran (the attempts' own rates, time-weighted)
    effective_rate: float | None = None  # net steps per second of wall time, from the first step on
    redone: list[Redone] = field(default_factory=list)
    sync: list[SyncLag] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    cost_series: list[tuple[float, float]] = field(default_factory=list)  # (time, spot cost so far)
    last_error: str | None = None
    damaged: list[str] = field(default_factory=list)

    @property
    def preemptions(self) -> int:
        return sum(1 for m in self.markers if m.kind in ("preempted", "stalled"))

    @property
    def steps_redone(self) -> float:
        return sum(r.steps for r in self.redone)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preemptions": self.preemptions, "steps_redone": self.steps_redone}


def _num(v: Any) -> float | None:
    """A number from a record document; anything else (a string, NaN, infinity) reads as missing."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


def _point(doc: Any) -> tuple[float, float] | None:
    """(time, step) of a manifest's ``first_progress`` / ``last_progress``."""
    if not isinstance(doc, dict):
        return None
    t, s = _num(doc.get("time")), _num(doc.get("step"))
    return None if t is None or s is None else (t, s)


def build_report(store: Store, run_id: str, prices: PriceTable | None = None, now: float | None = None,
                 workers: int = 8) -> RunReport:
    """Everything ``runner ops report`` shows of one run.

    Reads the whole record once: state, spec, heartbeat, every journal entry, every attempt's
    manifest (read ``workers`` at a time) and phase marks, and what the cost estimate reads
    (every manifest and claim again, and a lost attempt's log when nothing else tells its
    redone work). A report is asked for rarely, so it reads what it needs rather than the
    running summary ``ops status`` keeps small.
    """
    now = time.time() if now is None else now
    prices = prices if prices is not None else load_prices(None)
    rec = RunRecord(store, run_id)
    damaged: list[DamagedRecord] = []
    try:
        view = rec.view(events=ALL_EVENTS, spec=True, heartbeat=True)
    except DamagedRecord as e:
        raise ReportError(f"run {run_id}'s record cannot be read: {e}") from None
    if view is None:
        raise ReportError(f"no run {run_id!r} in {store.url} (see `runner ops list`)")
    damaged = list(view.damaged)
    st, spec = view.state, view.spec
    live = not st.state.terminal
    n_attempts = st.attempt
    attempts = timeline(view.events)
    try:
        cost = estimate_run_cost(rec, prices, now, view=view)
    except DamagedRecord as e:  # a torn manifest or claim: no cost, but the rest of the run still shows
        damaged.append(e)
        cost = {"currency": prices.currency, "as_of": prices.as_of, "source": prices.source, "so_far": None,
                "lost_to_preemptions": None, "attempts": [], "why_unknown": f"cannot estimate: {e}"}

    with ThreadPoolExecutor(max_workers=max(1, min(workers, n_attempts or 1))) as pool:
        manifests = list(pool.map(lambda n: _manifest(rec, n, damaged), range(1, n_attempts + 1)))
        marks = list(pool.map(rec.phases, range(1, n_attempts + 1)))

    times = [float(ev["time"]) for _, ev in view.events if _num(ev.get("time")) is not None]
    t0 = min(times) if times else st.updated_at
    t1 = now if live else max(times + [st.updated_at])

    rep = RunReport(
        run_id=run_id, state=st.state.value, reason=st.reason, exit_code=st.exit_code, attempt=n_attempts,
        restarts=st.restarts, live=live, now=now, t0=t0, t1=t1,
        backend=spec.backend if spec else "?", machine=spec.machine_type if spec else None,
        gpu=spec.gpu if spec else None, cost=cost,
    )
    rows = {r["attempt"]: r for r in cost.get("attempts", [])}
    for n in range(1, n_attempts + 1):
        a, m, row = attempts.get(n), manifests[n - 1], rows.get(n, {})
        zone = row.get("zone") or m.get("zone") or (st.zone if n == st.attempt else None) or "?"
        start = _num(row.get("start")) or (a.provisioned_at if a else None)
        if start is None:
            continue  # never created (waiting out a backoff): nothing to draw
        end = _num(row.get("end")) or (a.ended_at if a and a.ended_at else (now if live and n == st.attempt else start))
        if zone not in rep.zones:
            rep.zones.append(zone)
        rep.bands.append(Band(
            attempt=n, zone=zone, instance=m.get("instance") or _instance_of(view, n),
            start=start, running_at=a.running_at if a else None, end=max(end, start),
            end_state=a.end_state if a else None, billed_s=float(row.get("seconds") or 0.0),
            cost=row.get("cost"), lost_s=float(row.get("lost_seconds") or 0.0), lost_cost=row.get("lost_cost"),
            lost_basis=row.get("lost_basis"),
        ))
        if a is not None and a.end_state in MARKED_ENDS and a.ended_at is not None:
            rep.markers.append(Marker(time=a.ended_at, kind=a.end_state.lower(), attempt=n,
                                      reason=_end_reason(view, n, a.end_state)))
        if marks[n - 1]:
            r = build_recovery(n, marks[n - 1])
            rep.recoveries.append({**r.to_dict(), "text": format_recovery(
                r, now if live and n == st.attempt else None, job_running=live and n == st.attempt
                and st.state == State.RUNNING)})
            rep.phases.extend(_phases_of(r))
    _progress(rep, manifests, view, marks)
    _sync(rep, manifests, view, attempts)
    rep.cost_series = _cost_series(rep.bands)
    rep.cost["on_demand"], rep.cost["on_demand_why_unknown"] = on_demand_cost(prices, spec, cost)
    if st.state in (State.FAILED, State.ERRORED) or (st.state == State.STOPPED and st.exit_code not in (None, 0)):
        rep.last_error = (st.reason or "no reason recorded") + (f" (exit code {st.exit_code})"
                                                                  if st.exit_code is not None else "")
    rep.damaged = list(dict.fromkeys(str(d) for d in damaged))
    return rep


def _manifest(rec: RunRecord, n: int, damaged: list[DamagedRecord]) -> dict[str, Any]:
    try:
        return rec.read_manifest(n) or {}
    except DamagedRecord as e:
        damaged.append(e)  # one torn manifest must not hide the rest of the run
        return {}


def _instance_of(view: RunView, n: int) -> str | None:
    for _, ev in view.events:
        if ev.get("attempt") == n and ev.get("instance"):
            return str(ev["instance"])
    return view.state.instance if n == view.state.attempt else None


def _end_reason(view: RunView, n: int, end_state: str) -> str | None:
    for _, ev in view.events:
        if ev.get("attempt") == n and ev.get("to") == end_state:
            return ev.get("reason")
    return None


def _phases_of(r: Any) -> list[Phase]:
    """A recovery's known segments laid end to end from its origin (on the critical path, as
    ``build_recovery`` measured them); drawing stops at the first unknown one."""
    out: list[Phase] = []
    t = r.origin
    if t is None:
        return out
    for name, secs in r.segments:
        if secs is None:
            break
        out.append(Phase(attempt=r.attempt, name=name, start=t, end=t + secs))
        t += secs
    return out


def _progress(rep: RunReport, manifests: list[dict[str, Any]], view: RunView,
              marks: list[dict[str, dict[str, Any]]]) -> None:
    """Progress points (the first and last step each attempt reported, the live one's latest),
    the rate, and the steps each lost attempt did past its successor's resume point."""
    hb = view.current_heartbeat
    per: dict[int, list[tuple[float, float]]] = {}
    for n, m in enumerate(manifests, start=1):
        pts = [p for p in (_point(m.get("first_progress")), _point(m.get("last_progress"))) if p]
        pts += [(t, s) for t, s, _ in _series(m) if s is not None]
        if not pts:
            first = (marks[n - 1] or {}).get("first_step") or {}
            p = (_num(first.get("time")), _num((first.get("detail") or {}).get("step")))
            if p[0] is not None and p[1] is not None:
                pts = [(p[0], p[1])]
        if hb is not None and n == view.state.attempt and not m.get("finished_at"):
            step, at = _num(hb.progress.get("step")), _num(hb.progress_changed_at) or hb.time
            if step is not None:
                pts.append((at, step))
        if pts:
            per[n] = sorted(set(pts))
    for n in sorted(per):
        rep.progress.extend(ProgressPoint(time=t, step=s, attempt=n) for t, s in per[n])
    total = None
    if hb is not None:
        total = _num(hb.progress.get("total"))
    rep.total_steps = total
    ran = [(pts[-1][1] - pts[0][1], pts[-1][0] - pts[0][0]) for pts in per.values() if len(pts) > 1]
    secs = sum(dt for _, dt in ran if dt > 0)
    rep.rate = sum(ds for ds, dt in ran if dt > 0) / secs if secs > 0 else None
    if rep.progress:
        first, last = rep.progress[0], max(rep.progress, key=lambda p: (p.step, p.time))
        if last.time > first.time:
            rep.effective_rate = (last.step - first.step) / (last.time - first.time)
    lost = {b.attempt for b in rep.bands if b.end_state in LOST_TO_PREEMPTION}
    for n in sorted(per):
        if n not in lost:
            continue
        nxt = next((k for k in sorted(per) if k > n), None)
        if nxt is None:
            continue
        last_step, resumed = per[n][-1][1], per[nxt][0][1]
        rep.redone.append(Redone(attempt=n, last_step=last_step, resumed_step=resumed,
                                 steps=max(0.0, last_step - resumed)))


def _series(m: dict[str, Any]) -> list[tuple[float, float | None, float | None]]:
    """The agent's samples in a manifest (``entrypoint.progress_series``): (time, step, checkpoint
    written at); a malformed series reads as none, a malformed number as missing."""
    doc = m.get("series")
    if not isinstance(doc, dict):
        return []
    cols = [doc.get(k) for k in ("t", "step", "checkpoint_at")]
    if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) != 1:
        return []
    out = []
    for t, step, ckpt in zip(*cols):
        t = _num(t)
        if t is not None:
            out.append((t, _num(step), _num(ckpt)))
    return out


def _lag(t: float, checkpoint_at: float | None, started: float | None) -> float | None:
    """Work at risk at ``t``: since the newest checkpoint this attempt published, else since its
    job started (what a restored checkpoint already held is not at risk); None if neither is known.
    As ``attempts.work_redone`` counts it for the cost."""
    since = [v for v in (checkpoint_at, started) if v is not None]
    if checkpoint_at is not None and started is not None and checkpoint_at < started:
        since = [started]  # the checkpoint it restored, not one it published
    return max(0.0, t - max(since)) if since else None


def _sync(rep: RunReport, manifests: list[dict[str, Any]], view: RunView, attempts: dict[int, Any]) -> None:
    """The work at risk over each attempt (the agent's samples), when it ended, and now."""
    for n, m in enumerate(manifests, start=1):
        started = _num(m.get("started_at"))
        for t, _step, ckpt in _series(m):
            rep.sync.append(SyncLag(time=t, attempt=n, lag_s=_lag(t, ckpt, started), kind="sample"))
        end = _num(m.get("finished_at"))
        if end is None or "checkpoint_at" not in m:
            continue  # still running, or written by an agent that did not record its checkpoints
        rep.sync.append(SyncLag(time=end, attempt=n, lag_s=_lag(end, _num(m.get("checkpoint_at")), started)))
    hb = view.current_heartbeat
    current_done = bool(manifests and manifests[-1].get("finished_at"))
    if hb is not None and rep.live and not current_done:  # the job runs now: its lag grows with it
        started = _num(manifests[-1].get("started_at")) if manifests else None
        rep.sync.append(SyncLag(time=hb.time, attempt=hb.attempt, kind="live",
                                lag_s=_lag(hb.time, _num((hb.sync or {}).get("newest_written_at")), started)))


def _cost_series(bands: list[Band]) -> list[tuple[float, float]]:
    """Spot cost so far over time: it grows along each attempt's billed time, flat between."""
    out: list[tuple[float, float]] = []
    total = 0.0
    for b in sorted(bands, key=lambda b: b.start):
        if b.cost is None:
            return []  # one unpriced attempt: any curve would be a guess
        out.append((b.start, total))
        total += b.cost
        out.append((b.end, total))
    return out


def on_demand_cost(prices: PriceTable, spec: Any, cost: dict[str, Any]) -> tuple[float | None, str | None]:
    """What the same billed hours would have cost on-demand (the table's ``standard_…`` prices,
    each attempt in its own region), or (None, why): never a guess."""
    if cost.get("note") == "local: no cloud charge":
        return 0.0, None
    if spec is None:
        return None, "the run has no spec.json"
    if cost.get("so_far") is None:
        return None, "the billed hours are not known (see the spot cost)"
    total = 0.0
    for row in cost.get("attempts", []):
        if not row.get("seconds"):
            continue
        region = row.get("region")
        if region is None:
            return None, f"attempt {row['attempt']}: region unknown"
        hourly, why = prices.hourly(spec, region, STANDARD)
        if hourly is None:
            return None, why
        total += hourly * row["seconds"] / 3600
    return total, None


def build_reports(store: Store, run_ids: list[str], prices: PriceTable | None = None, now: float | None = None,
                  workers: int = 4) -> list[RunReport | ReportError]:
    """One report per run, in the order given (a run that cannot be reported: its ``ReportError``)."""
    prices = prices if prices is not None else load_prices(None)
    now = time.time() if now is None else now

    def one(rid: str) -> RunReport | ReportError:
        try:
            return build_report(store, rid, prices, now)
        except ReportError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(run_ids) or 1))) as pool:
        return list(pool.map(one, run_ids))


__all__ = ["Band", "Marker", "Phase", "ProgressPoint", "Redone", "ReportError", "RunReport", "SEGMENT_NAMES",
           "SyncLag", "build_report", "build_reports", "on_demand_cost"]
