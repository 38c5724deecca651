"""Sharded checkpoints of a gang: every rank stores its shard, a step counts once all are stored.

Data-parallel jobs keep the same weights on every rank, so rank 0's ``last.pt`` is the checkpoint.
Sharded jobs (FSDP, ZeRO, tensor parallel) keep a different part on each rank: a step can only be
resumed when *every* rank's shard of it is in the store, and a preemption can land between the
first shard's upload and the last one's. So:

- the job writes its rank's shard of step N with ``entrypoint.job.ShardedCheckpoint`` to
  ``shards/step-<N>/rank-<R>-of-<W>`` in its checkpoint directory (atomically, as ``Checkpoint``);
- each node's agent uploads its own ranks' shards (they have distinct names, so nodes never write
  the same object); rank 0's agent also uploads the rest of its checkpoint directory;
- after each of its upload passes, rank 0's agent writes ``shards/step-<N>/COMMITTED`` for every
  step whose W shards are all stored (``commit``), and removes the shards of steps older than the
  newest ``KEEP`` committed ones;
- a resume restores the store's checkpoints on every node, and ``ShardedCheckpoint.load`` takes
  the newest step that has its ``COMMITTED`` marker: never a step with a shard missing.

Standard library only: this module ships in every workload image, beside ``entrypoint.job``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field

from entrypoint.store import Store, StoreError

log = logging.getLogger("entrypoint")

SHARDS_DIR = "shards"
COMMITTED = "COMMITTED"
KEEP = 2  # committed steps kept in the store: a node still restoring the older one finds it there

_NAME = re.compile(r"^shards/step-(\d{12})/(?:rank-(\d{5})-of-(\d{5})|(COMMITTED))$")


def step_dir(step: int) -> str:
    """``shards/step-000000000042``: sorts by step as text, for people listing the bucket."""
    if step < 0:
        raise ValueError(f"step must be >= 0, not {step}")
    return f"{SHARDS_DIR}/step-{step:012d}"


def shard_file(rank: int, world: int) -> str:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    return f"rank-{rank:05d}-of-{world:05d}"


@dataclass
class _Step:
    ranks: set[int] = field(default_factory=set)
    worlds: set[int] = field(default_factory=set)
    names: list[str] = field(default_factory=list)
    committed: bool = False

    @property
    def complete(self) -> bool:
        """Every rank's shard is stored (and every shard says the same world size)."""
        return len(self.worlds) == 1 and self.ranks == set(range(next(iter(self.worlds))))


def commit(store: Store, prefix: str) -> list[int]:
    """Mark each step whose shards are all under ``prefix`` (``runs/ID/checkpoints/``) as committed,
    then remove the shards of steps older than the newest ``KEEP`` committed ones. Returns the steps
    committed now. One listing per call; cheap when the job writes no shards."""
    steps: dict[int, _Step] = {}
    for name in store.list(prefix + SHARDS_DIR + "/"):
        m = _NAME.match(name[len(prefix):])
        if not m:
            continue
        s = steps.setdefault(int(m.group(1)), _Step())
        s.names.append(name)
        if m.group(4):
            s.committed = True
        else:
            s.ranks.add(int(m.group(2)))
            s.worlds.add(int(m.group(3)))
    now = []
    for step, s in sorted(steps.items()):
        if s.complete and not s.committed:
            doc = {"step": step, "world": next(iter(s.worlds)), "committed_at": time.time()}
            store.write(f"{prefix}{step_dir(step)}/{COMMITTED}", json.dumps(doc).encode())
            s.committed = True
            now.append(step)
    kept = sorted((step for step, s in steps.items() if s.committed), reverse=True)[:KEEP]
    if len(kept) == KEEP:
        for step, s in steps.items():
            if step < kept[-1]:
                for name in s.names:
                    try:
                        store.delete(name)
                    except StoreError as e:  # the next pass tries again
                        log.warning("removing old shard %s: %s", name, e)
    return now
