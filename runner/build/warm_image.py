"""Warm boot images: bake one, list them, delete them.

Why: a recovery on GCE is a cold start: a new VM from public COS, ``cos-extensions install gpu``
(~45 s precompiled, minutes to compile), then a multi-GB image pull (~200 s for 8 GB at ~40 MB/s
extraction). COS keeps /var/lib/nvidia and /var/lib/docker on the stateful partition, so an image
made from a boot disk that ran the install and the pull carries both, and a VM booted from it
skips them (docs/research/recovery-timeline.md, section 8, option B). Which image is right for a
run is decided by its key (runner/launch/backends/gce_boot_image.py); every create looks for it.

How a bake goes (``bake``): a spot VM like a run's (the configured machine type and GPU, the
first zone with capacity, the normal startup and shutdown scripts) with ``runner-bake=<image
name>`` in its metadata. In bake mode gcp/startup.sh installs the driver, pulls the image,
verifies both, writes ``bakes/<image name>/startup.json`` to the store and starts no container.
Then: stop the VM, make the image from its boot disk, wait for READY, delete the VM. The VM is
deleted on every path (and carries a ``maxRunDuration``, so GCE ends it even if this process
dies); a bake that fails leaves no image.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from runner.launch.backends import gce_boot_image as boot_images
from runner.launch.backends.base import BackendError, Instance, LaunchContext

BAKE_METADATA_KEY = "runner-bake"
BAKE_LABEL = "runner-bake"
# Figures for the time a bake may take (gpu_timeout covers the driver install):
PULL_ALLOWANCE_S = 1200.0  # the pull: ~40 MB/s extraction makes 8 GB ~200 s; this covers ~45 GB
BOOT_MARGIN_S = 300.0      # insert → RUNNING → startup script, and the verification
IMAGE_READY_TIMEOUT_S = 1800.0
# Custom image storage: https://cloud.google.com/compute/disks-image-pricing lists it, but no
# stored copy of that page shows the row; the working figure of the research (same tier as
# standard snapshots, docs/research/recovery-timeline.md "Costs") is used, and said to be one.
IMAGE_PRICE_PER_GIB_MONTH = 0.05
PRICE_NOTE = "~$0.05/GiB-month (estimate; https://cloud.google.com/compute/disks-image-pricing)"


class BakeError(BackendError):
    """A bake that did not produce an image; the message says why and what to do."""


def bake_record_name(image_name: str) -> str:
    """Where the bake VM's startup script reports (relative to the store)."""
    return f"bakes/{image_name}/startup.json"


@dataclass(frozen=True)
class BakePlan:
    """What a bake will do, decided before anything is created."""

    key: boot_images.WarmKey
    image: str          # the workload image, pinned: REPO@sha256:...
    project: str
    vm: Any             # the bake VM's GcePlan (one candidate per zone)
    timeout_s: float    # how long the VM may take to report

    @property
    def name(self) -> str:
        return self.key.name


@dataclass(frozen=True)
class BakeResult:
    name: str
    already: bool
    disk_size_gb: int
    stored_bytes: int
    key: boot_images.WarmKey

    @property
    def monthly_cost(self) -> float:
        return self.stored_bytes / (1 << 30) * IMAGE_PRICE_PER_GIB_MONTH

    def summary(self) -> str:
        stored = self.stored_bytes / (1 << 30)
        return (f"{self.name}: {self.disk_size_gb} GB disk, {stored:.1f} GiB stored; keeping it costs "
                f"~${self.monthly_cost:.2f}/month at {PRICE_NOTE} (at most "
                f"${self.disk_size_gb * IMAGE_PRICE_PER_GIB_MONTH:.2f} if billed on the disk size); "
                f"remove it with `runner images delete {self.name}`")


def _gce(ctx: Any) -> Any:
    from runner.launch.backends.gce import GceBackend

    if not isinstance(ctx.backend, GceBackend):
        raise BakeError("warm images are GCE boot images: pass --backend gce (or set backend = \"gce\" "
                        "in runner.toml)")
    return ctx.backend


def plan_bake(ctx: Any, image: str | None = None, timeout_s: float | None = None) -> BakePlan:
    """The bake of ``image`` (default: the configured one), pinned as submit pins it. Calls the
    API only as submit does (zones, machine type, the COS family → its image today)."""
    from runner.launch.submit import build_spec, resolve_image

    backend = _gce(ctx)
    cfg = ctx.cfg
    pinned = resolve_image(ctx, image)
    base = build_spec(cfg, "bake", ["true"], pinned, max_restarts=0, retry_on_failure=0, env={})
    prepared = backend.prepare(base)  # zones that offer the shape; the COS family pinned
    vm = dict(prepared.vm)
    gpu = backend.gpu_of(prepared)
    key = boot_images.WarmKey.of(vm["vm_image"], vm["gpu_driver_version"], gpu.count, pinned)
    if key is None:
        raise BakeError(f"cannot bake {pinned}: it is not pinned to a digest (REPO@sha256:...)")
    timeout = timeout_s or (cfg.gpu_timeout + PULL_ALLOWANCE_S + BOOT_MARGIN_S)
    vm.update(warm_images="off",           # a bake starts from plain COS, always
              termination_action="DELETE",  # a preempted bake leaves nothing behind
              data_disk=None, data_disk_gb=None,
              # GCE ends the VM itself if this process dies mid-bake: no VM left billing.
              max_run_duration_s=int(timeout + IMAGE_READY_TIMEOUT_S + BOOT_MARGIN_S))
    spec = dataclasses.replace(prepared, run_id=key.name, vm=vm)
    lctx = LaunchContext(attempt=1, store_url=ctx.store.url, settings=cfg.attempt_settings(),
                         zones=tuple(spec.zones))
    node = backend.plan(spec, lctx).only
    from google.cloud import compute_v1

    for _zone, inst in node.candidates:
        inst.metadata.items.append(compute_v1.Items(key=BAKE_METADATA_KEY, value=key.name))
        # The driver is built for this kernel: no update may replace it before the disk is saved.
        inst.metadata.items.append(compute_v1.Items(key=boot_images.UPDATE_STRATEGY_KEY,
                                                    value=boot_images.UPDATE_DISABLED))
        inst.labels[BAKE_LABEL] = "1"
    return BakePlan(key=key, image=pinned, project=vm["project"] or backend.project, vm=node,
                    timeout_s=timeout)


def find_image(backend: Any, project: str, name: str) -> Any | None:
    from google.api_core import exceptions as gexc

    from runner.cloud.gcp_clients import api_retry

    try:
        return backend.c.images.get(project=project, image=name, retry=api_retry())
    except gexc.NotFound:
        return None


def _status(obj: Any) -> str:
    s = getattr(obj, "status", "")
    return str(getattr(s, "name", s) or "")


def bake(ctx: Any, image: str | None = None, *, timeout_s: float | None = None,
         say: Callable[[str], None] = lambda _m: None) -> BakeResult:
    """Bake the warm image of ``image`` for the configured COS image, driver and shape.

    Idempotent: an image of the same key that is READY is kept and reported (``already``).
    Blocking: returns once the image is READY and the bake VM is deleted, or raises
    ``BakeError`` having deleted the VM and any image it began.
    """
    backend = _gce(ctx)
    plan = plan_bake(ctx, image, timeout_s)
    existing = find_image(backend, plan.project, plan.name)
    if existing is not None:
        status = _status(existing)
        if status == "READY":
            say(f"{plan.name} is already baked for {plan.key.describe()}: nothing to do")
            return BakeResult(plan.name, True, int(existing.disk_size_gb), int(existing.archive_size_bytes),
                              plan.key)
        raise BakeError(f"image {plan.name} exists and is {status}: "
                        + ("another bake is saving it; wait for it (`runner images list`)" if status == "PENDING"
                           else f"delete it with `runner images delete {plan.name}`, then bake again"))
    record = bake_record_name(plan.name)
    ctx.store.delete(record)  # an older failed bake's report must not be read as this one's
    say(f"baking {plan.name} for {plan.key.describe()}: a bake VM installs the driver and pulls "
        f"{plan.image} (at most {plan.timeout_s:.0f}s)")
    from runner.launch.backends.base import AttemptPlan

    try:
        attempt = backend.create(AttemptPlan(plan.name, 1, (plan.vm,)))
    except BakeError:
        raise
    except BackendError as e:  # said for a run (the supervisor retries); a bake is retried by hand
        raise BakeError(f"no bake VM could be made: {e}. Nothing was left behind; run `runner images "
                        "bake` again (later, or with more --zones)") from None
    vm = attempt.lead
    say(f"bake VM {vm.name} is up in {vm.zone}")
    inserted = False
    ready = None
    try:
        report = _wait_for_report(ctx, backend, vm, record, plan.timeout_s, say)
        if report.get("status") != "ok":
            raise BakeError(f"the bake VM {vm.name} could not prepare the image: {report.get('reason') or 'no reason'}"
                            + (f" ({report['detail']})" if report.get("detail") else "")
                            + "; fix that, then run `runner images bake` again")
        disk = _stop(backend, plan.project, vm, say)
        say(f"saving {disk} as {plan.name}")
        op = _insert_image(backend, plan, disk)
        inserted = op is not None
        if op is not None and not _image_op_done(backend, plan, op):
            inserted = False  # the operation says another bake's image has that name
        ready = _ready_image(backend, plan)
        if not inserted:
            say(f"{plan.name} was made meanwhile by another bake of the same key: keeping that one")
            return BakeResult(plan.name, True, int(ready.disk_size_gb), int(ready.archive_size_bytes), plan.key)
    except BaseException:
        if inserted:
            _delete_image(backend, plan.project, plan.name)  # a failed bake leaves no image
        raise
    finally:
        _delete_vm(backend, plan.project, vm)
        ctx.store.delete(record)
    return BakeResult(plan.name, False, int(ready.disk_size_gb), int(ready.archive_size_bytes), plan.key)


def _wait_for_report(ctx: Any, backend: Any, vm: Instance, record: str, timeout_s: float,
                     say: Callable[[str], None]) -> dict[str, Any]:
    """The bake VM's ``startup.json``, polled from the store. A VM that vanished without one
    (preempted, or its script failed before it could write) is a failure with its console's tail."""
    from google.api_core import exceptions as gexc

    poll = max(0.2, min(5.0, ctx.cfg.poll_interval))
    deadline = time.monotonic() + timeout_s
    console, offset = "", 0
    while True:
        blob = ctx.store.read(record)
        if blob is not None:
            try:
                return json.loads(blob.data)
            except ValueError:
                return {"status": "failed", "reason": f"{record} is not JSON"}
        try:
            text, offset = backend.console(vm, offset)
            console = (console + text)[-4000:]
            gone = False
        except gexc.NotFound:
            gone = True
        if gone:
            blob = ctx.store.read(record)  # it may have reported just before it went
            if blob is not None:
                continue
            tail = "\n".join(console.splitlines()[-15:])
            raise BakeError(f"the bake VM {vm.name} is gone without a report (preempted, or its startup "
                            f"script failed); run `runner images bake` again. Its console ended with:\n{tail}")
        if time.monotonic() > deadline:
            tail = "\n".join(console.splitlines()[-15:])
            raise BakeError(f"the bake VM {vm.name} did not report within {timeout_s:.0f}s (driver install "
                            f"and image pull); raise --timeout if the image is very large. Console tail:\n{tail}")
        time.sleep(poll)


def _stop(backend: Any, project: str, vm: Instance, say: Callable[[str], None]) -> str:
    """Stop the VM (an image of a disk in use by a running VM may be torn), wait TERMINATED,
    and return its boot disk's URL."""
    from runner.cloud.gcp_clients import api_retry

    say(f"stopping {vm.name}")
    backend.wait_zone_operation(project, vm.zone, backend.c.instances.stop_unary(
        project=project, zone=vm.zone, instance=vm.name, retry=api_retry()))
    deadline = time.monotonic() + 300
    while True:
        cur = backend.c.instances.get(project=project, zone=vm.zone, instance=vm.name, retry=api_retry())
        if _status(cur) == "TERMINATED":
            boot = next(d for d in cur.disks if d.boot)
            return boot.source
        if time.monotonic() > deadline:
            raise BakeError(f"{vm.name} did not stop within 300s (it is {_status(cur)})")
        time.sleep(1)


def _insert_image(backend: Any, plan: BakePlan, disk: str) -> Any:
    """Ask for the image: its operation, or None when one of that name exists already (409):
    another bake of the same key won the race, and its image, not ours, is the key's. Only an
    insert this bake sent and GCE accepted makes an image this bake may delete on failure."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    from runner.cloud.gcp_clients import api_retry

    body = compute_v1.Image(
        name=plan.name, source_disk=disk, family=boot_images.WARM_FAMILY, labels=plan.key.labels,
        description=f"cos-spot-runner warm boot image: {plan.key.describe()}; workload {plan.image}")
    try:
        return backend.c.images.insert_unary(project=plan.project, image_resource=body, retry=api_retry())
    except gexc.Conflict:
        return None


def _image_op_done(backend: Any, plan: BakePlan, op: Any) -> bool:
    """Wait for the insert; False if GCE found the name taken (another bake's image)."""
    op = _wait_global(backend, plan.project, op)
    if op.error and op.error.errors:
        if any(e.code == "RESOURCE_ALREADY_EXISTS" for e in op.error.errors):
            return False
        raise BakeError(f"creating image {plan.name} failed: "
                        + "; ".join(f"{e.code}: {e.message}" for e in op.error.errors))
    return True


def _ready_image(backend: Any, plan: BakePlan) -> Any:
    """Wait for the image of the plan's name to be READY (bounded)."""
    deadline = time.monotonic() + IMAGE_READY_TIMEOUT_S
    while True:
        img = find_image(backend, plan.project, plan.name)
        status = _status(img) if img is not None else "missing"
        if status == "READY":
            return img
        if status in ("FAILED", "DELETING", "missing") or time.monotonic() > deadline:
            raise BakeError(f"image {plan.name} is {status}, not READY; run `runner images bake` again")
        time.sleep(1)


def _wait_global(backend: Any, project: str, op: Any) -> Any:
    from runner.cloud.gcp_clients import api_retry

    while _status(op) != "DONE":
        op = backend.c.global_operations.wait(project=project, operation=op.name, retry=api_retry())
    return op


def _delete_image(backend: Any, project: str, name: str) -> None:
    from google.api_core import exceptions as gexc

    from runner.cloud.gcp_clients import api_retry

    try:
        _wait_global(backend, project, backend.c.images.delete_unary(project=project, image=name,
                                                                      retry=api_retry()))
    except gexc.NotFound:
        pass


def _delete_vm(backend: Any, project: str, vm: Instance) -> None:
    """Delete the bake VM and wait until it is gone (its boot disk goes with it)."""
    from google.api_core import exceptions as gexc

    from runner.cloud.gcp_clients import api_retry

    try:
        backend.wait_zone_operation(project, vm.zone, backend.c.instances.delete_unary(
            project=project, zone=vm.zone, instance=vm.name, retry=api_retry()))
    except gexc.NotFound:
        pass


# ---- list and delete ----------------------------------------------------------------------

def configured_key(ctx: Any) -> boot_images.WarmKey | None:
    """The key a run submitted now with this config would look for (None: the configured image
    is not pinned to a digest, so no image is "in use")."""
    backend = _gce(ctx)
    cfg = ctx.cfg
    if not cfg.image or "@sha256:" not in cfg.image:
        return None
    from runner.launch.backends.gce_shapes import resolve_gpu

    gpu = resolve_gpu(cfg.machine_type or "n1-standard-4", cfg.gpu, no_gpu=cfg.no_gpu)
    return boot_images.WarmKey.of(backend.pin_vm_image(cfg.vm_image), cfg.gpu_driver_version or "",
                                  gpu.count, cfg.image)


def list_images(ctx: Any) -> list[dict[str, Any]]:
    """Every warm image in the project, oldest first, with its key and whether the config uses it."""
    from runner.cloud.gcp_clients import api_retry

    backend = _gce(ctx)
    current = configured_key(ctx)
    out = []
    for img in backend.c.images.list(request={"project": backend.project, "filter": boot_images.warm_filter()},
                                     retry=api_retry()):
        labels = dict(img.labels)
        in_use = current is not None and img.name == current.name
        out.append({
            "name": img.name, "created": img.creation_timestamp, "status": _status(img),
            "disk_size_gb": int(img.disk_size_gb), "stored_bytes": int(img.archive_size_bytes),
            "monthly_cost": round(int(img.archive_size_bytes) / (1 << 30) * IMAGE_PRICE_PER_GIB_MONTH, 2),
            "key": {"cos": labels.get(boot_images.LABEL_COS, ""), "driver": labels.get(boot_images.LABEL_DRIVER, ""),
                    "digest": labels.get(boot_images.LABEL_DIGEST, "")},
            "in_use": in_use,
        })
    return sorted(out, key=lambda i: i["created"])


def _live_run_digests(ctx: Any) -> set[str]:
    """The digest labels of every unfinished run in the store: each restart of those boots from
    its own pinned digest's warm image, whatever the configuration says today."""
    from entrypoint.record import DamagedRecord, RunRecord, list_run_ids

    out: set[str] = set()
    for run_id in list_run_ids(ctx.store):
        rec = RunRecord(ctx.store, run_id)
        try:
            cur = rec.read_state()
            spec = rec.read_spec() if cur is not None and not cur[0].state.terminal else None
        except DamagedRecord:
            continue  # no supervisor restarts a run it cannot read either
        if spec is not None and "@sha256:" in spec.image:
            out.add(spec.image.rsplit("@sha256:", 1)[1][:boot_images.DIGEST_LABEL_HEX])
    return out


def delete_images(ctx: Any, names: list[str] | None = None, all_unused: bool = False) -> list[str]:
    """Delete the named warm images, or every one whose digest is not the configured image's.
    Refuses an image this tool did not make (no ``runner-warm`` label)."""
    backend = _gce(ctx)
    images = {i["name"]: i for i in list_images(ctx)}
    if all_unused:
        current = configured_key(ctx)
        if current is None:
            raise BakeError("cannot tell which warm images are unused: the configured image is not pinned "
                            "(set image = \"REPO@sha256:...\" in runner.toml, as `runner build` prints), or "
                            "delete images by name")
        pinned = {current.digest_label} | _live_run_digests(ctx)
        names = [n for n, i in images.items() if i["key"]["digest"] not in pinned]
    for name in names or []:
        if name not in images:
            raise BakeError(f"{name} is not a warm image of this tool in project {backend.project} "
                            "(`runner images list` shows them)")
    for name in names or []:
        _delete_image(backend, backend.project, name)
    return list(names or [])
