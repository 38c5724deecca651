"""The agent's part in a gang: which node it is, where rank 0 is, and whether a peer was lost.

A gang's attempt is a generation of N nodes, each running this agent beside its share of the job.
Only rank 0's agent records the run's state, writes the run's heartbeat (the one the stall
watchdog judges) and publishes checkpoints (data-parallel jobs keep the same weights on every
rank); every other node writes its own heartbeat under ``nodes/<rank>/``, so ``ops status`` can
show each node and rank 0 can tell what happened to a peer.

Why rank 0 must ask: when one node of a collective job dies, the others' jobs fail too (gloo and
NCCL raise on a lost peer). Rank 0's job then exits non-zero, and recording that as the job's own
failure would end a run that a preemption interrupted. So before it records a failure, rank 0
looks at its peers' heartbeats: a peer in its preemption notice, or silent, was *lost* (the
generation ends as PREEMPTED and the whole gang restarts); a peer whose job exited non-zero on its
own *failed* (the run's failure, with that node named).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from entrypoint.record import Heartbeat, RunRecord
from entrypoint.store import StoreError

log = logging.getLogger("entrypoint")

# Phases a node's heartbeat may carry besides the agent's usual ones.
TERMINATING = "terminating"  # received SIGTERM (the preemption notice, or a delete)
EXITED = "exited"  # its job ended on its own; ``exit_code`` says how

ENV_RANK = "RUNNER_NODE_RANK"
ENV_NNODES = "RUNNER_NNODES"
ENV_MASTER_ADDR = "RUNNER_MASTER_ADDR"
ENV_MASTER_PORT = "RUNNER_MASTER_PORT"
DEFAULT_MASTER_PORT = 29500  # torchrun's default --master-port


def rendezvous_id(run_id: str, attempt: int) -> str:
    """The rendezvous id of one generation: carries the attempt, so an older one cannot join."""
    return f"{run_id}-a{attempt}"


def node_env(run_id: str, attempt: int, rank: int, nnodes: int, master_addr: str,
             master_port: int = DEFAULT_MASTER_PORT) -> dict[str, str]:
    """The environment of node ``rank`` of a generation of ``nnodes`` (runner/launch/backends/gang.py
    says what each name is for): the runner's names, torchrun's ``MASTER_*``/``NODE_RANK``, and
    torchrun's own options as ``PET_*``."""
    if not 0 <= rank < nnodes:
        raise ValueError(f"rank {rank} is outside a gang of {nnodes} node(s)")
    if not master_addr:
        raise ValueError("master_addr is empty: a gang needs rank 0's address")
    rdzv = rendezvous_id(run_id, attempt)
    return {
        ENV_RANK: str(rank),
        ENV_NNODES: str(nnodes),
        ENV_MASTER_ADDR: master_addr,
        ENV_MASTER_PORT: str(master_port),
        "RUNNER_RDZV_ID": rdzv,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "NODE_RANK": str(rank),
        "PET_NNODES": str(nnodes),
        "PET_NODE_RANK": str(rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
        "PET_RDZV_ID": rdzv,
    }


@dataclass(frozen=True)
class Node:
    """This agent's place in its attempt: rank 0 of 1 for every single-instance run."""

    rank: int = 0
    nnodes: int = 1

    @property
    def in_gang(self) -> bool:
        return self.nnodes > 1

    @property
    def records_the_run(self) -> bool:
        """Rank 0 writes the run's state, heartbeat, manifest and checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Node":
        try:
            rank, nnodes = int(env.get(ENV_RANK) or 0), int(env.get(ENV_NNODES) or 1)
        except ValueError:
            raise SystemExit(f"entrypoint: {ENV_RANK}={env.get(ENV_RANK)!r} / {ENV_NNODES}={env.get(ENV_NNODES)!r} "
                             "are not whole numbers; the backend sets them (run gangs with `runner submit --nodes N`)")
        if not 0 <= rank < nnodes:
            raise SystemExit(f"entrypoint: {ENV_RANK}={rank} is outside a gang of {ENV_NNODES}={nnodes}")
        return cls(rank, nnodes)


def master_addr(record: RunRecord, attempt: int, env: Mapping[str, str], timeout: float,
                sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time) -> str | None:
    """Rank 0's address: the backend's ``RUNNER_MASTER_ADDR`` when it could set one (the local
    backend: rank 0's container name), else what the attempt's create claim records for rank 0
    once its creator has read it back (GCE: rank 0's internal IP; every VM of one bulkInsert has
    the same metadata, so it cannot be told). None when nothing says it within ``timeout``."""
    given = env.get(ENV_MASTER_ADDR)
    if given:
        return given
    deadline = now() + timeout
    while True:
        try:
            claim = record.read_claim(attempt)
        except StoreError as e:
            log.warning("reading attempt %d's create claim for rank 0's address: %s", attempt, e)
            claim = None
        for inst in (claim.instances if claim is not None else ()):
            if inst.get("rank") == 0 and inst.get("address"):
                return str(inst["address"])
        if now() >= deadline:
            return None
        sleep(1.0)


@dataclass(frozen=True)
class PeerVerdict:
    """What happened to a gang's other nodes when rank 0's job failed."""

    lost: str | None = None  # why a peer counts as lost (preempted, deleted, silent): the gang restarts
    failed: str | None = None  # a peer whose job exited non-zero on its own: the run's failure


def judge_peers(record: RunRecord, node: Node, attempt: int, stale_after: float, wait: float,
                sleep: Callable[[float], None] = time.sleep, now: Callable[[], float] = time.time) -> PeerVerdict:
    """Look at the other nodes of ``attempt`` after rank 0's job failed.

    A peer that is still fine may be only a moment from its own news (its SIGTERM reached rank 0's
    job through a dropped connection before its agent wrote "terminating"), so a verdict of "all
    fine" is given only after ``wait`` seconds of looking.
    """
    deadline = now() + wait
    while True:
        verdict = _look(record, node, attempt, stale_after, now())
        if verdict.lost or verdict.failed or now() >= deadline:
            return verdict
        sleep(0.5)


def _look(record: RunRecord, node: Node, attempt: int, stale_after: float, at: float) -> PeerVerdict:
    failed = None
    for rank in range(1, node.nnodes):
        try:
            hb: Heartbeat | None = record.read_heartbeat(rank)
        except Exception as e:  # noqa: BLE001 - unreadable is as good as silent
            log.warning("reading node %d's heartbeat: %s", rank, e)
            hb = None
        if hb is None or hb.attempt != attempt:
            return PeerVerdict(lost=f"node {rank} never reported in attempt {attempt} (lost before its job started)")
        if hb.phase == TERMINATING:
            return PeerVerdict(lost=f"node {rank} received SIGTERM (preempted or deleted)")
        if hb.phase == EXITED:
            if hb.exit_code not in (0, None) and failed is None:
                failed = f"node {rank}'s job exited with code {hb.exit_code}"
            continue
        if at - hb.time > stale_after:
            return PeerVerdict(lost=f"node {rank} sent no heartbeat for {at - hb.time:.0f}s (lost)")
    return PeerVerdict(failed=failed)
