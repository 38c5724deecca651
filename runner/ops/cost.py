"""What a run has cost so far, and how much of it preemptions threw away, from its run record.

Prices come from a spot price table: ``runner/data/spot_prices.json`` ships with the runner
(approximate figures with the date they were written), and the ``price_table`` config key names
a JSON file of the same schema whose entries win over the shipped ones. A price that neither
has makes the cost ``None`` with the reason, never a guess and never ``0``.

Everything here is read-only and works from the record alone (spec, state, events, attempt
manifests, create claims, logs), so ``ops status`` and ``ops watch`` can call it for any run,
live or finished.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from entrypoint.progress import parse_progress_line
from entrypoint.record import ALL_EVENTS, LEGACY_STATES, RunRecord, RunSpec, RunState, State
from entrypoint.record.create_claim import RELEASED
from runner.launch.backends import backend_type
from runner.launch.backends.gce_shapes import ShapeError
from runner.naming import region_of

SHIPPED = "spot_prices.json"

# Transitions that open and close an attempt's time on a machine (events carry the attempt).
# (old journals may say BOOTING, never written by this version: it counts as PROVISIONING)
_STARTS = {State.PROVISIONING.value} | {old for old, new in LEGACY_STATES.items() if new is State.PROVISIONING}
_ENDS = {s.value for s in (State.PREEMPTED, State.STALLED, State.ERRORED,
                           State.SUCCEEDED, State.FAILED, State.STOPPED)}
_LOST_TO_PREEMPTION = {State.PREEMPTED.value, State.STALLED.value}


class PriceTableError(ValueError):
    """A price table file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class PriceTable:
    """Hourly spot prices per region: ``machine`` (whole VM; includes built-in GPUs for
    g2/a2/a3) and ``gpu`` (per attached GPU, N1 only)."""

    as_of: str
    currency: str
    source: str
    note: str = ""
    regions: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    override: str | None = None  # the file merged over the shipped table, if any

    def machine_price(self, region: str, machine_type: str) -> float | None:
        return self.regions.get(region, {}).get("machine", {}).get(machine_type)

    def gpu_price(self, region: str, gpu_type: str) -> float | None:
        return self.regions.get(region, {}).get("gpu", {}).get(gpu_type)

    def hourly(self, spec: RunSpec, region: str) -> tuple[float | None, str | None]:
        """The run's VM price per hour in ``region``, or (None, why)."""
        if not spec.machine_type:
            return None, "spec.json records no machine_type"
        try:
            gpu = backend_type(spec.backend).gpu_of(spec)
        except (ShapeError, ValueError) as e:
            return None, f"unpriceable shape: {e}"
        if gpu is None:
            return None, f"the {spec.backend} backend has no priced machine shapes"
        base = self.machine_price(region, spec.machine_type)
        if base is None:
            return None, f"no price for {spec.machine_type} in {region}; add it to price_table"
        if gpu.built_in or gpu.count == 0:
            return base, None  # g2/a2/a3 prices already include the GPUs they carry
        assert gpu.type is not None
        each = self.gpu_price(region, gpu.type)
        if each is None:
            return None, f"no price for {gpu.type} in {region}; add it to price_table"
        return base + gpu.count * each, None


def _billed(backend: str) -> bool:
    """Whether instances of ``backend`` cost money; one this version does not know is assumed to."""
    try:
        return backend_type(backend).billed
    except ValueError:
        return True


def _read_table(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise PriceTableError(f"price table {where} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("regions", {}), dict):
        raise PriceTableError(f"price table {where}: expected an object with a \"regions\" object")
    for region, kinds in doc.get("regions", {}).items():
        if not isinstance(kinds, dict):
            raise PriceTableError(f"price table {where}: regions.{region} must be an object")
        for kind, prices in kinds.items():
            if kind not in ("machine", "gpu") or not isinstance(prices, dict):
                raise PriceTableError(
                    f"price table {where}: regions.{region}.{kind}: expected \"machine\" or \"gpu\" objects")
            for name, price in prices.items():
                if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                    raise PriceTableError(
                        f"price table {where}: regions.{region}.{kind}.{name} = {price!r}; "
                        "expected a price per hour >= 0")
    return doc


def load_prices(path: str | None = None) -> PriceTable:
    """The shipped table, with ``path`` (the ``price_table`` config key) merged over it.

    Entries of the override win one by one (region → machine/gpu → name); everything it does not
    mention falls back to the shipped table. ``as_of`` and ``source`` are the override's when it
    gives them. An override in another currency replaces the shipped table entirely (mixing
    currencies would be wrong). Raises ``PriceTableError`` for an unreadable or malformed file.
    """
    shipped = _read_table(resources.files("runner.data").joinpath(SHIPPED).read_text(), f"(shipped {SHIPPED})")
    doc = shipped
    if path:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise PriceTableError(f"price_table {path}: {e.strerror or e}") from None
        over = _read_table(text, path)
        currency = over.get("currency", shipped["currency"])
        if currency != shipped["currency"]:
            base_regions: dict[str, Any] = {}  # nothing to fall back on in this currency
        else:
            base_regions = json.loads(json.dumps(shipped["regions"]))
        for region, kinds in over.get("regions", {}).items():
            for kind, prices in kinds.items():
                base_regions.setdefault(region, {}).setdefault(kind, {}).update(prices)
        doc = {
            "as_of": over.get("as_of", shipped["as_of"]),
            "currency": currency,
            "source": f"{over.get('source', path)} (over the shipped table of {shipped['as_of']})",
            "note": over.get("note", shipped.get("note", "")),
            "regions": base_regions,
        }
    return PriceTable(
        as_of=str(doc.get("as_of", "?")), currency=str(doc.get("currency", "USD")),
        source=str(doc.get("source", "")), note=str(doc.get("note", "")),
        regions=doc.get("regions", {}), override=path or None,
    )


def format_money(x: float | None, currency: str = "USD") -> str:
    """``$1.23``; ``?`` when unknown. Amounts under a cent keep one significant figure."""
    if x is None:
        return "?"
    sign = "$" if currency == "USD" else f"{currency} "
    if 0 < abs(x) < 0.01:
        return f"{sign}{x:.1g}"
    return f"{sign}{x:,.2f}"


def cost_text(c: dict[str, Any]) -> str:
    """One short line for a table cell: ``$1.23 (lost $0.20)``; ``?`` when unknown."""
    so_far = c.get("so_far")
    if so_far is None:
        return "?"
    currency = c.get("currency", "USD")
    text = format_money(so_far, currency)
    lost = c.get("lost_to_preemptions")
    if lost:
        text += f" (lost {'≥' if c.get('lost_is_lower_bound') else ''}{format_money(lost, currency)})"
    return text


# ---------------------------------------------------------------- the attempts' timeline

@dataclass
class _Attempt:
    n: int
    provisioned_at: float | None = None  # first PROVISIONING/BOOTING event
    running_at: float | None = None      # first RUNNING event
    ended_at: float | None = None        # first end event after the start
    end_state: str | None = None
    start: float | None = None           # billing start, once decided
    end: float | None = None             # billing end (``now`` while it runs)
    manifest: dict[str, Any] = field(default_factory=dict)


def _timeline(events: list[tuple[str, dict[str, Any]]]) -> dict[int, _Attempt]:
    attempts: dict[int, _Attempt] = {}
    for _, ev in events:
        n, to, t = ev.get("attempt"), ev.get("to"), ev.get("time")
        if not isinstance(n, int) or n < 1 or to is None or not isinstance(t, (int, float)):
            continue
        a = attempts.setdefault(n, _Attempt(n))
        if to in _STARTS and a.provisioned_at is None:
            a.provisioned_at = t
        elif to == State.RUNNING.value and a.running_at is None:
            a.running_at = t
        elif to in _ENDS and a.ended_at is None:
            a.ended_at, a.end_state = t, to
    return attempts


def _bill(rec: RunRecord, st: RunState, attempts: dict[int, _Attempt], now: float) -> None:
    """Decide each attempt's billed [start, end)."""
    for n in range(1, st.attempt + 1):
        attempts.setdefault(n, _Attempt(n))
    for n, a in sorted(attempts.items()):
        a.manifest = rec.read_manifest(n) or {}
        claim = rec.read_claim(n)
        # A released claim is a create that failed with nothing made: nothing to bill from it.
        claimed_at = claim.time if claim is not None and claim.status != RELEASED else None
        current = n == st.attempt
        # The create claim is written just before the successful create (a failed create
        # releases it), so it is when the machine began to exist; the PROVISIONING event can be
        # much earlier when every zone was out of capacity for a while.
        if claimed_at is not None:
            a.start = claimed_at
        elif current and st.state == State.PROVISIONING and a.running_at is None:
            a.start = None  # nothing created yet (waiting out a backoff): nothing billed
        else:
            a.start = a.provisioned_at or a.running_at or a.manifest.get("started_at")
        if a.ended_at is not None:
            a.end = a.ended_at
        elif current and not st.state.terminal:
            a.end = now
        elif current:
            a.end = a.manifest.get("finished_at") or st.updated_at
        else:
            nxt = attempts.get(n + 1)
            a.end = a.manifest.get("finished_at") or (nxt.provisioned_at if nxt else None)
        if a.start is not None and a.end is not None and a.end < a.start:
            a.end = a.start


def _seconds(a: _Attempt) -> float:
    if a.start is None or a.end is None:
        return 0.0
    return a.end - a.start


# ---------------------------------------------------------------- work redone after a preemption

# Parsed RUNNER_PROGRESS steps by (store url, log object name): (first, last, log is final).
# ``ops watch`` asks again every few seconds; an ended attempt's log and any attempt's first
# step no longer change, so they are read once.
_log_steps_cache: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {}


def _log_steps(rec: RunRecord, n: int, final: bool) -> tuple[float | None, float | None]:
    """First and last ``step`` the job printed in attempt ``n``'s log (None: none printed).

    ``final``: the attempt has ended, so its log is complete (else only the first step is sure).
    """
    name = rec.name(RunRecord.log_name(n))
    key = (rec.store.url, name)
    hit = _log_steps_cache.get(key)
    if hit is not None and (hit[2] or (not final and hit[0] is not None)):
        return hit[0], hit[1]
    blob = rec.store.read(name)
    first = last = None
    if blob is not None:
        for line in blob.data.decode("utf-8", "replace").splitlines():
            if "RUNNER_PROGRESS" not in line:
                continue
            step = _number((parse_progress_line(line) or {}).get("step"))
            if step is not None:
                first = step if first is None else first
                last = step
    if final or first is not None:
        _log_steps_cache[key] = (first, last, final)
    return first, last


def _number(v: Any) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _step_at(doc: Any) -> tuple[float | None, float | None]:
    """(step, time) of a manifest's ``first_progress``/``last_progress`` entry."""
    if not isinstance(doc, dict):
        return None, None
    return _number(doc.get("step")), _number(doc.get("time"))


def _work_redone(rec: RunRecord, a: _Attempt, nxt: _Attempt | None) -> tuple[float | None, str]:
    """Seconds of attempt ``a``'s work that have to be (or were) done again, and how we know.

    ``nxt`` is the next attempt whose job started (it restored the newest checkpoint in the
    bucket, so everything ``a`` did after that checkpoint was written is done twice).
    In order of preference:
    1. the next attempt restored nothing (``resumed_from`` empty): all of ``a``'s work is redone;
    2. ``a``'s manifest says when its newest published checkpoint was written
       (``checkpoint_at``): the work after it is redone (all of it if ``a`` published none);
    3. steps: ``a``'s last reported step minus the first step the next attempt reported, at
       ``a``'s own rate (steps per second). From the manifests' ``last_progress`` /
       ``first_progress`` when present, else from the ``RUNNER_PROGRESS`` lines in the logs.
       The first step a job reports comes a little after its resume point, so this errs low by
       up to one report interval; from logs, the rate assumes steady steps over the attempt.
    Never more than the attempt's own job time. ``None`` when the record cannot tell.
    """
    m = a.manifest
    work_start = m.get("started_at") or a.running_at
    if work_start is None:
        return 0.0, "the job never started"
    work_end = m.get("finished_at") or a.end
    if work_end is None:
        return None, "no end time recorded"
    worked = max(0.0, work_end - work_start)
    if nxt is not None and nxt.manifest and nxt.manifest.get("resumed_from") == []:
        return worked, "the next attempt restored no checkpoint"
    if "checkpoint_at" in m:
        ckpt = _number(m["checkpoint_at"])
        if ckpt is None or ckpt < work_start:
            return worked, "this attempt published no checkpoint"
        return min(worked, max(0.0, work_end - ckpt)), "time since its last checkpoint"
    if nxt is None:
        return None, "no next attempt yet, and no checkpoint time recorded"

    first_a, t_first_a = _step_at(m.get("first_progress"))
    last_a, t_last_a = _step_at(m.get("last_progress"))
    resumed, _ = _step_at(nxt.manifest.get("first_progress"))
    basis = "steps redone / step rate (manifests)"
    if None in (first_a, last_a, t_first_a, t_last_a, resumed):
        first_a, last_a = _log_steps(rec, a.n, final=True)
        resumed, _ = _log_steps(rec, nxt.n, final=False)
        t_first_a, t_last_a = work_start, work_end
        basis = "steps redone / step rate (RUNNER_PROGRESS lines in the logs)"
    if None in (first_a, last_a, resumed):
        return None, "no checkpoint time or step progress recorded for it"
    assert first_a is not None and last_a is not None and resumed is not None
    assert t_first_a is not None and t_last_a is not None
    if last_a <= first_a or t_last_a <= t_first_a:
        return None, "too little progress in the attempt to measure its step rate"
    rate = (last_a - first_a) / (t_last_a - t_first_a)
    return min(worked, max(0.0, (last_a - resumed) / rate)), basis


# ---------------------------------------------------------------- the estimate

def estimate_run_cost(rec: RunRecord, prices: PriceTable, now: float,
                      instance_zones: dict[int, str] | None = None) -> dict[str, Any]:
    """Estimated spot cost of a run so far, and the part of it lost to preemptions.

    Billed time, per attempt: from the moment its machine was created (the attempt's create
    claim, written just before the successful create; else its PROVISIONING/BOOTING event) to
    its first end event (PREEMPTED, STALLED, ERRORED, SUCCEEDED, FAILED, STOPPED). An attempt
    still going counts until ``now``; one still waiting for a create (backoff, no claim) costs
    nothing yet. Not counted: the few seconds until the supervisor deletes an ended VM, disks,
    egress, and the detection lag of a preemption noticed by the supervisor (counted, in fact,
    as billed: an overestimate of up to one poll interval).

    Price, per attempt: the table's hourly price in the attempt's region (its zone from
    ``instance_zones`` (attempt → zone, e.g. from ``backend.list``), else its manifest, else
    state.json for the current attempt, else spec.zones when they all share one region), for
    ``spec.machine_type`` plus attached GPUs (N1); g2/a2/a3 prices include their GPUs.

    Lost to preemptions, for each attempt that ended PREEMPTED or STALLED: its work that the
    next attempt redoes (see ``_work_redone``), plus the boot of every attempt that follows such
    an attempt (creation → RUNNING, checkpoint restore included; an attempt that never reached
    RUNNING is all boot). One boot per preemption, so the first attempt's boot is never counted.
    When the redone work of some attempt cannot be told from the record,
    ``lost_to_preemptions`` counts what is known and ``lost_is_lower_bound`` is True
    (``lost_note`` says why).

    Times come from the events and manifests, written by different machines: clock skew between
    them goes straight into the estimate. Runs on an unbilled backend (local Docker) cost 0.
    Returns a dict; money is ``None`` (never a made-up 0) when a price is missing, with
    ``why_unknown`` saying which. Reads every event, manifest and claim of the run (and, for a
    preempted attempt with no checkpoint time, its log once per process).
    """
    view = rec.view(events=ALL_EVENTS, spec=True, heartbeat=False)
    spec = view.spec if view is not None else None
    out: dict[str, Any] = {
        "currency": prices.currency, "as_of": prices.as_of, "source": prices.source,
        "hourly": None, "so_far": None, "lost_to_preemptions": None, "lost_is_lower_bound": False,
        "billed_seconds": 0.0, "lost_seconds": 0.0, "attempts": [], "why_unknown": None,
        "note": None, "lost_note": None,
    }
    if view is None or spec is None:
        out["why_unknown"] = "the run has no state.json or spec.json"
        return out
    st = view.state
    attempts = _timeline(view.events)
    _bill(rec, st, attempts, now)
    local = not _billed(spec.backend)
    zones = instance_zones or {}
    spec_regions = {region_of(z) for z in spec.zones}

    def zone_of(a: _Attempt) -> str | None:
        return zones.get(a.n) or a.manifest.get("zone") or (st.zone if a.n == st.attempt else None)

    def price_of(a: _Attempt) -> tuple[float | None, str | None, str | None]:
        zone = zone_of(a)
        if zone and zone != "local":
            region = region_of(zone)
        elif len(spec_regions) == 1:
            region = next(iter(spec_regions))
        else:
            return None, None, f"attempt {a.n}: zone unknown (spec zones span {sorted(spec_regions) or 'no region'})"
        hourly, why = prices.hourly(spec, region)
        return hourly, region, why

    last_price: tuple[float | None, str | None] = (None, "no attempt yet and spec.zones span several regions")
    total: float | None = 0.0
    lost_total: float | None = 0.0
    lower_bound: list[str] = []
    rows = []
    ordered = sorted(attempts.values(), key=lambda x: x.n)
    for i, a in enumerate(ordered):
        prev = ordered[i - 1] if i > 0 else None
        nxt = next((b for b in ordered[i + 1:] if b.manifest), None)
        secs = _seconds(a)
        if local:
            hourly, region, why = 0.0, None, None
        else:
            hourly, region, why = price_of(a)
        last_price = (hourly, why)
        cost = None if hourly is None else hourly * secs / 3600
        if cost is None and secs > 0:
            total = None
            out["why_unknown"] = out["why_unknown"] or why
        elif total is not None and cost is not None:
            total += cost

        boot = 0.0
        if prev is not None and prev.end_state in _LOST_TO_PREEMPTION and a.start is not None:
            boot_end = a.running_at or a.manifest.get("started_at") or a.end
            boot = max(0.0, min(boot_end or a.start, a.end or a.start) - a.start)
        redone, basis = 0.0, None
        if a.end_state in _LOST_TO_PREEMPTION:
            redone, basis = _work_redone(rec, a, nxt)
            if redone is None:
                lower_bound.append(f"work redone after attempt {a.n} unknown ({basis})")
        lost = boot + (redone or 0.0)
        lost_cost = None if hourly is None else hourly * lost / 3600
        if lost_cost is None and lost > 0:
            lost_total = None
        elif lost_total is not None and lost_cost is not None:
            lost_total += lost_cost
        out["billed_seconds"] += secs
        out["lost_seconds"] += lost
        rows.append({
            "attempt": a.n, "zone": zone_of(a), "region": region, "start": a.start, "end": a.end,
            "running": a.n == st.attempt and not st.state.terminal and a.ended_at is None,
            "ended": a.end_state, "seconds": secs, "hourly": hourly, "cost": cost,
            "lost_seconds": lost, "lost_boot_seconds": boot, "lost_work_seconds": redone,
            "lost_basis": basis, "lost_cost": lost_cost,
        })
    out["attempts"] = rows
    out["so_far"] = total
    out["lost_to_preemptions"] = lost_total
    if lower_bound:
        out["lost_is_lower_bound"] = True
        out["lost_note"] = "; ".join(lower_bound) + " (counted as 0)"
    if local:
        out["hourly"], out["note"] = 0.0, "local: no cloud charge"
        return out
    if not rows and len(spec_regions) == 1:
        last_price = prices.hourly(spec, next(iter(spec_regions)))
    # The price now: the latest attempt's (it is the one running, or the one that will be retried).
    out["hourly"] = last_price[0]
    if last_price[0] is None:
        out["why_unknown"] = out["why_unknown"] or last_price[1]
    return out


# ---------------------------------------------------------------- for ops status / watch

_ESTIMATES: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}  # (store, run, updated_at)
LIVE_ESTIMATE_TTL = 30.0


@functools.lru_cache(maxsize=4)
def _prices(path: str | None) -> PriceTable:
    return load_prices(path)


def annotate_row(row: dict[str, Any], store: Any, price_table: str | None, now: float | None = None) -> None:
    """Put the run's estimate (``cost``) and its one-line form (``cost_text``) into ``row``.

    Never raises: a broken price table or a damaged record gives ``?`` with ``why_unknown``,
    since an estimate must never break ``ops status`` or ``ops watch``. An estimate reads the
    run's whole journal, so it is kept: a finished run's cannot change, and a live run's is
    refreshed every ``LIVE_ESTIMATE_TTL`` seconds rather than on every redraw of ``watch``.
    ``row`` is an ``ops`` row (``run_id``, ``state``, ``updated_at``, optional ``instances``).
    """
    if "error" in row:  # an ops error row: the record itself cannot be read
        row["cost"] = {"so_far": None, "why_unknown": "the run's record cannot be read"}
        row["cost_text"] = cost_text(row["cost"])
        return
    now = time.time() if now is None else now
    key = (store.url, row["run_id"], row["updated_at"])
    finished = row["state"] in (State.SUCCEEDED.value, State.FAILED.value, State.STOPPED.value)
    cached = _ESTIMATES.get(key)
    if cached is not None and (finished or now - cached[0] < LIVE_ESTIMATE_TTL):
        row["cost"] = cached[1]
    else:
        try:
            zones = {i["attempt"]: i["zone"] for i in row.get("instances", [])}
            row["cost"] = estimate_run_cost(RunRecord(store, row["run_id"]), _prices(price_table), now,
                                            instance_zones=zones or None)
        except PriceTableError as e:
            row["cost"] = {"so_far": None, "why_unknown": str(e)}
        except Exception as e:  # noqa: BLE001 - see the docstring
            row["cost"] = {"so_far": None, "why_unknown": f"cannot estimate ({type(e).__name__}: {e})"}
        _ESTIMATES[key] = (now, row["cost"])
    row["cost_text"] = cost_text(row["cost"])
