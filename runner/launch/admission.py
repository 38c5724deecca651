"""The queue: which waiting runs may begin their next attempt this pass, and why the others wait.

Why it exists: without it, 50 runs against an 8-GPU quota send 42 inserts every pass that the
quota must refuse, and each run backs off on its own, so the order in which runs get VMs is
chance. Here the supervisor reads the project's quotas once per pass (one or two API calls,
whatever the number of waiting runs: ``ComputeBackend.read_quota``), and hands out what is free
in a fixed order, so no insert is sent that the quota must refuse.

The rules (the README's "Sweeps and queues" says the same for users):

- Order: higher ``priority`` first; within a priority, first come first served, by the time the
  run began to wait (its submit time for a first attempt, the moment it was lost for a restart).
- A run that does not fit does not stop smaller runs behind it from starting (backfill), so the
  quota is kept busy. To keep a large run from starving behind a stream of small ones, a run
  that has waited ``hold_after`` seconds (30 minutes by default) *holds* what it needs: from then
  on units that free up go to it first, and runs behind it may only use what it does not need.
  Every run eventually reaches the front, so none waits for ever.
- A sweep's ``max_concurrent`` caps how many of its runs hold VMs at once (provisioning or
  running); a run over the cap waits without holding anything.
- Runs whose create is in flight (PROVISIONING, no VM listed yet) count as using their quota, so
  two passes never hand out the same unit twice.

Quotas are named ``SCOPE/METRIC`` (``us-central1/PREEMPTIBLE_NVIDIA_L4_GPUS``,
``global/GPUS_ALL_REGIONS``); a run's need lists, per region it may run in, what one attempt takes
(every node of a gang, at once). Pure: no I/O here, so the rules are tested on their own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

HOLD_AFTER_S = 1800.0

# One attempt's quota use in one region: {"SCOPE/METRIC": amount}. A run has one per region it
# may use, in its zone order; an empty list: nothing this backend counts (the local backend).
Need = Mapping[str, float]


@dataclass
class Pool:
    """One quota as the provider reported it, and what this pass has handed out of it."""

    key: str  # SCOPE/METRIC
    limit: float
    usage: float

    @property
    def free(self) -> float:
        return self.limit - self.usage

    def describe(self) -> str:
        scope, metric = self.key.split("/", 1)
        where = "project-wide" if scope == "global" else f"in {scope}"
        return f"{metric} {where}: {self.usage:g} of {self.limit:g} in use"


@dataclass
class Quotas:
    """The pools one pass hands out. Keys the provider did not report are not limited here (the
    provider's own refusal still stands behind them). Several keys may share one ``Pool`` (a spot
    VM draws on standard quota where the region has no preemptible one)."""

    pools: dict[str, Pool] = field(default_factory=dict)

    def short(self, need: Need) -> list[tuple[Pool, float]]:
        """The pools ``need`` does not fit in, with the amount it wants of each."""
        wanted: dict[int, tuple[Pool, float]] = {}
        for key, amount in need.items():
            pool = self.pools.get(key)
            if pool is not None and amount > 0:
                p, a = wanted.get(id(pool), (pool, 0.0))
                wanted[id(pool)] = (p, a + amount)
        return [(p, a) for p, a in wanted.values() if a > p.free + 1e-9]

    def take(self, need: Need) -> None:
        for key, amount in need.items():
            pool = self.pools.get(key)
            if pool is not None:
                pool.usage += amount


@dataclass(frozen=True)
class Waiting:
    """A run that wants its next attempt to begin."""

    run_id: str
    priority: int
    since: float  # when it began to wait
    needs: tuple[Need, ...]  # one per region it may use, in order; () = not limited
    sweep: str | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str = ""
    position: int = 0  # 1-based place in the queue (0: admitted)
    holds: bool = False  # waited past hold_after: what frees up goes to it first
    never: bool = False  # needs more than a quota's whole limit in every region: it cannot wait
    # never: (SCOPE/METRIC, what one attempt needs, the limit) of each quota too small (first region)
    too_small: tuple[tuple[str, float, float], ...] = ()


def order(waiting: Iterable[Waiting]) -> list[Waiting]:
    """Priority first (higher first), then first come first served; run id breaks ties."""
    return sorted(waiting, key=lambda w: (-w.priority, w.since, w.run_id))


def decide(waiting: Iterable[Waiting], quotas: Quotas | None, sweep_holding: Mapping[str, int],
           now: float, hold_after: float = HOLD_AFTER_S) -> dict[str, Decision]:
    """Who begins this pass, and for the others why not and their place in the queue.

    ``quotas`` None: the quotas could not be read (or the backend has none): every run that its
    sweep's cap allows begins, as before the queue, and the provider refuses what does not fit.
    ``sweep_holding``: per sweep, its runs holding VMs now (provisioning or running).
    """
    holding = Counter(dict(sweep_holding))
    out: dict[str, Decision] = {}
    position = 0
    for w in order(waiting):
        if w.sweep and w.max_concurrent is not None and holding[w.sweep] >= w.max_concurrent:
            position += 1
            out[w.run_id] = Decision(False, f"sweep {w.sweep}: {holding[w.sweep]} of --max-concurrent "
                                            f"{w.max_concurrent} runs hold VMs", position)
            continue
        fit = _first_fit(w, quotas)
        if fit is not None:
            if quotas is not None:
                quotas.take(fit)
            if w.sweep:
                holding[w.sweep] += 1
            out[w.run_id] = Decision(True)
            continue
        assert quotas is not None  # (_first_fit admits everything without quotas)
        if all(any(amount > pool.limit for pool, amount in quotas.short(need)) for need in w.needs):
            out[w.run_id] = Decision(False, "can never begin: " + _why(w, quotas, limits=True), never=True,
                                     too_small=tuple((p.key, a, p.limit) for p, a in quotas.short(w.needs[0])
                                                     if a > p.limit))
            continue
        position += 1
        holds = now - w.since >= hold_after
        out[w.run_id] = Decision(False, _why(w, quotas), position, holds)
        if holds:
            quotas.take(w.needs[0])  # what frees up in its first region goes to it first
    return out


def _first_fit(w: Waiting, quotas: Quotas | None) -> Need | None:
    if quotas is None or not w.needs:
        return {}
    for need in w.needs:
        if not quotas.short(need):
            return need
    return None


def _why(w: Waiting, quotas: Quotas, limits: bool = False) -> str:
    """"waiting for 1 × PREEMPTIBLE_NVIDIA_L4_GPUS in us-central1: 8 of 8 in use" (its first
    region); with ``limits``, what one attempt needs against each whole limit."""
    short = quotas.short(w.needs[0])
    if limits:
        return "; ".join(f"one attempt needs {amount:g} × {pool.key.split('/', 1)[1]} "
                         f"({pool.key.split('/', 1)[0]}) but the limit is {pool.limit:g}"
                         for pool, amount in short if amount > pool.limit)
    parts = [f"{amount:g} × {pool.describe()}" for pool, amount in short]
    return "waiting for " + "; ".join(parts) if parts else "waiting for quota"
