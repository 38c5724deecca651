"""Exit codes of the agent that tell the supervisor something the store could not.

The container's exit code is normally the job's. It matters to the supervisor only when an
attempt ended while its state still says it is live (no outcome in ``state.json``); then one
code says more than "lost": ``OUTCOME_UNRECORDED``.
"""

from __future__ import annotations

# The attempt ended and its agent knew the outcome (the job's exit, a restore that cannot fit),
# but the store refused to take it (full, read-only, quota): not a preemption, and restarting
# would redo work whose result may already be there. 74 is sysexits' EX_IOERR.
OUTCOME_UNRECORDED = 74
