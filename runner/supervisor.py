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
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from entrypoint.record import IllegalTransition, RunRecord, RunState, State, list_run_ids
from entrypoint.store import PreconditionFailed, Store
from runner.backends.base import BackendError, ComputeBackend, Instance, InstanceStatus, LaunchContext
from runner.naming import label_value, resource_name

if TYPE_CHECKING:
    from runner.notify import TransitionNotifier


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


def default_actor() -> str:
    return f"supervisor@{socket.gethostname()}.{os.getpid()}"


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
        self._backoff: dict[str, float] = {}  # run id -> time before which no create is tried
        self._delays: dict[str, float] = {}

    def _next_delay(self, run_id: str) -> float:
        delay = min(300.0, max(self.settings.poll_interval, self._delays.get(run_id, 0) * 2))
        self._delays[run_id] = delay
        return delay

    # ---- passes ----
    def reconcile_all(self) -> dict[str, RunState]:
        """One pass over every run in the store; one backend list call in all."""
        by_label: dict[str, list[Instance]] = {}
        try:
            listed = self.backend.list()
            run_ids = list_run_ids(self.store)
        except Exception as e:  # noqa: BLE001 - one API error must not end supervision
            print(f"runner: listing instances or runs failed this pass ({type(e).__name__}: {e}); "
                  "will try again next pass", file=sys.stderr)
            return {}
        for inst in listed:
            by_label.setdefault(inst.run_label, []).append(inst)
        out = {}
        for run_id in run_ids:
            st = self.reconcile(run_id, by_label.get(label_value(run_id), []))
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
            return None

    def _reconcile(self, run_id: str, instances: list[Instance] | None) -> RunState | None:
        rec = RunRecord(self.store, run_id)
        cur = rec.read_state()
        if cur is None:
            return None
        spec = rec.read_spec()
        if spec is not None and not self.backend.owns(spec):
            return cur[0]  # made in another project: this supervisor must not touch it
        if instances is None:
            instances = self.backend.list(run_id)
        try:
            self._step(rec, cur, instances)
        except (PreconditionFailed, IllegalTransition):
            pass  # another actor wrote first; the next pass decides on fresh state
        except BackendError as e:
            # Out of capacity in every zone, a transient API failure...: the run keeps its
            # state, the journal says why, and the next pass (after a backoff) tries again.
            self._backoff[run_id] = self.now() + self._next_delay(run_id)
            rec.event(self.actor, None, None, f"create failed, retrying in {self._delays[run_id]:.0f}s: {e}",
                      attempt=cur[0].attempt)
        after = rec.read_state()
        if after is not None and self.notifier is not None:
            # After the step, so this pass's own transitions go out now. Never raises; the
            # webhook is called from another thread, so a dead one cannot slow this pass.
            self.notifier.observe(rec, *after)
        return after[0] if after else None

    # ---- one step ----
    def _step(self, rec: RunRecord, cur: tuple[RunState, int], instances: list[Instance]) -> None:
        st, _ = cur
        if st.state.terminal:
            for inst in instances:
                self.backend.delete(inst)
            return
        if rec.stop_requested():
            for inst in instances:
                self.backend.delete(inst, self.settings.grace_period)
            rec.transition(State.STOPPED, self.actor, expected=cur, reason="stop requested")
            return
        # An instance of an older attempt must never run beside the current one.
        for inst in instances:
            if inst.attempt < st.attempt:
                self.backend.delete(inst)
        current = next((i for i in instances if i.attempt == st.attempt), None)

        if st.state == State.PENDING:
            self._start_attempt(rec, cur, "first attempt")
        elif st.state in (State.PROVISIONING, State.BOOTING):
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
                self.backend.delete(inst)
            rec.transition(
                State.FAILED, self.actor, expected=cur,
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
                new = rec.transition(State.PREEMPTED, self.actor, expected=cur,
                                     reason="instance vanished before the job started")
                self._restart(rec, new, None)
            return
        if inst.alive and self.now() - st.updated_at > self.settings.stall_window:
            new = rec.transition(
                State.STALLED, self.actor, expected=cur,
                reason=f"still booting after {self.now() - st.updated_at:.0f}s (window {self.settings.stall_window:.0f}s)")
            self._restart(rec, new, inst)
        elif not inst.alive:
            tail = self.backend.logs(inst, tail=5).strip().replace("\n", " | ")
            new = rec.transition(
                State.PREEMPTED, self.actor, expected=cur,
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
            new = rec.transition(
                State.PREEMPTED, self.actor, expected=cur,
                reason=f"instance {what} without recording an outcome (preempted or lost)",
            )
            self._restart(rec, new, inst)
            return
        stalled_for = self._stalled_for(rec, st)
        if stalled_for is not None:
            new = rec.transition(
                State.STALLED, self.actor, expected=cur,
                reason=f"no progress for {stalled_for:.0f}s (window {self.settings.stall_window:.0f}s)",
            )
            self._restart(rec, new, inst)

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
            self.backend.delete(inst, self.settings.grace_period if inst.alive else 0)
        max_restarts = spec.max_restarts if spec else 0
        restarts = st.restarts
        if st.state != State.ERRORED and restarts >= max_restarts:
            rec.transition(
                State.FAILED, self.actor, expected=cur,
                reason=f"gave up after {restarts} restarts (max_restarts={max_restarts}); last: {st.reason}",
            )
            return
        self._start_attempt(rec, cur, f"restart after {st.state.value.lower()}: {st.reason}",
                            reuse=inst if keep else None)

    def _start_attempt(self, rec: RunRecord, cur: tuple[RunState, int], reason: str,
                       reuse: Instance | None = None) -> None:
        st, _ = cur
        if rec.stop_requested():
            rec.transition(State.STOPPED, self.actor, expected=cur, reason="stop requested")
            return
        attempt = st.attempt + 1
        counted = st.state in (State.PREEMPTED, State.STALLED)
        rec.transition(
            State.PROVISIONING, self.actor, expected=cur, reason=reason, attempt=attempt,
            instance=reuse.name if reuse else resource_name(rec.run_id, attempt), exit_code=None,
            restarts=st.restarts + (1 if counted else 0),
        )
        if reuse is not None:
            spec = rec.read_spec()
            assert spec is not None
            if self.backend.restart_in_place(reuse, self.backend.plan(spec, self.launch_context(attempt))):
                return
            self.backend.delete(reuse)  # could not be restarted: a fresh VM, any zone
        self._create(rec, attempt)

    def _create_grace(self) -> float:
        """How long a claimed attempt may go unlisted before its instance counts as lost."""
        return max(60.0, 3 * self.settings.poll_interval)

    def launch_context(self, attempt: int) -> LaunchContext:
        """What a plan for ``attempt`` needs besides the spec (also what ``--dry-run`` shows)."""
        return LaunchContext(
            attempt=attempt,
            store_url=self.settings.store_url,
            heartbeat_interval=self.settings.heartbeat_interval,
            sync_interval=self.settings.sync_interval,
            grace_period=self.settings.grace_period,
            shm_size=self.settings.shm_size,
        )

    def _create(self, rec: RunRecord, attempt: int) -> None:
        if self.now() < self._backoff.get(rec.run_id, 0):
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
        self._backoff.pop(rec.run_id, None)
        self._delays.pop(rec.run_id, None)
        # Re-check after creating: a stop, or another supervisor moving the run on, may have
        # landed between our checks and the create. Then what we made must go at once.
        after = rec.read_state()
        if rec.stop_requested() or after is None or after[0].attempt != attempt:
            self.backend.delete(inst)
