"""The run's history in one small document: a running summary that rides in ``state.json``.

Why: ``ops status`` used to rebuild a run's cost from every event, manifest and create claim it
ever wrote (about five store requests per attempt: 3,000 for a 600-attempt run). The summary
holds what that rebuild gives for every attempt but the current one (billed and lost seconds
per zone, the restarts), so a reader needs the state, the current attempt's manifest and claim,
and nothing that grows with the history.

Where it lives, and why there: in ``state.json`` (``RunState.history``), written by the same
compare-and-swap as the transition it folds in. Two writers racing on a run cannot both fold
their event: exactly one write lands, and the loser re-reads (and re-folds) or gives up, as it
does for the state itself. A separate object would need its own compare-and-swap and could fall
behind or run ahead of the state it describes.

What it trusts: ``through`` names the event it folded last. A writer that does not know the
summary (an older agent pinned in a run's image) keeps it as it was (``RunState.extra`` rules)
while writing a newer event; the summary then no longer describes the state (``current`` is
False), and every later writer drops it: that run is read in full again, as a run that predates
the summary always is. Nothing ever guesses a summary from a partial history.

When attempts are folded: when the next attempt begins (the supervisor's ``begin_attempt``,
not time-critical), the attempt before is closed: its manifest and claim are read once, its
billed and lost seconds added to the totals. The work a lost attempt had to redo depends on the
next attempt that started (what it restored), so such an attempt waits in ``pending`` until one
did. ``history.md`` in docs/architecture.md#the-run-record says the same for people.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from entrypoint.record.attempts import LOST_TO_PREEMPTION, Attempt, bill, boot_lost, event_mark, work_redone
from entrypoint.record.create_claim import CreateClaim, billed_from
from entrypoint.record.documents import RunState
from entrypoint.store import Store

VERSION = 1
MAX_NOTES = 3  # notes on unknown redone work kept word for word; more are only counted
RECENT = 5  # closed attempts kept as rows for ``ops status --json`` (the totals cover them all)
# The manifest fields a lost attempt's redone work is judged by (``attempts.work_redone``).
_REDONE_KEYS = ("started_at", "finished_at", "checkpoint_at", "first_progress", "last_progress")


def begin(event: dict[str, Any]) -> dict[str, Any]:
    """The summary of a run just submitted, whose first event is ``event``."""
    return {
        "version": VERSION, "through": event["name"], "transitions": 1,
        "first_event_at": event["doc"].get("time"),
        "current": Attempt(0).marks(), "closed": 0, "prev_end_state": None, "lost_attempts": 0,
        "billed": {}, "lost": {}, "pending": [], "unknown_notes": [], "unknown_count": 0, "recent": [],
    }


def current(st: RunState) -> dict[str, Any] | None:
    """``st``'s summary if it describes ``st`` (folded through its last event), else None."""
    h = st.history
    if not isinstance(h, dict) or h.get("version") != VERSION or not st.last_event:
        return None
    return h if h.get("through") == st.last_event.get("name") else None


def zone_key(zone: Any) -> str:
    """How the totals are keyed by zone (``""``: not known, priced by the spec's region)."""
    return zone if isinstance(zone, str) else ""


def fold(before: RunState, after: RunState, store: Store, prefix: str,
         read_manifest: Callable[[int], dict[str, Any] | None],
         read_claim: Callable[[int], CreateClaim | None]) -> dict[str, Any] | None:
    """``before``'s summary with ``after``'s event (``after.last_event``) folded in; None when
    ``before`` has no current summary (the run stays without one).

    When ``after`` is a later attempt, the attempts in between are closed first: their manifest
    and claim are read here (one each), and a lost attempt's log only when nothing else tells
    its redone work.
    """
    h = current(before)
    if h is None or not after.last_event:
        return None
    h = copy.deepcopy(h)
    ev = after.last_event
    mark = event_mark(ev["doc"])
    n_open = int(h["current"]["n"])
    if after.attempt > n_open:
        for n in range(max(n_open, 1), after.attempt):
            marks = h["current"] if n == n_open else Attempt(n).marks()
            nxt = Attempt(n + 1)
            if n + 1 == after.attempt and mark is not None and mark[0] == after.attempt:
                nxt.mark(mark[1], mark[2])
            _close(h, Attempt.from_marks(marks), store, prefix, read_manifest(n) or {}, read_claim(n),
                   before, nxt.provisioned_at)
        h["current"] = Attempt(after.attempt).marks()
    if mark is not None and mark[0] == h["current"]["n"]:
        a = Attempt.from_marks(h["current"])
        ended = a.end_state
        a.mark(mark[1], mark[2])
        h["current"] = a.marks()
        if ended is None and a.end_state in LOST_TO_PREEMPTION:  # every attempt lost, ever
            h["lost_attempts"] = int(h.get("lost_attempts", 0)) + 1
    h["through"] = ev["name"]
    h["transitions"] = int(h.get("transitions", 0)) + 1
    return h


def _close(h: dict[str, Any], a: Attempt, store: Store, prefix: str, manifest: dict[str, Any],
           claim: CreateClaim | None, st: RunState, next_provisioned_at: float | None) -> None:
    """Add attempt ``a`` (no longer the current one) to the totals."""
    a.manifest = manifest
    bill(a, claimed_at=billed_from(claim), current=False, st=st,
         next_provisioned_at=next_provisioned_at, now=0.0)
    zone = zone_key(manifest.get("zone"))
    boot = boot_lost(a, h.get("prev_end_state"))
    _add(h["billed"], zone, a.seconds)
    _add(h["lost"], zone, boot)
    h["recent"] = (h.get("recent", []) + [{
        "attempt": a.n, "zone": zone, "start": a.start, "end": a.end, "ended": a.end_state,
        "seconds": a.seconds, "lost_boot_seconds": boot, "lost_work_seconds": 0.0, "lost_basis": None,
    }])[-RECENT:]
    if a.manifest:  # the lost attempts waiting for a next attempt that started have one now
        settle_pending(h, store, prefix, a)
    if a.end_state in LOST_TO_PREEMPTION:
        kept = {k: manifest[k] for k in _REDONE_KEYS if k in manifest}  # what work_redone reads of it
        h["pending"].append({"zone": zone, "marks": a.marks(), "start": a.start, "end": a.end,
                             "manifest": kept})
    h["prev_end_state"] = a.end_state
    h["closed"] = a.n


def pending_attempts(h: dict[str, Any]) -> list[tuple[str, Attempt]]:
    """The lost attempts whose redone work waits on a next attempt that started: (zone, attempt)."""
    out = []
    for p in h.get("pending", []):
        a = Attempt.from_marks(p["marks"])
        a.start, a.end, a.manifest = p.get("start"), p.get("end"), dict(p.get("manifest") or {})
        out.append((p.get("zone", ""), a))
    return out


def settle_pending(h: dict[str, Any], store: Store, prefix: str, nxt: Attempt) -> None:
    for zone, a in pending_attempts(h):
        redone, basis = work_redone(store, prefix, a, nxt)
        for row in h.get("recent", []):
            if row["attempt"] == a.n:
                row["lost_work_seconds"], row["lost_basis"] = redone, basis
        if redone is None:
            h["unknown_count"] = int(h.get("unknown_count", 0)) + 1
            if len(h["unknown_notes"]) < MAX_NOTES:
                h["unknown_notes"].append(f"work redone after attempt {a.n} unknown ({basis})")
        else:
            _add(h["lost"], zone, redone)
    h["pending"] = []


def _add(totals: dict[str, float], key: str, seconds: float) -> None:
    if seconds:
        totals[key] = totals.get(key, 0.0) + seconds
