"""The GCE backend: a run's attempt is a COS spot VM whose startup script starts the container.

``plan()`` builds the exact ``compute_v1.Instance`` for each candidate zone from ``spec.json``,
so a restart recreates the same VM; the one thing it reads is which boot image to use (a READY
warm image of the run's key, else the pinned COS image: gce_boot_image.py), once per create. ``create()`` walks the zones in order and moves on
when a zone is out of capacity or quota (``ZoneFallback``). ``list()`` is one
``aggregatedList`` call for every run, whatever their number.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from entrypoint.record import RunSpec
from runner.launch.backends import vm_metadata as md
from runner.launch.backends.base import (
    Attempt,
    AttemptPlan,
    LABEL_ATTEMPT,
    LABEL_RANK,
    LABEL_RUN_ID,
    LABEL_RUNNER,
    LABEL_STORE,
    RUNNER_LABEL_VALUE,
    BackendError,
    ComputeBackend,
    Instance,
    InstanceStatus,
    LaunchContext,
    PermanentBackendError,
)
from runner.launch.backends import gce_boot_image as boot_images
from runner.launch.backends import gce_provisioning as provisioning
from runner.launch.backends.gce_capacity_advice import capacity_advice
from runner.launch.backends.gce_network import network_interface, network_refusal
from runner.launch.backends.gce_listing import label_filter, list_all_instances
from runner.launch.backends import gce_quota
from runner.launch.backends.gce_gang import GangPlan, create_generation, gang_plan, internal_ip
from runner.launch.backends.gce_zone_walk import (
    GLOBAL_GPU_QUOTA, GLOBAL_GPU_QUOTA_ID, ZONE_RETRYABLE, OverGlobalGpuQuota, ZoneExhausted, global_gpu_quota,
)
from runner.launch.backends.gce_shapes import (
    GpuRequest, ShapeError, boot_disk_type, family, gpu_quota_metric, resolve_gpu, waits_for_driver,
)
from runner.launch.admission import Quotas
from runner.launch import staged_data
from runner.cloud.gcp_clients import ComputeClients, api_errors, api_retry, retry_exhausted_text
from runner.launch.create_backoff import CreateBackoff
from runner.launch.zone_stockouts import STOCKOUT_CODES, ZoneStockouts, record_stockouts
from runner.naming import instance_names, label_value, rank_of, store_label
from runner.shipped_files import startup_scripts

# Every value of compute_v1.Instance.Status, classified (tests/test_gce_statuses.py walks the enum,
# so a value the library adds fails a test instead of passing as "starting"). Meanings from the
# enum's reference (https://docs.cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.Instance.Types.Status).
_STATUS = {
    # Flex-start VMs waiting for capacity (Dynamic Workload Scheduler): on its way, not running.
    "PENDING": InstanceStatus.STARTING,
    "PROVISIONING": InstanceStatus.STARTING,
    "STAGING": InstanceStatus.STARTING,
    "RUNNING": InstanceStatus.RUNNING,
    "REPAIRING": InstanceStatus.RUNNING,
    # Going away: nobody may act on it (or start its replacement) until it is gone or stopped.
    "PENDING_STOP": InstanceStatus.STOPPING,
    "STOPPING": InstanceStatus.STOPPING,
    "SUSPENDING": InstanceStatus.STOPPING,
    # "halted ... releasing quota, IP, tearing down disks": never alive again, and not yet gone.
    "DEPROVISIONING": InstanceStatus.STOPPING,
    "STOPPED": InstanceStatus.TERMINATED,
    "SUSPENDED": InstanceStatus.TERMINATED,
    "TERMINATED": InstanceStatus.TERMINATED,
}
# "A value indicating that the enum field is not set", or a status newer than this table: it is
# not known to run, so it must not look alive; going away is the state nobody acts on.
UNKNOWN_STATUS = InstanceStatus.STOPPING


def classify_status(status: Any) -> InstanceStatus:
    """Our view of a GCE instance status (an enum member or its name)."""
    return _STATUS.get(_status_name(status), UNKNOWN_STATUS)


DEFAULT_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# scheduling.maxRunDuration's range (gcloud --max-run-duration; "Limit the run time of a VM").
MIN_RUN_DURATION_S = 30
MAX_RUN_DURATION_S = 120 * 86400


def vm_options_defaults() -> dict[str, Any]:
    """The GCE-only part of ``spec.json`` (``spec.vm``), with its defaults."""
    return {
        "project": None,
        "vm_image": "projects/cos-cloud/global/images/family/cos-stable",
        "termination_action": "DELETE",
        "max_run_duration_s": None,
        "boot_disk_gb": 50,
        "boot_disk_type": "pd-balanced",
        "data_disk": None,           # an existing disk's name: pins the run to that disk's zone
        "data_disk_gb": None,        # or a per-run disk of this size, deleted with the VM
        "data_mount": "/var/lib/runner/data",
        "service_account": None,     # None: the project's default compute service account
        "scopes": list(DEFAULT_SCOPES),
        "network": "global/networks/default",
        "subnetwork": None,
        "external_ip": True,
        "no_gpu": False,
        "gpu_driver_version": "",
        "warm_images": "auto",       # "off": always boot vm_image (gce_boot_image.py)
        "gpu_count": None,           # built-in GPUs per machineTypes.get, pinned by submit (gce_shapes.py)
        "vcpus": None,               # guestCpus per machineTypes.get, pinned by submit: the queue's CPU need
        "provisioning": provisioning.DEFAULT_MODE,  # spot | standard | spot-then-standard | flex-start
        "fallback_after_s": provisioning.DEFAULT_FALLBACK_AFTER_S,  # spot-then-standard's wait
    }


@dataclass(frozen=True)
class GcePlan:
    """The requests ``create`` will send: one candidate instance per zone, tried in order."""

    name: str
    project: str
    candidates: list[tuple[str, Any]] = field(default_factory=list)  # (zone, compute_v1.Instance)
    request_key: str = ""  # LaunchContext.request_key: deterministic request ids ("" → random)
    before_insert: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    boot: boot_images.BootImage | None = None  # which boot image the candidates use, and why
    gpus: int = 0  # GPUs per VM: what GPUS_ALL_REGIONS must allow (create_instance)
    provisioning: str = "SPOT"  # the candidates' provisioningModel, and why
    provisioning_why: str = ""
    zone_why: tuple[str, ...] = ()  # why the zones are in this order (empty: the recovery strategy's order)
    store_url: str = ""  # where create records the stockouts it meets (capacity/zones.json)

    def request_id(self, zone: str) -> str:
        """The insert's ``requestId`` in ``zone``: the same for the same (run, attempt, claim
        round, instance, zone), so an insert re-sent by whoever takes over a dead creator's
        claim is answered by GCE with the first operation (for 60 minutes, "requestId" in the
        compute v1 reference) instead of making a second VM; the library's own HTTP retries
        resend it too. A new claim round (after a create that made nothing) gives new ids, or
        GCE would replay that round's stockout instead of trying again."""
        if not self.request_key:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_REQUEST_NAMESPACE, f"{self.request_key}/{self.name}/{zone}"))

    def to_dict(self) -> list[dict[str, Any]]:
        from google.cloud import compute_v1

        boot = {"boot": self.boot.to_dict()} if self.boot is not None else {}
        return [{"zone": z, "instance": compute_v1.Instance.to_dict(i), **boot} for z, i in self.candidates]


@dataclass(frozen=True)
class GceAttemptPlan(AttemptPlan[GcePlan]):
    """An attempt's plan on GCE: one ``GcePlan`` per node as every backend has, and for a gang
    the single ``bulkInsert`` per zone that ``create`` sends instead of N inserts (what a dry run
    prints)."""

    gang: GangPlan | None = None


_REQUEST_NAMESPACE = uuid.UUID("6f1c2a9e-5b7d-4c3e-9a51-0d2f8e4b7c10")  # cos-spot-runner's insert ids


class IncompleteListing(BackendError):
    """``aggregatedList`` answered for some zones only: the instances it saw and the zones it
    could not read. Never judged as complete: a VM in an unreachable zone is not a missing VM."""

    def __init__(self, message: str, instances: list[Instance], unreachable: list[str]) -> None:
        super().__init__(message)
        self.instances, self.unreachable = instances, unreachable


# The project-wide GPU quota: over it every zone refuses, so walking zones cannot help.
QUOTA_CONSOLE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"


def global_quota_request(project: str, gpus: int) -> str:
    """How to ask for GPUS_ALL_REGIONS >= ``gpus``: the Cloud Quotas preference gcloud files
    (``gcloud quotas preferences create --service --project --quota-id --preferred-value``,
    https://cloud.google.com/sdk/gcloud/reference/beta/quotas/preferences/create), and the
    console page for those who prefer it. Google reviews increases: the answer can take a while."""
    console = QUOTA_CONSOLE.format(project=project)
    return (f"gcloud quotas preferences create --service=compute.googleapis.com --project={project} "
            f"--quota-id={GLOBAL_GPU_QUOTA_ID} --preferred-value={gpus}\n"
            f"(or request {GLOBAL_GPU_QUOTA} >= {gpus} at {console}, filter {GLOBAL_GPU_QUOTA}; it is "
            "project-wide: while it is short every zone refuses a GPU VM; Google reviews increases)")


def gpu_request(machine_type: str | None, gpu: str | None, vm: dict[str, Any]) -> GpuRequest:
    """The GPUs of a VM of this shape, counting a built-in-GPU type's GPUs as ``machineTypes.get``
    said at submit (``vm["gpu_count"]``), else as gce_shapes knows offline."""
    return resolve_gpu(machine_type or "n1-standard-4", gpu, no_gpu=bool(vm.get("no_gpu")),
                       built_in_count=vm.get("gpu_count"))


def _zone_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _error_reasons(exc_or_op: Any) -> list[str]:
    """The GCE error codes/reasons carried by an API exception or a failed operation."""
    out: list[str] = []
    errors = getattr(getattr(exc_or_op, "error", None), "errors", None)
    if errors:
        out += [e.code for e in errors if getattr(e, "code", None)]
    for e in getattr(exc_or_op, "errors", None) or []:
        if isinstance(e, dict):
            out += [v for k, v in e.items() if k in ("reason", "code") and v]
    msg = str(getattr(exc_or_op, "message", "") or "")
    out += [code for code in ZONE_RETRYABLE if code in msg]
    return out


class GceBackend(ComputeBackend[GcePlan]):
    name = "gce"
    has_startup_console = True
    self_deletes = True  # gcp/startup.sh deletes its own VM once the container exits
    # The hosted supervisor's job (projects/P/locations/L/jobs/J) a preempted VM asks for a pass,
    # set from config by runner.launch.context ("" = none deployed: the VM asks nobody). Not in
    # spec.json: it is where the run is supervised today, not what the run is.
    supervisor_job: str = ""
    # A gang is one bulkInsert, which takes "up to 5,000 VMs with each call"
    # (https://cloud.google.com/compute/docs/instances/using-bulk-api, Limitations); the config's
    # own ceiling (runner.config.MAX_NODES, 64) is the one that binds.
    max_nodes = 64
    # What "now" is to the fallback clock and the stockout history: the supervisor's own clock
    # in production (time.time), a test's clock where the test moves the supervisor's.
    clock: Callable[[], float] = staticmethod(time.time)

    @classmethod
    def spec_options(cls, cfg: Any) -> dict[str, Any]:
        """The GCE-only options, pinned in spec.json so every attempt gets the same VM."""
        return {
            "project": cfg.project,
            "vm_image": cfg.vm_image,
            "termination_action": cfg.termination_action,
            "max_run_duration_s": cfg.max_run_duration or None,
            "boot_disk_gb": cfg.boot_disk_gb,
            "boot_disk_type": cfg.boot_disk_type,
            "data_disk": cfg.data_disk,
            "data_disk_gb": cfg.data_disk_gb or None,
            "data_mount": cfg.data_mount,
            "service_account": cfg.service_account,
            "network": cfg.network,
            "subnetwork": cfg.subnetwork,
            "external_ip": cfg.external_ip,
            "no_gpu": cfg.no_gpu,
            "gpu_driver_version": cfg.gpu_driver_version or "",
            "warm_images": cfg.warm_images,
            "provisioning": cfg.provisioning,
            "fallback_after_s": cfg.fallback_after,
        }

    @classmethod
    def unchecked_by_dry_run(cls, spec: RunSpec) -> list[str]:
        out = ["zones, machine type and GPU were not checked against the Compute API",
               f"the VM image {(spec.vm or {}).get('vm_image')} was not pinned to a concrete image"]
        if (spec.vm or {}).get("warm_images", "auto") != "off":
            out.append("warm boot images were not looked up (a create boots a READY warm image of the run's "
                       "COS image, driver and image digest when one exists: `runner images list`)")
        if "@sha256:" not in spec.image:
            out.append(f"the image {spec.image} is not pinned by digest, which submit refuses")
        return out

    @classmethod
    def spec_shape(cls, cfg: Any) -> tuple[str | None, str | None]:
        return cfg.machine_type, cfg.gpu

    @classmethod
    def boot_wait(cls, spec: RunSpec) -> float:
        """A VM with a GPU waits up to its pinned ``gpu_timeout`` for the driver before the job starts."""
        if not waits_for_driver(spec.backend, spec.machine_type, spec.gpu, bool((spec.vm or {}).get("no_gpu"))):
            return 0.0
        return spec.attempt_settings().gpu_timeout

    @classmethod
    def gpu_of(cls, spec: RunSpec) -> Any:
        """The GPUs a VM of ``spec`` carries (attached or built in); raises ``ShapeError``."""
        return gpu_request(spec.machine_type, spec.gpu, spec.vm or {})

    @classmethod
    def keeps_stopped(cls, spec: RunSpec) -> bool:
        return (spec.vm or {}).get("termination_action") == "STOP"

    def pin_image(self, image: str) -> str:
        if "@sha256:" not in image:
            raise BackendError(
                f"image {image!r} is not pinned to a digest: pass REPO/NAME@sha256:DIGEST (`runner build` "
                "prints it), so every restart runs exactly the same image"
            )
        return image

    def __init__(self, clients: ComputeClients, project: str) -> None:
        self.c = clients
        self.project = project
        self._stores: dict[str, Any] = {}  # store URL -> the store, opened once (_store)

    def owns(self, spec: RunSpec) -> bool:
        # Listing and deleting happen in this backend's project: a run made in another one must
        # not look "gone" (and be restarted) here.
        return (spec.vm or {}).get("project") in (None, self.project)

    # ---- the queue ----
    def quota_needs(self, spec: RunSpec) -> tuple[dict[str, float], ...]:
        gpu = gpu_request(spec.machine_type, spec.gpu, spec.vm or {})
        _, metric = gpu_quota_metric(spec.machine_type or "n1-standard-4", spec.gpu)
        return gce_quota.attempt_needs(spec, metric, gpu.count)

    def read_quotas(self, keys: set[str]) -> Quotas:
        try:
            return gce_quota.read(self.c, self.project, keys, retry=api_retry())
        except api_errors() as e:
            raise BackendError(f"reading the quotas of {self.project}: {_explain(e, self.project)}") from None

    def quota_fix(self, too_small: Sequence[tuple[str, float, float]]) -> str:
        for key, amount, _limit in too_small:
            if key == f"{gce_quota.GLOBAL}/{GLOBAL_GPU_QUOTA}":
                return _one_line(global_quota_request(self.project, int(amount)))
        return (f"request higher limits at {QUOTA_CONSOLE.format(project=self.project)} "
                "(`runner doctor` shows the project's quotas), or submit a smaller shape")

    # ---- submit-time checks ----
    def prepare(self, spec: RunSpec) -> RunSpec:
        """Refuse impossible shapes before any API call, then check zones/types and pin the VM image."""
        import dataclasses
        import sys

        from google.api_core import exceptions as gexc

        vm = {**vm_options_defaults(), **spec.vm}
        machine_type = spec.machine_type or "n1-standard-4"
        try:
            gpu = resolve_gpu(machine_type, spec.gpu, no_gpu=vm["no_gpu"])
            vm["boot_disk_type"] = boot_disk_type(machine_type, vm["boot_disk_type"])
        except ShapeError as e:
            raise BackendError(str(e)) from None
        if gpu.wants_driver and _is_dev_channel(vm["vm_image"]):
            # cos-gpu-installer installs on stable/LTS and beta images only ("We also enable
            # installation on beta images now", https://cos.googlesource.com/cos/tools/+/9d4124b2fe8318ac5ccd82402d1106127aa2b1b9):
            # a dev image would boot, fail the driver step and bill until gpu_timeout.
            raise BackendError(f"{vm['vm_image']} is a COS dev-channel image, on which the GPU driver "
                               "installer does not run: use projects/cos-cloud/global/images/family/"
                               "cos-stable (or cos-beta, cos-NNN-lts) for a GPU run")
        mrd = vm["max_run_duration_s"]
        if mrd and not MIN_RUN_DURATION_S <= float(mrd) <= MAX_RUN_DURATION_S:
            # GCE refuses the insert with a 400 otherwise, on every restart of the run.
            raise BackendError(f"max_run_duration {mrd:g}s is not allowed: GCE accepts between 30 seconds and "
                               f"120 days ({MAX_RUN_DURATION_S}s); set max_run_duration in runner.toml "
                               "within that range, or 0 for no limit")
        if vm["provisioning"] not in provisioning.MODES:
            raise BackendError(f"provisioning {vm['provisioning']!r} is not one of {', '.join(provisioning.MODES)}")
        if vm["provisioning"] == "flex-start":
            refusal = provisioning.flex_start_refusal(machine_type, mrd)
            if refusal:
                raise BackendError(refusal)
        if spec.nodes > 1 and vm["data_disk"]:
            # One read-write disk attaches to one VM: every create of the gang would be refused.
            raise BackendError(f"--nodes {spec.nodes} with data_disk {vm['data_disk']}: a gang cannot share one "
                               "data disk between its nodes; use data_disk_gb (a disk per node, made with "
                               "it) or stage the data from the bucket")
        if not spec.zones:
            raise BackendError("no zones: pass --zones us-central1-a,us-central1-b or set zones in runner.toml")
        project = vm["project"] or self.project
        try:
            usable, built_in, vcpus = self._usable_zones(spec.zones, project, machine_type, gpu)
        except gexc.NotFound as e:
            raise BackendError(str(e.message)) from None
        except api_errors() as e:
            raise BackendError(_explain(e, project)) from None
        if gpu.built_in and built_in is not None:
            vm["gpu_count"] = built_in  # what GCE gives, not what the name suggests
        if vcpus:
            vm["vcpus"] = vcpus  # one VM's CPU quota use, for the queue (gce_quota)
        # A gang's generation holds all its nodes' GPUs at once (one bulkInsert, all or nothing).
        self._refuse_over_global_gpu_quota(project, gpu_request(machine_type, spec.gpu, vm).count,
                                           nodes=max(1, spec.nodes))
        if not usable:
            raise BackendError(
                f"none of the zones {', '.join(spec.zones)} offers {machine_type}"
                + (f" with {gpu.type}" if gpu.type else "")
                + " (see `gcloud compute machine-types list` / `gcloud compute accelerator-types list`)")
        if vm["data_disk"] and len(usable) > 1:
            print(f"runner: note: data disk {vm['data_disk']} is zonal: the run stays in {usable[0]}", file=sys.stderr)
            usable = usable[:1]
        try:
            vm["vm_image"] = self.pin_vm_image(vm["vm_image"])
        except api_errors() as e:
            raise BackendError(_explain(e, project)) from None
        vm["project"] = project
        return dataclasses.replace(spec, zones=usable, vm=vm, machine_type=machine_type)

    def _refuse_over_global_gpu_quota(self, project: str, gpus_per_vm: int, nodes: int = 1) -> None:
        """Refuse at submit a run whose one attempt (one VM, or a gang's N) needs more GPUs than
        ``GPUS_ALL_REGIONS`` allows at all: every zone would refuse it, on every restart. One
        ``projects.get``; a project that cannot be read (permission) is said and left to the
        create to find out."""
        import sys

        gpus = gpus_per_vm * nodes
        if not gpus or getattr(self.c, "projects", None) is None:
            return
        try:
            quotas = self.c.projects.get(project=project, retry=api_retry()).quotas
        except api_errors() as e:
            print(f"runner: warning: could not read the project-wide quotas of {project} "
                  f"({type(e).__name__}); {GLOBAL_GPU_QUOTA} is not checked before the first create",
                  file=sys.stderr)
            return
        limit = next((q.limit for q in quotas if q.metric == GLOBAL_GPU_QUOTA), None)
        if limit is not None and limit < gpus:
            raise BackendError(
                f"the project-wide quota {GLOBAL_GPU_QUOTA} of project {project} is {limit:g}, below the "
                + (f"{gpus} GPU(s) one VM of this run needs" if nodes == 1 else
                   f"{gpus} GPU(s) one attempt of this run needs ({nodes} VMs of {gpus_per_vm})")
                + ": every zone would refuse it. Ask for more "
                f"(`runner doctor` checks it), then submit again: {_one_line(global_quota_request(project, gpus))}")

    def _usable_zones(self, zones: list[str], project: str, machine_type: str,
                      gpu: GpuRequest) -> tuple[list[str], int | None, int]:
        """The zones that offer ``machine_type`` (and the attached GPU), the machine type's
        built-in GPU count as ``machineTypes.get`` reports it (``accelerators[]
        .guestAcceleratorCount``; None when no zone offers it) and its ``guestCpus`` (0: unknown). An unknown zone raises NotFound
        with the fix in its message."""
        import sys

        from google.api_core import exceptions as gexc

        usable, built_in, vcpus = [], None, 0
        for zone in zones:
            try:
                self.c.zones.get(project=project, zone=zone, retry=api_retry())
            except gexc.NotFound:
                raise gexc.NotFound(f"unknown zone {zone!r} in project {project} (see `gcloud compute "
                                    "zones list`)") from None
            missing = []
            try:
                mt = self.c.machine_types.get(project=project, zone=zone, machine_type=machine_type,
                                              retry=api_retry())
                vcpus = int(mt.guest_cpus or 0) or vcpus  # the queue counts them (gce_quota)
                if mt.accelerators:
                    built_in = sum(a.guest_accelerator_count for a in mt.accelerators)
            except gexc.NotFound:
                missing.append(f"machine type {machine_type}")
            if gpu.type:
                try:
                    self.c.accelerator_types.get(project=project, zone=zone, accelerator_type=gpu.type,
                                                 retry=api_retry())
                except gexc.NotFound:
                    missing.append(f"GPU {gpu.type}")
            if missing:
                print(f"runner: warning: zone {zone} has no {' and no '.join(missing)}; skipping it", file=sys.stderr)
            else:
                usable.append(zone)
        return usable, built_in, vcpus

    def pin_vm_image(self, ref: str) -> str:
        """``projects/P/global/images/family/F`` → the concrete image it points at today."""
        from google.api_core import exceptions as gexc

        parts = ref.strip("/").split("/")
        if "family" not in parts:
            return ref
        project, family = parts[parts.index("projects") + 1], parts[-1]
        try:
            img = self.c.images.get_from_family(project=project, family=family, retry=api_retry())
        except gexc.NotFound:
            raise BackendError(f"no image family {family!r} in project {project} (COS families: cos-stable, cos-beta, cos-dev, cos-NNN-lts)") from None
        return f"projects/{project}/global/images/{img.name}"

    # ---- plan (pure, but for one read: which warm boot image exists) ----
    def plan(self, spec: RunSpec, ctx: LaunchContext) -> GceAttemptPlan:
        """As the base class, with the boot image chosen once for every instance of the attempt:
        one ``images.list`` per create at most (none for a dry run, which has no client). A gang
        also gets its bulkInsert (gce_gang.py), built from rank 0's plan: every node of one
        bulkInsert shares its properties, and only the names differ."""
        boot = self.boot_image(spec)
        ctx, choice, zone_why = self._capacity_choices(spec, ctx)
        nodes = tuple(dataclasses.replace(self.plan_instance(spec, ctx, rank, boot, choice), zone_why=zone_why)
                      for rank in self.ranks(spec))
        gang = gang_plan(nodes[0], spec.run_id, ctx.attempt, len(nodes)) if len(nodes) > 1 else None
        return GceAttemptPlan(spec.run_id, ctx.attempt, nodes, gang=gang)

    def _capacity_choices(self, spec: RunSpec, ctx: LaunchContext
                          ) -> tuple[LaunchContext, provisioning.ProvisioningChoice, tuple[str, ...]]:
        """The provisioning model of this create (gce_provisioning.choose, from the run's create
        backoff: how long this attempt has gone without a VM) and its zones in the order the
        store's recent stockouts advise (runner.launch.zone_stockouts), with why. Two reads of
        the store per create; none for a dry run (no client), which plans the first create."""
        vm = {**vm_options_defaults(), **(spec.vm or {})}
        zones = tuple(ctx.zones or spec.zones)
        if self.c is None or not ctx.store_url:
            return ctx, provisioning.choose(vm, None, 0.0), ()
        now = self.clock()
        since, history = None, ZoneStockouts()
        try:
            store = self._store(ctx.store_url)
            if vm["provisioning"] == "spot-then-standard":
                since = CreateBackoff.read(store, spec.run_id).failing_since(ctx.attempt)
            if len(zones) > 1 and not vm["data_disk"]:
                history = ZoneStockouts.read(store)
        except Exception as e:  # noqa: BLE001 - advice only: the create goes on without it
            import sys

            print(f"runner: warning: could not read the create backoff or zone history of {spec.run_id} "
                  f"({type(e).__name__}); spot first, zones in the strategy's order", file=sys.stderr)
        choice = provisioning.choose(vm, since, now)
        if len(zones) < 2 or vm["data_disk"]:
            return ctx, choice, ()
        advised, notes = self._advice(spec, vm, zones, choice.model)
        order, why = history.ranked(zones, now, advised)
        if order == zones:
            return ctx, choice, ()  # nothing changed the strategy's order: nothing to explain
        return dataclasses.replace(ctx, zones=order), choice, tuple(why) + tuple(notes)

    def _advice(self, spec: RunSpec, vm: dict[str, Any], zones: Sequence[str], model: str
                ) -> tuple[dict[str, float], list[str]]:
        """Compute's capacity advice for this create's zones (gce_capacity_advice.py)."""
        try:
            gpu = gpu_request(spec.machine_type, spec.gpu, vm)
        except ShapeError:
            return {}, []
        attached = (gpu.type, gpu.count) if gpu.type and not gpu.built_in else (None, 0)
        return capacity_advice(self.c, vm["project"] or self.project, zones, spec.machine_type or "n1-standard-4",
                               model, max(1, spec.nodes), *attached)

    def _store(self, url: str) -> Any:
        """The store at ``url``, opened once per backend (its client is not free to make)."""
        from entrypoint.stores import open_store

        if url not in self._stores:
            self._stores[url] = open_store(url)
        return self._stores[url]

    def boot_image(self, spec: RunSpec) -> boot_images.BootImage:
        """The READY warm image whose key is the run's (COS image, driver, digest), else the
        configured ``vm_image``. Why a read in a plan: the boot image decides minutes of a
        recovery, and the choice must be in the plan that ``--dry-run`` prints and tests assert.
        A failed listing is said and costs only the warm path: the create goes on cold."""
        import sys

        vm = {**vm_options_defaults(), **(getattr(spec, "vm", None) or {})}
        cold = vm["vm_image"]
        if vm["warm_images"] == "off":
            return boot_images.BootImage(cold, "cold", "warm_images = off")
        if self.c is None:
            return boot_images.BootImage(cold, "cold", "warm images not looked up (dry run: no API call)")
        try:
            gpu = gpu_request(spec.machine_type, spec.gpu, vm)
        except ShapeError as e:
            raise BackendError(str(e)) from None
        key = boot_images.WarmKey.of(cold, vm["gpu_driver_version"], gpu.count, spec.image)
        if key is None:
            return boot_images.choose(None, [], cold, "")
        project = vm["project"] or self.project
        try:
            found = list(self.c.images.list(request={"project": project, "filter": key.list_filter},
                                            retry=api_retry()))
        except Exception as e:  # noqa: BLE001 - the cold path needs no warm image
            print(f"runner: warning: listing warm images in {project} failed ({type(e).__name__}: "
                  f"{getattr(e, 'message', e)}); booting {cold} cold", file=sys.stderr)
            return boot_images.BootImage(cold, "cold", f"listing warm images failed: {type(e).__name__}")
        return boot_images.choose(key, found, cold, project)

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int,
                      boot: boot_images.BootImage | None = None,
                      choice: provisioning.ProvisioningChoice | None = None) -> GcePlan:
        from google.cloud import compute_v1

        vm = {**vm_options_defaults(), **(getattr(spec, "vm", None) or {})}
        project = vm["project"] or self.project
        nnodes = len(self.ranks(spec))
        name = instance_names(spec.run_id, ctx.attempt, nnodes)[rank]
        try:
            gpu = gpu_request(spec.machine_type, spec.gpu, vm)
            disk_type = boot_disk_type(spec.machine_type or "n1-standard-4", vm["boot_disk_type"])
        except ShapeError as e:
            raise BackendError(str(e)) from None
        if boot is None:
            boot = self.boot_image(spec)
        if choice is None:
            choice = provisioning.choose(vm, None, 0.0)
        meta = md.VmMetadata(
            run_id=spec.run_id, attempt=ctx.attempt, store=ctx.store_url, image=spec.image,
            gpu_count=gpu.count,  # command and env: the agent reads spec.json
            gpu_timeout=ctx.settings.gpu_timeout, gpu_driver_version=vm["gpu_driver_version"],
            checkpoint_dir=spec.checkpoint_dir, results_dir=spec.results_dir,
            heartbeat_interval=ctx.heartbeat_interval, sync_interval=ctx.sync_interval,
            grace_period=ctx.grace_period, shm_size=ctx.shm_size,
            data_disk="data" if (vm["data_disk"] or vm["data_disk_gb"]) else "", data_mount=vm["data_mount"],
            supervisor_job=self.supervisor_job, nnodes=nnodes, provisioning=choice.model,
        )
        startup, shutdown = startup_scripts()
        items = {**meta.items(), **staged_data.metadata_items(spec), md.STARTUP_SCRIPT: startup,
                 md.SHUTDOWN_SCRIPT: shutdown}
        if boot.path == "warm":
            items[boot_images.UPDATE_STRATEGY_KEY] = boot_images.UPDATE_DISABLED
        # GCE refuses a boot disk smaller than its image ("Requested disk size cannot be smaller
        # than the image size", the 400 quoted in https://github.com/test-kitchen/kitchen-google/pull/152).
        disk_gb = max(int(vm["boot_disk_gb"]), boot.disk_size_gb)
        zones = list(ctx.zones or spec.zones) or ["us-central1-a"]
        if vm["data_disk"]:
            zones = zones[:1]  # an existing zonal disk pins the run to its zone
        candidates = []
        for zone in zones:
            scheduling = provisioning.scheduling(choice.model, vm)  # gce_provisioning.py
            disks = [compute_v1.AttachedDisk(
                boot=True, auto_delete=True, device_name="boot",
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    source_image=boot.source_image, disk_size_gb=disk_gb,
                    disk_type=f"zones/{zone}/diskTypes/{disk_type}"),
            )]
            if vm["data_disk"]:
                disks.append(compute_v1.AttachedDisk(
                    boot=False, auto_delete=False, device_name="data", mode="READ_WRITE",
                    source=f"projects/{project}/zones/{zone}/disks/{vm['data_disk']}"))
            elif vm["data_disk_gb"]:
                disks.append(compute_v1.AttachedDisk(
                    boot=False, auto_delete=True, device_name="data",
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        disk_size_gb=int(vm["data_disk_gb"]),
                        disk_type=f"zones/{zone}/diskTypes/{disk_type}")))
            nic = network_interface(vm, project, zone)  # gce_network.py: network, subnetwork, external IP
            inst = compute_v1.Instance(
                name=name,
                machine_type=f"zones/{zone}/machineTypes/{spec.machine_type}",
                scheduling=scheduling,
                disks=disks,
                network_interfaces=[nic],
                labels={
                    LABEL_RUNNER: RUNNER_LABEL_VALUE,
                    LABEL_RUN_ID: label_value(spec.run_id),
                    LABEL_ATTEMPT: str(ctx.attempt),
                    LABEL_RANK: str(rank),
                    LABEL_STORE: store_label(ctx.store_url),
                },
                metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]),
                service_accounts=[compute_v1.ServiceAccount(
                    email=vm["service_account"] or "default", scopes=list(vm["scopes"]))],
            )
            if gpu.type:
                inst.guest_accelerators = [compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/{gpu.type}",
                    accelerator_count=gpu.count)]
            candidates.append((zone, inst))
        return GcePlan(name=name, project=project, candidates=candidates, request_key=ctx.request_key,
                       before_insert=ctx.before_insert, boot=boot, gpus=gpu.count,
                       provisioning=choice.model, provisioning_why=choice.why, store_url=ctx.store_url)

    # ---- act ----
    def create(self, plan: AttemptPlan[GcePlan]) -> Attempt:
        """One VM: the base class's create (``create_instance``). A gang: one bulkInsert with
        minCount N per zone, zone by zone (gce_gang.create_generation), so a zone short of one
        node holds none of them; each node's rank is the one its name carries and its address
        the internal IP GCE gave it."""
        if len(plan.nodes) <= 1:
            made = super().create(plan)
            self._journal_choice(plan, made)
            return made
        gang = getattr(plan, "gang", None) or gang_plan(plan.nodes[0], plan.run_id, plan.attempt, len(plan.nodes))
        stocked: list[str] = []  # zones out of room for the whole gang: the store's history learns them
        try:
            made = create_generation(self.c, gang, stocked)
        except OverGlobalGpuQuota as e:
            raise self._over_global_gpu_quota(plan.nodes[0], e.zone, e.limit, e.message,
                                              nodes=len(plan.nodes)) from None
        finally:
            self._note_stockouts(plan.nodes[0], stocked)
        attempt = Attempt(plan.attempt, tuple(self._instance(vm) for vm in made.vms))
        self._journal_choice(plan, attempt)
        return attempt

    def create_instance(self, plan: GcePlan) -> Instance:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        refusals: list[str] = []
        stocked: list[str] = []  # zones that refused for capacity: the store's history learns them
        for zone, body in plan.candidates:
            if plan.before_insert is not None:
                plan.before_insert(zone)  # raises once the create claim is no longer ours
            try:
                op = self.c.instances.insert_unary(
                    request=compute_v1.InsertInstanceRequest(
                        project=plan.project, zone=zone, instance_resource=body,
                        request_id=plan.request_id(zone)),
                    retry=api_retry())
                op = self._wait(plan.project, zone, op)
            except gexc.Conflict:
                return self._existing(plan.project, zone, plan.name)
            except gexc.GoogleAPICallError as e:
                global_quota = global_gpu_quota(e)
                if global_quota is not None:
                    raise self._over_global_gpu_quota(plan, zone, *global_quota) from None
                reasons = _error_reasons(e)
                if any(r in ZONE_RETRYABLE for r in reasons):
                    refusals.append(f"{zone}: {', '.join(sorted(set(reasons)))}")
                    stocked += [zone] if STOCKOUT_CODES & set(reasons) else []
                    continue
                raise network_refusal(e, plan.project) or BackendError(_explain(e, plan.project)) from None
            except gexc.RetryError as e:
                # A fault sustained past the retry deadline: this pass gives up (the claim is
                # released) and the next one, after the backoff, tries again from the first zone.
                raise BackendError(_explain(e, plan.project)) from None
            if op.error and op.error.errors:
                global_quota = global_gpu_quota(op)
                if global_quota is not None:
                    raise self._over_global_gpu_quota(plan, zone, *global_quota)
                reasons = _error_reasons(op)
                if any(r in ZONE_RETRYABLE for r in reasons):
                    # A quota error names the quota and its limit: what the user must raise.
                    quota = "; ".join(e.message for e in op.error.errors if e.code == "QUOTA_EXCEEDED")
                    refusals.append(f"{zone}: {', '.join(sorted(set(reasons)))}" + (f" ({quota})" if quota else ""))
                    stocked += [zone] if STOCKOUT_CODES & set(reasons) else []
                    continue
                if "RESOURCE_ALREADY_EXISTS" in reasons:
                    return self._existing(plan.project, zone, plan.name)
                raise BackendError(f"creating {plan.name} in {zone} failed: "
                                   + "; ".join(f"{e.code}: {e.message}" for e in op.error.errors))
            self._note_stockouts(plan, stocked)
            try:
                return self._get(plan.project, zone, plan.name)
            except gexc.NotFound:
                # The insert succeeded and the VM is gone already (preempted or deleted while
                # booting), or this was a takeover and GCE replayed a dead creator's insert of a
                # VM lost since: nothing of it exists, so a ``BackendError`` (the claim is released
                # and the next round, with fresh request ids, creates again), not a raw 404 that
                # would keep the claim and replay the same answer for GCE's whole request-id window.
                raise BackendError(f"{plan.name} was created in {zone} and is already gone (preempted or "
                                   "deleted while booting); the supervisor creates it again") from None
        self._note_stockouts(plan, stocked)
        raise ZoneExhausted(
            f"no zone could take {plan.name} ({'; '.join(refusals)}): add zones (--zones / zones in "
            "runner.toml) or try again later; the supervisor retries on its next pass"
        )

    def _note_stockouts(self, plan: GcePlan, zones: list[str]) -> None:
        """Add the zones that just stocked out to the store's history (capacity/zones.json), so
        the next create of any run of this store tries them last. Best effort: advice only."""
        if not zones or not plan.store_url:
            return
        try:
            record_stockouts(self._store(plan.store_url), zones, self.clock())
        except Exception as e:  # noqa: BLE001 - losing advice must not fail a create
            import sys

            print(f"runner: warning: stockouts in {', '.join(zones)} not recorded ({type(e).__name__}: {e})",
                  file=sys.stderr)

    def _journal_choice(self, plan: AttemptPlan[GcePlan], made: Attempt) -> None:
        """Say in the run's journal which provisioning model the attempt got and why its zone
        was tried when it was, where that is news: a model other than spot, or a zone order
        the store's stockout history changed. Best effort, like every note."""
        first = plan.nodes[0]
        if (first.provisioning == provisioning.SPOT and not first.zone_why) or not first.store_url or not made.instances:
            return
        from entrypoint.record import RunRecord

        zone = made.instances[0].zone
        text = f"attempt {plan.attempt}: {first.provisioning} VM in {zone} ({first.provisioning_why})"
        if first.zone_why:
            text += "; zones tried in order: " + "; ".join(first.zone_why)
        try:
            RunRecord(self._store(first.store_url), plan.run_id).event(
                "gce", None, None, text, attempt=plan.attempt, provisioning=first.provisioning, zone=zone)
        except Exception as e:  # noqa: BLE001 - a lost note must not fail a create
            import sys

            print(f"runner: warning: {text} (not journaled: {type(e).__name__})", file=sys.stderr)

    def _over_global_gpu_quota(self, plan: GcePlan, zone: str, limit: float | None,
                               message: str, nodes: int = 1) -> BackendError:
        """The refusal for GPUS_ALL_REGIONS, said once: every zone would answer the same, so no
        other zone is tried. A limit below one attempt's GPUs (one VM's, or a gang's N VMs')
        can never be met (the run fails with the fix); otherwise the project's other GPUs hold
        it and the run waits."""
        url = QUOTA_CONSOLE.format(project=plan.project)
        gpus = plan.gpus * nodes
        what = plan.name if nodes == 1 else f"the {nodes} nodes of {plan.name}…"
        needs = "one VM of this run needs" if nodes == 1 else f"one attempt of this run needs ({nodes} VMs)"
        if limit is not None and limit < max(gpus, 1):
            return PermanentBackendError(
                f"{zone} refused {what}: {message.strip()} The project-wide quota {GLOBAL_GPU_QUOTA} "
                f"of project {plan.project} is {limit:g}, below the {gpus or 'some'} GPU(s) {needs}, "
                f"so every zone refuses it; no other zone was tried. Ask for more, "
                f"then submit the run again: {_one_line(global_quota_request(plan.project, gpus or 1))}")
        return BackendError(
            f"{zone} refused {what}: {message.strip()} The project-wide quota {GLOBAL_GPU_QUOTA}"
            + (f" ({limit:g})" if limit is not None else "")
            + f" is used up by the project's other GPU VMs, so every zone refuses it; no other zone "
            f"was tried. The run waits for GPUs to free up (or raise {GLOBAL_GPU_QUOTA} at {url})")

    def restart_instance_in_place(self, instance: Instance, plan: GcePlan) -> Instance | None:
        """terminationAction=STOP kept the VM and its boot disk (driver installed, image pulled):
        start it again with the new attempt's metadata and labels instead of a fresh VM."""
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        body = dict(plan.candidates).get(instance.zone)
        if body is None or instance.status != InstanceStatus.TERMINATED:
            return None
        try:
            cur = self.c.instances.get(project=plan.project, zone=instance.zone, instance=instance.name,
                                       retry=api_retry())
            if cur.scheduling.instance_termination_action != "STOP":
                return None
            md_body = compute_v1.Metadata(items=list(body.metadata.items), fingerprint=cur.metadata.fingerprint)
            self._wait(plan.project, instance.zone, self.c.instances.set_metadata_unary(
                project=plan.project, zone=instance.zone, instance=instance.name, metadata_resource=md_body,
                retry=api_retry()))
            labels = compute_v1.InstancesSetLabelsRequest(labels=dict(body.labels),
                                                          label_fingerprint=cur.label_fingerprint)
            self._wait(plan.project, instance.zone, self.c.instances.set_labels_unary(
                project=plan.project, zone=instance.zone, instance=instance.name,
                instances_set_labels_request_resource=labels, retry=api_retry()))
            op = self._wait(plan.project, instance.zone, self.c.instances.start_unary(
                project=plan.project, zone=instance.zone, instance=instance.name, retry=api_retry()))
        except api_errors():
            return None  # e.g. a changed fingerprint or a stockout on start: a fresh VM instead
        if op.error and op.error.errors:
            return None
        return self._get(plan.project, instance.zone, instance.name)

    def wait_zone_operation(self, project: str, zone: str, op: Any) -> Any:
        """Block until the zone operation ``op`` is DONE; returns it (with its error, if any).
        Our own operations client: the library's extended operation would poll the default
        endpoint, whatever endpoint the instances client was given."""
        while _status_name(op.status) != "DONE":
            op = self.c.zone_operations.wait(project=project, zone=zone, operation=op.name, retry=api_retry())
        return op

    _wait = wait_zone_operation

    def _existing(self, project: str, zone: str, name: str) -> Instance:
        """The VM a create found already there (409): ours to adopt, unless another store's."""
        inst = self._get(project, zone, name)
        if self.foreign(inst):
            raise self.name_taken(inst)
        return inst

    def _get(self, project: str, zone: str, name: str) -> Instance:
        return self._instance(self.c.instances.get(project=project, zone=zone, instance=name, retry=api_retry()))

    @staticmethod
    def _instance(i: Any) -> Instance:
        """Our view of a GCE VM. A gang node's rank comes from its name: one bulkInsert labels
        every node alike, so the rank label (a single VM's, or a node restarted in place) is
        only the fallback."""
        labels = dict(i.labels)
        rank = rank_of(i.name)
        return Instance(
            name=i.name,
            run_label=labels.get(LABEL_RUN_ID, ""),
            attempt=int(labels.get(LABEL_ATTEMPT, "0") or 0),
            status=classify_status(i.status),
            zone=_zone_of(i.zone),
            store=labels.get(LABEL_STORE, ""),
            rank=rank if rank is not None else int(labels.get(LABEL_RANK, "0") or 0),
            address=internal_ip(i),
        )

    def list(self, run_id: str | None = None) -> list[Instance]:
        """One ``aggregatedList`` (every zone) with ``returnPartialSuccess``; a partial answer
        raises ``IncompleteListing`` naming the zones it could not read."""
        labels = {LABEL_RUNNER: RUNNER_LABEL_VALUE}
        if run_id is not None:
            labels[LABEL_RUN_ID] = label_value(run_id)
        got = list_all_instances(self.c.instances, self.project, label_filter(labels))
        out = self._ours([self._instance(i) for i in got.instances])
        if got.unreachable:
            zones = ", ".join(_zone_of(u) for u in got.unreachable)
            raise IncompleteListing(
                f"Compute Engine could not list instances in {zones} (project {self.project}): the "
                "listing is partial, and nothing is judged on a partial listing; try again (a "
                "supervisor lists again on its next pass)", out,
                list(got.unreachable))
        return out

    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        # The VM's shutdown script gives the container its grace period; we do not wait here.
        from google.api_core import exceptions as gexc

        try:
            self.c.instances.delete_unary(project=self.project, zone=instance.zone,
                                          instance=instance.name, retry=api_retry())
        except gexc.NotFound:
            pass

    def preempt(self, instance: Instance, grace_period: float) -> None:
        # On a spot VM a simulated maintenance event is a real preemption (30 s notice, then
        # stop or delete per the termination action).
        self.c.instances.simulate_maintenance_event_unary(
            project=self.project, zone=instance.zone, instance=instance.name, retry=api_retry())

    def logs(self, instance: Instance, tail: int = 100) -> str:
        from google.api_core import exceptions as gexc

        try:
            out = self._serial(instance, 0)
        except gexc.NotFound:
            return ""
        return "\n".join(out.contents.splitlines()[-tail:])

    def console(self, instance: Instance, start: int = 0) -> tuple[str, int]:
        """Serial console text from byte ``start``; returns (text, next offset)."""
        out = self._serial(instance, start)
        return out.contents, int(out.next_)

    def _serial(self, instance: Instance, start: int) -> Any:
        from google.cloud import compute_v1

        return self.c.instances.get_serial_port_output(
            request=compute_v1.GetSerialPortOutputInstanceRequest(
                project=self.project, zone=instance.zone, instance=instance.name, port=1, start=start),
            retry=api_retry())

    def provider_events(self, instances: list[str], zones: list[str]) -> list[dict[str, Any]]:
        """Zone operations on these instances (insert, delete, stop, preempted...), oldest first."""
        import datetime as dt

        wanted = set(instances)
        out = []
        for zone in sorted(set(zones)):
            for op in self.c.zone_operations.list(request={"project": self.project, "zone": zone},
                                                  retry=api_retry()):
                target = op.target_link.rstrip("/").rsplit("/", 1)[-1]
                if target not in wanted:
                    continue
                t = dt.datetime.fromisoformat(op.insert_time.replace("Z", "+00:00")).timestamp() if op.insert_time else 0.0
                out.append({"time": t, "actor": "gce", "from": None, "to": None, "attempt": None,
                            "reason": f"{op.operation_type} {target} ({_status_name(op.status).lower()})"
                                      + (f": {op.status_message}" if op.status_message else ""),
                            "zone": zone})
        return sorted(out, key=lambda e: e["time"])

    def was_preempted(self, names: Sequence[str], zone: str | None) -> bool:
        """One zone-operations list call, made only when an instance went missing (a gang's
        nodes share one zone: still one call)."""
        wanted = {n for n in names if n}
        if not wanted or not zone:
            return False
        flt = 'operationType = "compute.instances.preempted"'
        for op in self.c.zone_operations.list(request={"project": self.project, "zone": zone, "filter": flt},
                                              retry=api_retry()):
            if op.target_link.rstrip("/").rsplit("/", 1)[-1] in wanted:
                return True
        return False


def _status_name(status: Any) -> str:
    return getattr(status, "name", None) or str(status)


def _is_dev_channel(vm_image: str) -> bool:
    """A COS dev-channel image: the ``cos-dev`` family or one of its images (``cos-dev-…``)."""
    last = vm_image.rstrip("/").rsplit("/", 1)[-1]
    return vm_image.rstrip("/").endswith("/family/cos-dev") or last.startswith("cos-dev-")


def _one_line(text: str) -> str:
    """A multi-line fix as one line: run reasons and CLI errors are one line each."""
    return " ".join(line.strip() for line in text.splitlines())


def _explain(e: Any, project: str) -> str:
    from runner.cloud.gcp_clients import is_rate_limited

    from google.api_core import exceptions as gexc

    if isinstance(e, gexc.RetryError):
        return (f"Compute Engine in project {project} is {retry_exhausted_text(e)}. Try again "
                "later (https://status.cloud.google.com shows "
                "Compute Engine incidents)")
    code = getattr(e, "code", None)
    msg = getattr(e, "message", str(e))
    if is_rate_limited(e):
        return (f"Compute Engine rate limit in project {project} (still refused after retrying for 2 "
                f"minutes): {msg}. Wait and try again; if it persists, ask for a higher 'Queries per "
                "minute' quota for compute.googleapis.com")
    if code == 403:
        return (f"permission denied in project {project}: {msg}. Grant the caller roles/compute.instanceAdmin.v1 "
                "(and roles/iam.serviceAccountUser on the VM's service account)")
    if code == 404:
        return f"not found in project {project}: {msg} (check --zones, --machine-type, --gpu and the project)"
    return f"Compute Engine refused the request ({code}): {msg}"
