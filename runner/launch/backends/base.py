"""The compute backend interface: one per place a run's "VM" can live (GCE, local Docker).

Plan, then act: ``plan()`` is pure and returns the exact request the backend would send
(``runner submit --dry-run`` prints it, and most tests assert on it); ``create()`` is the only
step that sends it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from entrypoint.record import RunSpec

LABEL_RUNNER = "runner"
LABEL_RUN_ID = "run-id"
LABEL_ATTEMPT = "attempt"
LABEL_STORE = "runner-store"  # runner.naming.store_label of the store the run lives in
RUNNER_LABEL_VALUE = "cos-spot-runner"


class InstanceStatus(str, enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    TERMINATED = "TERMINATED"  # exists but no longer runs (exited container, TERMINATED VM)


@dataclass(frozen=True)
class Instance:
    name: str
    run_label: str
    attempt: int
    status: InstanceStatus
    zone: str = "local"
    exit_code: int | None = None
    store: str = ""  # its LABEL_STORE value; "" on instances made before stores were labelled

    @property
    def alive(self) -> bool:
        return self.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING)


class BackendError(Exception):
    """The backend could not do what was asked; the message says what to do."""


class PermanentBackendError(BackendError):
    """No retry can succeed (e.g. the pinned image is gone): the run fails with this message."""


@dataclass(frozen=True)
class LaunchContext:
    """What a plan needs besides the spec: which attempt, and where the store is."""

    attempt: int
    store_url: str
    heartbeat_interval: float
    sync_interval: float
    grace_period: float
    shm_size: str


class ComputeBackend(ABC):
    name: str
    # A VM's serial console shows what happened before the job started (driver install, image
    # pull); a local container has no such phase, its console is the job's own output.
    has_startup_console: bool = False
    # The store whose instances this backend lists and deletes (runner.naming.store_label);
    # None: every runner instance, whatever its store (tests that own the whole host or project).
    store_label: str | None = None

    def bind_store(self, store_url: str) -> "ComputeBackend":
        """Keep to ``store_url``'s instances: other stores may reuse our run ids on this host/project."""
        from runner.naming import store_label

        self.store_label = store_label(store_url)
        return self

    def _ours(self, instances: list[Instance]) -> list[Instance]:
        """The instances of this backend's store. Unlabelled ones (made before instances carried
        their store) count as ours, as they did then, so an upgrade never orphans a live run."""
        if self.store_label is None:
            return instances
        return [i for i in instances if i.store in ("", self.store_label)]

    def foreign(self, instance: Instance) -> bool:
        """Whether ``instance`` (found by name, e.g. on a create that hit 409) is another store's."""
        return self.store_label is not None and instance.store not in ("", self.store_label)

    def name_taken(self, instance: Instance) -> BackendError:
        return BackendError(
            f"instance {instance.name} already exists and belongs to a run of another store "
            f"(label {LABEL_STORE}={instance.store}); run ids must be unique per Docker host / GCE "
            "project across stores: delete or finish that run, or submit this one under another id")

    def owns(self, spec: RunSpec) -> bool:
        """Whether this backend (its project, say) is where ``spec``'s instances live."""
        return True

    def prepare(self, spec: RunSpec) -> RunSpec:
        """Check the spec against the provider and pin moving references, once, at submit.

        May call the provider's API. Returns the spec to record; raises ``BackendError`` with
        the fix when the spec cannot work (unknown zone, impossible machine/GPU shape...).
        """
        return spec

    @abstractmethod
    def plan(self, spec: RunSpec, ctx: LaunchContext) -> Any:
        """The request that ``create`` would send. Pure: no I/O."""

    @abstractmethod
    def create(self, plan: Any) -> Instance:
        """Create the instance. Idempotent: if one of that name exists, returns it (409)."""

    @abstractmethod
    def list(self, run_id: str | None = None) -> list[Instance]:
        """Every instance this tool made (or only one run's), in a single backend call."""

    @abstractmethod
    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        """Stop (SIGTERM, then kill after ``grace_period``) and remove. Missing: does nothing.

        May block for the whole grace period (a job that ignores SIGTERM): the supervisor calls
        it from background workers, several at once, so it must be safe to call concurrently.
        """

    @abstractmethod
    def preempt(self, instance: Instance, grace_period: float) -> None:
        """Do what a spot preemption does: SIGTERM, ``grace_period`` seconds, kill, remove."""

    def restart_in_place(self, instance: Instance, plan: Any) -> Instance | None:
        """Bring a stopped instance back as the attempt ``plan`` describes, keeping its disks.

        Returns the instance, or None when this backend (or this instance) cannot, in which case
        the caller deletes it and creates a fresh one.
        """
        return None

    def was_preempted(self, name: str, zone: str | None) -> bool:
        """Whether the provider itself preempted this instance (for the journal's reason)."""
        return False

    def logs(self, instance: Instance, tail: int = 100) -> str:
        """The instance's console output (serial console or container logs), if it has one."""
        return ""

    def console(self, instance: Instance, start: int = 0) -> tuple[str, int]:
        """Console output from byte offset ``start``; returns (text, next offset) for --follow."""
        text = self.logs(instance, tail=1_000_000)
        data = text.encode()
        return data[start:].decode("utf-8", "replace"), len(data)

    def provider_events(self, instances: list[str], zones: list[str]) -> list[dict[str, Any]]:
        """What the provider itself recorded about these instances (GCE: zone operations)."""
        return []
