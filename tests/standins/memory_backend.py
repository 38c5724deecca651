"""A compute backend that keeps its instances in a dict: the supervisor's rules, without I/O.

Why a stand-in of its own: the supervisor's rules (restart after a preemption, wait through the
notice, restart in place, stall, stop, races) are about *when* it acts on *which* instance. The
GCE fake tests them through HTTP and real time; here time is a ``Clock`` the test advances, so a
rule test needs no sleeps, no server and no Docker, and reads like the rule it checks.

What it models, as GCE does (docs/architecture.md#recovery-strategies, "an instance going away"):
- ``create`` makes a RUNNING instance; a second create of the same name returns the one there
  (409 = already there), never a second instance.
- A preemption is a timeline: the instance is STOPPING for ``notice_seconds`` (the guest's
  shutdown script runs), then powered off: TERMINATED and kept when the plan's termination action
  is STOP, gone when it is DELETE. The test ends the notice with ``clock.advance()`` (a ``Clock``) or at once
  with ``finish_notice(name)``; ``notice_seconds=0`` powers off at once.
- ``restart_instance_in_place`` starts a TERMINATED instance of a STOP plan again with the new attempt,
  keeping its name; anything else answers None (the caller then deletes and creates).
- ``delete`` records the grace period it was given. A live instance keeps running for that long
  (a job that ignores SIGTERM, as ``docker stop`` and the VM's shutdown script allow it) and is
  then gone; an ended one, or a grace of 0, is gone at once. A missing instance is nothing to do.
- Faults: ``create_errors`` (each create pops one and raises it: a stockout is a
  ``BackendError``, a pinned image gone a ``PermanentBackendError``), ``list_failures`` (that many
  list calls raise), ``on_create`` (runs inside create before the instance exists: another actor
  acting meanwhile).

- A GPU quota, when ``gpu_quota`` is set: each instance takes its spec's ``vm["gpus"]`` (1 by
  default) while it exists (STOPPING included, as GCE counts a VM until it is TERMINATED); a create
  over it is refused like GCE's QUOTA_EXCEEDED and counted in ``quota_refusals``; ``read_quotas``
  answers with limit and live usage, counted in ``quota_reads``.

What it does not model: zones and their catalogue, operations, disks, IAM, consoles, API
latency. Thread-safe: the supervisor deletes from background workers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from entrypoint.record import RunSpec
from runner.launch.admission import Pool, Quotas
from runner.launch.backends.base import (
    BackendError, ComputeBackend, Instance, InstanceStatus, LaunchContext,
)
from runner.naming import label_value, resource_name

# The spot notice between ACPI soft-off and power-off (Scheduling.skipGuestOsShutdown, compute v1
# reference), as the Compute stand-in models it.
SPOT_NOTICE_S = 30.0
ZONE = "memory-a"


class Clock:
    """The time a test controls: pass it as the supervisor's ``now`` and to the backend."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


@dataclass(frozen=True)
class MemoryPlan:
    """What ``create`` would make: the instance name, its labels, and how a preemption ends it."""

    name: str
    run_label: str
    attempt: int
    termination_action: str  # "DELETE" or "STOP", as the spec's vm options say
    store: str
    rank: int = 0
    gpus: float = 0.0


@dataclass
class _Vm:
    instance: Instance
    termination_action: str
    gpus: float = 0.0
    notice_ends: float | None = None  # set while STOPPING
    deleted_at: float | None = None  # set while a delete gives the job its grace period


class MemoryBackend(ComputeBackend[MemoryPlan]):
    """Instances in a dict; preemption through STOPPING as GCE does. See the module docstring."""

    name = "memory"
    self_deletes = True  # as GCE's VMs: the supervisor's rules for them are what these tests check

    def __init__(self, clock: Callable[[], float] = time.time, *, notice_seconds: float = SPOT_NOTICE_S) -> None:
        self.clock = clock
        self.notice_seconds = notice_seconds
        self._lock = threading.RLock()
        self._vms: dict[str, _Vm] = {}
        self.preempted: set[str] = set()
        # What the supervisor asked for, in order: ("create"|"delete"|"restart", name, grace).
        self.calls: list[tuple[str, str, float]] = []
        self.create_errors: list[BackendError] = []
        self.list_failures = 0
        self.on_create: Callable[[MemoryPlan], None] | None = None
        self.gpu_quota: float | None = None
        self.quota_reads = 0
        self.quota_refusals = 0

    # ---- the interface ----
    @classmethod
    def keeps_stopped(cls, spec: RunSpec) -> bool:
        return (spec.vm or {}).get("termination_action") == "STOP"  # as GCE's terminationAction

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> MemoryPlan:
        return MemoryPlan(name=resource_name(spec.run_id, ctx.attempt), run_label=label_value(spec.run_id),
                          attempt=ctx.attempt,
                          termination_action=str(spec.vm.get("termination_action", "DELETE")),
                          store=self.store_label or "", rank=rank, gpus=float(spec.vm.get("gpus", 1)))

    QUOTA = "memory/GPUS"

    def quota_needs(self, spec: RunSpec) -> tuple[dict[str, float], ...]:
        if self.gpu_quota is None:
            return ()
        return ({self.QUOTA: float(spec.vm.get("gpus", 1)) * max(1, spec.nodes)},)

    def read_quotas(self, keys: set[str]) -> Quotas:
        with self._lock:
            self.quota_reads += 1
            if self.gpu_quota is None or self.QUOTA not in keys:
                return Quotas()
            self._settle()
            return Quotas({self.QUOTA: Pool(self.QUOTA, self.gpu_quota, self._gpus_in_use())})

    def _gpus_in_use(self) -> float:
        return sum(vm.gpus for vm in self._vms.values() if vm.instance.status != InstanceStatus.TERMINATED)

    def create_instance(self, plan: MemoryPlan) -> Instance:
        with self._lock:
            self.calls.append(("create", plan.name, 0.0))
            if self.create_errors:
                raise self.create_errors.pop(0)
        if self.on_create is not None:
            self.on_create(plan)  # outside the lock: it may call back into this backend
        with self._lock:
            self._settle()
            vm = self._vms.get(plan.name)
            if vm is None:
                if self.gpu_quota is not None and self._gpus_in_use() + plan.gpus > self.gpu_quota:
                    self.quota_refusals += 1
                    raise BackendError(f"Quota 'GPUS' exceeded.  Limit: {self.gpu_quota:g} (memory)")
                vm = self._vms[plan.name] = _Vm(
                    Instance(plan.name, plan.run_label, plan.attempt, InstanceStatus.RUNNING, ZONE,
                             store=plan.store, rank=plan.rank), plan.termination_action, plan.gpus)
            return vm.instance

    def list(self, run_id: str | None = None) -> list[Instance]:
        with self._lock:
            if self.list_failures > 0:
                self.list_failures -= 1
                raise BackendError("listing instances failed (injected)")
            self._settle()
            found = [vm.instance for vm in self._vms.values()
                     if run_id is None or vm.instance.run_label == label_value(run_id)]
        return self._ours(found)

    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        with self._lock:
            self.calls.append(("delete", instance.name, grace_period))
            vm = self._vms.get(instance.name)
            if vm is None:
                return
            if grace_period > 0 and vm.instance.alive:
                ends = self.clock() + grace_period
                vm.deleted_at = ends if vm.deleted_at is None else min(vm.deleted_at, ends)
            else:
                del self._vms[instance.name]

    def preempt(self, instance: Instance, grace_period: float = 0) -> None:
        self.begin_preemption(instance.name)

    def restart_instance_in_place(self, instance: Instance, plan: MemoryPlan) -> Instance | None:
        with self._lock:
            self._settle()
            vm = self._vms.get(instance.name)
            if vm is None or vm.termination_action != "STOP" or vm.instance.status != InstanceStatus.TERMINATED:
                return None
            self.calls.append(("restart", instance.name, 0.0))
            vm.instance = replace(vm.instance, status=InstanceStatus.RUNNING, attempt=plan.attempt, exit_code=None)
            return vm.instance

    def was_preempted(self, names: Sequence[str], zone: str | None) -> bool:
        with self._lock:
            return any(name in self.preempted for name in names)

    # ---- what a test does to the world ----
    def begin_preemption(self, name: str) -> None:
        """GCE preempts ``name``: STOPPING now, powered off ``notice_seconds`` later."""
        with self._lock:
            vm = self._vms[name]
            self.preempted.add(name)
            vm.instance = replace(vm.instance, status=InstanceStatus.STOPPING)
            vm.notice_ends = self.clock() + self.notice_seconds

    def finish_notice(self, name: str) -> None:
        """Cut the power now: the notice of ``name``'s preemption is over."""
        with self._lock:
            vm = self._vms[name]
            vm.notice_ends = self.clock()
            self._settle()

    def end(self, name: str, exit_code: int | None = None) -> None:
        """The instance stopped by itself (its guest powered off, the container exited)."""
        with self._lock:
            vm = self._vms[name]
            vm.instance = replace(vm.instance, status=InstanceStatus.TERMINATED, exit_code=exit_code)

    def vanish(self, name: str) -> None:
        """The instance is gone without the supervisor deleting it (deleted by hand, say)."""
        with self._lock:
            self._vms.pop(name, None)

    def instances(self) -> dict[str, Instance]:
        """Every instance by name, as the timeline stands now."""
        with self._lock:
            self._settle()
            return {name: vm.instance for name, vm in self._vms.items()}

    def creates(self) -> list[str]:
        with self._lock:
            return [name for what, name, _ in self.calls if what == "create"]

    # ---- the timeline ----
    def _settle(self) -> None:
        """Power off every instance whose notice is over (called with the lock held)."""
        now = self.clock()
        for name, vm in list(self._vms.items()):
            if vm.deleted_at is not None and now >= vm.deleted_at:
                del self._vms[name]  # its grace period is over: killed and removed
                continue
            if vm.notice_ends is None or now < vm.notice_ends:
                continue
            vm.notice_ends = None
            if vm.termination_action == "STOP":
                vm.instance = replace(vm.instance, status=InstanceStatus.TERMINATED)
            else:
                del self._vms[name]
