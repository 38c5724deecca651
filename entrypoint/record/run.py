"""``RunRecord``: one run's objects in the store, with the write rules of the contract.

The compare-and-swap primitive (``transition``), the named transitions each actor makes
(``begin_attempt``, ``job_started``, ``preempted``...: see ``states.MOVES`` for who may make
which), the journal, the attempts' phase marks, and ``view``, the one typed read of a run.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import OrderedDict
from dataclasses import asdict
from typing import Any, Iterator, Sequence

from entrypoint.record.create_claim import DEFAULT_LEASE_S, CreateClaim, CreateClaims
from entrypoint.record.damaged import DamagedRecord, check_fields, load_object, parse
from entrypoint.record.documents import (
    SCHEMA_VERSION,
    Heartbeat,
    RunSpec,
    RunState,
    dump as _dump,
    utcnow,
)
from entrypoint.record import history as _history
from entrypoint.record.paths import RUNS, RunPaths, event_file as _event_file, run_id_of_prefix, run_prefix
from entrypoint.record.phases import valid_phase
from entrypoint.record.states import MOVES, IllegalTransition, Role, State, check_move, check_transition
from entrypoint.record.view import ALL_EVENTS, RunView
from entrypoint.store import PreconditionFailed, Store, StoreError

# Event names this process knows are stored: ``ensure_journaled`` then costs no request.
_JOURNALED: "OrderedDict[str, None]" = OrderedDict()
_JOURNALED_MAX = 4096


def _remember_journaled(name: str) -> None:
    _JOURNALED[name] = None
    _JOURNALED.move_to_end(name)
    while len(_JOURNALED) > _JOURNALED_MAX:
        _JOURNALED.popitem(last=False)


# A submit writes spec.json and then state.json within a second; a spec.json alone for this long
# belongs to a submit that died, and a new submit may replace it.
ABANDONED_SPEC_AFTER = 600.0


class TransitionLost(PreconditionFailed):
    """A transition's compare-and-swap lost: someone wrote ``state.json`` after the caller read it
    (or the caller's own write landed and only its reply was lost). Says what was attempted."""

    def __init__(self, run_id: str, actor: str, current: State, new: State) -> None:
        super().__init__(f"run {run_id}: {actor}'s {current.value} -> {new.value} lost: "
                         "state.json changed since it was read")
        self.run_id = run_id
        self.actor = actor
        self.current = current
        self.new = new


class StopInProgress(IllegalTransition):
    """A restart asked while a delete is still stopping the run (``.stop`` in progress)."""

    def __init__(self, run_id: str, stop: dict[str, Any]) -> None:
        left = max(0.0, float(stop.get("in_progress_until") or 0) - utcnow())
        super().__init__(
            f"run {run_id} is being deleted by {stop.get('actor', '?')} (its job has up to "
            f"{left:.0f}s more to exit); restart it once the delete has finished: "
            f"`runner ops status --run-id {run_id}` shows STOPPED and no instance",
        )
        self.stop = stop


class RunRecord(RunPaths):
    """One run's objects in the store, with the write rules of the contract.

    Guarantees: ``transition`` is compare-and-swap on ``state.json`` (two actors racing on the
    same run: exactly one wins, the other gets ``TransitionLost`` (a ``PreconditionFailed``) or
    ``IllegalTransition``); actors move the run through the named transitions built on it
    (``begin_attempt``, ``job_started``, ``preempted``, ``stalled``, ``errored``, ``succeeded``,
    ``failed``, ``stopped``, ``reopen``), each refused to a role ``states.MOVES`` does not name;
    events and phase marks are create-only and never rewritten; missing objects read as ``None``.

    The journal holds every transition exactly once, even when a writer dies between writing
    the state and its event: the state carries its own event (``last_event``), every
    transition first makes sure the event of the state it replaces is stored, ``events()``
    shows a missing latest one from the state, and ``ensure_journaled`` stores it (the
    supervisor calls it each pass, for terminal states that no one transitions again).
    """

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.prefix = run_prefix(run_id)

    # ---- object names: relative ones are ``RunPaths``'s, this makes them whole ----
    def name(self, rel: str) -> str:
        return self.prefix + rel

    # ---- spec ----
    def read_spec(self) -> RunSpec | None:
        """The spec, None if there is none; ``DamagedRecord`` if it cannot be read."""
        blob = self.store.read(self.name(self.SPEC))
        return None if blob is None else parse(self.name(self.SPEC), blob.data, RunSpec.from_dict)

    def write_spec(self, spec: RunSpec) -> None:
        """Create-only: two submits racing on a new run id cannot mix one's spec with the other's state.

        A spec.json without a state.json is a submit that has not finished: the same submit
        run again completes it (an equal spec is adopted), and one that died long ago
        (``ABANDONED_SPEC_AFTER``) no longer holds the run id. Anything else is
        ``PreconditionFailed`` with what to do.
        """
        doc = asdict(spec)
        try:
            self.store.write(self.name(self.SPEC), _dump(doc), if_generation_match=0)
            return
        except PreconditionFailed:
            blob = self.store.read(self.name(self.SPEC))
            if blob is None or self.read_state() is not None:
                # Its state exists: another submit created the run after this one found none.
                # The run is live, so --restart (for ended runs) is not the fix.
                raise PreconditionFailed(
                    f"run {self.run_id} already has a spec.json and a state: another submit created "
                    "it after this one found none; submit it again to follow it, or choose another --run-id"
                ) from None
        theirs = json.loads(blob.data)
        if _same_spec(theirs, doc):
            return  # the same submit, again, after it died or lost its reply: carry on
        age = utcnow() - float(theirs.get("created_at") or 0)
        if age > ABANDONED_SPEC_AFTER:
            self.store.write(self.name(self.SPEC), _dump(doc), if_generation_match=blob.generation)
            return
        raise PreconditionFailed(
            f"run {self.run_id}: another submit wrote its spec.json {age:.0f}s ago with a different "
            "command or settings and has not created the run yet; choose another --run-id, or "
            f"submit again after {ABANDONED_SPEC_AFTER:.0f}s if that submit died"
        )

    # ---- state ----
    def read_state(self) -> tuple[RunState, int] | None:
        """The current state and the generation to pass back to ``transition``; None if there is
        none; ``DamagedRecord`` (naming the object and what is wrong) if it cannot be read."""
        blob = self.store.read(self.name(self.STATE))
        if blob is None:
            return None
        return parse(self.name(self.STATE), blob.data, RunState.from_dict), blob.generation

    def create_state(self, actor: str) -> RunState:
        st = RunState(state=State.PENDING, updated_by=actor)
        st.last_event = self._event_for(st, actor, None, "submitted", attempt=None)
        st.history = _history.begin(st.last_event)
        self.store.write_listed(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=0)
        self._journal(st.last_event)
        return st

    def transition(
        self,
        new: State,
        actor: str,
        *,
        expect_attempt: int | None = None,
        expected: tuple[RunState, int] | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> tuple[RunState, int]:
        """Move the run to ``new`` with a compare-and-swap write, and journal it.

        ``expected`` is the (state, generation) the caller based its decision on: the write
        succeeds only if nobody wrote since, so a decision made on a stale read never lands.
        Without it the state is re-read here. ``expect_attempt`` guards against a writer from an
        older attempt: an agent of attempt 1 that wakes after attempt 2 began gets
        ``IllegalTransition``, never overwrites.
        Raises ``TransitionLost`` (a ``PreconditionFailed``) if someone else wrote in between;
        callers re-read and decide. This is the one primitive under the named transitions below,
        which also check who may make the move; actors call those, not this.
        Returns the new state and its generation, ready to be the next ``expected``.
        """
        cur = expected if expected is not None else self.read_state()
        if cur is None:
            raise IllegalTransition(f"run {self.run_id} has no state.json; submit it first", new=new)
        st, gen = RunState.from_dict(cur[0].to_dict()), cur[1]
        if expect_attempt is not None and st.attempt != expect_attempt:
            raise IllegalTransition(
                f"state belongs to attempt {st.attempt}, writer is attempt {expect_attempt}",
                current=st.state, new=new, holder=st.updated_by,
            )
        try:
            check_transition(st.state, new)
        except IllegalTransition as e:
            e.holder = st.updated_by
            raise
        # The state we replace must be in the journal before it is gone from state.json.
        self.ensure_journaled(st)
        old = st.state
        st.state = new
        st.reason = reason
        st.updated_by = actor
        for k, v in changes.items():
            setattr(st, k, v)
        st.last_event = self._event_for(st, actor, old, reason)
        st.history = self._fold_history(cur[0], st)
        try:
            new_gen = self.store.write_listed(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        except TransitionLost:
            raise
        except PreconditionFailed:
            raise TransitionLost(self.run_id, actor, old, new) from None
        self._journal(st.last_event)
        return st, new_gen

    def reopen(self, actor: str, reason: str, role: Role = Role.SUBMIT) -> RunState:
        """The one way out of a terminal state: an explicit user ``submit --restart``.

        Refused (``StopInProgress``) while a delete is still stopping the run: undoing it half-way
        would let the next attempt start beside a job still in its grace period.

        Who: submit only (``IllegalTransition`` for any other role). Keeps the attempt counter
        (so instance names never repeat), gives both budgets back (restarts, failures), clears
        ``.stop`` and journals who did it. Not a compare-and-swap on purpose: the user's restart
        wins over whatever wrote last. Raises ``PreconditionFailed`` only if a writer slipped in
        between its read and write.
        """
        check_move("reopen", role, State.PENDING)
        busy = self.stop_in_progress()
        if busy is not None:
            raise StopInProgress(self.run_id, busy)
        # .stop goes first, while the run is still terminal: a supervisor that saw PENDING and
        # .stop together would end the run again.
        self.store.delete(self.name(self.STOP))
        cur = self.read_state()
        if cur is None:
            raise IllegalTransition(f"run {self.run_id} has no state.json")
        st, gen = cur
        # The next attempt's timeline starts with this restart: a mark left for it by the life
        # that ended (a loss noticed just before the run gave up or was stopped) would time
        # "the recovery" from hours ago. Nobody else writes it while the run is terminal.
        for name in self.store.list(self.name(self.phases_dir(st.attempt + 1))):
            self.store.delete(name)
        before = RunState.from_dict(st.to_dict())
        self.ensure_journaled(st)
        old = st.state
        st.state = State.PENDING
        st.reason = reason
        st.exit_code = None
        st.failures = 0
        st.restarts = 0
        st.updated_by = actor
        st.last_event = self._event_for(st, actor, old, reason)
        st.history = self._fold_history(before, st)
        self.store.write_listed(self.name(self.STATE), _dump(st.to_dict()), if_generation_match=gen)
        self._journal(st.last_event)
        return st

    def _fold_history(self, before: RunState, after: RunState) -> dict[str, Any] | None:
        """``after``'s running summary: ``before``'s with ``after``'s event folded in (see
        ``entrypoint.record.history``); None, for good, once a writer that did not fold broke it.

        A damaged manifest or claim of the attempt being closed must never block the transition
        (the run would be stuck): the summary is dropped instead, and readers read the run in
        full from then on. A store failure is raised: the transition could not be trusted to
        land either, and its caller retries it as any failed write.
        """
        try:
            return _history.fold(before, after, self.store, self.prefix, self.read_manifest, self.read_claim)
        except StoreError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            print(f"runner: {self.run_id}: running summary dropped ({type(e).__name__}: {e}); "
                  "ops status reads this run's whole history from now on", file=sys.stderr)
            return None

    # ---- named transitions: who may make which move is ``states.MOVES`` ----
    def _move(self, move: str, role: Role, actor: str, cur: tuple[RunState, int] | None, *,
              expect_attempt: int | None = None, reason: str | None = None,
              **changes: Any) -> tuple[RunState, int]:
        """Check that ``role`` may make ``move`` from the state in ``cur``, then ``transition``."""
        if cur is None:
            raise IllegalTransition(f"run {self.run_id} has no state.json; submit it first",
                                    new=MOVES[move].to)
        if expect_attempt is None or cur[0].attempt == expect_attempt:
            # (an older attempt's writer is refused by ``transition``, with that reason)
            try:
                check_move(move, role, cur[0].state)
            except IllegalTransition as e:
                e.holder = cur[0].updated_by
                raise
        return self.transition(MOVES[move].to, actor, expected=cur, expect_attempt=expect_attempt,
                               reason=reason, **changes)

    def begin_attempt(self, role: Role, actor: str, *, expected: tuple[RunState, int] | None = None,
                      reason: str | None = None,
                      instances: Sequence[str | dict[str, Any]] = ()) -> tuple[RunState, int]:
        """PENDING/PREEMPTED/STALLED/ERRORED -> PROVISIONING: the next attempt begins.

        Who: the supervisor. Sets ``attempt`` to the next number, the attempt's ``instances``
        (names, or {"name", "zone", "rank"}; ``instance`` mirrors the first; ``zone`` stays the
        last known until the agent reports the new one), clears ``exit_code``, and spends one
        restart when the attempt before was lost (PREEMPTED, STALLED; a retried job failure
        spent a failure instead, see ``errored``).
        Raises ``IllegalTransition`` (another role, another state) or ``TransitionLost``.
        """
        cur = expected if expected is not None else self.read_state()
        changes: dict[str, Any] = {}
        if cur is not None:
            st = cur[0]
            insts = [dict(i) if isinstance(i, dict) else {"name": i, "zone": None, "rank": n}
                     for n, i in enumerate(instances)]
            lost = st.state in (State.PREEMPTED, State.STALLED) or (
                st.state == State.QUEUED and st.queued_after in (State.PREEMPTED.value, State.STALLED.value))
            changes = dict(attempt=st.attempt + 1, instances=insts,
                           instance=insts[0]["name"] if insts else None, exit_code=None,
                           restarts=st.restarts + (1 if lost else 0), queued_after=None, queued_since=None)
        return self._move("begin_attempt", role, actor, cur, reason=reason, **changes)

    def queued(self, role: Role, actor: str, *, expected: tuple[RunState, int] | None = None,
               reason: str, since: float | None = None) -> tuple[RunState, int]:
        """PENDING/PREEMPTED/STALLED/ERRORED -> QUEUED: no room for the next attempt yet.

        Who: the supervisor (its admission: the project's quota, the sweep's --max-concurrent).
        Keeps the attempt number (the next one begins from here) and records what the run waits
        after, so ``begin_attempt`` still spends a restart for a lost attempt, once. ``since``:
        when it began to wait (default: now), the queue's first-come order.
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        cur = expected if expected is not None else self.read_state()
        changes: dict[str, Any] = {}
        if cur is not None:
            changes = dict(queued_after=cur[0].state.value,
                           queued_since=since if since is not None else utcnow())
        return self._move("queued", role, actor, cur, reason=reason, **changes)

    def job_started(self, role: Role, actor: str, *, attempt: int, instance: str | None,
                    zone: str | None, rank: int = 0, reason: str | None = "job started") -> tuple[RunState, int]:
        """PROVISIONING -> RUNNING: attempt ``attempt``'s job is running.

        Who: the agent of that attempt (one of an older attempt gets ``IllegalTransition``).
        Records its instance and zone (in ``instances`` at ``rank``, and as ``instance``/``zone``).
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        cur = self.read_state()
        changes: dict[str, Any] = {}
        if cur is not None:
            insts = [dict(i) for i in cur[0].instances if i.get("rank") != rank]
            insts.append({"name": instance, "zone": zone, "rank": rank})
            insts.sort(key=lambda i: i.get("rank") or 0)
            changes = dict(instances=insts, instance=insts[0]["name"], zone=insts[0]["zone"])
        return self._move("job_started", role, actor, cur, expect_attempt=attempt, reason=reason, **changes)

    def preempted(self, role: Role, actor: str, *, reason: str, expected: tuple[RunState, int] | None = None,
                  expect_attempt: int | None = None, exit_code: int | None = None) -> tuple[RunState, int]:
        """PROVISIONING/RUNNING -> PREEMPTED: the attempt was lost to the provider.

        Who: the agent (SIGTERM of a preemption notice) or the supervisor (the instance ended or
        vanished without an outcome). The supervisor then begins the next attempt.
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        changes = {} if exit_code is None else {"exit_code": exit_code}
        return self._move("preempted", role, actor, expected if expected is not None else self.read_state(),
                          expect_attempt=expect_attempt, reason=reason, **changes)

    def stalled(self, role: Role, actor: str, *, reason: str,
                expected: tuple[RunState, int] | None = None,
                supervisor_fields: dict[str, Any] | None = None) -> tuple[RunState, int]:
        """PROVISIONING/RUNNING -> STALLED: no progress (or still booting) past the window.

        Who: the supervisor. ``supervisor_fields``: state fields only the supervisor reads (its
        count of repeated stalls, runner/launch/stall_streak.py), written in the same
        compare-and-swap and kept by every other writer as unknown fields.
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        cur = expected if expected is not None else self.read_state()
        changes: dict[str, Any] = {}
        if supervisor_fields and cur is not None:
            changes["extra"] = {**cur[0].extra, **supervisor_fields}
        return self._move("stalled", role, actor, cur, reason=reason, **changes)

    def errored(self, role: Role, actor: str, *, attempt: int, reason: str,
                exit_code: int) -> tuple[RunState, int]:
        """RUNNING -> ERRORED: the job failed and the failure budget allows another try.

        Who: the agent of ``attempt``, after ``RunState.may_retry_failure`` said yes. Spends one
        failure (counted from the state this write replaces). Raises ``IllegalTransition`` or
        ``TransitionLost``.
        """
        cur = self.read_state()
        changes: dict[str, Any] = {"exit_code": exit_code}
        if cur is not None:
            changes["failures"] = cur[0].failures + 1
        return self._move("errored", role, actor, cur, expect_attempt=attempt, reason=reason, **changes)

    def succeeded(self, role: Role, actor: str, *, attempt: int, reason: str = "job exited 0") -> tuple[RunState, int]:
        """live -> SUCCEEDED (terminal). Who: the agent of ``attempt``, after its final sync.
        Raises ``IllegalTransition`` or ``TransitionLost``."""
        return self._move("succeeded", role, actor, self.read_state(), expect_attempt=attempt,
                          reason=reason, exit_code=0)

    def failed(self, role: Role, actor: str, *, reason: str, expected: tuple[RunState, int] | None = None,
               expect_attempt: int | None = None, exit_code: int | None = None) -> tuple[RunState, int]:
        """live -> FAILED (terminal): no further attempt can help.

        Who: the agent (the job failed past its budget, could not start, or its final sync
        failed) or the supervisor (restarts exhausted, startup failed, a permanent backend error).
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        changes = {} if exit_code is None else {"exit_code": exit_code}
        return self._move("failed", role, actor, expected if expected is not None else self.read_state(),
                          expect_attempt=expect_attempt, reason=reason, **changes)

    def stopped(self, role: Role, actor: str, *, reason: str, expected: tuple[RunState, int] | None = None,
                expect_attempt: int | None = None, exit_code: int | None = None) -> tuple[RunState, int]:
        """live -> STOPPED (terminal): a user asked (``.stop``).

        Who: the agent (its job ended on a stop), the supervisor (saw ``.stop``) or ops delete.
        Raises ``IllegalTransition`` or ``TransitionLost``.
        """
        changes = {} if exit_code is None else {"exit_code": exit_code}
        return self._move("stopped", role, actor, expected if expected is not None else self.read_state(),
                          expect_attempt=expect_attempt, reason=reason, **changes)

    def report_refused(self, actor: str, err: Exception) -> str:
        """Say on stderr that ``actor``'s transition was refused, from what to what and who holds
        the run instead; returns the line. Nothing else changes: the caller goes on as it would.

        Costs one state read for a lost compare-and-swap (the winner is not known otherwise),
        none for an illegal move.
        """
        if isinstance(err, TransitionLost):
            what = f"{err.current.value} -> {err.new.value}"
            try:
                now = self.read_state()
                won = (f"{now[0].updated_by or '?'} wrote {now[0].state.value} (attempt {now[0].attempt}) first"
                       if now else "state.json is gone")
            except Exception as e:  # noqa: BLE001 - a report must never change what the caller does next
                won = f"who won is unknown ({type(e).__name__}: {e})"
        elif isinstance(err, IllegalTransition):
            what = f"{err.current.value if err.current else '?'} -> {err.new.value if err.new else '?'}"
            won = f"{err}; state written by {err.holder or '?'}"
        else:
            what, won = "a transition", str(err)
        line = f"runner: {self.run_id}: {actor}'s {what} refused: {won}"
        print(line, file=sys.stderr)
        return line

    # ---- an attempt's timeline: one create-only mark per phase (see ``entrypoint.record.phases``) ----
    def mark_phase(self, attempt: int, phase: str, actor: str, at: float | None = None,
                   **detail: Any) -> bool:
        """Mark that ``phase`` of ``attempt`` happened at ``at`` (now by default).

        Create-only: the first mark of a phase stands. True if the stored mark is this call's
        (including a retry that meets its own write after a lost reply); False if another mark
        was there first, which is left as it is.
        """
        if not valid_phase(phase):
            raise ValueError(f"not a phase name: {phase!r}")
        doc = {"phase": phase, "attempt": attempt, "time": utcnow() if at is None else at,
               "actor": actor, "detail": detail, "schema_version": SCHEMA_VERSION}
        name = self.name(self.phase_name(attempt, phase))
        try:
            self.store.write(name, _dump(doc), if_generation_match=0)
            return True
        except PreconditionFailed:
            blob = self.store.read(name)
            return blob is not None and blob.data == _dump(doc)

    def phases(self, attempt: int) -> dict[str, dict[str, Any]]:
        """The marked phases of ``attempt``, by phase name (one listing, one read per mark)."""
        return self._marks(attempt, self.store.list(self.name(self.phases_dir(attempt))))

    def _marks(self, attempt: int, names: list[str]) -> dict[str, dict[str, Any]]:
        """The phase marks of ``attempt`` among ``names`` (listed object names).

        Read side by side: on GCS each read is a round trip, and eight of them one after another
        would put ``ops status`` (which reads the current attempt's) past its second."""
        from concurrent.futures import ThreadPoolExecutor

        out: dict[str, dict[str, Any]] = {}
        folder = self.name(self.phases_dir(attempt))
        marks = sorted(n for n in names if n.startswith(folder))
        if len(marks) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(marks))) as pool:
                blobs = list(pool.map(self.store.read, marks))
        else:
            blobs = [self.store.read(n) for n in marks]
        for name, blob in zip(marks, blobs):
            if blob is None:
                continue
            try:
                doc = json.loads(blob.data)
            except ValueError:
                continue  # not ours to judge; the rest of the timeline still shows
            out[name.rsplit("/", 1)[-1].removesuffix(".json")] = doc
        return out

    # ---- the one typed read of a run ----
    def view(self, events: int = 0, *, spec: bool = False, heartbeat: bool = True, stop: bool = False,
             startup: bool = False, phases: bool = False) -> RunView | None:
        """What the run is now, read once for every reader (ops, the notifier, follow); None if
        the run has no state.json.

        Each part costs what it says, and only if asked: state (1 read), heartbeat (1),
        ``spec`` (1), ``stop`` (1), ``startup`` (the current attempt's startup.json, 1),
        ``phases`` (the current attempt's phase marks: a listing and a read per mark; asked with
        ``startup``, that one listing of the attempt's folder also says whether startup.json is
        there, which is then read only if it is),
        ``events``: the last N journal entries (one listing plus a read per entry; the state's
        own entry costs nothing when its writer has not stored it yet), ``ALL_EVENTS`` for all.

        ``DamagedRecord`` if the state, or a part asked for (heartbeat, spec), cannot be read:
        those are what the run is, and a reader must not show a guess. A damaged journal entry
        is left out and named in ``damaged`` instead: one torn line of history must not hide the
        rest of it.
        """
        cur = self.read_state()
        if cur is None:
            return None
        st, gen = cur
        damaged: list[DamagedRecord] = []
        marks, boot = self._attempt_parts(st.attempt, startup, phases) if st.attempt else (None, None)
        return RunView(
            run_id=self.run_id, state=st, generation=gen,
            heartbeat=self.read_heartbeat() if heartbeat else None,
            spec=self.read_spec() if spec else None,
            stop_requested=self.stop_requested() if stop else None,
            startup=boot,
            phases=marks,
            events=(list(self._events(cur, damaged=damaged)) if events == ALL_EVENTS
                    else self.newest_events(cur, events, damaged=damaged)) if events else [],
            damaged=damaged,
        )

    def _attempt_parts(self, attempt: int, startup: bool, phases: bool
                       ) -> tuple[dict[str, dict[str, Any]] | None, dict[str, Any] | None]:
        """(phase marks, startup.json) of ``attempt``, each only if asked (see ``view``)."""
        if not phases:
            return None, self.read_startup(attempt) if startup else None
        listed = self.store.list(self.name(self.attempt_dir(attempt)))
        boot = self.read_startup(attempt) if startup and self.name(self.startup_name(attempt)) in listed else None
        return self._marks(attempt, listed), boot

    # ---- events (append-only journal) ----
    _SAME = -1

    def _event_for(self, st: RunState, actor: str, old: State | None, reason: str | None,
                   attempt: int | None = _SAME) -> dict[str, Any]:
        """The event that journals ``st`` (stamps ``st.updated_at`` with the event's time).
        ``attempt``: what the event says (the state's attempt unless given)."""
        st.updated_at = utcnow()
        doc = self._event_doc(st.updated_at, actor, old, st.state, reason,
                              st.attempt if attempt == self._SAME else attempt)
        return {"name": _event_file(st.updated_at, actor), "doc": doc}

    @staticmethod
    def _event_doc(ts: float, actor: str, old: State | None, new: State | None, reason: str | None,
                   attempt: int | None, **extra: Any) -> dict[str, Any]:
        return {
            "time": ts,
            "actor": actor,
            "from": old.value if old else None,
            "to": new.value if new else None,
            "reason": reason,
            "attempt": attempt,
            "host": socket.gethostname(),
            "schema_version": SCHEMA_VERSION,
            **extra,
        }

    def _journal(self, event: dict[str, Any]) -> None:
        """Store a state's event after the state itself landed.

        A failure here is not the transition's failure (the state is the truth and it is
        written): it is said on stderr, and the next transition or ``ensure_journaled`` stores
        the event under the same name.
        """
        name = self.name(self.EVENTS + event["name"])
        try:
            self.store.write(name, _dump(event["doc"]), if_generation_match=0)
        except PreconditionFailed:
            pass  # a repair stored it first: the same event, under the same name
        except StoreError as e:
            print(f"runner: {self.run_id}: state {event['doc'].get('to')} written, its journal entry "
                  f"not yet ({e}); the next writer or supervisor pass adds it", file=sys.stderr)
            return
        _remember_journaled(name)

    def ensure_journaled(self, st: RunState, strict: bool = True) -> bool:
        """Store ``st``'s own event if it is missing; True if this call had to store it.

        Idempotent and cheap: one stat per event per process, none once known stored.
        ``strict=False`` (a supervisor's repair pass) says a store failure on stderr instead of
        raising: the next pass tries again.
        """
        if not st.last_event:
            return False  # written by a version that journaled without it
        name = self.name(self.EVENTS + st.last_event["name"])
        if name in _JOURNALED:
            return False
        wrote = False
        try:
            if self.store.stat(name) is None:
                try:
                    self.store.write(name, _dump(st.last_event["doc"]), if_generation_match=0)
                    wrote = True
                except PreconditionFailed:
                    pass
        except StoreError as e:
            if strict:
                raise
            print(f"runner: {self.run_id}: could not journal {st.state.value} yet ({e})", file=sys.stderr)
            return False
        _remember_journaled(name)
        return wrote

    def event(
        self,
        actor: str,
        old: State | None,
        new: State | None,
        reason: str | None,
        attempt: int | None = None,
        **extra: Any,
    ) -> None:
        """A journal entry that is not a state change (a note such as "create failed")."""
        ts = utcnow()
        name = self.name(self.EVENTS + _event_file(ts, actor))
        doc = self._event_doc(ts, actor, old, new, reason, attempt, **extra)
        try:
            self.store.write(name, _dump(doc), if_generation_match=0)
        except PreconditionFailed:
            pass  # the name is unique to this call: what is there is this very event

    def events(self, after: str | None = None,
               damaged: list[DamagedRecord] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events in time order (the names sort by timestamp). ``after``: a name already seen.

        The current state's own event is included even if its writer died before storing it
        (read-only: it is taken from state.json, under the name it will be stored as). The
        state is read before the listing, so an event stored in between is listed, not lost.
        An entry that cannot be read is left out and appended to ``damaged`` (said on stderr
        when no list is given): a follower must not stop at one torn line of history.
        """
        return self._events(self.read_state(), after=after, damaged=damaged)

    def _events(self, cur: tuple[RunState, int] | None, after: str | None = None,
                damaged: list[DamagedRecord] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """``events`` given the state read before the listing (the newest N: ``newest_events``)."""
        listed = set(self.event_names())
        pending: dict[str, dict[str, Any]] = {}
        if cur is not None and cur[0].last_event:
            name = self.name(self.EVENTS + cur[0].last_event["name"])
            if name not in listed:
                pending[name] = cur[0].last_event["doc"]
        names = [n for n in sorted(listed | set(pending)) if after is None or n > after]
        for name in names:
            if name in pending:
                yield name, pending[name]
                continue
            try:
                ev = self.read_event(name)
            except DamagedRecord as e:
                self._skipped(e, damaged)
                continue
            if ev is not None:
                yield name, ev

    def newest_events(self, cur: tuple[RunState, int] | None, limit: int | None,
                      since: float | None = None,
                      damaged: list[DamagedRecord] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The newest ``limit`` journal entries (all, for None) from time ``since`` on, oldest
        first, given the state ``cur`` read before: what ``events`` gives, cut to the end.

        Why not list it all: the names sort by time, so with a running summary (how many
        transitions since when) the listing starts near the end (``Store.list_from``), widening
        fourfold until ``limit`` entries are found, and reads only those: ``--limit 20`` of a
        3,000-entry journal is a listing or two and 20 reads (8 at a time), not 3,000.
        A run without a summary is listed whole (one listing), and still only ``limit`` read.
        """
        prefix = self.name(self.EVENTS)
        floor = prefix + (f"{max(since, 0.0):017.6f}" if since is not None else "")
        pending: dict[str, dict[str, Any]] = {}
        if cur is not None and cur[0].last_event:
            pending[prefix + cur[0].last_event["name"]] = cur[0].last_event["doc"]
        listed: list[str] | None = None
        h = _history.current(cur[0]) if cur is not None and limit is not None else None
        if h is not None and limit is not None and limit > 0:
            newest = float(cur[0].last_event["doc"].get("time") or 0.0)  # type: ignore[index]
            first = float(h.get("first_event_at") or 0.0)
            window = max(1.0, 2.0 * limit * max(newest - first, 0.0) / max(int(h.get("transitions", 1)), 1))
            while newest - window > max(first, since if since is not None else first):
                names = self.store.list_from(prefix, prefix + f"{newest - window:017.6f}")
                if len(set(names) | set(pending)) >= limit:
                    listed = names
                    break
                window *= 4
        if listed is None:
            listed = self.store.list_from(prefix, floor) if since is not None else self.store.list(prefix)
        names = sorted(n for n in set(listed) | set(pending) if n >= floor)
        if limit is not None:
            names = names[-limit:] if limit > 0 else []
        return self._read_events(names, pending, damaged)

    def _read_events(self, names: list[str], known: dict[str, dict[str, Any]],
                     damaged: list[DamagedRecord] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Those journal entries, in that order (``known`` ones from memory, the rest read, 8 at
        a time: each read is a round trip); one gone since its listing is left out, one that
        cannot be read too, and appended to ``damaged`` (said on stderr when no list is given)."""
        todo = [n for n in names if n not in known]
        got: dict[str, dict[str, Any] | DamagedRecord | None] = dict(known)

        def read(name: str) -> dict[str, Any] | DamagedRecord | None:
            try:
                return self.read_event(name)
            except DamagedRecord as e:
                return e

        if len(todo) > 2:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=8) as pool:
                got.update(zip(todo, pool.map(read, todo)))
        else:
            got.update((n, read(n)) for n in todo)
        out = []
        for n in names:
            doc = got.get(n)
            if isinstance(doc, DamagedRecord):
                self._skipped(doc, damaged)
            elif doc is not None:
                out.append((n, doc))
        return out

    def _skipped(self, e: DamagedRecord, damaged: list[DamagedRecord] | None) -> None:
        """A journal entry that cannot be read: collected in ``damaged``, or said on stderr."""
        if damaged is None:
            print(f"runner: {self.run_id}: journal entry skipped: {e}", file=sys.stderr)
        else:
            damaged.append(e)

    def event_names(self) -> list[str]:
        """The stored journal's object names, oldest first (one listing; nothing read)."""
        return sorted(self.store.list(self.name(self.EVENTS)))

    def read_event(self, name: str) -> dict[str, Any] | None:
        """One journal entry by its object name (as ``event_names`` lists it); None if gone;
        ``DamagedRecord`` if it is not a JSON object with a numeric ``time``."""
        blob = self.store.read(name)
        return None if blob is None else parse(name, blob.data, _event_doc)

    def claim_notified(self, event_id: str, actor: str) -> bool:
        """Create-only claim on announcing one event (``notified/<event file name>``): True for
        the one notifier that may send it, False for every other."""
        try:
            self.store.write(self.name(self.notified_name(event_id)),
                             json.dumps({"time": utcnow(), "actor": actor}).encode(), if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    # ---- heartbeat, manifest, stop ----
    def write_heartbeat(self, hb: Heartbeat) -> None:
        # Listed, as state.json is: ``ops list`` reads both of every run from listings.
        self.store.write_listed(self.name(self.HEARTBEAT), _dump(asdict(hb)))

    def read_heartbeat(self, rank: int = 0) -> Heartbeat | None:
        """The agent's last heartbeat (a gang's: node ``rank``'s), None if there is none;
        ``DamagedRecord`` if unreadable."""
        name = self.name(self.node_heartbeat_name(rank))
        blob = self.store.read(name)
        return None if blob is None else parse(name, blob.data, Heartbeat.from_dict)

    def write_node_heartbeat(self, rank: int, hb: Heartbeat) -> None:
        """A gang node's heartbeat (rank 0's is the run's ``write_heartbeat``)."""
        self.store.write(self.name(self.node_heartbeat_name(rank)), _dump(asdict(hb)))

    def write_manifest(self, attempt: int, doc: dict[str, Any]) -> None:
        doc = {"schema_version": SCHEMA_VERSION, **doc}
        self.store.write(self.name(self.manifest_name(attempt)), _dump(doc))

    def read_manifest(self, attempt: int) -> dict[str, Any] | None:
        """The attempt's manifest, None if there is none; ``DamagedRecord`` if not a JSON object."""
        name = self.name(self.manifest_name(attempt))
        blob = self.store.read(name)
        return None if blob is None else load_object(name, blob.data)

    @property
    def claims(self) -> CreateClaims:
        """The attempts' create claims, each with the lease its creator renews (``create_claim``)."""
        return CreateClaims(self.store, self.run_id)

    def claim_create(self, attempt: int, actor: str, lease_s: float = DEFAULT_LEASE_S,
                     now: float | None = None) -> CreateClaim | None:
        """Claim creating this attempt's instances: one creator per attempt (and round), even when
        two supervisors would pick different zones (GCE names are unique per zone only). None:
        another actor holds the claim or its create finished. See ``create_claim``."""
        return self.claims.take(attempt, actor, lease_s, now=utcnow() if now is None else now)

    def read_claim(self, attempt: int) -> CreateClaim | None:
        return self.claims.read(attempt)

    def read_startup(self, attempt: int) -> dict[str, Any] | None:
        return self.read_advice(self.startup_name(attempt))

    def read_advice(self, rel: str) -> dict[str, Any] | None:
        """An object that is advice, not contract (``startup.json``, ``damaged.json``): None when
        it is absent or cannot be read, never an error."""
        blob = self.store.read(self.name(rel))
        if blob is None:
            return None
        try:
            doc = json.loads(blob.data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def request_stop(self, actor: str, reason: str = "stopped by user", in_progress_for: float | None = None) -> None:
        """Write ``.stop``. ``in_progress_for``: seconds the stopping actor may still be at work
        (a delete giving the job its grace period); until then ``stop_in_progress`` says so and
        ``reopen`` refuses, so a restart cannot undo a delete half-way. Written again without it
        when the actor is done (or it lapses by itself if the actor died)."""
        doc: dict[str, Any] = {"time": utcnow(), "actor": actor, "reason": reason}
        if in_progress_for is not None:
            doc["in_progress_until"] = doc["time"] + in_progress_for
        self.store.write(self.name(self.STOP), _dump(doc))

    def stop_in_progress(self, now: float | None = None) -> dict[str, Any] | None:
        """The ``.stop`` document while the actor that wrote it is still stopping the run
        (see ``request_stop``); None when there is no stop, or it is done or lapsed. A torn
        ``.stop`` still stops the run; it just says nothing more."""
        doc = self.read_advice(self.STOP)
        try:
            until = float((doc or {}).get("in_progress_until") or 0)
        except (TypeError, ValueError):
            return None
        return doc if until > (utcnow() if now is None else now) else None

    def stop_requested(self) -> bool:
        return self.store.exists(self.name(self.STOP))


def _event_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A journal entry as readers use it: a numeric ``time`` (sorting, ``--since``) and a string
    ``actor`` (every line shows it); every writer has stored both since the journal began."""
    check_fields(doc, {"time": (int, float), "actor": (str,)})
    for key in ("time", "actor"):
        if key not in doc:
            raise KeyError(key)
    return doc


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two specs describe the same run (when they were written does not matter)."""
    skip = {"created_at"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def list_run_ids(store: Store) -> list[str]:
    """All run ids in the store, from one delimiter listing (one API call on GCS)."""
    return sorted(run_id_of_prefix(p) for p in store.list_prefixes(RUNS))
