"""The embedded local backend: a run's "VM" is a Docker container on this machine.

It mirrors what the COS startup script does on GCE: the same image (pinned by id), the same
agent environment, the store bind-mounted where a VM would reach the bucket. Containers get no
network: the local store is a directory, and a job that needs the network is not a local one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from entrypoint.record import RunSpec
from runner.launch.backends.base import (
    LABEL_ATTEMPT,
    LABEL_RANK,
    LABEL_RUN_ID,
    LABEL_RUNNER,
    LABEL_STORE,
    RUNNER_LABEL_VALUE,
    Attempt,
    AttemptPlan,
    BackendError,
    ComputeBackend,
    Instance,
    InstanceStatus,
    LaunchContext,
    PermanentBackendError,
)
from runner.launch import staged_data
from runner.launch.backends.gang import node_env
from runner.launch.backends.local_mirror import mirror_dir, mirror_mount
from runner.naming import label_value, node_name, resource_name, store_label

STORE_MOUNT = "/var/lib/runner/store"
# On a gang's containers and its network: the network to remove once its last node is gone.
LABEL_NETWORK = "runner-network"
MAX_LOCAL_NODES = 64

_STATUS = {
    "created": InstanceStatus.STARTING,
    "restarting": InstanceStatus.STARTING,
    "running": InstanceStatus.RUNNING,
    "paused": InstanceStatus.RUNNING,
    "removing": InstanceStatus.STOPPING,
    "exited": InstanceStatus.TERMINATED,
    "dead": InstanceStatus.TERMINATED,
}

# Seconds a container may sit ``created`` before the supervisor starts it itself: its creator
# starts it within milliseconds unless it died (see ``LocalBackend.start_unstarted``).
UNSTARTED_AFTER = 5.0
# Docker's ``State.StartedAt`` of a container that never started.
NEVER_STARTED = "0001-01-01T00:00:00Z"


def _ever_started(c: Any) -> bool:
    return (c.attrs.get("State", {}).get("StartedAt") or NEVER_STARTED) != NEVER_STARTED


def docker_time(text: str | None) -> float:
    """Seconds since the epoch of a Docker timestamp (RFC 3339, UTC, nanoseconds); 0 if unreadable."""
    if not text:
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(head + "+00:00").timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class ContainerPlan:
    """Exactly the arguments of ``docker run`` (``containers.run`` in the SDK)."""

    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    labels: dict[str, str]
    volumes: dict[str, dict[str, str]]
    shm_size: str
    stop_timeout: int
    network_mode: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)
    # A gang's node: its private network (``docker network create --internal``), made before the
    # first node and removed with the last. "" for a single container.
    gang_network: str = ""

    def network_cli(self) -> list[str]:
        """``docker network create`` of a gang's network, for ``--dry-run`` ([] without one)."""
        if not self.gang_network:
            return []
        return ["docker", "network", "create", "--internal", *self._label_args(self.network_labels()),
                self.gang_network]

    def network_labels(self) -> dict[str, str]:
        """The gang network's labels: the run's, without the node's rank."""
        return {k: v for k, v in self.labels.items() if k not in (LABEL_RANK, LABEL_NETWORK)}

    @staticmethod
    def _label_args(labels: dict[str, str]) -> list[str]:
        return [a for k, v in sorted(labels.items()) for a in ("--label", f"{k}={v}")]

    def docker_cli(self) -> list[str]:
        """The same plan as a ``docker run`` command line, for ``--dry-run``."""
        args = ["docker", "run", "-d", "--name", self.name, "--network", self.network_mode,
                "--shm-size", self.shm_size, "--stop-timeout", str(self.stop_timeout)]
        if self.gang_network:
            args += ["--hostname", self.name]
        args += self._label_args(self.labels)
        for k, v in sorted(self.environment.items()):
            args += ["-e", f"{k}={v}"]
        for host, m in self.volumes.items():
            args += ["-v", f"{host}:{m['bind']}:{m['mode']}"]
        return args + [self.image, *self.command]


def store_dir(store_url: str) -> str:
    """The host directory bind-mounted into every container; refused when Docker cannot mount it.

    Checked at submit (before anything is written) as well as in every plan: a path Docker
    refuses would otherwise fail every create of every pass, for ever.
    """
    if not store_url.startswith("file://"):
        raise BackendError(
            f"the local backend needs a local directory store (file:///DIR), not {store_url}: "
            "its containers have no network. Use --backend gce for a gs:// store."
        )
    path = store_url[len("file://"):]
    if ":" in path:
        # A bind mount is spelled HOST:CONTAINER:MODE; Docker has no escape for ':' in HOST
        # ("invalid volume specification").
        raise BackendError(
            f"the store path {path} contains ':', which Docker cannot bind-mount into the run's "
            "container: use a store directory without ':' (--store or store in runner.toml)"
        )
    return path


# Docker network modes a run may ask for. "none" (the default): the store is a bind-mounted
# directory and a local job needs no network. A gang's ranks will need one to rendezvous: that is
# what the per-run mode is for.
NETWORK_MODES = ("none", "bridge", "host")


def network_mode(spec: RunSpec) -> str:
    """The run's pinned Docker network mode ("none" for specs that predate the option)."""
    mode = (spec.vm or {}).get("network_mode") or "none"
    if mode not in NETWORK_MODES:
        raise PermanentBackendError(f"network_mode {mode!r} in the spec of {spec.run_id} is not one of "
                                    f"{', '.join(NETWORK_MODES)}")
    return mode


class LocalBackend(ComputeBackend[ContainerPlan]):
    name = "local"

    billed = False  # this machine's Docker
    max_nodes = MAX_LOCAL_NODES  # a gang: N containers on a private network

    @classmethod
    def spec_options(cls, cfg: Any) -> dict[str, Any]:
        """The local-only options, pinned in spec.json: the container's network mode."""
        if getattr(cfg, "mirror", None):
            mirror_dir(cfg.mirror)  # refused now, not at every container create
        return {"network_mode": "none"}

    @classmethod
    def check_store(cls, store_url: str) -> None:
        store_dir(store_url)

    @classmethod
    def unchecked_by_dry_run(cls, spec: RunSpec) -> list[str]:
        return ["the image was not looked up in Docker (submit pins it by id)"]

    def pin_image(self, image: str) -> str:
        """The local image's id: a rebuilt tag is another image, and the run keeps this one."""
        from docker.errors import ImageNotFound

        try:
            return self.client.images.get(image).id
        except ImageNotFound:
            raise BackendError(
                f"image {image!r} is not in the local Docker engine: build it first "
                "(`make image` builds cos-spot-runner/workload:dev) and pass --image NAME"
            ) from None

    def __init__(self, client: Any | None = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                self._client = docker.from_env()
                self._client.ping()
            except DockerException as e:
                raise BackendError(
                    f"Docker is not reachable ({e}). Start it (`sudo dockerd &`, or run "
                    "`make setup` which installs and starts it), or set DOCKER_HOST."
                ) from None
        return self._client

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> ContainerPlan:
        gang = spec.nodes > 1
        name = node_name(spec.run_id, ctx.attempt, rank) if gang else resource_name(spec.run_id, ctx.attempt)
        env = {
            **spec.env,
            "RUNNER_RUN_ID": spec.run_id,
            "RUNNER_STORE": "file://" + STORE_MOUNT,
            "RUNNER_ATTEMPT": str(ctx.attempt),
            "RUNNER_CHECKPOINT_DIR": spec.checkpoint_dir,
            "RUNNER_RESULTS_DIR": spec.results_dir,
            "RUNNER_HEARTBEAT_INTERVAL": str(ctx.heartbeat_interval),
            "RUNNER_SYNC_INTERVAL": str(ctx.sync_interval),
            "RUNNER_GRACE_PERIOD": str(ctx.grace_period),
            "RUNNER_INSTANCE": name,
            "RUNNER_ZONE": "local",
            "RUNNER_IMAGE": spec.image,
        }
        labels = {
            LABEL_RUNNER: RUNNER_LABEL_VALUE,
            LABEL_RUN_ID: label_value(spec.run_id),
            "run-id-full": spec.run_id,
            LABEL_ATTEMPT: str(ctx.attempt),
            LABEL_RANK: str(rank),
            LABEL_STORE: store_label(ctx.store_url),
        }
        data_volumes, data_env = staged_data.local_mounts(spec)  # --data: staging dir, read-only views
        env.update(data_env)
        network = ""
        if gang:
            # Its own network per attempt: the generation's nodes reach each other by container
            # name (Docker's embedded DNS on a user-defined network) and nothing else: --internal
            # has no route out, as a local run's "none" had none. A straggler of an older
            # attempt is on another network and cannot reach this generation's rank 0.
            network = resource_name(spec.run_id, ctx.attempt)
            env.update(node_env(spec.run_id, ctx.attempt, rank, spec.nodes,
                                master_addr=node_name(spec.run_id, ctx.attempt, 0)))
            labels[LABEL_NETWORK] = network
        mirror_volumes, mirror_env = mirror_mount(spec)  # a file:// checkpoint mirror, mounted like the store
        env.update(mirror_env)
        return ContainerPlan(
            name=name,
            image=spec.image,
            command=list(spec.command),
            environment=env,
            labels=labels,
            volumes={store_dir(ctx.store_url): {"bind": STORE_MOUNT, "mode": "rw"}, **data_volumes,
                     **mirror_volumes},
            shm_size=ctx.shm_size,
            stop_timeout=max(1, int(round(ctx.grace_period))),
            network_mode=network or network_mode(spec),
            extra={"hostname": name} if gang else {},
            gang_network=network,
        )

    def create(self, plan: AttemptPlan[ContainerPlan]) -> Attempt:
        """A gang's network first, then its containers (all or nothing, ``ComputeBackend.create``);
        a create that failed removes the network too."""
        network = plan.nodes[0].gang_network if plan.nodes else ""
        if not network:
            return super().create(plan)
        self._ensure_network(plan.nodes[0])
        try:
            return super().create(plan)
        except BaseException:
            self._remove_network(network)
            raise

    def _ensure_network(self, node: ContainerPlan) -> None:
        """Create the gang's network unless it exists (a create retried, or taken over). The run's
        networks of older attempts that no container uses any more go first: their nodes were
        removed from outside (``docker rm -f``: no delete of ours ran to remove the network), and
        Docker has only a few dozen address pools for bridge networks."""
        from docker.errors import APIError

        mine = self.client.networks.list(filters={"label": [f"{LABEL_RUN_ID}={node.labels[LABEL_RUN_ID]}",
                                                            f"{LABEL_STORE}={node.labels[LABEL_STORE]}"]})
        for net in mine:
            if net.name != node.gang_network:
                self._remove_network(net.name)
        if any(net.name == node.gang_network for net in mine):
            return
        try:
            self.client.networks.create(node.gang_network, driver="bridge", internal=True,
                                        labels=node.network_labels(), check_duplicate=True)
        except APIError as e:
            if e.status_code != 409:  # 409: another creator made it a moment ago
                raise BackendError(f"docker could not create the gang's network {node.gang_network}: "
                                   f"{e.explanation or e}") from None

    def _remove_network(self, network: str) -> None:
        """Remove a gang's network once no container is on it; left alone while one is (the
        delete of the gang's last node removes it)."""
        from docker.errors import APIError, NotFound

        try:
            for net in self.client.networks.list(names=[network]):
                net.reload()
                if not net.attrs.get("Containers"):
                    net.remove()
        except (NotFound, APIError):
            pass  # in use (409), or gone already: the last node's delete, or nobody, is left to do it

    def create_instance(self, plan: ContainerPlan) -> Instance:
        """``docker create`` then ``docker start`` (what ``docker run`` does), in two visible steps:
        a container this or an earlier create left ``created`` (adopted on 409) is started too."""
        c = self.create_container(plan)
        if c.status == "created":
            self._start(c)
        return self._instance(c)

    def create_container(self, plan: ContainerPlan) -> Any:
        """The first half of ``create_instance``: the container, created (or adopted) but not started.

        What a creator killed before its ``docker start`` leaves behind; ``start_unstarted`` (the
        supervisor's next pass) or a create of the same plan starts it.
        """
        from docker.errors import APIError, ImageNotFound

        # Look first: on a missing image the SDK's ``run`` pulls it, and a pinned id
        # (sha256:...) would be asked of Docker Hub. A local image is never pulled.
        try:
            self.client.images.get(plan.image)
        except ImageNotFound:
            raise self._image_gone(plan.image) from None
        try:
            return self.client.containers.create(
                plan.image,
                plan.command,
                name=plan.name,
                detach=True,
                environment=plan.environment,
                labels=plan.labels,
                volumes=plan.volumes,
                shm_size=plan.shm_size,
                stop_signal="SIGTERM",
                network_mode=plan.network_mode,
                **plan.extra,
            )
        except ImageNotFound:  # removed between the look and the create
            raise self._image_gone(plan.image) from None
        except APIError as e:
            if e.status_code != 409:
                raise BackendError(f"docker could not create {plan.name}: {e.explanation or e}") from None
        # A container of that name exists: creation is idempotent (an earlier try of this create,
        # perhaps by a process that died before it could start it).
        c = self.client.containers.get(plan.name)
        if self.foreign(self._instance(c)):
            raise self.name_taken(self._instance(c)) from None
        return c

    def _start(self, c: Any) -> None:
        """Start ``c`` and refresh its status. Starting a running container is a no-op (304)."""
        from docker.errors import APIError, NotFound

        try:
            c.start()
            c.reload()
        except NotFound:
            raise BackendError(f"container {c.name} was removed before it could start; "
                               "the next pass creates the attempt again") from None
        except APIError as e:
            raise BackendError(f"docker could not start {c.name}: {e.explanation or e}") from None

    def start_unstarted(self, attempt: Attempt) -> list[str]:
        """Start the attempt's containers that sat ``created`` for ``UNSTARTED_AFTER`` s (their
        creator died between ``docker create`` and ``docker start``).

        A younger one may be its creator's, a moment before its start: left alone. Even if both
        start it, the second start is a no-op; what must never happen is a start after its job
        ran, so a container that was ever started (``State.StartedAt`` set) is never touched.
        """
        from docker.errors import NotFound

        started: list[str] = []
        for inst in attempt.instances:
            if inst.status is not InstanceStatus.STARTING:
                continue
            try:
                c = self.client.containers.get(inst.name)
            except NotFound:
                continue
            age = time.time() - docker_time(c.attrs.get("Created"))
            if c.status != "created" or _ever_started(c) or age < UNSTARTED_AFTER:
                continue
            self._start(c)
            started.append(c.name)
        return started

    @staticmethod
    def _image_gone(image: str) -> PermanentBackendError:
        """The run pins its image by id: a rebuilt tag is another image, so this run cannot go on."""
        shown = image if len(image) <= 24 else image[:19] + "..."
        return PermanentBackendError(
            f"image {shown} pinned by this run is no longer in the local Docker engine "
            "(removed after submit?): `docker load` it back and `submit --restart` the run, or "
            "submit a new --run-id with --image NAME of a current build"
        )

    @staticmethod
    def _instance(c: Any) -> Instance:
        labels = c.labels or {}
        state = c.attrs.get("State", {})
        return Instance(
            name=c.name,
            run_label=labels.get(LABEL_RUN_ID, ""),
            attempt=int(labels.get(LABEL_ATTEMPT, "0")),
            status=_STATUS.get(c.status, InstanceStatus.TERMINATED),
            exit_code=state.get("ExitCode") if c.status in ("exited", "dead") else None,
            store=labels.get(LABEL_STORE, ""),
            rank=int(labels.get(LABEL_RANK, "0") or 0),
            address=c.name if labels.get(LABEL_NETWORK) else "",  # on its gang's network, by name
        )

    def list(self, run_id: str | None = None) -> list[Instance]:
        filters = {"label": [f"{LABEL_RUNNER}={RUNNER_LABEL_VALUE}"]}
        if run_id is not None:
            filters["label"].append(f"{LABEL_RUN_ID}={label_value(run_id)}")
        # ignore_removed: a container removed between the listing and its inspection is simply gone.
        return self._ours([self._instance(c)
                           for c in self.client.containers.list(all=True, filters=filters, ignore_removed=True)])

    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        from docker.errors import APIError, NotFound

        name = instance.name
        network = ""
        try:
            c = self.client.containers.get(name)
            network = (c.labels or {}).get(LABEL_NETWORK, "")
            if c.status in ("running", "restarting", "paused", "created"):
                c.stop(timeout=max(0, int(round(grace_period))))
            c.remove(force=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code not in (404, 409):  # 409: removal already in progress
                raise BackendError(f"docker could not remove {name}: {e.explanation or e}") from None
        if network:
            self._remove_network(network)

    def preempt(self, instance: Instance, grace_period: float) -> None:
        # A spot VM with terminationAction=DELETE: notice, grace, hard stop, gone.
        self.delete(instance, grace_period)

    def live_output(self, instance: Instance) -> bytes | None:
        # stdout only: the agent writes the job's output there and its own log lines to stderr
        # (entrypoint.agent), and Docker keeps the two streams apart
        # (https://docs.docker.com/reference/api/engine/version/v1.57/operations/ContainerLogs.md).
        from docker.errors import NotFound

        try:
            return self.client.containers.get(instance.name).logs(stdout=True, stderr=False)
        except NotFound:
            return None

    def logs(self, instance: Instance, tail: int = 100) -> str:
        from docker.errors import NotFound

        try:
            return self.client.containers.get(instance.name).logs(tail=tail).decode("utf-8", "replace")
        except NotFound:
            return ""
