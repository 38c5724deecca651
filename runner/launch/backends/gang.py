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
- ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, ``PET_RDZV_ID``:
  torchrun reads each of its options from ``PET_<OPTION>`` when the option is not given
  (torch/distributed/argparse_util.py), so a plain ``torchrun --nproc-per-node 1 -m train`` joins
  its generation with no rendezvous arguments at all.

The builder lives with the agent (``entrypoint.gang``): on GCE, where every VM of a bulkInsert has
the same metadata, the agent completes the environment itself once it knows rank 0's address.

``WORLD_SIZE`` is not set: torchrun computes it for its workers as nodes x processes per node,
and a ``WORLD_SIZE`` of N nodes given to the launcher would be wrong for any job running more than
one process per node.
"""

from __future__ import annotations

from entrypoint.gang import DEFAULT_MASTER_PORT, ENV_NNODES, ENV_RANK, node_env, rendezvous_id

__all__ = ["DEFAULT_MASTER_PORT", "ENV_NNODES", "ENV_RANK", "node_env", "rendezvous_id"]
