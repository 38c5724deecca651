"""The supervisor: a reconcile loop that brings each run's instance in line with its record.

One pass reads the run record from the store and the instances from the backend (one list call
for all runs), then for each run takes at most one step: start an attempt, restart after a
preemption or stall, end a run whose stop was requested, or clean up after a finished one.

Safety rules, each tied to a property in DESIGN.md §3:
- Every state change is a compare-and-swap against the state the decision was based on, so two
  supervisors on one run cannot both restart it ("one VM per run").
- ``.stop`` is checked before every create and again after it; a run with ``.stop`` is never
  restarted ("stop means stop").
- Instances of older attempts and of finished runs are deleted ("no VM left billing").
- Stall detection looks at when the job's reported progress last changed, falling back to the
  heartbeat only for jobs that report no progress ("progress, not just liveness").
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

import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from entrypoint.record import IllegalTransition, Role, RunRecord, RunSpec, RunState, State, list_run_ids
from entrypoint.store import PreconditionFailed, Store
from runner.launch.backends.base import (
    BackendError, ComputeBackend, Instance, InstanceStatus, LaunchContext, PermanentBackendError,
)
from runner.launch.create_backoff import CreateBackoff
from runner.launch.supervisor_heartbeat import run_pass
from runner.naming import default_actor, label_value, resource_name

if TYPE_CHECKING:
    from runner.ops.notify import TransitionNotifier


@dataclass(frozen=True)
class SupervisorSettings:
    poll_interval: float
    stall_window: float
    heartbeat_interval: float
    sync_interval: float
    grace_period: float
    shm_size: str
    store_url: str

    @classmethod
    def from_config(cls, cfg: object) -> "SupervisorSettings":
        return cls(
            poll_interval=cfg.poll_interval,  # type: ignore[attr-defined]
            stall_window=cfg.stall_window,  # type: ignore[attr-defined]
            heartbeat_interval=cfg.heartbeat_interval,  # type: ignore[attr-defined]
            sync_interval=cfg.sync_interval,  # type: ignore[attr-defined]
            grace_period=cfg.grace_period,  # type: ignore[attr-defined]
            shm_size=cfg.shm_size,  # type: ignore[attr-defined]
            store_url=cfg.store_url,  # type: ignore[attr-defined]
        )


KEPT_ERRORS = 20  # error texts kept per pass (the heartbeat object stays small)


def launch_context(settings: SupervisorSettings, attempt: int) -> LaunchContext:
    """What a plan for ``attempt`` needs besides the spec (also what ``--dry-run`` shows)."""
    return LaunchContext(
        attempt=attempt,
        store_url=settings.store_url,
        heartbeat_interval=settings.heartbeat_interval,
        sync_interval=settings.sync_interval,
        grace_period=settings.grace_period,
        shm_size=settings.shm_size,
    )


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
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.actor = actor or default_actor()
        self.now = now
        self.notifier = notifier
        self.reaper = Reaper(backend)
        # This pass's per-run failures, for the heartbeat: the first few, and how many in all
        # (bounded: an attached supervisor steps one run for days without a store-wide pass).
        self.pass_errors: list[str] = []
        self.pass_error_count = 0
        self.pass_every: float | None = None  # seconds to the next pass (hosted: the schedule)

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
        out = {}
        for run_id in run_ids:
            st = self.reconcile(run_id, None if by_label is None else by_label.get(label_value(run_id), []))
            if st is not None:
                out[run_id] = st
        return out

    def reconcile(self, run_id: str, instances: list[Instance] | None = None) -> RunState | None:
        """One step for one run. Returns its state after the step (None: no such run).

        Never raises for one run's trouble (a damaged record, an API outage): that would stop
        supervision of every other run, stops and clean-ups included. It says so on stderr.
        """
        try:
            return self._reconcile(run_id, instances)
        except Exception as e:  # noqa: BLE001 - deliberately broad, see above
            print(f"runner: supervising {run_id} failed this pass ({type(e).__name__}: {e}); "
                  "will try again next pass", file=sys.stderr)
            self.note_error(f"{run_id}: {type(e).__name__}: {e}")
            return None

    def note_error(self, what: str) -> None:
        """Count a failure of this pass; keep the text of the first ``KEPT_ERRORS``."""
        self.pass_error_count += 1
        if len(self.pass_errors) < KEPT_ERRORS:
            self.pass_errors.append(what[:300])

    def _reconcile(self, run_id: str, instances: list[Instance] | None) -> RunState | None:
        rec = RunRecord(self.store, run_id)
        cur = rec.read_state()
        if cur is None:
            return None
        spec = rec.read_spec()
        if spec is not None and not self.backend.owns(spec):
            return cur[0]  # made in another project: this supervisor must not touch it
        rec.ensure_journaled(cur[0], strict=False)  # its writer may have died before its event
        # A listing made after the state was read can judge it; one from the start of the pass
        # (given by reconcile_all) may predate a restart by another actor: see _step.
        fresh = instances is None
        if instances is None:
            instances = self.backend.list(run_id)
        try:
            self._step(rec, cur, instances, fresh)
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
        if after is not None and self.notifier is not None:
            # After the step, so this pass's own transitions go out now. Never raises; the
            # webhook is called from another thread, so a dead one cannot slow this pass.
            self.notifier.observe(rec, *after)
        return after[0] if after else None

    # ---- one step ----
    def _step(self, rec: RunRecord, cur: tuple[RunState, int], instances: list[Instance],
              fresh: bool = True) -> None:
        st, _ = cur
        if st.state.terminal:
            for inst in instances:
                # Alive: its agent may still be finishing (or another actor's stop is giving it
                # its grace period); a kill here would cut that short.
                self._delete(inst, self.settings.grace_period if inst.alive else 0)
            return
        if rec.stop_requested():
            for inst in instances:
                self._delete(inst, self.settings.grace_period)
            rec.stopped(Role.SUPERVISOR, self.actor, expected=cur, reason="stop requested")
            return
        current = next((i for i in instances if i.attempt == st.attempt), None)
        if (not fresh and st.state != State.PENDING and (current is None or not current.alive)):
            # About to judge the current attempt's instance absent or ended: only on a listing
            # made after the state was read (this one may be older than a restart by another
            # supervisor, whose new instance it cannot show).
            instances = self.backend.list(rec.run_id)
            current = next((i for i in instances if i.attempt == st.attempt), None)
        # An instance of an older attempt must never run beside the current one.
        for inst in instances:
            if inst.attempt < st.attempt:
                self._delete(inst)

        if st.state == State.PENDING:
            self._start_attempt(rec, cur, "first attempt")
        elif st.state == State.PROVISIONING:  # (an old record's BOOTING reads as PROVISIONING)
            self._check_provisioning(rec, cur, current)
        elif st.state == State.RUNNING:
            self._check_running(rec, cur, current)
        elif st.state.needs_restart:
            self._restart(rec, cur, current)

    def _check_provisioning(self, rec: RunRecord, cur: tuple[RunState, int], inst: Instance | None) -> None:
        st, _ = cur
        startup = rec.read_startup(st.attempt)
        if startup and startup.get("status") == "failed":
            # The VM's startup script gave up (GPU never came, image never pulled): no restart
            # would do better, so the run fails with the script's reason.
            if inst is not None:
                self._delete(inst)
            rec.failed(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"startup failed in phase {startup.get('phase')}: {startup.get('reason')}"
                       + (f" ({startup['detail']})" if startup.get("detail") else ""),
            )
            return
        if inst is None:
            claim = rec.read_claim(st.attempt)
            if claim is None:
                self._create(rec, st.attempt)  # covers a crash between state write and create
            elif self.now() - claim["time"] > self._create_grace():
                # It was created and is gone before the job started (deleted, preempted while
                # booting): a lost attempt, counted against max_restarts like any other.
                new = rec.preempted(Role.SUPERVISOR, self.actor, expected=cur,
                                    reason="instance vanished before the job started")
                self._restart(rec, new, None)
            return
        window = self._boot_window(rec.read_spec())
        if inst.alive and self.now() - st.updated_at > window:
            new = rec.stalled(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"still booting after {self.now() - st.updated_at:.0f}s (window {window:.0f}s)")
            self._restart(rec, new, inst)
        elif not inst.alive:
            tail = self.backend.logs(inst, tail=5).strip().replace("\n", " | ")
            new = rec.preempted(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"instance ended before the job started (exit {inst.exit_code}): {tail[-300:]}",
            )
            self._restart(rec, new, inst)

    def _check_running(self, rec: RunRecord, cur: tuple[RunState, int], inst: Instance | None) -> None:
        st, _ = cur
        if inst is not None and inst.status == InstanceStatus.STOPPING:
            return  # the preemption notice is running: let the agent finish its final sync first
        if inst is None or not inst.alive:
            what = "gone" if inst is None else (
                f"exited with {inst.exit_code}" if inst.exit_code is not None else inst.status.value.lower())
            if self.backend.was_preempted(st.instance or "", st.zone):
                what += " after a GCE preemption"
            new = rec.preempted(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"instance {what} without recording an outcome (preempted or lost)",
            )
            self._restart(rec, new, inst)
            return
        stalled_for = self._stalled_for(rec, st)
        if stalled_for is not None:
            new = rec.stalled(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"no progress for {stalled_for:.0f}s (window {self.settings.stall_window:.0f}s)",
            )
            self._restart(rec, new, inst)

    def _boot_window(self, spec: RunSpec | None) -> float:
        """How long an instance may boot before it counts as stalled: the stall window, and for a
        VM that waits for its GPU driver at least that wait (pinned in its spec), whatever this
        supervisor's own config says about GPUs (config checks it only where it has a GPU)."""
        from runner.launch.backends.gce_shapes import waits_for_driver

        if spec is None or not waits_for_driver(spec.backend, spec.machine_type, spec.gpu,
                                                bool(spec.vm.get("no_gpu"))):
            return self.settings.stall_window
        return max(self.settings.stall_window, float(spec.timeouts.get("gpu_timeout", 600)))

    def _stalled_for(self, rec: RunRecord, st: RunState) -> float | None:
        """Seconds without progress, if that exceeds the stall window; else None."""
        now = self.now()
        ref = st.updated_at
        hb = rec.read_heartbeat()
        if hb is not None and hb.attempt == st.attempt:
            if hb.phase in ("restoring", "finishing"):
                ref = max(ref, hb.time)  # syncing, not training: no progress is expected
            elif hb.progress and hb.progress_changed_at:
                ref = max(ref, hb.progress_changed_at)
            else:
                ref = max(ref, hb.time)  # the job reports no progress: liveness is all we have
        idle = now - ref
        return idle if idle > self.settings.stall_window else None

    def _restart(self, rec: RunRecord, cur: tuple[RunState, int], inst: Instance | None) -> None:
        st, _ = cur
        if inst is not None and inst.status == InstanceStatus.STOPPING:
            # A preemption (or stop) is a timeline: the VM is still in its shutdown notice.
            # Acting now would delete a VM that STOP keeps, or start a second beside it: the
            # next pass, after the power-off, restarts in place or creates.
            return
        spec = rec.read_spec()
        keep = (inst is not None and not inst.alive and spec is not None
                and spec.vm.get("termination_action") == "STOP")
        if inst is not None and not keep:
            # Let an agent that is still in its final sync finish it, then remove the instance.
            self._delete(inst, self.settings.grace_period if inst.alive else 0)
            if inst.alive:
                # The next attempt waits until this one no longer runs (a later pass sees it
                # gone): never two live instances of one run, and the pass does not wait.
                return
        max_restarts = spec.max_restarts if spec else 0
        restarts = st.restarts
        if st.restarts_exhausted(max_restarts):
            rec.failed(
                Role.SUPERVISOR, self.actor, expected=cur,
                reason=f"gave up after {restarts} restarts (max_restarts={max_restarts}); last: {st.reason}",
            )
            return
        self._start_attempt(rec, cur, f"restart after {st.state.value.lower()}: {st.reason}",
                            reuse=inst if keep else None)

    def _start_attempt(self, rec: RunRecord, cur: tuple[RunState, int], reason: str,
                       reuse: Instance | None = None) -> None:
        st, _ = cur
        if rec.stop_requested():
            rec.stopped(Role.SUPERVISOR, self.actor, expected=cur, reason="stop requested")
            return
        attempt = st.attempt + 1
        rec.begin_attempt(  # counts the restart when the attempt before was lost
            Role.SUPERVISOR, self.actor, expected=cur, reason=reason,
            instances=[reuse.name if reuse else resource_name(rec.run_id, attempt)],
        )
        if reuse is not None:
            spec = rec.read_spec()
            assert spec is not None
            if self.backend.restart_in_place(reuse, self.backend.plan(spec, self.launch_context(attempt))):
                return
            self._delete(reuse)  # could not be restarted: a fresh VM, any zone
        self._create(rec, attempt)

    def _create_grace(self) -> float:
        """How long a claimed attempt may go unlisted before its instance counts as lost."""
        return max(60.0, 3 * self.settings.poll_interval)

    def launch_context(self, attempt: int) -> LaunchContext:
        """What a plan for ``attempt`` needs besides the spec."""
        return launch_context(self.settings, attempt)

    def _create(self, rec: RunRecord, attempt: int) -> None:
        backoff = CreateBackoff.read(self.store, rec.run_id)  # in the record: one-shot passes too
        if backoff.blocks(self.now(), attempt):
            return
        spec = rec.read_spec()
        if spec is None:
            raise IllegalTransition(f"run {rec.run_id} has no spec.json")
        if rec.stop_requested():
            return  # the next pass records STOPPED
        if not rec.claim_create(attempt, self.actor):
            return  # another supervisor creates (or created) this attempt
        try:
            inst = self.backend.create(self.backend.plan(spec, self.launch_context(attempt)))
        except BaseException:
            rec.release_claim(attempt)  # nothing was created: the next try may claim again
            raise
        backoff.clear()
        # Re-check after creating: a stop, or another supervisor moving the run on, may have
        # landed between our checks and the create. Then what we made must go at once.
        after = rec.read_state()
        if rec.stop_requested() or after is None or after[0].attempt != attempt:
            self._delete(inst)

    def _delete(self, inst: Instance, grace_period: float = 0) -> None:
        """Delete in the background (never blocks the pass); see ``Reaper``."""
        self.reaper.delete(inst, grace_period)
