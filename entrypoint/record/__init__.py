"""The run record: the one contract the control plane and the in-container agent both speak.

Everything about a run lives under ``runs/<RUN_ID>/`` in the store (a GCS bucket or a local
directory). This package owns the object names (``paths``), the JSON documents with their
``schema_version`` (``documents``), the state machine and who may move it (``states``), the
attempts' phase names (``phases``), the agent's exit codes the supervisor reads
(``exit_codes``), the one typed read of a run (``view``), the one error for an object that
cannot be read (``damaged``) and the record itself with its write rules (``run``). Both
``runner/`` and ``entrypoint/`` import it, and it depends on
nothing but the standard library and the store interface, so the agent can carry it into any
image. Import names from here (``from entrypoint.record import RunRecord``).
"""

from entrypoint.record.damaged import DamagedRecord
from entrypoint.record.documents import (
    SCHEMA_VERSION, AttemptSettings, Heartbeat, RunSpec, RunState, iso, utcnow,
)
from entrypoint.record.exit_codes import OUTCOME_UNRECORDED
from entrypoint.record.paths import (
    RUNS,
    STORE_SUPERVISOR_HEARTBEAT,
    EventName,
    RunPaths,
    event_id,
    parse_event_name,
    run_prefix,
)
from entrypoint.record.run import (
    ABANDONED_SPEC_AFTER,
    RunRecord,
    StopInProgress,
    TransitionLost,
    list_run_ids,
)
from entrypoint.record.states import (
    LEGACY_STATES,
    LIVE,
    MOVES,
    TERMINAL,
    IllegalTransition,
    Move,
    Role,
    State,
    check_move,
    check_transition,
)
from entrypoint.record.view import ALL_EVENTS, RunView
from entrypoint.store import PreconditionFailed, StoreError

__all__ = [
    "ABANDONED_SPEC_AFTER", "ALL_EVENTS", "AttemptSettings", "DamagedRecord", "LEGACY_STATES", "LIVE", "MOVES",
    "OUTCOME_UNRECORDED", "RUNS", "SCHEMA_VERSION",
    "STORE_SUPERVISOR_HEARTBEAT", "TERMINAL", "EventName", "Heartbeat", "IllegalTransition", "Move",
    "PreconditionFailed", "Role", "RunPaths", "RunRecord", "RunSpec", "RunState", "RunView", "State",
    "StopInProgress", "StoreError", "TransitionLost", "check_move", "check_transition", "event_id", "iso",
    "list_run_ids", "parse_event_name", "run_prefix", "utcnow",
]
