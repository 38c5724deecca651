"""Warm boot images without Docker: the key, the choice every create makes, the Compute fake's
images, and ``runner images bake|list|delete`` run as a user runs them (the CLI in its own
process) against the Compute fake, with a guest that keeps gcp/startup.sh's bake-mode contract
(``bakes/<image>/startup.json`` in the store; tests/test_warm_image_cloud.py runs the real
script in simulated COS VMs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from entrypoint.record import AttemptSettings, RunSpec
from entrypoint.stores import open_store
from runner.config import Config
from runner.launch.backends.base import LaunchContext
from runner.launch.backends.gce import GceBackend, vm_options_defaults
from runner.launch.backends.gce_boot_image import (
    UPDATE_STRATEGY_KEY, WARM_FAMILY, WarmKey, choose, driver_label,
)
from runner.launch.context import make_context
from tests.conftest import ROOT, wait_for
from tests.standins.compute import ComputeFake, compute_fake  # noqa: F401 - the fixture

PROJECT = "test-project"
COS = "cos-stable-121-18867-90-38"  # what the fake's cos-stable family serves today
DIGEST = "sha256:" + "b" * 64
IMAGE = "us-docker.pkg.dev/p/r/trainer@" + DIGEST
ZONES = ["us-central1-a", "us-central1-b"]
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


# ---- the key ---------------------------------------------------------------------------------

def test_a_warm_image_is_named_and_labelled_after_its_key():
    key = WarmKey(COS, "default", DIGEST)
    assert re.fullmatch(r"runner-warm-[0-9a-f]{12}", key.name)
    assert key.name == WarmKey(COS, "default", DIGEST).name  # the same key, the same name
    others = {WarmKey("cos-stable-117-18613-164-4", "default", DIGEST).name,
              WarmKey(COS, "535_183_01", DIGEST).name, WarmKey(COS, "default", "sha256:" + "c" * 64).name}
    assert key.name not in others and len(others) == 3
    assert key.labels == {"runner-warm": "1", "runner-cos": COS, "runner-driver": "default",
                          "runner-digest": "b" * 40}
    assert all(LABEL_VALUE.fullmatch(v) for v in key.labels.values())
    # A driver version with dots is a valid label once sanitized; a CPU VM installs no driver.
    assert driver_label("535.183.01", 1) == "535_183_01" and driver_label("latest", 0) == "none"


def test_nothing_moving_has_a_key():
    assert WarmKey.of("projects/cos-cloud/global/images/family/cos-stable", "", 1, IMAGE) is None
    assert WarmKey.of(f"projects/cos-cloud/global/images/{COS}", "", 1, "repo/trainer:latest") is None
    assert WarmKey.of(f"projects/cos-cloud/global/images/{COS}", "", 1, IMAGE) == WarmKey(COS, "default", DIGEST)
    with pytest.raises(ValueError):
        WarmKey(COS, "default", "sha256:short")


def test_choose_takes_only_a_ready_image_of_the_same_key():
    key = WarmKey(COS, "default", DIGEST)
    cold = f"projects/cos-cloud/global/images/{COS}"
    ready = compute_v1.Image(name=key.name, status="READY", labels=key.labels, disk_size_gb=60)
    warm = choose(key, [ready], cold, PROJECT)
    assert (warm.source_image, warm.path, warm.disk_size_gb) == (
        f"projects/{PROJECT}/global/images/{key.name}", "warm", 60)
    assert key.name in warm.reason
    pending = compute_v1.Image(name=key.name, status="PENDING", labels=key.labels)
    assert choose(key, [pending], cold, PROJECT).path == "cold"
    assert "PENDING" in choose(key, [pending], cold, PROJECT).reason
    forged = compute_v1.Image(name=key.name, status="READY", labels={**key.labels, "runner-cos": "other"})
    assert choose(key, [forged], cold, PROJECT).source_image == cold
    assert choose(key, [], cold, PROJECT).path == "cold"


# ---- the choice every create makes ------------------------------------------------------------

def spec(**vm: Any) -> RunSpec:
    return RunSpec(run_id="warm-run", image=IMAGE, command=["true"], backend="gce",
                   machine_type="n1-standard-4", gpu="nvidia-tesla-t4:1", zones=list(ZONES),
                   vm={**vm_options_defaults(), "project": PROJECT,
                       "vm_image": f"projects/cos-cloud/global/images/{COS}", **vm})


CTX = LaunchContext(attempt=2, store_url="gs://bucket", settings=AttemptSettings(gpu_timeout=300))


def backend(fake: ComputeFake) -> GceBackend:
    from runner.cloud.gcp_clients import compute_clients

    return GceBackend(compute_clients(fake.endpoint), PROJECT)


def seed_warm_image(fake: ComputeFake, key: WarmKey, size_gb: int = 60) -> None:
    """A warm image as a bake leaves it: made from a stopped VM's boot disk."""
    disk = f"seed-{key.name[-6:]}"
    fake.add_disk("us-central1-a", disk, size_gb=size_gb)
    ops = compute_v1.ImagesClient(**fake.client_kwargs())
    ops.insert_unary(project=PROJECT, image_resource=compute_v1.Image(
        name=key.name, source_disk=f"zones/us-central1-a/disks/{disk}", family=WARM_FAMILY, labels=key.labels))


def meta(inst: Any) -> dict[str, str]:
    return {i.key: i.value for i in inst.metadata.items}


def test_a_create_boots_the_ready_warm_image_of_its_key_and_turns_auto_updates_off(compute_fake: ComputeFake):
    key = WarmKey(COS, "default", DIGEST)
    seed_warm_image(compute_fake, key, size_gb=60)
    compute_fake.reset_requests()
    node = backend(compute_fake).plan(spec(boot_disk_gb=50), CTX).only
    assert len(compute_fake.calls("images.list")) == 1  # one listing per create, whatever the zones
    assert node.boot is not None and node.boot.path == "warm" and key.name in node.boot.reason
    for _zone, inst in node.candidates:
        boot = inst.disks[0].initialize_params
        assert boot.source_image == f"projects/{PROJECT}/global/images/{key.name}"
        assert boot.disk_size_gb == 60  # never smaller than the image: GCE refuses that
        assert meta(inst)[UPDATE_STRATEGY_KEY] == "update_disabled"
    assert node.to_dict()[0]["boot"]["path"] == "warm"
    # The fake accepts the plan as GCE would: the VM boots from the warm image.
    made = backend(compute_fake).create_instance(node)
    disk = next(d for d in compute_fake.disks() if d.name == made.name)
    assert disk.source_image.endswith(f"/global/images/{key.name}")


def test_without_a_matching_ready_image_a_create_boots_cold(compute_fake: ComputeFake):
    seed_warm_image(compute_fake, WarmKey(COS, "default", "sha256:" + "c" * 64))  # another digest
    node = backend(compute_fake).plan(spec(), CTX).only
    assert node.boot.path == "cold" and "runner images bake" in node.boot.reason
    inst = node.candidates[0][1]
    assert inst.disks[0].initialize_params.source_image == f"projects/cos-cloud/global/images/{COS}"
    assert inst.disks[0].initialize_params.disk_size_gb == 50
    assert UPDATE_STRATEGY_KEY not in meta(inst)


def test_a_pending_warm_image_is_not_booted(compute_fake: ComputeFake):
    compute_fake.time_scale = 1.0  # images take image_ready_seconds to be READY
    key = WarmKey(COS, "default", DIGEST)
    seed_warm_image(compute_fake, key)
    node = backend(compute_fake).plan(spec(), CTX).only
    assert node.boot.path == "cold" and "PENDING" in node.boot.reason
    # GCE itself refuses a disk from an image that is not READY.
    body = compute_v1.Instance.from_json(compute_v1.Instance.to_json(node.candidates[0][1]))
    body.disks[0].initialize_params.source_image = f"projects/{PROJECT}/global/images/{key.name}"
    with pytest.raises(gexc.BadRequest, match="not ready"):
        compute_v1.InstancesClient(**compute_fake.client_kwargs()).insert_unary(
            project=PROJECT, zone="us-central1-a", instance_resource=body)


def test_warm_images_off_never_looks(compute_fake: ComputeFake):
    seed_warm_image(compute_fake, WarmKey(COS, "default", DIGEST))
    compute_fake.reset_requests()
    node = backend(compute_fake).plan(spec(warm_images="off"), CTX).only
    assert node.boot.path == "cold" and compute_fake.calls("images.list") == []


def test_a_dry_run_says_it_did_not_look_for_warm_images(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST",)}
    env.update(NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9", HOME=str(tmp_path),
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "runner.cli", "submit", "--backend", "gce", "--project", "p",
                        "--store", "gs://b", "--zones", "us-central1-a", "--run-id", "x", "--image", IMAGE,
                        "--dry-run", "--", "true"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["boot"]["path"] == "cold"
    assert "warm boot images were not looked up" in p.stderr


# ---- the Compute fake's images ----------------------------------------------------------------

def test_an_image_of_a_disk_in_use_by_a_running_vm_needs_force_create(compute_fake: ComputeFake):
    node = backend(compute_fake).plan(spec(warm_images="off"), CTX).only
    made = backend(compute_fake).create_instance(node)
    images = compute_v1.ImagesClient(**compute_fake.client_kwargs())
    body = compute_v1.Image(name="from-running", source_disk=f"zones/us-central1-a/disks/{made.name}")
    with pytest.raises(gexc.BadRequest, match="already being used"):
        images.insert_unary(project=PROJECT, image_resource=body)
    images.insert_unary(request=compute_v1.InsertImageRequest(project=PROJECT, image_resource=body, force_create=True))
    assert images.get(project=PROJECT, image="from-running").status == "READY"
    with pytest.raises(gexc.NotFound):
        images.insert_unary(project=PROJECT, image_resource=compute_v1.Image(
            name="no-disk", source_disk="zones/us-central1-a/disks/nothing-here"))
    op = images.delete_unary(project=PROJECT, image="from-running")
    ops = compute_v1.GlobalOperationsClient(**compute_fake.client_kwargs())
    assert ops.get(project=PROJECT, operation=op.name).status == compute_v1.Operation.Status.DONE
    with pytest.raises(gexc.NotFound):
        images.get(project=PROJECT, image="from-running")


def test_a_boot_disk_smaller_than_its_image_is_refused(compute_fake: ComputeFake):
    key = WarmKey(COS, "default", DIGEST)
    seed_warm_image(compute_fake, key, size_gb=80)
    node = backend(compute_fake).plan(spec(warm_images="off"), CTX).only
    body = node.candidates[0][1]
    body.disks[0].initialize_params.source_image = f"projects/{PROJECT}/global/images/{key.name}"
    with pytest.raises(gexc.BadRequest, match="cannot be smaller than the image size"):
        compute_v1.InstancesClient(**compute_fake.client_kwargs()).insert_unary(
            project=PROJECT, zone="us-central1-a", instance_resource=body)


# ---- runner images bake | list | delete, through the CLI --------------------------------------

class BakeGuest:
    """Plays gcp/startup.sh's bake mode behind each VM of the fake: a VM whose metadata has
    ``runner-bake`` reports ``bakes/<image>/startup.json`` to its store (``outcome``: "ok",
    "failed" (then it deletes itself, as the script does) or "vanish" (preempted first))."""

    def __init__(self, fake: ComputeFake) -> None:
        self.fake = fake
        self.outcome = "ok"
        self.booted: list[dict[str, str]] = []
        self.images: list[tuple[str, str]] = []

    def on_running(self, project: str, zone: str, name: str, instance: Any) -> None:
        attrs = meta(instance)
        self.booted.append(attrs)
        image = attrs.get("runner-bake")
        if not image:
            return
        self.fake.append_serial(zone, name, "runner-phase driver\nrunner-phase pull\n", project=project)
        if self.outcome == "vanish":  # lost a while into its boot: once the baker has seen its console
            def lose() -> None:
                wait_for(lambda: self.fake.calls("instances.getSerialPortOutput", ok=True), 30,
                         "the baker to read the console")
                self.fake.preempt(zone, name, project=project)
            threading.Thread(target=lose, daemon=True).start()
            return
        report = {"status": self.outcome, "reason": "" if self.outcome == "ok" else "driver install failed",
                  "detail": "nvidia-smi: no devices" if self.outcome != "ok" else ""}
        if self.outcome == "ok":
            open_store(attrs["runner-store"]).write(f"bakes/{image}/startup.json", json.dumps(report).encode())
            return

        def fail() -> None:
            # The script reports and deletes its VM minutes into the boot, never before the create
            # that made the VM has returned: here, once the baker is waiting for the report.
            wait_for(lambda: self.fake.calls("instances.getSerialPortOutput", ok=True), 30,
                     "the baker to wait for the report")
            open_store(attrs["runner-store"]).write(f"bakes/{image}/startup.json", json.dumps(report).encode())
            try:
                compute_v1.InstancesClient(**self.fake.client_kwargs()).delete_unary(project=project, zone=zone,
                                                                                     instance=name)
            except gexc.NotFound:
                pass  # the baker read the report and deleted it first, as the script also allows
        threading.Thread(target=fail, daemon=True).start()

    def on_shutdown(self, project: str, zone: str, name: str, notice_seconds: float) -> None:
        pass

    def on_power_off(self, project: str, zone: str, name: str) -> None:
        pass

    def on_image_created(self, project: str, image: str, source_disk: str) -> None:
        self.images.append((image, source_disk))


@pytest.fixture
def world(compute_fake: ComputeFake, tmp_path: Path) -> Iterator[tuple[ComputeFake, BakeGuest, dict[str, str]]]:
    guest = BakeGuest(compute_fake)
    compute_fake.guest = guest
    store = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDSDK_CONFIG": "/nonexistent", "RUNNER_BACKEND": "gce",
           "RUNNER_PROJECT": PROJECT, "RUNNER_STORE": store, "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint,
           "RUNNER_ZONES": ",".join(ZONES), "RUNNER_MACHINE_TYPE": "n1-standard-4", "RUNNER_GPU": "nvidia-tesla-t4:1",
           "RUNNER_IMAGE": IMAGE, "RUNNER_POLL_INTERVAL": "0.2", "RUNNER_STALL_POLLS": "100000",
           "RUNNER_GPU_TIMEOUT": "60"}
    yield compute_fake, guest, env
    compute_fake.guest = None


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", "images", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_runner_images_bake_makes_a_ready_labelled_image_and_leaves_no_vm(world):
    fake, guest, env = world
    fake.stockout_zones.add("us-central1-a")  # the bake VM walks the zones as a run's does
    p = cli(env, "bake")
    assert p.returncode == 0, p.stderr
    name = p.stdout.strip()
    key = WarmKey(COS, "default", DIGEST)
    assert name == key.name
    (image,) = [i for i in fake.images(PROJECT) if i.name == name]
    assert image.status == "READY" and image.family == WARM_FAMILY and dict(image.labels) == key.labels
    assert "/zones/us-central1-b/disks/" in image.source_disk
    assert "costs ~$" in p.stderr and "estimate" in p.stderr
    # The VM booted like a run's (normal scripts, run-id = the image name) plus the bake key.
    (attrs,) = guest.booted
    assert attrs["runner-bake"] == name and attrs["runner-run-id"] == name and attrs["runner-attempt"] == "1"
    assert attrs["startup-script"] == (ROOT / "gcp" / "startup.sh").read_text()
    assert attrs[UPDATE_STRATEGY_KEY] == "update_disabled"
    assert guest.images == [(name, image.source_disk.split("compute/v1/")[1])]
    assert fake.instances() == [] and fake.disks() == []  # the VM and its boot disk are gone
    # Idempotent: the same key again does nothing.
    again = cli(env, "bake")
    assert again.returncode == 0 and "already baked" in again.stderr and len(guest.booted) == 1
    # Listed, with its key, in use by this config; then deleted.
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [(i["name"], i["in_use"], i["key"]["digest"]) for i in listed] == [(name, True, "b" * 40)]
    assert name in cli(env, "list").stdout
    p = cli(env, "delete", name)
    assert p.returncode == 0, p.stderr
    assert [i.name for i in fake.images(PROJECT)] == []


def test_a_failed_bake_leaves_no_image_and_no_vm(world):
    fake, guest, env = world
    guest.outcome = "failed"
    p = cli(env, "bake")
    assert p.returncode == 1
    assert "driver install failed" in p.stderr and "nvidia-smi: no devices" in p.stderr
    wait_for(lambda: fake.instances() == [], 10, "the bake VM to be gone")
    assert [i.name for i in fake.images(PROJECT)] == [] and fake.disks() == []


def test_a_bake_vm_lost_without_a_report_fails_with_its_console(world):
    fake, guest, env = world
    guest.outcome = "vanish"
    p = cli(env, "bake")
    assert p.returncode == 1
    assert "gone without a report" in p.stderr and "runner-phase pull" in p.stderr
    assert fake.instances() == [] and [i.name for i in fake.images(PROJECT)] == []


def test_delete_all_unused_keeps_the_configured_images(world):
    fake, _guest, env = world
    used, old = WarmKey(COS, "default", DIGEST), WarmKey(COS, "default", "sha256:" + "d" * 64)
    seed_warm_image(fake, used)
    seed_warm_image(fake, old)
    p = cli(env, "delete", "--all-unused")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [old.name]
    assert [i.name for i in fake.images(PROJECT)] == [used.name]
    assert cli(env, "delete", "not-a-warm-image").returncode == 1


def test_a_create_after_a_bake_boots_warm(world):
    fake, _guest, env = world
    assert cli(env, "bake").returncode == 0
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=fake.endpoint,
                 store=env["RUNNER_STORE"], machine_type="n1-standard-4", gpu="nvidia-tesla-t4:1")
    ctx = make_context(cfg)
    prepared = ctx.backend.prepare(spec(vm_image="projects/cos-cloud/global/images/family/cos-stable"))
    node = ctx.backend.plan(prepared, CTX).only
    assert node.boot.path == "warm"
    made = ctx.backend.create_instance(node)
    assert next(d for d in fake.disks() if d.name == made.name).source_image.endswith(WarmKey(COS, "default", DIGEST).name)
