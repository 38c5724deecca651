"""Recovery policy: what the supervisor does when an attempt is lost, in one room.

A preempted, stalled or vanished attempt is replaced by the next one. How, is decided here:

- ``decide`` turns what is left of the lost attempt into one ``Recovery`` step: wait while it is
  going away (the preemption notice: the agent's final sync must finish, and a replacement would
  run beside it), restart it in place (a stopped GCE VM keeps its disks), or replace it (delete
  what is left, then create the next attempt once nothing of the old one runs).
- A ``RecoveryStrategy`` chooses where the next attempt goes: the order in which its zones are
  tried. The strategy is pinned in the run's spec (``AttemptSettings.recovery``), so every
  supervisor recovers a run the same way. Capacity-ranked placement gets its room here too.
- ``CreateBackoff`` (kept in the run record) paces the retries of a create that every zone
  refused; ``create_grace`` says how long a finished create may go unseen before its attempt
  counts as lost, ``create_lease`` how long a create in flight may go without renewing its claim.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from typing import Sequence

from entrypoint.record.create_claim import DEFAULT_LEASE_S
from runner.launch.backends.base import Attempt
from runner.launch.create_backoff import CreateBackoff

__all__ = ["CreateBackoff", "Recovery", "RecoveryStrategy", "STRATEGIES", "create_grace", "create_lease", "decide",
           "strategy", "strategy_of_run"]


class Recovery(enum.Enum):
    """One step of replacing a lost attempt (see ``decide``)."""

    CREATE = "create"  # nothing is left of the old attempt: create the next one now
    WAIT = "wait"  # the old attempt is going away (its shutdown notice): act on a later pass
    RESTART_IN_PLACE = "restart in place"  # stopped and kept: start it again as the next attempt
    DELETE_THEN_CREATE = "delete, then create"  # ended: delete what is left and create now
    DELETE_THEN_WAIT = "delete, then wait"  # still runs: delete it; create once it is gone


def decide(lost: Attempt | None, keeps_stopped: bool) -> Recovery:
    """The step that replaces ``lost`` (the run's current attempt as listed; None if nothing is).

    Never two live attempts of one run: an attempt that still runs or is in its notice is never
    replaced before it is gone. ``keeps_stopped``: the backend keeps this run's stopped instances
    for a restart in place (``ComputeBackend.keeps_stopped``).
    """
    if lost is None:
        return Recovery.CREATE
    if lost.going_away:
        return Recovery.WAIT
    if lost.ended:
        return Recovery.RESTART_IN_PLACE if keeps_stopped else Recovery.DELETE_THEN_CREATE
    return Recovery.DELETE_THEN_WAIT


def create_grace(poll_interval: float) -> float:
    """How long an attempt whose create finished may go unlisted before its instance counts as
    lost (a listing can lag an insert by a little). A create still in flight is never judged:
    its claim's lease says so (``create_lease``)."""
    return max(60.0, 3 * poll_interval)


def create_lease(poll_interval: float) -> float:
    """How long a create claim's lease runs without a renewal before another supervisor may take
    the create over (its holder renews it a few times per lease while its create runs). Minutes:
    long enough for a store hiccup and modest clock skew between supervisors, short enough that
    a run whose creator died waits one or two passes, not an hour."""
    return max(DEFAULT_LEASE_S, 4 * poll_interval)


@dataclass(frozen=True)
class RecoveryStrategy:
    """Where a new attempt is tried: the order of the run's zones, given where the last one ran."""

    name: str
    description: str

    def zones(self, zones: Sequence[str], previous_zone: str | None) -> tuple[str, ...]:
        """The run's zones in the order this strategy tries them for the next attempt."""
        return tuple(zones)


class SameZoneFirst(RecoveryStrategy):
    def zones(self, zones: Sequence[str], previous_zone: str | None) -> tuple[str, ...]:
        if previous_zone not in zones:
            return tuple(zones)
        return (previous_zone, *[z for z in zones if z != previous_zone])  # type: ignore[misc]


class NextZoneFirst(RecoveryStrategy):
    def zones(self, zones: Sequence[str], previous_zone: str | None) -> tuple[str, ...]:
        if previous_zone not in zones:
            return tuple(zones)
        i = list(zones).index(previous_zone)  # type: ignore[arg-type]
        return tuple(zones[i + 1:]) + tuple(zones[:i + 1])


STRATEGIES: dict[str, RecoveryStrategy] = {s.name: s for s in (
    RecoveryStrategy("in-order", "the run's zones in the order given, every attempt; the default"),
    SameZoneFirst("same-zone-first", "the zone the last attempt ran in first, where its data and "
                                     "image caches are, then the others in order"),
    NextZoneFirst("next-zone-first", "the zone after the last attempt's first, since a zone that "
                                     "just preempted is likely short of capacity, wrapping around"),
)}


def strategy(name: str) -> RecoveryStrategy:
    """The strategy called ``name``; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown recovery strategy {name!r}: choose one of "
                         + ", ".join(STRATEGIES)) from None


def strategy_of_run(name: str, run_id: str) -> RecoveryStrategy:
    """The strategy a run's spec names, or ``in-order`` (said on stderr) for a name this version
    does not know: a spec written by a newer runner must still be recovered, not stuck."""
    try:
        return strategy(name)
    except ValueError:
        print(f"runner: {run_id}: its spec names the recovery strategy {name!r}, which this version "
              "does not know; trying its zones in order", file=sys.stderr)
        return STRATEGIES["in-order"]
