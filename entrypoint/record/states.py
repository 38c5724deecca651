"""The run's state machine: states, who may make which move, and the refusal when they may not.

Two tables guard every write. ``_ALLOWED`` is the state graph (which state may follow which);
``MOVES`` names each move, the states it leaves from and the roles allowed to make it, so that a
supervisor cannot claim a job started and an agent cannot begin an attempt. ``RunRecord``'s named
transitions check both before their compare-and-swap write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(str, enum.Enum):
    PENDING = "PENDING"
    # Waiting for the project's quota, or its sweep's --max-concurrent, before the next attempt
    # (runner.launch.admission). ``RunState.queued_after`` keeps what it waits after (PENDING, or
    # the lost attempt's PREEMPTED/STALLED/ERRORED), so the restart is counted once, on begin.
    QUEUED = "QUEUED"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    STALLED = "STALLED"
    ERRORED = "ERRORED"  # the job exited non-zero and --retry-on-failure allows another try
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @classmethod
    def _missing_(cls, value: object) -> "State | None":
        # Records written by older versions may name states that are gone: read them as the
        # state that replaced them, so old state.json and journals still load.
        return LEGACY_STATES.get(value) if isinstance(value, str) else None

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def needs_restart(self) -> bool:
        """A state after which the supervisor brings up a new attempt (unless stopped)."""
        return self in (State.PREEMPTED, State.STALLED, State.ERRORED)


# BOOTING was in the design but never written by any actor; a record that says it anyway (by
# hand, or by a fork) is a run whose attempt is being brought up, which is PROVISIONING.
LEGACY_STATES: dict[str, State] = {"BOOTING": State.PROVISIONING}

TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.STOPPED})
LIVE = frozenset(State) - TERMINAL

# The state graph. Anything else is refused, so a late writer (an agent that wakes after its VM
# was replaced, say) cannot drag a run backwards.
_ALLOWED: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.PROVISIONING, State.QUEUED}),
    State.QUEUED: frozenset({State.PROVISIONING}),
    State.PROVISIONING: frozenset({State.RUNNING, State.PREEMPTED, State.STALLED}),
    State.RUNNING: frozenset({State.PREEMPTED, State.STALLED, State.ERRORED}),
    State.PREEMPTED: frozenset({State.PROVISIONING, State.QUEUED}),
    State.STALLED: frozenset({State.PROVISIONING, State.QUEUED}),
    State.ERRORED: frozenset({State.PROVISIONING, State.QUEUED}),
}
# Any live state may end: success, failure or an explicit stop.
for _s in list(_ALLOWED):
    _ALLOWED[_s] = _ALLOWED[_s] | TERMINAL


class Role(str, enum.Enum):
    """Who is writing, by the part it plays (the actor *name* in the journal says which one)."""

    SUBMIT = "submit"  # runner submit: creates and reopens runs
    SUPERVISOR = "supervisor"  # the reconcile loop, local or hosted
    AGENT = "agent"  # the in-container entrypoint of one attempt
    OPS = "ops"  # runner ops commands a person runs (delete)


@dataclass(frozen=True)
class Move:
    """One named transition: where it goes, where it may start, and who may make it."""

    to: State
    sources: frozenset[State]
    roles: frozenset[Role]


_RESTARTABLE = frozenset({State.PENDING, State.PREEMPTED, State.STALLED, State.ERRORED})
_WAITING = _RESTARTABLE | {State.QUEUED}
_BOOTING_OR_RUNNING = frozenset({State.PROVISIONING, State.RUNNING})

# The table of who may do what. Each entry is one method of ``RunRecord`` of the same name.
MOVES: dict[str, Move] = {
    # A supervisor brings up the first attempt, or the next one after a lost attempt.
    "begin_attempt": Move(State.PROVISIONING, _WAITING, frozenset({Role.SUPERVISOR})),
    # A supervisor whose admission found no room (quota, the sweep's cap) for the next attempt.
    "queued": Move(State.QUEUED, _RESTARTABLE, frozenset({Role.SUPERVISOR})),
    # Only the agent knows its job started.
    "job_started": Move(State.RUNNING, frozenset({State.PROVISIONING}), frozenset({Role.AGENT})),
    # The agent on its SIGTERM; the supervisor when the instance is gone without an outcome.
    "preempted": Move(State.PREEMPTED, _BOOTING_OR_RUNNING, frozenset({Role.AGENT, Role.SUPERVISOR})),
    # Only the supervisor watches progress from outside.
    "stalled": Move(State.STALLED, _BOOTING_OR_RUNNING, frozenset({Role.SUPERVISOR})),
    # Only the agent sees the job's exit code.
    "errored": Move(State.ERRORED, frozenset({State.RUNNING}), frozenset({Role.AGENT})),
    "succeeded": Move(State.SUCCEEDED, LIVE, frozenset({Role.AGENT})),
    # The agent (the job failed) or the supervisor (gave up, startup failed, permanent error).
    "failed": Move(State.FAILED, LIVE, frozenset({Role.AGENT, Role.SUPERVISOR})),
    "stopped": Move(State.STOPPED, LIVE, frozenset({Role.AGENT, Role.SUPERVISOR, Role.OPS})),
    # The one way out of a terminal state: the user's ``submit --restart``.
    "reopen": Move(State.PENDING, frozenset(State), frozenset({Role.SUBMIT})),
}


class IllegalTransition(Exception):
    """A write that the state machine forbids (for example, anything after a terminal state).

    ``current``/``new``/``holder``, when known, say what the run was, what the write wanted and
    who wrote the state that refused it, so a refusal can be reported rather than swallowed.
    """

    def __init__(self, message: str, *, current: State | None = None, new: State | None = None,
                 holder: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.new = new
        self.holder = holder


def check_transition(current: State, new: State) -> None:
    if current.terminal:
        raise IllegalTransition(f"run is {current.value}; terminal states are never overwritten",
                                current=current, new=new)
    if new not in _ALLOWED[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not a legal transition",
                                current=current, new=new)


def check_move(move: str, role: Role, current: State) -> Move:
    """The ``Move`` named ``move`` if ``role`` may make it from ``current``; else IllegalTransition."""
    m = MOVES[move]
    if role not in m.roles:
        raise IllegalTransition(
            f"{role.value} may not make {move} (only {', '.join(sorted(r.value for r in m.roles))})",
            current=current, new=m.to)
    if current not in m.sources:
        raise IllegalTransition(f"{move} cannot start from {current.value}", current=current, new=m.to)
    return m
