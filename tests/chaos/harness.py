"""Shared pieces of the chaos suite: how long to run, and a compute stand-in that sees doubles.

The stand-in (``RaceCompute``) models only what the supervisor's races depend on, each from the
local backend's real behaviour (runner/launch/backends/local.py, Docker's documented semantics):
- ``create`` takes API time (``create_delay``, as a GCE insert or a ``docker run`` does), is
  idempotent by name (409 → the existing instance), and the instance's agent then reports
  RUNNING for its own attempt (``expect_attempt``), as the entrypoint does when it starts;
- ``delete(inst, grace)`` of a job that ignores SIGTERM blocks for the whole grace period and
  then kills it, exactly as ``docker stop --time=grace`` does
  (https://docs.docker.com/reference/cli/docker/container/stop/: "the main process inside the
  container will receive SIGTERM, and after a grace period, SIGKILL"); the container stays
  ``running`` in listings until then. A job that honours SIGTERM is gone at once;
- a preemption with terminationAction=DELETE removes the instance: it is simply not listed.
What it does not model: boot time, zones, STOPPING/TERMINATED VMs kept on disk.

It records a *double* whenever an instance is created while another instance of the same run
is still alive (its job process running): the property "one VM per run" made countable.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from entrypoint.record import IllegalTransition, RunRecord, RunSpec, State
from entrypoint.store import PreconditionFailed, Store
from runner.launch.backends.base import ComputeBackend, Instance, InstanceStatus, LaunchContext
from runner.naming import label_value, resource_name


def cycles(short: int, long: int) -> int:
    """How many cycles a scenario runs: short under ``make test``, long under ``make chaos``."""
    forced = os.environ.get("RUNNER_CHAOS_CYCLES")
    if forced:
        return max(1, int(forced))
    return long if os.environ.get("RUNNER_CHAOS", "").lower() == "long" else short


@dataclass
class Double:
    run_label: str
    created: str
    alive_beside: list[str]
    at: float = field(default_factory=time.time)


class RaceCompute(ComputeBackend):
    """Thread-safe in-memory compute with API latency, SIGTERM-ignoring jobs and a double detector."""

    name = "race"

    def __init__(self, store: Store, create_delay: float = 0.0, hung_runs: set[str] | None = None) -> None:
        self.store = store
        self.create_delay = create_delay
        self.hung_runs = set(hung_runs or ())
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.doubles: list[Double] = []
        self.created: list[str] = []
        self.stopping: set[str] = set()  # deletes in progress (the job is in its grace period)
        self.deleted: list[tuple[str, float]] = []  # (name, grace period it was given)

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> Any:
        return (spec.run_id, ctx.attempt)

    def create_instance(self, plan: Any) -> Instance:
        run_id, attempt = plan
        time.sleep(self.create_delay)
        inst = Instance(resource_name(run_id, attempt), label_value(run_id), attempt, InstanceStatus.RUNNING)
        with self.lock:
            if inst.name in self.instances:
                return self.instances[inst.name]
            beside = [i.name for i in self.instances.values() if i.run_label == inst.run_label and i.alive]
            if beside:
                self.doubles.append(Double(inst.run_label, inst.name, beside))
            self.instances[inst.name] = inst
            self.created.append(inst.name)
        try:  # the agent starts in its instance and reports RUNNING for its own attempt only
            RunRecord(self.store, run_id).transition(State.RUNNING, "agent", expect_attempt=attempt,
                                                     instance=inst.name, zone="local")
        except (PreconditionFailed, IllegalTransition):
            pass  # the run moved on before this instance's agent started: it does not write
        return inst

    def list(self, run_id: str | None = None) -> list[Instance]:
        with self.lock:
            return [i for i in self.instances.values() if run_id is None or i.run_label == label_value(run_id)]

    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        with self.lock:
            cur = self.instances.get(instance.name)
        if cur is None:
            return
        with self.lock:
            self.stopping.add(instance.name)
        try:
            if cur.alive and grace_period > 0 and self._hung(cur):
                time.sleep(grace_period)  # docker stop: SIGTERM ignored, SIGKILL after the grace period
        finally:
            with self.lock:
                if self.instances.pop(instance.name, None) is not None:
                    self.deleted.append((instance.name, grace_period))
                self.stopping.discard(instance.name)

    def preempt(self, instance: Instance, grace_period: float = 0) -> None:
        with self.lock:
            self.instances.pop(instance.name, None)

    def _hung(self, inst: Instance) -> bool:
        return any(label_value(r) == inst.run_label for r in self.hung_runs)

    def alive(self, run_id: str) -> list[Instance]:
        return [i for i in self.list(run_id) if i.alive]


def submit_run(store: Store, run_id: str, max_restarts: int = 1_000_000) -> RunRecord:
    """A run as ``submit`` leaves it for the ``race`` backend: spec and PENDING state."""
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="img@sha256:" + "a" * 64, command=["train"], backend="race",
                           max_restarts=max_restarts))
    rec.create_state("submit")
    return rec


def looping(stop: threading.Event, step: Any, every: float = 0.05) -> threading.Thread:
    """A daemon thread calling ``step()`` every ``every`` seconds until ``stop`` is set."""
    def body() -> None:
        while not stop.is_set():
            step()
            time.sleep(every)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


# A GCE world for the chaos scenarios (the ``gce`` fixture in conftest.py builds it): the real
# GCE backend on the Compute stand-in and the GCS emulator, CPU-only VMs in two zones.
GCE_PROJECT = "test-project"
GCE_IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64
GCE_ZONES = ["us-central1-a", "us-central1-b"]


def gce_supervisor(ctx: Any, offset: float, actor: str) -> Any:
    """A supervisor of ``ctx`` whose clock runs ``offset`` seconds ahead (it judges time only
    through its ``now``), renewing create leases every 0.2 s."""
    from runner.launch.supervisor import Supervisor, SupervisorSettings

    sup = Supervisor(ctx.store, ctx.backend, SupervisorSettings.from_config(ctx.cfg), actor=actor,
                     now=lambda: time.time() + offset)
    sup.lease_renew_every = 0.2
    return sup


def wind_down(stop: threading.Event, threads: list[threading.Thread], supervisors: list[Any],
              join: float = 30, drain: float | None = 30) -> None:
    """End a scenario: stop the looping passes, then wait for each supervisor's background
    deletes (a double is only counted once nothing is still being created or deleted)."""
    stop.set()
    for t in threads:
        t.join(join)
    for sup in supervisors:
        sup.drain(drain)
