"""The supervisor: a reconcile loop that brings each run's instance in line with its record.

One pass reads the run record from the store and the instances from the backend (one list call
for all runs), then for each run takes at most one step: start an attempt, restart after a
preemption or stall, end a run whose stop was requested, or clean up after a finished one.

Safety rules, each tied to a property in docs/architecture.md#properties-that-must-hold:
- Every state change is a compare-and-swap against the state the decision was based on, so two
  supervisors on one run cannot both restart it ("one VM per run").
- ``.stop`` is checked before every create and again after it; a run with ``.stop`` is never
  restarted ("stop means stop").
- Instances of older attempts and of finished runs are deleted ("no VM left billing").
- Stall detection looks at when the job's reported progress last changed, falling back to the
  heartbeat only for jobs that report no progress ("progress, not just liveness"). It never
  subtracts a time the VM stamped from this supervisor's clock: idle times are durations on one
  clock, the agent's own or this supervisor's sightings (``runner.launch.observed``).
- A job that stalls at the same reported progress on 3 consecutive attempts ends FAILED, saying
  so, instead of being restarted max_restarts times (``runner.launch.stall_streak``).
- An instance is never declared gone on a listing older than the state it is judged against:
  a pass lists once for all runs, so before acting on an absent or ended instance the run's
  instances are listed again, after its state was read. Otherwise a run that another actor
  restarted while this pass was busy elsewhere would look "gone", and a second attempt would
  start beside the live one ("one VM per run").
- Deletes never block a pass: they run on a small pool of background workers (``Reaper``), so
  the grace period of a job that ignores SIGTERM delays nobody else. The next attempt of a run
  is only created once its previous instance no longer runs (a later pass checks), so a final
  sync is still allowed and two live instances of one run never coexist. ``drain()`` waits for
  the deletes in flight (and interpreter exit does too), so no instance is left billing.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from entrypoint.record import (
    OUTCOME_UNRECORDED, AttemptSettings, DamagedRecord, Heartbeat, IllegalTransition, Role, RunRecord, RunSpec,
    RunState, State, list_run_ids,
)
from entrypoint.record import phases
from entrypoint.record.create_claim import CREATED, RELEASED
from entrypoint.record.listing import listed_runs
from entrypoint.store import PreconditionFailed, Store, StoreError
from runner.launch import gang_watch, recovery, stall_streak
from runner.launch.backends.base import (
    Attempt, BackendError, ComputeBackend, CreateClaimLost, Instance, LaunchContext, PermanentBackendError,
    group_attempts,
)
from runner.launch.create_lease import CreateLease
from runner.launch.observed import Looked, Observations, clock_id, look
from runner.launch.recovery import CreateBackoff, Recovery
from runner.launch.damaged_runs import DamageWatch
from runner.launch import queue_pass
from runner.launch.admission import HOLD_AFTER_S, Decision
from runner.launch.supervisor_heartbeat import FUTURE_TOLERANCE, run_pass
from runner.naming import default_actor, instance_names, label_value

if TYPE_CHECKING:
    from runner.config import Config
    from runner.ops.notify import TransitionNotifier


@dataclass(frozen=True)
class SupervisorSettings:
    """What shapes the supervisor itself. What shapes a run's attempts (grace period, intervals,
    shm size, stall window, recovery strategy) is pinned in the run's spec, whoever supervises it;
    ``legacy_attempts`` only fills what a spec written before they were pinned lacks."""

    poll_interval: float
    store_url: str
    legacy_attempts: AttemptSettings = AttemptSettings()
    # The queue: seconds after which a waiting run holds what it needs (runner.launch.admission).
    hold_after: float = HOLD_AFTER_S

    @classmethod
    def from_config(cls, cfg: Config) -> "SupervisorSettings":
        return cls(poll_interval=cfg.poll_interval, store_url=cfg.store_url,
                   legacy_attempts=cfg.attempt_settings())


# Seconds a finished attempt's still-running instances are left to delete themselves (a COS VM
# does within seconds of its container's exit) before the supervisor deletes them; only on a
# backend whose instances do (``ComputeBackend.self_deletes``).
SELF_DELETE_WAIT = 60.0

# Runs read and stepped at once in a pass: a remote store's round trip (20-50 ms) times a
# thousand runs must not add up. Deletes and creates have their own bounds (Reaper, claims).
PASS_WORKERS = 16

# What a pass read of a run before stepping it: (state, generation) and the spec (None when the
# run is finished with nothing left to delete: its step needs no spec).
Preread = tuple[tuple[RunState, int], "RunSpec | None"]

KEPT_ERRORS = 20  # error texts kept per pass (the heartbeat object stays small)


def placed(inst: Instance) -> dict[str, Any]:
    """An instance as the record names it: where it runs, its rank, and its address where known
    (rank 0's is the gang's rendezvous endpoint, which every node's agent reads from the claim)."""
    out: dict[str, Any] = {"name": inst.name, "zone": inst.zone, "rank": inst.rank}
    if inst.address:
        out["address"] = inst.address
    return out


def launch_context(spec: RunSpec, attempt: int, store_url: str, previous_zone: str | None = None,
                   legacy: AttemptSettings | None = None) -> LaunchContext:
    """What a plan for ``attempt`` needs besides the spec (also what ``--dry-run`` shows): the
    run's own pinned settings, and its zones in the order its recovery strategy tries them."""
    settings = spec.attempt_settings(legacy)
    return LaunchContext(attempt=attempt, store_url=store_url, settings=settings,
                         zones=recovery.strategy_of_run(settings.recovery, spec.run_id).zones(spec.zones, previous_zone))


def _gang(spec: RunSpec | None) -> bool:
    return spec is not None and spec.nodes > 1


class Reaper:
    """Deletes instances in the background, at most ``workers`` at a time, each one once.

    Why: a delete with a grace period blocks for as long as the job takes to exit (the whole
    grace period for a job that ignores SIGTERM, as ``docker stop`` does); done inline it would
    hold up every other run of the pass. A delete already in flight for an instance is not
    queued again, so passes that see the instance still running only wait for it.
    Failures are said on stderr; the instance is still listed, so a later pass deletes it again.
    Worker threads are joined at interpreter exit after the queued deletes ran, so a process that
    ends normally leaves nothing half-deleted; ``drain`` waits explicitly.
    """

    def __init__(self, backend: ComputeBackend, workers: int = 8) -> None:
        self.backend = backend
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="runner-reaper")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[None]] = {}

    def delete(self, inst: Instance, grace_period: float = 0) -> None:
        """Start deleting ``inst`` unless a delete of it is already in flight. Never blocks."""
        with self._lock:
            if inst.name in self._inflight:
                return
            self._inflight[inst.name] = self._pool.submit(self._run, inst, grace_period)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every delete in flight has finished; False if ``timeout`` ran out first."""
        with self._lock:
            pending = list(self._inflight.values())
        done, not_done = wait(pending, timeout=timeout)
        return not not_done

    def pending(self) -> list[str]:
        """The instances whose delete is in flight, by name (what a process about to exit leaves)."""
        with self._lock:
            return sorted(self._inflight)

    def _run(self, inst: Instance, grace_period: float) -> None:
        try:
            self.backend.delete(inst, grace_period)
        except Exception as e:  # noqa: BLE001 - said, and retried by the next pass that lists it
            print(f"runner: deleting {inst.name} failed ({type(e).__name__}: {e}); "
                  "the next pass tries again", file=sys.stderr)
        finally:
            with self._lock:
                self._inflight.pop(inst.name, None)


class Supervisor:
    def __init__(
        self,
        store: Store,
        backend: ComputeBackend,
        settings: SupervisorSettings,
        actor: str | None = None,
        now: Callable[[], float] = time.time,
        notifier: "TransitionNotifier | None" = None,
        clock: str | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.actor = actor or default_actor()
        self.now = now
        # Which clock ``now`` reads, for the stall watchdog's sightings (runner.launch.observed).
        self.clock = clock or clock_id()
        self.notifier = notifier
        self.reaper = Reaper(backend)
        # This pass's per-run failures, for the heartbeat: the first few, and how many in all
        # (bounded: an attached supervisor steps one run for days without a store-wide pass).
        self.pass_errors: list[str] = []
        self.pass_error_count = 0
        self.pass_every: float | None = None  # seconds to the next pass (hosted: the schedule)
        # How often a create in flight renews its claim's lease (None: four times per lease).
        self.lease_renew_every: float | None = None
        self.damage = DamageWatch(store, self.actor, now)  # runs whose record cannot be read
        # The runs this supervisor last left alone because their attempt was in its shutdown
        # notice: a one-shot execution steps them again once the notice ends (notice_wait), even
        # when the notice ends before it can look again.
        self.left_in_notice: set[str] = set()
        # This pass's queue decisions (None outside a store-wide pass: a run stepped alone is
        # judged on its own quota, runner.launch.queue_pass.admit_one), and the queue last published.
        self.admission: dict[str, Decision] | None = None
        self._queue_published: list[dict[str, Any]] | None = None
        self._errors_lock = threading.Lock()
        self._notify_lock = threading.Lock()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for this supervisor's background deletes (call before exiting, or let exit do it)."""
        return self.reaper.drain(timeout)

    # ---- passes ----
    def reconcile_all(self) -> dict[str, RunState]:
        """One pass over every run in the store, recorded in ``supervisor/heartbeat.json``."""
        return run_pass(self, self._reconcile_all)

    def _reconcile_all(self) -> dict[str, RunState]:
        """One pass over every run in the store; one backend list call in all.

        Deletes go to the background (see ``Reaper``), so the pass never waits on one; a
        failed instance list does not end the pass: each run then lists its own instances. A
        failed run list (the store unreachable) ends only this pass.
        """
        self.left_in_notice = set()
        by_label: dict[str, list[Instance]] | None = {}
        try:
            for inst in self.backend.list():
                by_label.setdefault(inst.run_label, []).append(inst)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - one failed call must not stop supervision
            print(f"runner: listing instances failed ({type(e).__name__}: {e}); "
                  "listing per run this pass", file=sys.stderr)
            self.note_error(f"listing instances: {type(e).__name__}: {e}")
            by_label = None
        try:
            run_ids = list_run_ids(self.store)
        except Exception as e:  # noqa: BLE001 - one API error must not end supervision
            print(f"runner: listing runs failed this pass ({type(e).__name__}: {e}); "
                  "will try again next pass", file=sys.stderr)
            self.note_error(f"listing runs: {type(e).__name__}: {e}")
            return {}
        listed = None if by_label is None else {r: by_label.get(label_value(r), []) for r in run_ids}
        views = self._read_runs(run_ids, listed)
        self.admission = queue_pass.admit(
            {r: (v[0][0], v[1]) for r, v in views.items() if v is not None}, listed, self.backend, self.now(),
            self.settings.hold_after, say=lambda text: self.note_error(text))
        try:
            with ThreadPoolExecutor(PASS_WORKERS, thread_name_prefix="runner-pass") as pool:
                steps = dict(zip(run_ids, pool.map(
                    lambda r: self.reconcile(r, None if listed is None else listed[r], views.get(r)), run_ids)))
        finally:
            decisions, self.admission = self.admission, None
        still = {r: d for r, d in decisions.items()  # (a run stopped in its step waits no more)
                 if steps.get(r) is not None and steps[r].state in queue_pass.WAITS}
        self._queue_published = queue_pass.publish(self.store, still, self.actor, self.now(),
                                                   self._queue_published)
        return {r: st for r, st in steps.items() if st is not None}

    def _read_runs(self, run_ids: list[str], listed: dict[str, list[Instance]] | None
                   ) -> dict[str, Preread | None]:
        """Every run's state (and spec, unless it is finished with nothing left to delete), read
        concurrently: at a remote store's latency a pass over a thousand runs would otherwise
        spend minutes reading. None for a run whose read failed: its step reads it again and
        says why."""
        try:
            # Every run's state from one listing where the store carries it (GCS: a request per
            # thousand runs instead of one per run); the others are read one by one. (A local
            # store's listing would walk every checkpoint file: reading each state is cheaper.)
            carried = listed_runs(self.store) if self.store.listing_carries_content else {}
        except StoreError as e:
            print(f"runner: listing the runs' states failed ({e}); reading each", file=sys.stderr)
            carried = {}

        def one(run_id: str) -> Preread | None:
            try:
                rec = RunRecord(self.store, run_id)
                lr = carried.get(run_id)
                cur = (lr.current_state() if lr is not None else None) or rec.read_state()
                if cur is None:
                    return None
                settled = cur[0].state.terminal and listed is not None and not listed[run_id]
                return cur, None if settled else rec.read_spec()
            except Exception:  # noqa: BLE001 - the step reads again, and reports it there
                return None

        with ThreadPoolExecutor(PASS_WORKERS, thread_name_prefix="runner-read") as pool:
            return dict(zip(run_ids, pool.map(one, run_ids)))

    def reconcile(self, run_id: str, instances: list[Instance] | None = None,
                  read: Preread | None = None) -> RunState | None:
        """One step for one run. Returns its state after the step (None: no such run).

        Never raises for one run's trouble (a damaged record, an API outage): that would stop
        supervision of every other run, stops and clean-ups included. It says so on stderr.
        A record that cannot be read (``DamagedRecord``) is said once and marked, its live
        instance kept, not retried loudly every pass: see ``runner.launch.damaged_runs``.
        """
        try:
            st = self._reconcile(run_id, instances, read)
            self.damage.readable(run_id)
            return st
        except DamagedRecord as e:
            self.note_error(self.damage.seen(self, run_id, e, instances))
            return None
        except Exception as e:  # noqa: BLE001 - deliberately broad, see above
            print(f"runner: supervising {run_id} failed this pass ({type(e).__name__}: {e}); "
                  "will try again next pass", file=sys.stderr)
            self.note_error(f"{run_id}: {type(e).__name__}: {e}")
            return None

    def note_error(self, what: str) -> None:
        """Count a failure of this pass; keep the text of the first ``KEPT_ERRORS``."""
        with self._errors_lock:  # (runs are stepped concurrently)
            self.pass_error_count += 1
            if len(self.pass_errors) < KEPT_ERRORS:
                self.pass_errors.append(what[:300])

    def _reconcile(self, run_id: str, instances: list[Instance] | None,
                   read: Preread | None = None) -> RunState | None:
        rec = RunRecord(self.store, run_id)
        if read is not None and read[0][0].state.terminal and instances == []:
            # Finished, nothing of it listed: nothing to do but journal it and announce it,
            # both free once done (no request per finished run per pass).
            rec.ensure_journaled(read[0][0], strict=False)
            self._observe(rec, read[0])
            return read[0][0]
        waits = (self.admission or {}).get(run_id, Decision(True))
        if read is not None and read[0][0].state == State.QUEUED and read[1] is not None \
                and not waits.admitted and not waits.never and not rec.stop_requested():
            # Still waiting, as this pass's reads say: nothing to write, nothing to list (a queue
            # of hundreds costs its reads, never a Compute call).
            self._observe(rec, read[0])
            return read[0][0]
        cur = rec.read_state()
        if cur is None:
            return None
        spec = read[1] if read is not None and read[1] is not None and cur[1] == read[0][1] else rec.read_spec()
        if spec is not None and not self.backend.owns(spec):
            return cur[0]  # made in another project: this supervisor must not touch it
        rec.ensure_journaled(cur[0], strict=False)  # its writer may have died before its event
        # A listing made after the state was read can judge it; one from the start of the pass
        # (given by reconcile_all) may predate a restart by another actor: see _step.
        fresh = instances is None
        if instances is None:
            instances = self.backend.list(run_id)
        try:
            self._step(rec, cur, spec, group_attempts(instances), fresh)
        except (PreconditionFailed, IllegalTransition) as e:
            rec.report_refused(self.actor, e)  # another actor wrote first; the next pass decides on fresh state
        except PermanentBackendError as e:
            # Retrying would fail the same way every pass, for ever: the run fails, with the fix.
            now = rec.read_state()
            if now is not None and not now[0].state.terminal:
                try:
                    rec.failed(Role.SUPERVISOR, self.actor, expected=now, reason=str(e))
                except (PreconditionFailed, IllegalTransition) as refused:
                    rec.report_refused(self.actor, refused)  # the next pass sees where it is
        except BackendError as e:
            # Out of capacity in every zone, a transient API failure...: the run keeps its
            # state, the journal says why, and the next pass (after a backoff) tries again.
            attempt = (rec.read_state() or cur)[0].attempt  # the one whose create failed
            delay = CreateBackoff.read(self.store, run_id).push(self.now(), self.settings.poll_interval, attempt)
            rec.event(self.actor, None, None, f"create failed, retrying in {delay:.0f}s: {e}",
                      attempt=attempt)
        after = rec.read_state()
        if after is not None:
            # After the step, so this pass's own transitions go out now.
            self._observe(rec, after)
        return after[0] if after else None

    def _observe(self, rec: RunRecord, cur: tuple[RunState, int]) -> None:
        """Hand a run's state to the notifier (never raises; the webhook is called from another
        thread, so a dead one cannot slow this pass). One run at a time: its cursors are shared."""
        if self.notifier is not None:
            with self._notify_lock:
                self.notifier.observe(rec, *cur)

    def attempt_settings(self, spec: RunSpec | None) -> AttemptSettings:
        """The run's pinned settings (this supervisor's config only fills what an old spec lacks)."""
        legacy = self.settings.legacy_attempts
        return legacy if spec is None else spec.attempt_settings(legacy)

    # ---- one step ----
    def _step(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None,
              attempts: dict[int, Attempt], fresh: bool = True) -> None:
        st, _ = cur
        grace = self.attempt_settings(spec).grace_period
        if st.state.terminal:
            # A job that just ended leaves its VM to delete itself (startup.sh, once the container
            # exits, after its last console lines): a delete from here in that moment would race
            # it, turn its exit into a shutdown and cut those short. Past SELF_DELETE_WAIT, or for
            # an instance no longer running, the supervisor deletes ("no VM left billing").
            ending = (self.backend.self_deletes and st.state in (State.SUCCEEDED, State.FAILED)
                      and self.now() - st.updated_at < SELF_DELETE_WAIT)
            for att in attempts.values():
                for inst in att.instances:
                    if ending and inst.alive and att.number == st.attempt:
                        continue
                    # Alive: its agent may still be finishing (or another actor's stop is giving
                    # it its grace period); a kill here would cut that short.
                    self._delete(inst, grace if inst.alive else 0)
            return
        if rec.stop_requested():
            for att in attempts.values():
                self._delete_attempt(att, grace)
            rec.stopped(Role.SUPERVISOR, self.actor, expected=cur, reason="stop requested")
            return
        current = attempts.get(st.attempt)
        if not fresh and st.state not in (State.PENDING, State.QUEUED) and (current is None or not current.alive):
            # About to judge the current attempt absent or ended: only on a listing made after
            # the state was read (this one may be older than a restart by another supervisor,
            # whose new attempt it cannot show).
            attempts = self.backend.attempts(rec.run_id)
            current = attempts.get(st.attempt)
        # An older attempt must never run beside the current one, nor a second copy of it.
        for number, att in attempts.items():
            if number < st.attempt:
                self._delete_attempt(att)
        if current is not None:
            self._drop_unclaimed(rec, current)

        if st.state == State.PENDING:
            self._start_attempt(rec, cur, spec, "first attempt")
        elif st.state == State.QUEUED:
            waited = f"admitted from the queue after {max(0.0, self.now() - (st.queued_since or st.updated_at)):.0f}s"
            if st.queued_after in (State.PREEMPTED.value, State.STALLED.value, State.ERRORED.value) \
                    and current is not None:
                self._restart(rec, cur, spec, current, waited)  # the lost attempt's recovery, as before
            else:
                self._start_attempt(rec, cur, spec, "first attempt" if st.queued_after == State.PENDING.value
                                    else f"restart after {str(st.queued_after).lower()}", waited=waited)
        elif st.state == State.PROVISIONING:  # (an old record's BOOTING reads as PROVISIONING)
            self._check_provisioning(rec, cur, spec, current)
        elif st.state == State.RUNNING:
            self._check_running(rec, cur, spec, current)
        elif st.state.needs_restart:
            self._restart(rec, cur, spec, current)

    def _check_provisioning(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None,
                            att: Attempt | None) -> None:
        st, _ = cur
        startup = rec.read_startup(st.attempt)
        if startup and startup.get("status") == "failed":
            # The VM's startup script gave up (GPU never came, image never pulled): no restart
            # would do better, so the run fails with the script's reason.
            if att is not None:
                self._delete_attempt(att)
            rec.failed(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"startup failed in phase {startup.get('phase')}: {startup.get('reason')}"
                       + (f" ({startup['detail']})" if startup.get("detail") else ""),
            )
            return
        if att is None:
            claim = rec.read_claim(st.attempt)
            now = self.now()
            if claim is None or claim.status == RELEASED or claim.abandoned(now):
                # Nobody created it yet (a crash between state write and create), the last try
                # made nothing, or its creator died mid-create: create (a takeover re-sends the
                # dead creator's inserts with the same request ids, which GCE deduplicates).
                self._create(rec, spec, st, previous_zone=st.zone)
            elif claim.in_flight(now):
                return  # its creator is still at work (a zone walk): nothing may judge it lost
            else:
                finished = claim.finished_at()
                if finished is not None and now - finished > recovery.create_grace(self.settings.poll_interval):
                    # It was created and is gone before the job started (deleted, preempted
                    # while booting): a lost attempt, counted against max_restarts like any other.
                    new = rec.preempted(Role.SUPERVISOR, self.actor, expected=cur,
                                        reason="instance vanished before the job started")
                    self._restart(rec, new, spec, None)
            return
        self._start_unstarted(rec, st, att)
        window = self._boot_window(spec)
        # Booting for as long as this supervisor's own clock has seen the attempt (not since the
        # state's stamp: another supervisor, on another clock, may have written it).
        # A run with --data stages it before its job: its heartbeat's copy progress counts
        # (``observed.look``); read only for such runs (one read per pass).
        hb = rec.read_heartbeat() if spec is not None and spec.data and att.alive else None
        booted_for = self._idle(rec, look(st, hb), window) if att.alive else 0.0
        if att.alive and booted_for > window:
            new = rec.stalled(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"still booting after {booted_for:.0f}s (window {window:.0f}s)")
            self._restart(rec, new, spec, att)
        elif att.exit_code == OUTCOME_UNRECORDED:
            self._fail_unrecorded(rec, cur, att)
        elif _gang(spec) and (lost := self._gone(rec, spec, att)) is not None:
            new = rec.preempted(Role.SUPERVISOR, self.actor, expected=cur,
                                reason=f"{lost} before the job started: the whole gang restarts")
            self._restart(rec, new, spec, att)
        elif not att.alive:
            tail = self.backend.logs(att.lead, tail=5).strip().replace("\n", " | ")
            new = rec.preempted(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"instance ended before the job started (exit {att.exit_code}): {tail[-300:]}",
            )
            self._restart(rec, new, spec, att)

    def _start_unstarted(self, rec: RunRecord, st: RunState, att: Attempt) -> None:
        """Finish a create whose creator died between creating the instance and starting it (see
        ``ComputeBackend.start_unstarted``): without this the run sits out its boot window and is
        then counted as a restart. Journaled, so the start is not a mystery."""
        for name in self.backend.start_unstarted(att):
            rec.event(self.actor, None, None, f"started {name}: it was created but never started "
                      "(its creator stopped between create and start)", attempt=st.attempt)

    def _check_running(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None,
                       att: Attempt | None) -> None:
        st, _ = cur
        if att is not None and att.going_away:
            self.left_in_notice.add(rec.run_id)
            return  # the preemption notice is running: let the agent finish its final sync first
        if att is not None and att.exit_code == OUTCOME_UNRECORDED:
            self._fail_unrecorded(rec, cur, att)
            return
        gone = self._gone(rec, spec, att)
        if gone is not None:
            what = gone
            if self._preempted_by_gce(st):
                what += " after a GCE preemption"
            new = rec.preempted(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=(f"instance {what} without recording an outcome (preempted or lost)" if not _gang(spec)
                        else f"{what} without recording an outcome (preempted or lost): the whole gang restarts"),
            )
            self._restart(rec, new, spec, att)
            return
        stalled = self._stalled_for(rec, st, spec)
        if stalled is not None:
            idle, window, hb = stalled
            streak = stall_streak.next_streak(st, hb)
            at = f" at progress {streak.progress}" if streak else ""
            new = rec.stalled(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"no progress for {idle:.0f}s (window {window:.0f}s){at}",
                supervisor_fields={stall_streak.STATE_FIELD: streak.to_dict()} if streak else None,
            )
            if streak is not None and streak.gives_up:
                # Another restart would hang at the same step again: end it now, not after
                # max_restarts more stall windows (the terminal pass removes what is left).
                for inst in att.instances:
                    self._delete(inst, self.attempt_settings(spec).grace_period)
                rec.failed(Role.SUPERVISOR, self.actor, expected=new, reason=streak.reason(rec.run_id))
                return
            self._restart(rec, new, spec, att)

    def _preempted_by_gce(self, st: RunState) -> bool:
        """Whether GCE preempted the attempt's instance (a gang: any of its nodes, one zone, one call)."""
        names = [str(i["name"]) for i in st.instances if i.get("name")] or [st.instance or ""]
        return self.backend.was_preempted(names, st.zone)

    def _gone(self, rec: RunRecord, spec: RunSpec | None, att: Attempt | None) -> str | None:
        """Why the current attempt counts as lost ("gone", "exited with 137", "node 1 gone"), or
        None while it runs. A gang's generation is lost when any of its nodes is (``gang_watch``)."""
        if att is None:
            return "gone"
        if not _gang(spec):
            return None if att.alive else att.status_text()
        if len(att.instances) < spec.nodes:  # type: ignore[union-attr]
            claim = rec.read_claim(att.number)
            if claim is not None and claim.in_flight(self.now()):
                return None  # its creator is still making the generation's nodes, one by one
        lost = gang_watch.lost_nodes(rec, spec.nodes, att)  # type: ignore[union-attr]
        return ", ".join(lost) if lost else None

    def _fail_unrecorded(self, rec: RunRecord, cur: tuple[RunState, int], att: Attempt) -> None:
        """The attempt ended knowing its outcome, but the store refused it (the agent's exit code
        says so): the run fails with the agent's own words, and is not restarted.

        Not "preempted or lost": the job ran to its end, and a restart would redo work whose
        results may already be in the store, or fail the same way against the same full store.
        Which outcome it was is in the agent's last line (the container's output), quoted here.
        """
        st, _ = cur
        tail = self.backend.logs(att.lead, tail=1).strip()  # the agent's last line says what it was
        rec.failed(
            Role.SUPERVISOR, self.actor, expected=cur,
            reason=f"attempt {st.attempt} ended (exit {OUTCOME_UNRECORDED}) with an outcome its agent could "
                   f"not record: the store refused the write; free space in the store, check `runner ops "
                   f"logs {rec.run_id}`, then `runner submit --restart` if it must run again"
                   + (f"; the agent's last line: {tail[-600:]}" if tail else ""),
        )  # the next pass removes the instance, as for any run that ended

    def _boot_window(self, spec: RunSpec | None) -> float:
        """How long an attempt may boot before it counts as stalled: the run's stall window, and for
        an instance that waits for something before its job starts (a GCE GPU driver) at least that
        wait, both as pinned in its spec, whatever this supervisor's own config says."""
        window = self.attempt_settings(spec).stall_window
        if spec is None:
            return window
        from runner.launch.backends import backend_type

        try:
            kind = type(self.backend) if spec.backend == self.backend.name else backend_type(spec.backend)
        except ValueError:
            return window  # a backend this version does not know: no boot wait it could vouch for
        return max(window, kind.boot_wait(spec))

    def _stalled_for(self, rec: RunRecord, st: RunState,
                     spec: RunSpec | None) -> tuple[float, float, Heartbeat | None] | None:
        """(seconds without progress, the window they exceed, the heartbeat judged), or None while
        within it.

        Progress is what the job reports; syncing phases and jobs that report none are judged by
        their heartbeat; until the attempt's first own heartbeat it is still starting, judged by
        its boot window (see ``observed.look``). Never a time stamped by the VM against this
        supervisor's clock: a skew of minutes must neither stall a healthy run nor hide a hung one.
        """
        hb = rec.read_heartbeat()
        seen = look(st, hb)
        if hb is not None and hb.time - self.now() > FUTURE_TOLERANCE:
            print(f"runner: {rec.run_id}: its heartbeat is stamped {hb.time - self.now():.0f}s ahead of this "
                  "supervisor's clock: one of the two clocks is wrong (the stall watchdog does not depend "
                  "on it; check `timedatectl` on both)", file=sys.stderr)
        window = self._boot_window(spec) if seen.booting else self.attempt_settings(spec).stall_window
        idle = self._idle(rec, seen, window)
        return (idle, window, hb) if idle > window else None

    def _idle(self, rec: RunRecord, seen: Looked, window: float) -> float:
        """How long ``seen`` has not changed, by the agent's own account or this clock's sightings."""
        obs = Observations.read(self.store, rec.run_id)
        return obs.idle(self.clock, self.actor, seen, self.now(), rewrite_after=window / 4)

    def _restart(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None,
                 att: Attempt | None, waited: str = "") -> None:
        st, _ = cur
        max_restarts = spec.max_restarts if spec else 0
        if not st.restarts_exhausted(max_restarts):  # a run that gives up has no next attempt to time
            self._mark_noticed(rec, st)
        step = recovery.decide(att, spec is not None and self.backend.keeps_stopped(spec))
        if step is Recovery.WAIT:
            self.left_in_notice.add(rec.run_id)
            # A preemption (or stop) is a timeline: the VM is still in its shutdown notice.
            # Acting now would delete a VM that STOP keeps, or start a second beside it: the
            # next pass, after the power-off, restarts in place or creates.
            return
        if att is not None and step in (Recovery.DELETE_THEN_CREATE, Recovery.DELETE_THEN_WAIT):
            # Let an agent that is still in its final sync finish it, then remove the attempt.
            for inst in att.instances:
                self._delete(inst, self.attempt_settings(spec).grace_period if inst.alive else 0)
            if step is Recovery.DELETE_THEN_WAIT:
                # The next attempt waits until this one no longer runs (a later pass sees it
                # gone): never two live attempts of one run, and the pass does not wait.
                return
        restarts = st.restarts
        if st.restarts_exhausted(max_restarts):
            rec.failed(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"gave up after {restarts} restarts (max_restarts={max_restarts}); last: {st.reason}",
            )
            return
        lost = st.queued_after if st.state == State.QUEUED and st.queued_after else st.state.value
        self._start_attempt(rec, cur, spec, f"restart after {lost.lower()}: {st.reason}",
                            reuse=att if step is Recovery.RESTART_IN_PLACE else None, waited=waited)

    def _start_attempt(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None, reason: str,
                       reuse: Attempt | None = None, waited: str = "") -> None:
        st, _ = cur
        if rec.stop_requested():
            rec.stopped(Role.SUPERVISOR, self.actor, expected=cur, reason="stop requested")
            return
        if not self._admitted(rec, cur, spec):
            return  # QUEUED: a later pass begins it when the quota (or its sweep's cap) has room
        if reuse is None and self._still_running(rec, spec, st.attempt):
            return  # the next pass starts it, once nothing of the run runs any more
        attempt = st.attempt + 1
        if st.state == State.QUEUED and waited and waited not in reason:
            reason = f"{reason} ({waited})"
        new, _ = rec.begin_attempt(  # counts the restart when the attempt before was lost
            Role.SUPERVISOR, self.actor, expected=cur, reason=reason,
            instances=[placed(i) for i in reuse.instances] if reuse
            else instance_names(rec.run_id, attempt, spec.nodes if spec else 1),
        )
        # This clock saw the attempt begin: its boot window starts now (runner.launch.observed).
        # Best effort: without it a later pass starts the window when it first looks (a later
        # stall, never a false one), and the create below must not wait on it.
        try:
            Observations.read(self.store, rec.run_id).record(self.clock, self.actor, look(new, None), self.now())
        except StoreError as e:
            print(f"runner: {rec.run_id}: could not note attempt {new.attempt}'s start ({e}); "
                  "its boot window starts at the next pass", file=sys.stderr)
        if reuse is not None:
            if spec is None:
                raise IllegalTransition(f"run {rec.run_id} has no spec.json")
            self._mark(rec, attempt, phases.REPLACEMENT_REQUESTED, how="restart_in_place")
            if self.backend.restart_in_place(reuse, self.backend.plan(spec, self.launch_context(spec, attempt, st.zone))):
                return
            self._delete_attempt(reuse)  # could not be restarted: a fresh attempt, any zone
        self._create(rec, spec, new, previous_zone=st.zone)

    def _admitted(self, rec: RunRecord, cur: tuple[RunState, int], spec: RunSpec | None) -> bool:
        """Whether the queue lets the run's next attempt begin now; if not, the run is QUEUED
        (once: a run already queued is not rewritten every pass) with the reason, or FAILED when
        one attempt needs more than a whole quota (it would wait for ever)."""
        st = cur[0]
        decision = (self.admission or {}).get(rec.run_id)
        if decision is None:
            decision = queue_pass.admit_one(rec.run_id, st, spec, self.backend, self.now(),
                                            say=lambda text: self.note_error(text))
        if decision.admitted:
            return True
        if decision.never:
            rec.failed(Role.SUPERVISOR, self.actor, expected=cur,
                       reason=f"{decision.reason}: {self.backend.quota_fix(decision.too_small)}")
        elif st.state != State.QUEUED:
            rec.queued(Role.SUPERVISOR, self.actor, expected=cur, reason=decision.reason,
                       since=st.updated_at)
        return False

    def _still_running(self, rec: RunRecord, spec: RunSpec | None, attempt: int) -> bool:
        """Whether an instance of the run still runs (or is in its shutdown notice), on a listing
        made now; those of ``attempt`` and older are asked to go (with the run's grace period).

        Every path that starts an attempt waits for this, the first attempt (PENDING) included:
        a run restarted by the user while a delete still gives its job the grace period, or a
        lost attempt whose instance is still being deleted, must never run beside the next one.
        A newer attempt's instance (another actor started it after our state read) is never
        touched: it is the run's current life, and our begin_attempt would be refused anyway.
        """
        live = {n: a for n, a in self.backend.attempts(rec.run_id).items() if not a.ended}
        grace = self.attempt_settings(spec).grace_period
        for number, att in live.items():
            if number > attempt:
                continue
            for inst in att.instances:
                if inst.alive:
                    self._delete(inst, grace)  # (a delete already in flight is not queued twice)
        return bool(live)

    def launch_context(self, spec: RunSpec, attempt: int, previous_zone: str | None = None) -> LaunchContext:
        """What a plan for ``attempt`` needs besides the spec."""
        return launch_context(spec, attempt, self.settings.store_url, previous_zone, self.settings.legacy_attempts)

    def _create(self, rec: RunRecord, spec: RunSpec | None, st: RunState, previous_zone: str | None = None) -> None:
        """Create the attempt ``st`` names, once: claimed in the record first, so two supervisors
        never both create it, and deleted at once if a stop or another actor overtook it.

        The claim's lease is renewed while the create runs (``CreateLease``), so a zone walk of
        any length is never judged lost. It is released only when the backend says nothing was
        made (a ``BackendError``: its create is all or nothing). Any other end (Ctrl-C, a crash,
        an unknown error after the insert may have been accepted) keeps it: its lease lapses and
        the next pass takes it over in the same round, so the same request ids find what was
        made instead of making a second VM.
        """
        attempt = st.attempt
        backoff = CreateBackoff.read(self.store, rec.run_id)  # in the record: one-shot passes too
        if backoff.blocks(self.now(), attempt):
            return
        if spec is None:
            raise IllegalTransition(f"run {rec.run_id} has no spec.json")
        if rec.stop_requested():
            return  # the next pass records STOPPED
        lease_s = recovery.create_lease(self.settings.poll_interval)
        claim = rec.claim_create(attempt, self.actor, lease_s, now=self.now())
        if claim is None:
            return  # another supervisor creates (or created) this attempt
        lease = CreateLease(rec.claims, claim, self.now, self.lease_renew_every or lease_s / 4)
        ctx = dataclasses.replace(self.launch_context(spec, attempt, previous_zone),
                                  request_key=claim.request_key(self.store.url, rec.run_id), before_insert=lease.check)
        self._mark(rec, attempt, phases.REPLACEMENT_REQUESTED, how="create")
        try:
            with lease:
                made = self.backend.create(self.backend.plan(spec, ctx))
        except CreateClaimLost as e:
            print(f"runner: {e}", file=sys.stderr)
            return
        except BackendError:
            rec.claims.release(lease.claim)  # nothing was made: the next try starts a new round
            raise
        backoff.clear()
        done = rec.claims.mark_created(
            lease.claim, [placed(i) for i in made.instances], now=self.now())
        # Re-check after creating: a stop, or another supervisor moving the run on, may have
        # landed between our checks and the create. Then what we made must go at once.
        after = rec.read_state()
        if rec.stop_requested() or after is None or after[0].attempt != attempt:
            self._delete_attempt(made)
        elif done is None:
            # Our lease lapsed during the create and another supervisor took the claim over. In
            # a zone we both tried, GCE answered us both with one VM (same request id); if ours
            # is in another zone, it is a second one: removed now if the new holder's finished
            # claim names another, else by ``_drop_unclaimed`` once it does.
            self._drop_unclaimed(rec, made, only_ours=True)
            print(f"runner: the create claim of {rec.run_id} attempt {attempt} was taken over "
                  "while this supervisor created it; the next pass keeps only what the claim names",
                  file=sys.stderr)

    def _mark_noticed(self, rec: RunRecord, st: RunState) -> None:
        """The first pass that sees an attempt lost marks it on the next attempt's timeline
        (``noticed``), with when it was lost as best known: the agent's own record of its
        SIGTERM, else its last heartbeat (a VM that vanished says nothing), else the judgement."""
        lost_at, by = st.updated_at, "record"
        if not st.updated_by.startswith("agent"):
            try:
                hb = rec.read_heartbeat()
            except (StoreError, DamagedRecord):
                hb = None
            if hb is not None and hb.attempt == st.attempt and hb.time < lost_at:
                lost_at, by = hb.time, "last heartbeat"
        self._mark(rec, st.attempt + 1, phases.NOTICED, lost_at=lost_at, lost_by=by,
                   lost=st.state.value, reason=st.reason)

    def _mark(self, rec: RunRecord, attempt: int, phase: str, **detail: Any) -> None:
        """One mark of the recovery timeline (create-only: the first actor's stands). Best
        effort: a timeline with a gap is shown with a '?', a pass that fails is worse."""
        try:
            rec.mark_phase(attempt, phase, self.actor, at=self.now(), **detail)
        except StoreError as e:
            print(f"runner: {rec.run_id}: attempt {attempt}'s {phase} not marked ({e})", file=sys.stderr)

    def _drop_unclaimed(self, rec: RunRecord, att: Attempt, only_ours: bool = False) -> None:
        """Two instances of one rank in one attempt (same name, two zones: a create whose claim
        was taken over mid-walk): keep the one the finished claim names, delete the other.
        ``only_ours``: ``att`` is what this supervisor just made, judged alone."""
        ranks = [i.rank for i in att.instances]
        if not only_ours and len(ranks) == len(set(ranks)):
            return
        claim = rec.read_claim(att.number)
        if claim is None or claim.status != CREATED:
            return  # its create is still being decided: a later pass judges
        named = {(i.get("name"), i.get("zone")) for i in claim.instances}
        for inst in att.instances:
            if (inst.name, inst.zone) not in named:
                self._delete(inst)

    def _delete_attempt(self, att: Attempt, grace_period: float = 0) -> None:
        """Delete every instance of ``att`` in the background (see ``Reaper``)."""
        for inst in att.instances:
            self._delete(inst, grace_period)

    def _delete(self, inst: Instance, grace_period: float = 0) -> None:
        """Delete in the background (never blocks the pass); see ``Reaper``."""
        self.reaper.delete(inst, grace_period)
