"""Recent stockouts per zone, seen by every create of this store (``capacity/zones.json``), and
the zone order they advise.

Why: a run allowed several zones (even several regions) walks them in its recovery strategy's
order, and a zone that just refused a create for capacity (ZONE_RESOURCE_POOL_EXHAUSTED, or a
gang's VM_MIN_COUNT_NOT_REACHED) is likely to refuse the next one too: trying it first costs a
refused insert per run per pass. The store is the one place every supervisor (and one-shot
``supervise --once`` passes) shares, so what one run learns the next run uses.

The document is advice, not a lock: read-modify-write, last writer wins (a lost update costs one
stockout's weight). Each zone's weight decays by half every ``HALF_LIFE`` seconds, so a stockout
an hour old counts half, and a zone not refused for a few hours is as good as never refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from entrypoint.store import Store, StoreError

NAME = "capacity/zones.json"
HALF_LIFE = 3600.0
FORGET_BELOW = 0.05  # weights under this are dropped from the document and rank as clean
# The refusals that say "this zone has no capacity now" (gce_zone_walk.ZONE_RETRYABLE also
# holds quota and unsupported-type refusals, which are not about the zone's stock).
STOCKOUT_CODES = frozenset({"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                            "resourcePoolExhausted", "STOCKOUT", "VM_MIN_COUNT_NOT_REACHED"})


@dataclass
class ZoneStockouts:
    """``zones``: zone -> (weight at ``last``, time of the last stockout seen)."""

    zones: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def read(cls, store: Store) -> "ZoneStockouts":
        """The store's history; a missing or damaged document is an empty one (advice only)."""
        try:
            blob = store.read(NAME)
        except StoreError:
            return cls()
        if blob is None:
            return cls()
        try:
            raw = json.loads(blob.data)
            return cls({z: (float(v["weight"]), float(v["last"])) for z, v in raw.get("zones", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def weight(self, zone: str, now: float) -> float:
        w, last = self.zones.get(zone, (0.0, now))
        return w * 0.5 ** (max(0.0, now - last) / HALF_LIFE)

    def seen(self, zone: str, now: float) -> None:
        self.zones[zone] = (self.weight(zone, now) + 1.0, now)

    def ranked(self, zones: Sequence[str], now: float, advised: Mapping[str, float] | None = None
               ) -> tuple[tuple[str, ...], list[str]]:
        """``zones`` with the recently stocked-out ones last (the least recently, least often
        refused first); among zones alike, the ones Compute's capacity advice recommends
        (``advised``: zone -> obtainability) first; then the given order. And why, one phrase
        per zone. What this store saw itself outranks the advice: a stockout is a fact, the
        advice a likelihood."""
        advised = advised or {}

        def weight(z: str) -> float:
            w = self.weight(z, now)
            return w if w >= FORGET_BELOW else 0.0

        # sorted is stable: the strategy's order breaks the remaining ties
        order = tuple(sorted(zones, key=lambda z: (weight(z), z not in advised, -advised.get(z, 0.0))))
        why = [self._why(z, weight(z), now) for z in order]
        why = [w + (f"; capacity advice recommends it (obtainability {advised[z]:.2f})" if z in advised else "")
               for z, w in zip(order, why)]
        return order, why

    def _why(self, zone: str, weight: float, now: float) -> str:
        if not weight:
            return f"{zone}: no stockout seen in {_ago(HALF_LIFE)}" if zone not in self.zones else \
                f"{zone}: last stockout {_ago(now - self.zones[zone][1])} ago"
        return f"{zone}: stocked out {_ago(now - self.zones[zone][1])} ago (weight {weight:.2f})"

    def write(self, store: Store, now: float) -> None:
        """Store the history, without zones whose weight has decayed away. Best effort: a
        failed write loses advice, never a create."""
        keep = {z: {"weight": round(w, 4), "last": last}  # the weight as of ``last``
                for z, (w, last) in sorted(self.zones.items()) if self.weight(z, now) >= FORGET_BELOW}
        try:
            store.write(NAME, json.dumps({"half_life_s": HALF_LIFE, "zones": keep}, indent=1).encode())
        except StoreError:
            pass


def record_stockouts(store: Store, zones: Sequence[str], now: float | None = None) -> None:
    """Add one stockout for each of ``zones`` to the store's history."""
    if not zones:
        return
    now = time.time() if now is None else now
    history = ZoneStockouts.read(store)
    for z in zones:
        history.seen(z, now)
    history.write(store, now)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600} h" if s % 3600 < 60 else f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min"
    return f"{s} s"
