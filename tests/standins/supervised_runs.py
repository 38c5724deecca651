"""Runs in a local store, watched by supervisors over the in-memory backend, on a test's clock.

The world of the ``tests/test_supervisor_*.py`` files: what a user's submit leaves in the store
(a spec and a PENDING state), what an agent writes from its VM (RUNNING, heartbeats, a startup
failure), and supervisors whose ``now`` is the clock the backend's preemption timeline runs on.
Loaded through ``pytest_plugins`` (tests/conftest.py): the fixture is ``supervised``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest

from entrypoint.record import AttemptSettings, Heartbeat, RunRecord, RunSpec, RunState, State
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from tests.standins.memory_backend import Clock, MemoryBackend

STALL_WINDOW = 60.0
GRACE = 5.0
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64


class SupervisedRuns:
    """One store, one backend, one clock; any number of supervisors on them."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        # The record stamps states with the wall clock; the test's clock starts there and only
        # moves forward, so "seconds since the state was written" means what the rules mean.
        self.clock = Clock(time.time())
        self.backend = MemoryBackend(self.clock)
        self.supervisors: list[Supervisor] = []

    def supervisor(self, actor: str | None = None, **attempt_settings: Any) -> Supervisor:
        """A supervisor on this world's clock. The specs written here pin no attempt settings, so
        these (or ``attempt_settings``) are the ones every attempt gets, as for an old spec."""
        legacy = AttemptSettings(**{"stall_window": STALL_WINDOW, "heartbeat_interval": 1.0, "sync_interval": 1.0,
                                    "grace_period": GRACE, "shm_size": "1g", **attempt_settings})
        s = SupervisorSettings(poll_interval=1.0, store_url=self.store.url, legacy_attempts=legacy)
        sup = Supervisor(self.store, self.backend, s, actor=actor, now=self.clock)
        self.supervisors.append(sup)
        return sup

    # ---- what submit leaves ----
    def submit(self, run_id: str = "exp-1", *, max_restarts: int = 10, termination_action: str = "DELETE",
               backend: str = "memory", **spec: Any) -> RunRecord:
        """``backend`` is what the spec says the run is for (``gce`` for a GPU VM's boot window);
        the memory backend serves it either way."""
        rec = RunRecord(self.store, run_id)
        rec.write_spec(RunSpec(run_id=run_id, image=IMAGE, command=["python3", "-m", "examples.trainer"],
                               backend=backend, max_restarts=max_restarts,
                               vm={"termination_action": termination_action, **spec.pop("vm", {})}, **spec))
        rec.create_state("user@test")
        return rec

    def running(self, **submit: Any) -> tuple[RunRecord, Supervisor]:
        """A run (exp-1) whose first attempt's job has started, and the supervisor that started
        it: where every restart and stall rule begins."""
        rec = self.submit(**submit)
        sup = self.supervisor()
        sup.reconcile("exp-1")
        self.agent_running(rec)
        return rec, sup

    # ---- what the agent on the instance writes ----
    def agent_running(self, rec: RunRecord) -> RunState:
        st = self.state(rec)
        return rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="memory-a")[0]

    def agent_preempted(self, rec: RunRecord) -> RunState:
        """What the agent records on the SIGTERM of a preemption notice."""
        st = self.state(rec)
        return rec.transition(State.PREEMPTED, "agent", expect_attempt=st.attempt,
                              reason="SIGTERM from the VM shutdown")[0]

    def heartbeat(self, rec: RunRecord, step: int | None, *, phase: str = "running",
                  progress_changed_at: float | None = None) -> None:
        now = self.clock()
        rec.write_heartbeat(Heartbeat(
            time=now, attempt=self.state(rec).attempt, phase=phase,
            progress={} if step is None else {"step": step},
            progress_changed_at=None if step is None else (progress_changed_at or now)))

    def startup_failed(self, rec: RunRecord, phase: str, reason: str) -> None:
        attempt = self.state(rec).attempt
        self.store.write(rec.name(rec.startup_name(attempt)),
                         json.dumps({"status": "failed", "phase": phase, "reason": reason}).encode())

    # ---- what a test reads ----
    @staticmethod
    def state(rec: RunRecord) -> RunState:
        cur = rec.read_state()
        assert cur is not None
        return cur[0]

    @staticmethod
    def reasons(rec: RunRecord, to: str) -> list[str]:
        return [ev.get("reason") or "" for _, ev in rec.events() if ev.get("to") == to]

    def settle(self) -> None:
        """Let every supervisor's background deletes finish (the Reaper never blocks a pass)."""
        for sup in self.supervisors:
            assert sup.drain(timeout=10), "a delete did not finish"


@pytest.fixture
def supervised(local_store: LocalStore) -> Iterator[SupervisedRuns]:
    world = SupervisedRuns(local_store)
    yield world
    world.settle()
