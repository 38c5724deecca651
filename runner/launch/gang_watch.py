"""Judging a gang's generation: which of its nodes are lost.

A generation runs only while every node does; any node lost (preempted, deleted, vanished,
crashed before reporting) ends the whole generation, and the next one is created whole
(``Supervisor._restart``). One exception: a node other than rank 0 whose job ended on its own
(its heartbeat says ``exited`` in this attempt) is not lost. Its job finished its share, or failed
and took rank 0's job with it; rank 0's agent records the run's outcome either way
(``entrypoint.gang``), and a rank 0 left hanging is the stall watchdog's to find. On GCE a VM
deletes itself when its container exits, so "not listed" alone cannot tell a finished node from a
lost one: the node's own heartbeat does.
"""

from __future__ import annotations

from entrypoint import gang
from entrypoint.record import DamagedRecord, RunRecord
from entrypoint.store import StoreError
from runner.launch.backends.base import Attempt


def lost_nodes(rec: RunRecord, nodes: int, att: Attempt) -> list[str]:
    """The lost nodes of ``att`` (a generation of ``nodes``), one phrase each; [] while it runs."""
    by_rank = {i.rank: i for i in att.instances}
    lost = []
    for rank in range(nodes):
        inst = by_rank.get(rank)
        if inst is not None and (inst.alive or inst.going_away):
            continue
        if rank > 0 and _exited_on_its_own(rec, rank, att.number):
            continue
        how = "gone" if inst is None else (f"exited with {inst.exit_code}" if inst.exit_code is not None
                                           else inst.status.value.lower())
        lost.append(f"node {rank} {how}")
    return lost


def _exited_on_its_own(rec: RunRecord, rank: int, attempt: int) -> bool:
    try:
        hb = rec.read_heartbeat(rank)
    except (StoreError, DamagedRecord):
        return False  # unreadable: judged by what the backend lists
    return hb is not None and hb.attempt == attempt and hb.phase == gang.EXITED
