"""The spot preemption timeline and the guest: boot (PROVISIONING → STAGING → RUNNING), the
shutdown notice (STOPPING) and power-off, TERMINATED (STOP) or deleted (DELETE); what a
``Guest`` is told, on the fake's own thread, in the order it happened."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Callable, Optional, Union

from google.cloud import compute_v1

from tests.standins.compute.errors import _PACIFIC, _copy, _now_ts
from tests.standins.compute.model import (
    InstancePredicate, SPOT_SHUTDOWN_NOTICE_S, STANDARD_SHUTDOWN_NOTICE_S, _is_spot, _Op,
    _Scheduled, _Shutdown, _Vm,
)


class PreemptionTimeline:
    """The time-driven part of ``ComputeFake``; runs under its lock."""

    def preempt(self, zone: str, name: str, project: Optional[str] = None) -> compute_v1.Operation:
        """Preempt a running spot VM now, exactly as a GCE preemption looks to the API."""
        with self.lock:
            self._tick()
            vm = self._vms.get((project or self.project, zone, name))
            if vm is None:
                raise KeyError(f"no instance {zone}/{name}")
            if not _is_spot(vm.instance):
                raise ValueError(f"{zone}/{name} is not a spot/preemptible VM")
            if vm.instance.status not in ("PROVISIONING", "STAGING", "RUNNING"):
                raise ValueError(f"{zone}/{name} is {vm.instance.status}; only a live VM can be "
                                 "preempted")
            return self._preempt(vm)

    def preempt_after(self, name_or_predicate: Union[str, InstancePredicate], seconds: float,
                      *, zone: Optional[str] = None, project: Optional[str] = None) -> None:
        """In ``seconds``, preempt every running spot VM with that name (or matching predicate).

        It takes effect at the fake's next clock tick (every 50 ms while served), or at the
        first request or inspection helper call after the deadline, whichever comes first.
        """
        with self.lock:
            self._scheduled.append(_Scheduled(time.monotonic() + seconds, name_or_predicate,
                                              zone, project))

    # ---- internals: time-driven state --------------------------------------------------------

    def _tick(self) -> None:
        """Apply what time has made true: boots that finished, shutdowns whose guest halted or
        whose notice ran out, scheduled preemptions."""
        now = time.monotonic()
        for vm in list(self._vms.values()):
            self._boot_status(vm, now)
            sd = vm.shutdown
            if sd is not None and (now >= sd.deadline or sd.halted.is_set()):
                self._power_off(vm)
            elif sd is None and vm.run_deadline and now >= vm.run_deadline and \
                    vm.instance.status == "RUNNING":
                action = vm.instance.scheduling.instance_termination_action or "STOP"
                self._begin_shutdown(vm, "DELETE" if action == "DELETE" else "STOP")
        due = [s for s in self._scheduled if s.due <= now]
        self._scheduled = [s for s in self._scheduled if s.due > now]
        for s in due:
            for vm in list(self._vms.values()):
                if s.zone and vm.zone != s.zone or s.project and vm.project != s.project:
                    continue
                hit = (vm.instance.name == s.match if isinstance(s.match, str)
                       else s.match(_copy(vm.instance)))
                live = vm.instance.status in ("PROVISIONING", "STAGING", "RUNNING")
                if hit and _is_spot(vm.instance) and live:
                    self._preempt(vm)

    def _boot_status(self, vm: _Vm, now: float) -> None:
        if vm.instance.status not in ("PROVISIONING", "STAGING"):
            return
        elapsed = now - vm.boot_started
        if elapsed >= vm.boot_seconds:
            self._enter_running(vm)
        elif elapsed >= vm.boot_seconds / 2:
            vm.instance.status = "STAGING"

    def _boot(self, vm: _Vm) -> None:
        vm.boot_started, vm.boot_seconds = time.monotonic(), self.boot_seconds
        vm.instance.last_start_timestamp = _now_ts()
        if self.boot_seconds > 0:
            vm.instance.status = "PROVISIONING"
        else:
            self._enter_running(vm)

    def _enter_running(self, vm: _Vm) -> None:
        vm.instance.status = "RUNNING"
        mrd = vm.instance.scheduling.max_run_duration
        if "max_run_duration" in vm.instance.scheduling and (mrd.seconds or mrd.nanos):
            seconds = mrd.seconds + mrd.nanos / 1e9
            vm.run_deadline = time.monotonic() + seconds * (self.time_scale or 1.0)
            vm.instance.resource_status.scheduling.termination_timestamp = (
                datetime.now(_PACIFIC) + timedelta(seconds=seconds)).isoformat(
                timespec="milliseconds")
        if self.guest is not None:
            vm.guest_running = True
            guest, snap = self.guest, _copy(vm.instance)
            key = (vm.project, vm.zone, vm.instance.name)
            self._to_guest(lambda: guest.on_running(*key, snap))

    def _preempt(self, vm: _Vm) -> compute_v1.Operation:
        op = self._new_op(vm.project, vm.zone, "compute.instances.preempted", vm.instance,
                          user="system", status_message="Instance was preempted.", immediate=True)
        action = vm.instance.scheduling.instance_termination_action or "STOP"
        self._begin_shutdown(vm, "DELETE" if action == "DELETE" else "STOP")
        return op

    def _notice_seconds(self, vm: _Vm) -> float:
        base = SPOT_SHUTDOWN_NOTICE_S if _is_spot(vm.instance) else STANDARD_SHUTDOWN_NOTICE_S
        return base * self.time_scale

    def _begin_shutdown(self, vm: _Vm, action: str, op: Optional["_Op"] = None) -> None:
        """ACPI soft off: STOPPING now, power off when the guest halts or the notice runs out.

        A second stop/delete while STOPPING joins the shutdown in progress (a delete upgrades
        a stop); a TERMINATED VM has nothing to shut down, so a delete removes it at once.
        """
        if op is not None:
            op.done_at = float("inf")  # DONE when the power goes off, not before
        sd = vm.shutdown
        if sd is not None:
            if action == "DELETE":
                sd.action = "DELETE"
            if op is not None:
                sd.ops.append(op)
            return
        if vm.instance.status == "TERMINATED":
            vm.shutdown = _Shutdown(action, time.monotonic(), threading.Event(),
                                    [op] if op else [])
            self._power_off(vm)
            return
        notice = self._notice_seconds(vm) if vm.guest_running or self.guest is None else 0.0
        sd = _Shutdown(action, time.monotonic() + notice, threading.Event(), [op] if op else [])
        vm.shutdown = sd
        vm.instance.status = "STOPPING"
        if self.guest is not None and vm.guest_running:
            guest, key = self.guest, (vm.project, vm.zone, vm.instance.name)

            def soft_off() -> None:
                def script() -> None:
                    try:
                        guest.on_shutdown(*key, notice)
                    except Exception as e:  # noqa: BLE001 - a broken guest fails the test
                        self.internal_errors.append(f"guest on_shutdown failed: {e!r}")
                    finally:
                        sd.halted.set()
                threading.Thread(target=script, name=f"guest-shutdown-{key[2]}",
                                 daemon=True).start()
            self._to_guest(soft_off)
        self._power_off_if_due(vm)

    def _power_off_if_due(self, vm: _Vm) -> None:
        sd = vm.shutdown
        if sd is not None and (time.monotonic() >= sd.deadline or sd.halted.is_set()):
            self._power_off(vm)

    def _power_off(self, vm: _Vm) -> None:
        """G3 mechanical off: the guest is killed, then the VM is TERMINATED or deleted."""
        sd, vm.shutdown = vm.shutdown, None
        assert sd is not None
        key = (vm.project, vm.zone, vm.instance.name)
        if vm.guest_running and self.guest is not None:
            guest = self.guest
            self._to_guest(lambda: guest.on_power_off(*key))
        vm.guest_running = False
        vm.run_deadline = 0.0
        if "resource_status" in vm.instance:
            del vm.instance.resource_status  # terminationTimestamp: cleared when stopped
        if sd.action == "DELETE":
            self._vms.pop(key, None)
            self._release_disks(vm)
        else:
            vm.instance.status = "TERMINATED"
            vm.instance.last_stop_timestamp = _now_ts()
        now = time.monotonic()
        for op in sd.ops:
            op.done_at = now

    # ---- internals: the guest's dispatcher -----------------------------------------------

    def _to_guest(self, call: Callable[[], None]) -> None:
        """Queue a guest callback; one daemon thread delivers them in order, outside the lock."""
        if self._guest_thread is None or not self._guest_thread.is_alive():
            self._guest_thread = threading.Thread(target=self._deliver, name="compute-fake-guest",
                                                  daemon=True)
            self._guest_thread.start()
        self._guest_events.put(call)

    def _deliver(self) -> None:
        while True:
            call = self._guest_events.get()
            if call is None:
                return
            try:
                call()
            except Exception as e:  # noqa: BLE001 - a broken guest must fail the test, loudly
                self.internal_errors.append(f"guest callback failed: {e!r}")

    def close(self) -> None:
        """Stop the guest dispatcher (after delivering what is queued)."""
        if self._guest_thread is not None and self._guest_thread.is_alive():
            self._guest_events.put(None)
            self._guest_thread.join(timeout=30)
