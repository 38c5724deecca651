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

from entrypoint.record import ALL_EVENTS, RunRecord, RunSpec, RunState, RunView, State
from entrypoint.record import history as run_history
from entrypoint.record.attempts import LOST_TO_PREEMPTION, Attempt, bill, boot_lost, timeline, work_redone
from entrypoint.record.create_claim import billed_from
from runner.launch.backends import backend_type
from runner.launch.backends.gce_provisioning import FLEX_START, SPOT, STANDARD, price_kind
from runner.launch.backends.gce_shapes import ShapeError
from runner.naming import region_of

SHIPPED = "spot_prices.json"
# What a region may price: spot (``machine``, ``gpu``, the table's first use), and the other
# provisioning models a run may get (gce_provisioning: standard = on-demand, flex-start).
PRICE_KINDS = tuple(p + k for p in ("", price_kind(STANDARD), price_kind(FLEX_START)) for k in ("machine", "gpu"))


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

    def machine_price(self, region: str, machine_type: str, model: str = SPOT) -> float | None:
        return self.regions.get(region, {}).get(price_kind(model) + "machine", {}).get(machine_type)

    def gpu_price(self, region: str, gpu_type: str, model: str = SPOT) -> float | None:
        return self.regions.get(region, {}).get(price_kind(model) + "gpu", {}).get(gpu_type)

    def hourly(self, spec: RunSpec, region: str, model: str = SPOT) -> tuple[float | None, str | None]:
        """The price per hour of one attempt of the run in ``region`` (a gang's: N VMs) on the
        provisioning ``model`` (SPOT: the table's ``machine``/``gpu``; STANDARD, on-demand:
        ``standard_machine``/``standard_gpu``; FLEX_START: ``flex_start_…``), or (None, why)."""
        one, why = self._one_vm(spec, region, model)
        return (None, why) if one is None else (one * max(1, spec.nodes), None)

    def _one_vm(self, spec: RunSpec, region: str, model: str = SPOT) -> tuple[float | None, str | None]:
        kind = price_kind(model)
        what = "" if model == SPOT else f"{model.lower()} (" + ("on-demand" if model == STANDARD else "flex-start") + ") "
        if not spec.machine_type:
            return None, "spec.json records no machine_type"
        try:
            gpu = backend_type(spec.backend).gpu_of(spec)
        except (ShapeError, ValueError) as e:
            return None, f"unpriceable shape: {e}"
        if gpu is None:
            return None, f"the {spec.backend} backend has no priced machine shapes"
        base = self.machine_price(region, spec.machine_type, model)
        if base is None:
            return None, (f"no {what}price for {spec.machine_type} in {region}; add it to price_table"
                          + (f" (regions.{region}.{kind}machine)" if kind else ""))
        if gpu.built_in or gpu.count == 0:
            return base, None  # g2/a2/a3 prices already include the GPUs they carry
        assert gpu.type is not None
        each = self.gpu_price(region, gpu.type, model)
        if each is None:
            return None, (f"no {what}price for {gpu.type} in {region}; add it to price_table"
                          + (f" (regions.{region}.{kind}gpu)" if kind else ""))
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
            if kind not in PRICE_KINDS or not isinstance(prices, dict):
                raise PriceTableError(
                    f"price table {where}: regions.{region}.{kind}: expected objects named "
                    + ", ".join(f'"{k}"' for k in PRICE_KINDS))
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


# The attempts' timeline, billing windows and redone work are price-free and shared with the
# running summary in state.json: ``entrypoint.record.attempts``.


# ---------------------------------------------------------------- the estimate

@dataclass
class _Line:
    """Seconds to price at one zone's rate: one attempt, or (from the summary) the closed
    attempts of one zone together. ``row``: shown in ``attempts`` (one attempt's own line)."""

    zone: str | None
    seconds: float
    boot: float = 0.0
    redone: float | None = 0.0
    basis: str | None = None
    attempt: Attempt | None = None
    running: bool = False
    row: bool = True
    counted: bool = True  # False: a row to show whose seconds a summary total already holds
    model: str = SPOT  # the provisioning model it ran on (its manifest's, else the run's fixed one)


def _full_lines(rec: RunRecord, st: RunState, view: RunView, now: float,
                zones: dict[int, str], spec: RunSpec | None = None) -> tuple[list[_Line], list[str]]:
    """Every attempt from the whole journal, manifests and claims (a run without a summary)."""
    attempts = timeline(view.events)
    for n in range(1, st.attempt + 1):
        attempts.setdefault(n, Attempt(n))
    for n, a in sorted(attempts.items()):
        a.manifest = rec.read_manifest(n) or {}
        claim = rec.read_claim(n)
        nxt = attempts.get(n + 1)
        bill(a, claimed_at=billed_from(claim), current=n == st.attempt, st=st,
             next_provisioned_at=nxt.provisioned_at if nxt else None, now=now)
    lines, unknown = [], []
    ordered = sorted(attempts.values(), key=lambda x: x.n)
    for i, a in enumerate(ordered):
        prev = ordered[i - 1] if i > 0 else None
        line = _Line(zone=_zone_of(a, st, zones), seconds=a.seconds, attempt=a,
                     boot=boot_lost(a, prev.end_state if prev is not None else None), model=_model_of(a, spec),
                     running=a.n == st.attempt and not st.state.terminal and a.ended_at is None)
        if a.end_state in LOST_TO_PREEMPTION:
            nxt = next((b for b in ordered[i + 1:] if b.manifest), None)
            line.redone, line.basis = work_redone(rec.store, rec.prefix, a, nxt)
            if line.redone is None:
                unknown.append(f"work redone after attempt {a.n} unknown ({line.basis})")
        lines.append(line)
    return lines, unknown


def _summary_lines(rec: RunRecord, st: RunState, h: dict[str, Any], now: float,
                   zones: dict[int, str], spec: RunSpec | None = None) -> tuple[list[_Line], list[str]]:
    """The summary's totals per zone, then the current attempt read as the full read would
    (its manifest and claim): what stays the same size whatever the history."""
    # The summary keeps closed attempts' seconds per zone, not per model: they are priced at the
    # run's pinned model (spot for spot-then-standard; the full read prices each attempt).
    fixed = _model_of(None, spec)
    lines = [_Line(zone=k or None, seconds=secs, row=False, model=fixed) for k, secs in sorted(h.get("billed", {}).items())]
    lines += [_Line(zone=k or None, seconds=0.0, boot=secs, row=False, model=fixed) for k, secs in sorted(h.get("lost", {}).items())]
    unknown = list(h.get("unknown_notes", []))
    if h.get("unknown_count", 0) > len(unknown):
        unknown.append(f"and {h['unknown_count'] - len(unknown)} more")
    recent: dict[int, _Line] = {}
    for r in h.get("recent", []):  # the last closed attempts, shown (their seconds are in the totals)
        shown = Attempt(int(r["attempt"]), end_state=r.get("ended"), start=r.get("start"), end=r.get("end"))
        recent[shown.n] = _Line(zone=r.get("zone") or None, seconds=r.get("seconds") or 0.0, attempt=shown,
                                boot=r.get("lost_boot_seconds") or 0.0, redone=r.get("lost_work_seconds"),
                                basis=r.get("lost_basis"), counted=False, model=fixed)
    lines += [recent[n] for n in sorted(recent)]
    if st.attempt < 1:
        return lines, unknown
    a = Attempt.from_marks(h["current"]) if h["current"].get("n") == st.attempt else Attempt(st.attempt)
    a.manifest = rec.read_manifest(st.attempt) or {}
    claim = rec.read_claim(st.attempt)
    bill(a, claimed_at=billed_from(claim), current=True, st=st, next_provisioned_at=None, now=now)
    for zone, p in run_history.pending_attempts(h):  # lost attempts judged by the attempt that started next
        redone, basis = work_redone(rec.store, rec.prefix, p, a if a.manifest else None)
        if redone is None:
            unknown.append(f"work redone after attempt {p.n} unknown ({basis})")
        lines.append(_Line(zone=zone or None, seconds=0.0, redone=redone, basis=basis, row=False))
        if p.n in recent:
            recent[p.n].redone, recent[p.n].basis = redone, basis
    line = _Line(zone=_zone_of(a, st, zones), seconds=a.seconds, attempt=a,
                 boot=boot_lost(a, h.get("prev_end_state")), model=_model_of(a, spec),
                 running=not st.state.terminal and a.ended_at is None)
    if a.end_state in LOST_TO_PREEMPTION:
        line.redone, line.basis = work_redone(rec.store, rec.prefix, a, None)
        if line.redone is None:
            unknown.append(f"work redone after attempt {a.n} unknown ({line.basis})")
    lines.append(line)
    return lines, unknown


def _model_of(a: Attempt | None, spec: RunSpec | None) -> str:
    """The provisioning model an attempt ran on: its manifest's (the agent writes what the VM's
    metadata said), else the run's when it pins one model, else spot (every run before
    provisioning models, and an attempt whose job never started under spot-then-standard)."""
    if a is not None and a.manifest.get("provisioning"):
        return str(a.manifest["provisioning"])
    mode = ((spec.vm if spec is not None else None) or {}).get("provisioning")
    return {"standard": STANDARD, "flex-start": FLEX_START}.get(mode or "", SPOT)


def _zone_of(a: Attempt, st: RunState, zones: dict[int, str]) -> str | None:
    return zones.get(a.n) or a.manifest.get("zone") or (st.zone if a.n == st.attempt else None)


def estimate_run_cost(rec: RunRecord, prices: PriceTable, now: float,
                      instance_zones: dict[int, str] | None = None, view: RunView | None = None,
                      use_summary: bool = False) -> dict[str, Any]:
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
    next attempt redoes (see ``attempts.work_redone``), plus the boot of every attempt that
    follows such an attempt (creation → RUNNING, checkpoint restore included; an attempt that
    never reached RUNNING is all boot). One boot per preemption, so the first attempt's boot is
    never counted. When the redone work of some attempt cannot be told from the record,
    ``lost_to_preemptions`` counts what is known and ``lost_is_lower_bound`` is True
    (``lost_note`` says why).

    Times come from the events and manifests, written by different machines: clock skew between
    them goes straight into the estimate. Runs on an unbilled backend (local Docker) cost 0.
    Returns a dict; money is ``None`` (never a made-up 0) when a price is missing, with
    ``why_unknown`` saying which.

    What it reads: by default every event, manifest and claim (``attempts`` has a row per
    attempt). With ``use_summary`` (``ops status``, ``ops watch``), a run with a running summary
    in state.json (``entrypoint.record.history``) costs its state (or ``view``'s, when given with its spec), spec, and the current attempt's
    manifest and claim, whatever its history (``summary`` is True, and ``attempts`` lists the
    last few closed attempts and the current one; closed attempts are priced by the zone their
    manifest named). A run
    that predates the summary, or whose summary an older writer left behind, is read in full:
    every event, manifest and claim (``summary`` False, ``history_note`` says so). Either way,
    a lost attempt with no checkpoint time may cost its log, once per process.
    """
    if view is None or view.spec is None:
        view = rec.view(spec=True, heartbeat=False)
    spec = view.spec if view is not None else None
    out: dict[str, Any] = {
        "currency": prices.currency, "as_of": prices.as_of, "source": prices.source,
        "hourly": None, "so_far": None, "lost_to_preemptions": None, "lost_is_lower_bound": False,
        "billed_seconds": 0.0, "lost_seconds": 0.0, "attempts": [], "why_unknown": None,
        "note": None, "lost_note": None, "summary": False, "history_note": None,
    }
    if view is None or spec is None:
        out["why_unknown"] = "the run has no state.json or spec.json"
        return out
    st = view.state
    zones = instance_zones or {}
    h = run_history.current(st) if use_summary else None
    if h is not None:
        lines, unknown = _summary_lines(rec, st, h, now, zones, spec)
        out["summary"] = True
    else:
        full = rec.view(events=ALL_EVENTS, heartbeat=False)
        if full is None:
            out["why_unknown"] = "the run has no state.json"
            return out
        st = full.state
        lines, unknown = _full_lines(rec, st, full, now, zones, spec)
        out["history_note"] = None if not use_summary else (f"computed from {len(full.events)} events; this run predates the running summary"
                               if st.history is None else
                               f"computed from {len(full.events)} events; a writer without the running "
                               "summary moved this run")
    local = not _billed(spec.backend)
    spec_regions = {region_of(z) for z in spec.zones}

    def price_of(line: _Line) -> tuple[float | None, str | None, str | None]:
        zone = line.zone
        if zone and zone != "local":
            region = region_of(zone)
        elif len(spec_regions) == 1:
            region = next(iter(spec_regions))
        else:
            which = f"attempt {line.attempt.n}" if line.attempt is not None else "an earlier attempt"
            return None, None, f"{which}: zone unknown (spec zones span {sorted(spec_regions) or 'no region'})"
        hourly, why = prices.hourly(spec, region, line.model)
        return hourly, region, why

    last_price: tuple[float | None, str | None] = (None, "no attempt yet and spec.zones span several regions")
    total: float | None = 0.0
    lost_total: float | None = 0.0
    rows = []
    for line in lines:
        if local:
            hourly, region, why = 0.0, None, None
        else:
            hourly, region, why = price_of(line)
        secs = line.seconds
        cost = None if hourly is None else hourly * secs / 3600
        lost = line.boot + (line.redone or 0.0)
        lost_cost = None if hourly is None else hourly * lost / 3600
        if line.counted:
            if line.row:
                last_price = (hourly, why)
            if cost is None and secs > 0:
                total = None
                out["why_unknown"] = out["why_unknown"] or why
            elif total is not None and cost is not None:
                total += cost
            if lost_cost is None and lost > 0:
                lost_total = None
            elif lost_total is not None and lost_cost is not None:
                lost_total += lost_cost
            out["billed_seconds"] += secs
            out["lost_seconds"] += lost
        a = line.attempt
        if line.row and a is not None:
            rows.append({
                "attempt": a.n, "zone": line.zone, "region": region, "provisioning": line.model,
                "start": a.start, "end": a.end,
                "running": line.running, "ended": a.end_state, "seconds": secs, "hourly": hourly,
                "cost": cost, "lost_seconds": lost, "lost_boot_seconds": line.boot,
                "lost_work_seconds": line.redone, "lost_basis": line.basis, "lost_cost": lost_cost,
            })
    out["attempts"] = rows
    out["so_far"] = total
    out["lost_to_preemptions"] = lost_total
    if unknown:
        out["lost_is_lower_bound"] = True
        out["lost_note"] = "; ".join(unknown) + " (counted as 0)"
    if local:
        out["hourly"], out["note"] = 0.0, "local: no cloud charge"
        return out
    if not rows and len(spec_regions) == 1:
        last_price = prices.hourly(spec, next(iter(spec_regions)), _model_of(None, spec))
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


def annotate_row(row: dict[str, Any], store: Any, price_table: str | None, now: float | None = None,
                 view: RunView | None = None) -> None:
    """Put the run's estimate (``cost``) and its one-line form (``cost_text``) into ``row``.

    Never raises: a broken price table or a damaged record gives ``?`` with ``why_unknown``,
    since an estimate must never break ``ops status`` or ``ops watch``. An estimate reads the
    run's whole journal, so it is kept: a finished run's cannot change, and a live run's is
    refreshed every ``LIVE_ESTIMATE_TTL`` seconds rather than on every redraw of ``watch``.
    ``row`` is an ``ops`` row (``run_id``, ``state``, ``updated_at``, optional ``instances``);
    ``view``, the run's view read with its spec, saves reading state and spec again. A run with a
    running summary costs a few reads whatever its history (see ``estimate_run_cost``).
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
                                            instance_zones=zones or None, view=view, use_summary=True)
        except PriceTableError as e:
            row["cost"] = {"so_far": None, "why_unknown": str(e)}
        except Exception as e:  # noqa: BLE001 - see the docstring
            row["cost"] = {"so_far": None, "why_unknown": f"cannot estimate ({type(e).__name__}: {e})"}
        _ESTIMATES[key] = (now, row["cost"])
    row["cost_text"] = cost_text(row["cost"])
