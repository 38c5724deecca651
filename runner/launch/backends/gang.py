"""What every node of a gang is told, whichever backend runs it.

A gang's attempt is a *generation* of N nodes: created all or
nothing, judged together, restarted together. Each node's job gets its place in the generation in
the environment, under the runner's names and torchrun's:

- ``RUNNER_NODE_RANK`` / ``NODE_RANK``: 0..N-1; rank 0 is the node whose agent records the run's
  state and (for data-parallel jobs) publishes its checkpoints.
- ``RUNNER_NNODES``: N.
- ``RUNNER_MASTER_ADDR`` / ``MASTER_ADDR``, ``RUNNER_MASTER_PORT`` / ``MASTER_PORT``: rank 0's
  address on the gang's private network, and the rendezvous port (torchrun's default, 29500).
- ``RUNNER_RDZV_ID``: the rendezvous id of this generation (run id + attempt), so a straggler of an
  older generation can never join a newer one (``torchrun --rdzv-id``).

``WORLD_SIZE`` is not set: torchrun computes it for its workers as nodes x processes per node,
and a ``WORLD_SIZE`` of N nodes given to the launcher would be wrong for any job running more than
one process per node.
"""

from __future__ import annotations

DEFAULT_MASTER_PORT = 29500  # torchrun's default --master-port

ENV_RANK = "RUNNER_NODE_RANK"
ENV_NNODES = "RUNNER_NNODES"


def rendezvous_id(run_id: str, attempt: int) -> str:
    """The rendezvous id of one generation: carries the attempt, so an older one cannot join."""
    return f"{run_id}-a{attempt}"


def node_env(run_id: str, attempt: int, rank: int, nnodes: int, master_addr: str,
             master_port: int = DEFAULT_MASTER_PORT) -> dict[str, str]:
    """The environment of node ``rank`` of a generation of ``nnodes``."""
    if not 0 <= rank < nnodes:
        raise ValueError(f"rank {rank} is outside a gang of {nnodes} node(s)")
    if not master_addr:
        raise ValueError("master_addr is empty: a gang needs rank 0's address")
    return {
        ENV_RANK: str(rank),
        ENV_NNODES: str(nnodes),
        "RUNNER_MASTER_ADDR": master_addr,
        "RUNNER_MASTER_PORT": str(master_port),
        "RUNNER_RDZV_ID": rendezvous_id(run_id, attempt),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "NODE_RANK": str(rank),
    }
