"""A run report as one self-contained HTML page: inline CSS and SVG, no script, no external URL.

Why no script and no CDN: the page is attached to bug reports and opened anywhere, offline, years
later; what it shows must be in the file. Drawing happens here, in Python, from the figures
``report_data`` computed; nothing is computed in the page. Each drawn thing carries its figures
as ``data-`` attributes (``data-attempt``, ``data-state``, ``data-value``...), so a test (or a
script) reads the numbers off the DOM without parsing pixels.

Narrow windows: the SVGs have a ``viewBox`` and scale to the width down to 600 px, below which
they (and the tables) scroll sideways inside their box; text wraps. Print: ``@media print`` drops the chrome and keeps the colours.
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable

from entrypoint.record import iso
from entrypoint.record.timeline import SEGMENT_NAMES, duration
from runner.launch.supervisor_heartbeat import age_text
from runner.ops.cost import format_money
from runner.ops.report_data import ReportError, RunReport

W = 1000  # the SVGs' user-space width; they scale to the page
LEFT = 150  # room for the lane labels
RIGHT = 20

STATE_COLOURS = {
    "SUCCEEDED": "#2e7d32", "PREEMPTED": "#ef6c00", "STALLED": "#8e24aa", "ERRORED": "#c62828",
    "FAILED": "#b71c1c", "STOPPED": "#546e7a", None: "#1565c0",  # None: still running
}
PHASE_COLOURS = dict(zip(SEGMENT_NAMES, ("#fbc02d", "#90caf9", "#64b5f6", "#4db6ac", "#81c784", "#ba68c8",
                                         "#f06292")))

CSS = """
:root{--fg:#1b1f23;--muted:#5f6b76;--line:#d7dde3;--bg:#fff;--card:#f6f8fa}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
 margin:0 auto;padding:1rem;max-width:1200px;overflow-wrap:anywhere}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid var(--line)}
.muted{color:var(--muted)}.state{display:inline-block;padding:.05rem .5rem;border-radius:1rem;color:#fff;font-weight:600}
.facts{display:flex;flex-wrap:wrap;gap:.4rem 1.4rem;margin:.6rem 0;padding:0}
.facts div{min-width:8rem}.facts dt{font-size:.8rem;color:var(--muted)}.facts dd{margin:0;font-weight:600}
svg{width:100%;height:auto;display:block;background:var(--card);border-radius:6px}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
.legend{display:flex;flex-wrap:wrap;gap:.2rem 1rem;font-size:.85rem;margin:.3rem 0;padding:0;list-style:none}
.legend i{display:inline-block;width:.9rem;height:.9rem;border-radius:2px;vertical-align:-.1rem;margin-right:.3rem}
.scroll,.chart{overflow-x:auto}.chart svg{min-width:600px}
table{border-collapse:collapse;font-size:.85rem;min-width:100%}
th,td{padding:.2rem .5rem;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
td.num,th.num{text-align:right}
.error{border-left:4px solid #b71c1c;background:#fdecea;padding:.5rem .8rem;white-space:pre-wrap}
.note{font-size:.85rem;color:var(--muted)}section.run+section.run,table.runs~section.run{margin-top:2.5rem}
tr.total th,tr.total td{border-top:2px solid var(--line);font-weight:600}
ol.recoveries{font-size:.85rem;padding-left:1.6rem}
@media (max-width:600px){body{font-size:14px;padding:.5rem}.facts div{min-width:6rem}}
@media print{body{max-width:none;padding:0}svg{background:none}.chart svg{min-width:0}h2{break-after:avoid}
 section{break-inside:avoid}*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def when(ts: float | None, now: float) -> str:
    """``2026-12-03T17:00:00Z (3m ago)``, as ``ops`` says times."""
    return "-" if ts is None else f"{iso(ts)} ({age_text(now - ts)})"


def _f(x: float) -> str:
    return f"{x:.1f}"


class Axis:
    """Seconds since the epoch onto the SVG's x between LEFT and W - RIGHT."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1.0)

    def x(self, t: float) -> float:
        return LEFT + (W - LEFT - RIGHT) * (min(max(t, self.t0), self.t1) - self.t0) / (self.t1 - self.t0)

    def ticks(self, y0: float, y1: float, n: int = 6) -> str:
        """Vertical grid lines with UTC times under them (the date on the first)."""
        span = self.t1 - self.t0
        step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                                 43200, 86400, 7 * 86400) if span / s <= n), 30 * 86400)
        first = (int(self.t0 // step) + 1) * step
        out = []
        for i, t in enumerate(range(int(first), int(self.t1) + 1, step)):
            x = self.x(t)
            clock = "%H:%M:%S" if step < 60 else "%H:%M"
            label = time.strftime(f"%m-%d {clock}" if i == 0 or step >= 86400 else clock, time.gmtime(t))
            out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{y0}" y2="{y1}" stroke="#d7dde3"/>'
                       f'<text x="{_f(x)}" y="{y1 + 12}" text-anchor="middle">{label}</text>')
        return "".join(out)


def _svg(height: float, body: str, label: str, cls: str) -> str:
    # In a box that scrolls sideways below ~600 px: the chart keeps legible text on a phone.
    return (f'<div class="chart"><svg class="{cls}" viewBox="0 0 {W} {_f(height)}" role="img" '
            f'aria-label="{esc(label)}" preserveAspectRatio="xMinYMin meet">{body}</svg></div>')


# ---------------------------------------------------------------- the timeline

LANE = 34


def timeline_svg(r: RunReport) -> str:
    """Attempts as bands, one lane per zone: the boot (created → job running) pale, the job's
    time in the colour of how it ended; the recovery phases as a strip under each band; a
    preemption, stall or failure as a marker where the attempt ended."""
    ax = Axis(r.t0, r.t1)
    lanes = {z: i for i, z in enumerate(r.zones)}
    top = 8
    height = top + LANE * max(1, len(lanes)) + 22
    parts = [ax.ticks(top - 4, height - 20)]
    for z, i in lanes.items():
        y = top + i * LANE
        parts.append(f'<text x="4" y="{y + 16}" class="lane">{esc(z)}</text>'
                     f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y + LANE - 2}" y2="{y + LANE - 2}" stroke="#e3e7eb"/>')
    for p in r.phases:
        band = next((b for b in r.bands if b.attempt == p.attempt), None)
        if band is None:
            continue
        y = top + lanes[band.zone] * LANE + 22
        x0, x1 = ax.x(p.start), ax.x(p.end)
        parts.append(f'<rect class="phase" data-attempt="{p.attempt}" data-phase="{p.name}" '
                     f'data-seconds="{p.end - p.start:.3f}" x="{_f(x0)}" y="{y}" width="{_f(max(x1 - x0, .5))}" '
                     f'height="6" fill="{PHASE_COLOURS.get(p.name, "#999")}"/>')
    for b in r.bands:
        y = top + lanes[b.zone] * LANE + 3
        x0, x1 = ax.x(b.start), ax.x(b.end)
        colour = STATE_COLOURS.get(b.end_state, "#607d8b")
        run_x = min(max(ax.x(b.running_at), x0), x1) if b.running_at is not None else x1  # clock skew stays inside
        tip = (f"attempt {b.attempt} in {b.zone} ({b.instance or '?'}): {iso(b.start)} to "
               f"{iso(b.end) if b.end_state else 'now'}, {b.end_state or 'running'}")
        parts.append(
            f'<g class="band" data-attempt="{b.attempt}" data-zone="{esc(b.zone)}" '
            f'data-state="{esc(b.end_state or "RUNNING")}" data-start="{b.start:.3f}" data-end="{b.end:.3f}">'
            f'<title>{esc(tip)}</title>'
            f'<rect x="{_f(x0)}" y="{y}" width="{_f(max(run_x - x0, .5))}" height="16" fill="{colour}" '
            f'fill-opacity=".35"/>'
            + (f'<rect x="{_f(run_x)}" y="{y}" width="{_f(max(x1 - run_x, .5))}" height="16" fill="{colour}"/>'
               if b.running_at is not None else "")
            + "</g>")
    for m in r.markers:
        band = next((b for b in r.bands if b.attempt == m.attempt), None)
        y = top + (lanes[band.zone] if band else 0) * LANE
        x = ax.x(m.time)
        tip = f"{m.kind} at {iso(m.time)}: {m.reason or '-'}"
        parts.append(f'<g class="marker" data-kind="{m.kind}" data-attempt="{m.attempt}" data-time="{m.time:.3f}">'
                     f'<title>{esc(tip)}</title>'
                     f'<path d="M{_f(x - 5)} {y} L{_f(x + 5)} {y} L{_f(x)} {y + 8} Z" fill="{STATE_COLOURS[m.kind.upper()]}"/>'
                     f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{y}" y2="{y + LANE - 6}" '
                     f'stroke="{STATE_COLOURS[m.kind.upper()]}" stroke-width="1.5"/></g>')
    return _svg(height, "".join(parts), f"timeline of run {r.run_id}", "timeline")


def legend(items: Iterable[tuple[str, str]]) -> str:
    return '<ul class="legend">' + "".join(f'<li><i style="background:{c}"></i>{esc(t)}</li>' for t, c in items) + "</ul>"


# ---------------------------------------------------------------- progress, cost, sync

def _y(v: float, top: float, bottom: float, vmax: float) -> float:
    return bottom - (bottom - top) * (v / vmax if vmax > 0 else 0)


def progress_svg(r: RunReport) -> str:
    """Step against wall time, one line per attempt; a dashed drop where a preemption sent the
    run back to its last checkpoint (the steps redone)."""
    ax = Axis(r.t0, r.t1)
    top, bottom = 10.0, 170.0
    vmax = max([p.step for p in r.progress] + [r.total_steps or 0, 1])
    parts = [ax.ticks(top, bottom)]
    parts.append(f'<text x="4" y="{top + 8}">{vmax:g} steps</text><text x="4" y="{bottom}">0</text>')
    if r.total_steps:
        y = _y(r.total_steps, top, bottom, vmax)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{_f(y)}" y2="{_f(y)}" stroke="#9aa5b1" stroke-dasharray="4 3"/>')
    by: dict[int, list[Any]] = {}
    for p in r.progress:
        by.setdefault(p.attempt, []).append(p)
    prev = None
    keep = thin_every(len(r.progress))
    for n in sorted(by):
        pts = thin(by[n], keep)
        coords = " ".join(f"{_f(ax.x(p.time))},{_f(_y(p.step, top, bottom, vmax))}" for p in pts)
        if prev is not None:
            a, b = prev[-1], pts[0]
            parts.append(f'<polyline class="redone-drop" points="{_f(ax.x(a.time))},{_f(_y(a.step, top, bottom, vmax))} '
                         f'{_f(ax.x(b.time))},{_f(_y(b.step, top, bottom, vmax))}" fill="none" stroke="#ef6c00" '
                         f'stroke-dasharray="3 3"/>')
        parts.append(f'<polyline class="progress" data-attempt="{n}" points="{coords}" fill="none" stroke="#1565c0" '
                     f'stroke-width="2"/>')
        for p in (pts[0], pts[-1]):  # where the attempt's steps began and ended
            parts.append(f'<circle cx="{_f(ax.x(p.time))}" cy="{_f(_y(p.step, top, bottom, vmax))}" r="2.5" fill="#1565c0"/>')
        prev = pts
    return _svg(bottom + 24, "".join(parts), "progress: step against time", "progress")


def cost_svg(r: RunReport) -> str:
    """Spot cost so far against time; the part lost to preemptions as red ticks at each end."""
    ax = Axis(r.t0, r.t1)
    top, bottom = 10.0, 120.0
    series = r.cost_series
    if not series or series[-1][1] <= 0:
        why = r.cost.get("note") or r.cost.get("why_unknown") or "nothing billed yet"
        return f'<p class="note cost-none">No cost curve: {esc(why)}.</p>'
    vmax = max([c for _, c in series] + [1e-9])
    parts = [ax.ticks(top, bottom)]
    cur = r.cost.get("currency", "USD")
    parts.append(f'<text x="4" y="{top + 8}">{esc(format_money(vmax, cur))}</text><text x="4" y="{bottom}">0</text>')
    if series:
        coords = " ".join(f"{_f(ax.x(t))},{_f(_y(c, top, bottom, vmax))}" for t, c in series)
        parts.append(f'<polyline class="spot-cost" points="{coords}" fill="none" stroke="#2e7d32" stroke-width="2"/>')
    return _svg(bottom + 24, "".join(parts), "spot cost so far", "cost")


def sync_svg(r: RunReport) -> str:
    """Work at risk over time, one sawtooth per attempt (it drops at each checkpoint upload); a
    dot where each attempt ended (and now, for a live one)."""
    ax = Axis(r.t0, r.t1)
    top, bottom = 10.0, 100.0
    known = [s.lag_s for s in r.sync if s.lag_s is not None]
    vmax = max(known + [1.0])
    parts = [ax.ticks(top, bottom), f'<text x="4" y="{top + 8}">{esc(duration(vmax))}</text>'
                                    f'<text x="4" y="{bottom}">0</text>']
    by: dict[int, list[Any]] = {}
    for s in r.sync:
        by.setdefault(s.attempt, []).append(s)
    keep = thin_every(sum(len(v) for v in by.values()))
    for n in sorted(by):
        line = [s for s in thin(sorted(by[n], key=lambda s: s.time), keep) if s.lag_s is not None]
        if len(line) > 1:
            coords = " ".join(f"{_f(ax.x(s.time))},{_f(_y(s.lag_s, top, bottom, vmax))}" for s in line)
            parts.append(f'<polyline class="sync-series" data-attempt="{n}" points="{coords}" fill="none" '
                         f'stroke="#8e24aa" stroke-width="1.2"/>')
    for s in r.sync:
        if s.kind == "sample":
            continue
        x = ax.x(s.time)
        if s.lag_s is None:
            parts.append(f'<text class="sync-none" data-attempt="{s.attempt}" x="{_f(x)}" y="{bottom - 4}" '
                         f'text-anchor="middle" fill="#b71c1c">?</text>')
            continue
        tip = f"attempt {s.attempt}: {duration(s.lag_s)} of work not in a stored checkpoint at {iso(s.time)}"
        parts.append(f'<circle class="sync-lag" data-attempt="{s.attempt}" data-seconds="{s.lag_s:.3f}" '
                     f'data-kind="{s.kind}" cx="{_f(x)}" cy="{_f(_y(s.lag_s, top, bottom, vmax))}" r="3.5" '
                     f'fill="{"#1565c0" if s.kind == "live" else "#8e24aa"}"><title>{esc(tip)}</title></circle>')
    return _svg(bottom + 24, "".join(parts), "checkpoint sync lag", "sync")


# More points than a chart about 1,000 px wide can show are thinned, evenly, keeping each
# attempt's first and last: a 500-attempt run's agent series alone can hold 60,000 samples.
MAX_DRAWN = 4000


def thin_every(total: int) -> int:
    """Keep every k-th point so that about ``MAX_DRAWN`` of ``total`` are drawn."""
    return max(1, -(-total // MAX_DRAWN))


def thin(points: list[Any], k: int) -> list[Any]:
    if k <= 1 or len(points) <= 2:
        return points
    return [points[0]] + points[1:-1][k - 1::k] + [points[-1]]


# ---------------------------------------------------------------- the page

def _fact(label: str, value: str, key: str, data: Any = None) -> str:
    dv = "" if data is None else f' data-value="{esc(data)}"'
    return f'<div><dt>{esc(label)}</dt><dd id="{key}"{dv}>{value}</dd></div>'


def _money(x: Any, cur: str) -> str:
    return esc(format_money(x, cur))


def run_section(r: RunReport, anchor: str = "") -> str:
    """One run's whole report (header facts, timeline, progress, cost, sync, recoveries, attempts)."""
    now = r.now
    cur = r.cost.get("currency", "USD")
    c = r.cost
    pfx = f"{anchor}-" if anchor else ""
    colour = STATE_COLOURS.get(r.state, "#1565c0") if r.state in STATE_COLOURS else "#1565c0"
    last_step = max((p.step for p in r.progress), default=None)
    out = [f'<section class="run" id="{esc(anchor or "run")}" data-run-id="{esc(r.run_id)}" '
           f'data-state="{esc(r.state)}" data-live="{str(r.live).lower()}">',
           f'<h1>{esc(r.run_id)} <span class="state" style="background:{colour}">{esc(r.state)}</span></h1>',
           f'<p class="muted">{esc(r.backend)}{" · " + esc(r.machine) if r.machine else ""}'
           f'{" + " + esc(r.gpu) if r.gpu else ""} · '
           f'from {esc(when(r.t0, now))} to {esc("now" if r.live else when(r.t1, now))} '
           f'({esc(duration(r.t1 - r.t0))})</p>']
    if r.last_error:
        out.append(f'<div class="error" id="{pfx}last-error"><strong>Last error:</strong> {esc(r.last_error)}</div>')
    out.append('<dl class="facts">'
               + _fact("attempts", str(r.attempt), f"{pfx}attempts", r.attempt)
               + _fact("preemptions", str(r.preemptions), f"{pfx}preemptions", r.preemptions)
               + _fact("progress", esc("-" if last_step is None else f"{last_step:g}"
                                       + (f" / {r.total_steps:g}" if r.total_steps else "")), f"{pfx}progress", last_step)
               + _fact("rate while running", esc(f"{r.rate:.3g} steps/s" if r.rate else "-"), f"{pfx}rate", r.rate)
               + _fact("steps redone", esc(f"{r.steps_redone:g}"), f"{pfx}steps-redone", r.steps_redone)
               + _fact("spot cost", _money(c.get("so_far"), cur), f"{pfx}cost-spot", c.get("so_far"))
               + _fact("on-demand would be", _money(c.get("on_demand"), cur), f"{pfx}cost-on-demand", c.get("on_demand"))
               + _fact("lost to preemptions", ("≥" if c.get("lost_is_lower_bound") else "")
                       + _money(c.get("lost_to_preemptions"), cur), f"{pfx}cost-lost", c.get("lost_to_preemptions"))
               + "</dl>")
    notes = [n for n in (c.get("why_unknown"), c.get("note"), c.get("lost_note"),
                         c.get("on_demand_why_unknown") and f"on-demand: {c['on_demand_why_unknown']}") if n]
    notes.append(f"prices: {c.get('source') or '?'} as of {c.get('as_of') or '?'} (an estimate)")
    out.append(f'<p class="note">{esc("; ".join(notes))}</p>')
    out.append("<h2>Timeline</h2>" + timeline_svg(r)
               + legend([("boot (created → job running)", "#b3c7e6"), ("running", STATE_COLOURS[None]),
                         ("preempted", STATE_COLOURS["PREEMPTED"]), ("stalled", STATE_COLOURS["STALLED"]),
                         ("succeeded", STATE_COLOURS["SUCCEEDED"]), ("failed", STATE_COLOURS["FAILED"])])
               + legend([(n.replace("_", " "), PHASE_COLOURS[n]) for n in SEGMENT_NAMES]))
    out.append("<h2>Progress</h2>" + progress_svg(r))
    eff = f"{r.effective_rate:.3g} steps/s" if r.effective_rate else "-"
    out.append(f'<p class="note">net {esc(eff)} of wall time from the first step; '
               f'each dashed drop is a preemption sending the run back to its last checkpoint.</p>')
    if r.redone:
        out.append('<div class="scroll"><table class="redone"><tr><th>lost attempt</th><th class="num">last step</th>'
                   '<th class="num">resumed at</th><th class="num">steps redone</th></tr>'
                   + "".join(f'<tr data-attempt="{d.attempt}"><td>{d.attempt}</td><td class="num">{d.last_step:g}</td>'
                             f'<td class="num">{d.resumed_step:g}</td><td class="num">{d.steps:g}</td></tr>'
                             for d in r.redone) + "</table></div>")
    out.append("<h2>Cost</h2>" + cost_svg(r))
    out.append("<h2>Checkpoint sync lag</h2>" + sync_svg(r)
               + '<p class="note">Work not yet in a checkpoint in the store: time since the attempt\'s newest '
                 'published checkpoint was written (or since its job started, before its first), what a '
                 'preemption then throws away; sampled at each heartbeat, a dot where each attempt ended'
                 + (" and now" if r.live else "") + '.</p>')
    if r.recoveries:
        out.append('<h2>Recoveries</h2><ol class="recoveries">'
                   + "".join(f'<li value="{x["attempt"]}" data-attempt="{x["attempt"]}" '
                             f'data-total="{x["total_s"] if x["total_s"] is not None else ""}">{esc(x["text"])}</li>'
                             for x in r.recoveries) + "</ol>")
    out.append('<h2>Attempts</h2><div class="scroll"><table class="attempts"><tr><th>#</th><th>zone</th>'
               '<th>instance</th><th>created (UTC)</th><th>ended</th><th class="num">billed</th>'
               '<th class="num">cost</th><th class="num">lost</th></tr>'
               + "".join(f'<tr data-attempt="{b.attempt}"><td>{b.attempt}</td><td>{esc(b.zone)}</td>'
                         f'<td>{esc(b.instance or "-")}</td><td>{esc(iso(b.start))}</td>'
                         f'<td>{esc(b.end_state or "running")}</td><td class="num">{esc(duration(b.billed_s))}</td>'
                         f'<td class="num">{_money(b.cost, cur)}</td>'
                         f'<td class="num" title="{esc(b.lost_basis or "")}">{esc(duration(b.lost_s))}</td></tr>'
                         for b in r.bands) + "</table></div>")
    for d in r.damaged:
        out.append(f'<p class="note">unreadable, left out: {esc(d)}</p>')
    out.append("</section>")
    return "".join(out)


def sparkline(r: RunReport) -> str:
    """A run's progress in a cell: step against time, preemptions as orange ticks."""
    w, h = 160, 28
    t0, t1 = r.t0, max(r.t1, r.t0 + 1)
    vmax = max([p.step for p in r.progress] + [r.total_steps or 0, 1])

    def x(t: float) -> float:
        return 2 + (w - 4) * (t - t0) / (t1 - t0)

    pts = " ".join(f"{_f(x(p.time))},{_f(h - 3 - (h - 6) * p.step / vmax)}" for p in r.progress)
    ticks = "".join(f'<line class="spark-marker" data-kind="{m.kind}" x1="{_f(x(m.time))}" x2="{_f(x(m.time))}" '
                    f'y1="0" y2="{h}" stroke="{STATE_COLOURS[m.kind.upper()]}"/>' for m in r.markers)
    return (f'<svg class="sparkline" viewBox="0 0 {w} {h}" style="width:{w}px;max-width:100%" '
            f'aria-label="progress of {esc(r.run_id)}">{ticks}'
            + (f'<polyline points="{pts}" fill="none" stroke="#1565c0" stroke-width="1.5"/>' if pts else "")
            + "</svg>")


def runs_table(reports: list[RunReport | ReportError], ids: list[str]) -> str:
    rows = []
    for rid, r in zip(ids, reports):
        if isinstance(r, ReportError):
            rows.append(f'<tr data-run-id="{esc(rid)}"><td>{esc(rid)}</td><td colspan="6">{esc(r)}</td></tr>')
            continue
        cur = r.cost.get("currency", "USD")
        last = max((p.step for p in r.progress), default=None)
        rows.append(
            f'<tr data-run-id="{esc(r.run_id)}" data-state="{esc(r.state)}"><td><a href="#{esc(_anchor(r.run_id))}">'
            f'{esc(r.run_id)}</a></td><td>{esc(r.state)}</td><td class="num">{r.attempt}</td>'
            f'<td class="num">{r.preemptions}</td><td class="num">{esc("-" if last is None else f"{last:g}")}</td>'
            f'<td class="num" data-value="{esc(r.cost.get("so_far"))}">{_money(r.cost.get("so_far"), cur)}</td>'
            f'<td>{sparkline(r)}</td></tr>')
    ok = [r for r in reports if isinstance(r, RunReport)]
    known = [r.cost["so_far"] for r in ok if r.cost.get("so_far") is not None]
    unknown = len(ok) - len(known)
    cur = ok[0].cost.get("currency", "USD") if ok else "USD"
    total = (f'<tr class="total"><th>total</th><td></td><td class="num">{sum(r.attempt for r in ok)}</td>'
             f'<td class="num">{sum(r.preemptions for r in ok)}</td><td></td>'
             f'<td class="num" id="runs-cost" data-value="{sum(known):.6f}">{_money(sum(known), cur)}'
             + (f" + {unknown} unknown" if unknown else "") + "</td><td></td></tr>")
    return ('<div class="scroll"><table class="runs"><tr><th>run</th><th>state</th><th class="num">attempts</th>'
            '<th class="num">preemptions</th><th class="num">step</th><th class="num">spot cost</th>'
            '<th>progress</th></tr>' + "".join(rows) + total + "</table></div>")


def _anchor(run_id: str) -> str:
    return "run-" + run_id


def page(reports: list[RunReport | ReportError], ids: list[str], title: str, now: float | None = None,
         refresh_s: float | None = None, extra_head: str = "") -> str:
    """The whole page: one run's report, or for several the runs' table then each run's report.

    ``refresh_s``: reload every so many seconds (``--serve`` while a run is live); a file
    written once never refreshes itself."""
    now = time.time() if now is None else now
    head = [f'<meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>{esc(title)}</title><style>{CSS}</style>"]
    if refresh_s:
        head.append(f'<meta http-equiv="refresh" content="{int(refresh_s)}">')
    body = [f'<p class="muted">runner ops report · generated {esc(iso(now))}'
            + (f" · refreshes every {int(refresh_s)}s while a run is live" if refresh_s else "") + "</p>"]
    if len(ids) == 1:
        r = reports[0]
        body.append(run_section(r) if isinstance(r, RunReport) else f'<p class="error">{esc(r)}</p>')
    else:
        body.append(f"<h1>{esc(title)}</h1>" + runs_table(reports, ids))
        for r in reports:
            if isinstance(r, RunReport):
                body.append(run_section(r, _anchor(r.run_id)))
    return ("<!doctype html><html lang=\"en\"><head>" + "".join(head) + extra_head + "</head><body>"
            + "".join(body) + "</body></html>\n")
