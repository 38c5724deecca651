"""The compute backend interface: one per place a run's "VM" can live (GCE, local Docker).

The unit is the *attempt*: one try at running the job, made of a set of instances (one per node;
one today, N for a gang later). Each instance carries its run, attempt and rank in labels, so a
single listing tells which attempt every instance belongs to.

Plan, then act: ``plan()`` is pure and returns the exact requests the backend would send for an
attempt (``runner submit --dry-run`` prints them, and most tests assert on them); ``create()`` is
the only step that sends them.

Whatever only one backend understands (GCE's machine shapes and termination action, the local
backend's network mode) stays behind the backend: the rest of the runner asks the backend class
(``spec_options``, ``boot_wait``, ``keeps_stopped``, ``pin_image``) instead of reading
``spec.vm`` or checking which backend it holds.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from entrypoint.record import AttemptSettings, RunSpec
from runner.launch.admission import Quotas

LABEL_RUNNER = "runner"
LABEL_RUN_ID = "run-id"
LABEL_ATTEMPT = "attempt"
LABEL_STORE = "runner-store"  # runner.naming.store_label of the store the run lives in
LABEL_RANK = "rank"  # the instance's place in its attempt (0 for a single-instance attempt)
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
    rank: int = 0  # its LABEL_RANK value; 0 on instances made before attempts had ranks
    # Its address on the gang's private network (GCE: the internal IP; local: the container's
    # name), where a backend knows it; rank 0's is the gang's rendezvous endpoint.
    address: str = ""

    @property
    def alive(self) -> bool:
        return self.status in (InstanceStatus.STARTING, InstanceStatus.RUNNING)

    @property
    def going_away(self) -> bool:
        """In its shutdown notice (GCE STOPPING: the guest runs its shutdown script, the agent makes
        its final sync). No one may act on it until it is gone or stopped: deleting it would cut
        the final sync short, and a replacement would run beside it."""
        return self.status == InstanceStatus.STOPPING


@dataclass(frozen=True)
class Attempt:
    """One attempt of a run as the backend sees it: the instances that carry its number.

    The supervisor judges attempts, not instances: an attempt runs only while every one of its
    instances runs, is going away while any is in its shutdown notice, and has ended once none
    runs (a lost node ends the whole attempt).
    """

    number: int
    instances: tuple[Instance, ...]

    @property
    def alive(self) -> bool:
        return bool(self.instances) and all(i.alive for i in self.instances)

    @property
    def going_away(self) -> bool:
        return any(i.going_away for i in self.instances)

    @property
    def ended(self) -> bool:
        """No instance runs or is in its notice: what is left can be deleted or restarted."""
        return not any(i.alive or i.going_away for i in self.instances)

    @property
    def lead(self) -> Instance:
        """Rank 0 (the instance whose console and zone describe the attempt)."""
        return min(self.instances, key=lambda i: i.rank)

    @property
    def names(self) -> list[str]:
        return [i.name for i in sorted(self.instances, key=lambda i: i.rank)]

    @property
    def exit_code(self) -> int | None:
        return self.lead.exit_code

    def status_text(self) -> str:
        """How the attempt ended or stands, for the journal ("exited with 137", "terminated")."""
        lead = self.lead
        if lead.exit_code is not None:
            return f"exited with {lead.exit_code}"
        return lead.status.value.lower()


def group_attempts(instances: Iterable[Instance]) -> dict[int, Attempt]:
    """Instances (of one run) grouped into their attempts, by attempt number."""
    by_number: dict[int, list[Instance]] = {}
    for inst in instances:
        by_number.setdefault(inst.attempt, []).append(inst)
    return {n: Attempt(n, tuple(sorted(insts, key=lambda i: i.rank))) for n, insts in by_number.items()}


NodePlan = TypeVar("NodePlan")


@dataclass(frozen=True)
class AttemptPlan(Generic[NodePlan]):
    """The exact requests that create an attempt: one backend-typed plan per instance (rank order).

    Pure data (``plan`` makes it without I/O), so ``--dry-run`` prints it and tests assert on it.
    """

    run_id: str
    attempt: int
    nodes: tuple[NodePlan, ...] = field(default_factory=tuple)

    @property
    def only(self) -> NodePlan:
        """The single instance's plan of a one-instance attempt (what every run is today)."""
        if len(self.nodes) != 1:
            raise ValueError(f"attempt {self.attempt} of {self.run_id} has {len(self.nodes)} instances")
        return self.nodes[0]


class BackendError(Exception):
    """The backend could not do what was asked; the message says what to do."""


class PermanentBackendError(BackendError):
    """No retry can succeed (e.g. the pinned image is gone): the run fails with this message."""


class CreateClaimLost(Exception):
    """This process no longer holds the attempt's create claim (its lease lapsed and another
    supervisor took it over): it must not insert anything more for that attempt."""


@dataclass(frozen=True)
class LaunchContext:
    """What a plan needs besides the spec: which attempt, where the store is, the zones to walk
    (in the order the recovery strategy chose), and the run's pinned attempt settings."""

    attempt: int
    store_url: str
    settings: AttemptSettings
    zones: tuple[str, ...] = ()  # empty: the spec's zones, in order
    # Makes the create's request ids deterministic per (run, attempt, claim round): a create
    # re-sent by another process (taking over a dead creator's claim) is deduplicated by the
    # API itself. Empty (a dry run): random ids.
    request_key: str = ""
    # Called with the zone before each insert; raises ``CreateClaimLost`` once this process no
    # longer holds the attempt's create claim, so a zone walk that outlived its lease stops.
    before_insert: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    @property
    def heartbeat_interval(self) -> float:
        return self.settings.heartbeat_interval

    @property
    def sync_interval(self) -> float:
        return self.settings.sync_interval

    @property
    def grace_period(self) -> float:
        return self.settings.grace_period

    @property
    def shm_size(self) -> str:
        return self.settings.shm_size


class ComputeBackend(ABC, Generic[NodePlan]):
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

    # ---- what only this backend understands (asked of the class: no client needed) ----
    @classmethod
    def spec_options(cls, cfg: Any) -> dict[str, Any]:
        """The backend-specific part of a new run's spec (``RunSpec.vm``), from the config.

        Pinned at submit, so every attempt of the run gets the same kind of instance.
        """
        return {}

    @classmethod
    def spec_shape(cls, cfg: Any) -> tuple[str | None, str | None]:
        """(machine type, GPU) recorded in a new run's spec; (None, None) where there are none."""
        return None, None

    @classmethod
    def check_store(cls, store_url: str) -> None:
        """Raise ``BackendError`` (with the fix) for a store this backend's instances could never
        reach; checked at submit, before anything is written."""

    @classmethod
    def unchecked_by_dry_run(cls, spec: RunSpec) -> list[str]:
        """What ``submit`` would check against the provider that ``--dry-run`` (no credentials,
        no API) leaves unchecked, one line each."""
        return []

    # How many instances one attempt may have on this backend (a gang's size); 1: no gangs.
    max_nodes: int = 1

    @classmethod
    def check_nodes(cls, nodes: int) -> None:
        """Refuse (at submit and in a dry run, before anything is written) a gang this backend
        cannot create."""
        if nodes > cls.max_nodes:
            raise BackendError(
                f"--nodes {nodes}: the {cls.name} backend runs at most {cls.max_nodes} node(s) per attempt; "
                + ("it has no multi-node gangs yet: use --backend local or nodes = 1" if cls.max_nodes == 1
                   else f"use --nodes {cls.max_nodes} or fewer"))

    # ---- the queue (runner.launch.admission) ----
    def quota_needs(self, spec: RunSpec) -> tuple[dict[str, float], ...]:
        """What one attempt of ``spec`` takes from the provider's quotas, per region it may use
        (``{"SCOPE/METRIC": amount}``, see ``admission``); (): nothing counted (no quotas here)."""
        return ()

    def read_quotas(self, keys: set[str]) -> Quotas:
        """The quotas behind ``keys`` as the provider reports them now: one or two API calls per
        pass, whatever the number of waiting runs. Raises ``BackendError`` when they cannot be
        read (the queue then lets the provider's own refusals decide, as before it existed)."""
        return Quotas()

    def quota_fix(self, too_small: Sequence[tuple[str, float, float]]) -> str:
        """How to raise quotas that one attempt outgrows (``Decision.too_small``), one line."""
        return "ask the provider for a higher limit, or submit a smaller shape"

    # Whether an instance deletes itself once its job has ended (a COS VM's startup.sh does; a
    # local container only exits, and the supervisor removes it): the supervisor then leaves a
    # finished attempt's running instances alone for a moment (supervisor.SELF_DELETE_WAIT).
    self_deletes: bool = False

    # Whether an instance of this backend costs money (``ops status`` prices a run's attempts).
    billed: bool = True

    @classmethod
    def boot_wait(cls, spec: RunSpec) -> float:
        """Seconds an instance of ``spec`` may legitimately spend booting before its job starts
        (a GCE GPU VM waits for its driver); the supervisor's boot window is at least this."""
        return 0.0

    @classmethod
    def gpu_of(cls, spec: RunSpec) -> Any:
        """The GPUs an instance of ``spec`` carries (``gce_shapes.GpuShape``), for pricing; None
        where the backend has no machine shapes."""
        return None

    @classmethod
    def keeps_stopped(cls, spec: RunSpec) -> bool:
        """Whether a preempted instance of ``spec`` is kept, stopped, to be restarted in place
        (GCE terminationAction=STOP) rather than replaced."""
        return False

    def prepare(self, spec: RunSpec) -> RunSpec:
        """Check the spec against the provider and pin moving references, once, at submit.

        May call the provider's API. Returns the spec to record; raises ``BackendError`` with
        the fix when the spec cannot work (unknown zone, impossible machine/GPU shape...).
        """
        return spec

    def pin_image(self, image: str) -> str:
        """The image reference every attempt will run: pinned, never a moving tag (a restart must
        run exactly what the first attempt ran). Raises ``BackendError`` with the fix."""
        return image

    # ---- plan (pure) ----
    def plan(self, spec: RunSpec, ctx: LaunchContext) -> AttemptPlan[NodePlan]:
        """The requests that ``create`` would send for attempt ``ctx.attempt``. Pure: no I/O."""
        return AttemptPlan(spec.run_id, ctx.attempt,
                           tuple(self.plan_instance(spec, ctx, rank) for rank in self.ranks(spec)))

    def ranks(self, spec: RunSpec) -> range:
        """The ranks of an attempt's instances: 0 alone, or a gang's 0..N-1."""
        return range(max(1, spec.nodes))

    @abstractmethod
    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> NodePlan:
        """One instance's request (a ``GcePlan``, a ``ContainerPlan``). Pure: no I/O."""

    # ---- act ----
    def create(self, plan: AttemptPlan[NodePlan]) -> Attempt:
        """Create every instance of the attempt, all or nothing: if one cannot be created, those
        already made are deleted and the error is raised. Idempotent: an instance of that name that
        exists already (409) is adopted, unless it belongs to another store."""
        made: list[Instance] = []
        try:
            for node in plan.nodes:
                made.append(self.create_instance(node))
        except BaseException:
            for inst in made:
                try:
                    self.delete(inst)
                except Exception:  # noqa: BLE001 - still listed: the supervisor's next pass deletes it
                    pass
            raise
        return Attempt(plan.attempt, tuple(made))

    @abstractmethod
    def create_instance(self, plan: NodePlan) -> Instance:
        """Create one instance. Idempotent: if one of that name exists, returns it (409)."""

    def start_unstarted(self, attempt: Attempt) -> list[str]:
        """Start the instances of ``attempt`` that were created but never started; returns their names.

        Why: a create is two steps on some backends (the local one: ``docker create``, then
        ``docker start``). A creator killed between them (SIGKILL, a lost machine) leaves an
        instance that lists as STARTING and that nothing would ever start: the run would sit out
        its whole boot window and then be counted as a restart. The supervisor asks this of every
        attempt still provisioning, so its next pass finishes the dead creator's work instead.
        An instance only just created may be its creator's, about to be started: a backend leaves
        those alone for a few seconds (starting one twice is harmless, but an instance must never
        be started again after its job ran).

        Default: none. A GCE insert is one request, and an inserted VM is booted by GCE itself.
        """
        return []

    def restart_in_place(self, attempt: Attempt, plan: AttemptPlan[NodePlan]) -> Attempt | None:
        """Bring a stopped attempt's instances back as the attempt ``plan`` describes, keeping their
        disks. Returns the new attempt, or None when this backend (or an instance) cannot, in which
        case the caller deletes what is left and creates a fresh attempt."""
        if len(attempt.instances) != len(plan.nodes):
            return None
        out = []
        for inst, node in zip(attempt.instances, plan.nodes):
            again = self.restart_instance_in_place(inst, node)
            if again is None:
                return None
            out.append(again)
        return Attempt(plan.attempt, tuple(out))

    def restart_instance_in_place(self, instance: Instance, plan: NodePlan) -> Instance | None:
        """One instance of ``restart_in_place``; None: this backend cannot."""
        return None

    @abstractmethod
    def list(self, run_id: str | None = None) -> list[Instance]:
        """Every instance this tool made (or only one run's), in a single backend call."""

    def attempts(self, run_id: str) -> dict[int, Attempt]:
        """The run's attempts that have instances, by number (one listing)."""
        return group_attempts(self.list(run_id))

    @abstractmethod
    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        """Stop (SIGTERM, then kill after ``grace_period``) and remove. Missing: does nothing.

        May block for the whole grace period (a job that ignores SIGTERM): the supervisor calls
        it from background workers, several at once, so it must be safe to call concurrently.
        """

    @abstractmethod
    def preempt(self, instance: Instance, grace_period: float) -> None:
        """Do what a spot preemption does: SIGTERM, ``grace_period`` seconds, kill, remove."""

    def was_preempted(self, names: Sequence[str], zone: str | None) -> bool:
        """Whether the provider itself preempted any of these instances of one attempt (a gang's
        nodes share a zone), for the journal's reason."""
        return False

    def logs(self, instance: Instance, tail: int = 100) -> str:
        """The instance's console output (serial console or container logs), if it has one."""
        return ""

    def live_output(self, instance: Instance) -> bytes | None:
        """The job's output so far, read from the instance itself rather than the store, or None
        where the backend has no such channel (GCE: the container's log stays on the VM, so the
        store's copy, uploaded every heartbeat, is all there is). Bytes are the same as the
        store's log (both are what the agent copied from the job), so either continues the other.
        """
        return None

    def console(self, instance: Instance, start: int = 0) -> tuple[str, int]:
        """Console output from byte offset ``start``; returns (text, next offset) for --follow."""
        text = self.logs(instance, tail=1_000_000)
        data = text.encode()
        return data[start:].decode("utf-8", "replace"), len(data)

    def provider_events(self, instances: list[str], zones: list[str]) -> list[dict[str, Any]]:
        """What the provider itself recorded about these instances (GCE: zone operations)."""
        return []
