"""Warm boot images run whole, the way a user runs them: ``runner images bake`` in its own process
against the Compute fake, the GCS emulator and simulated COS VMs (tests/standins/cloud_sim.py)
that run the real gcp/startup.sh in bake mode (install the driver, pull the pinned image from a
real loopback registry, report ``bakes/<image>/startup.json``). The image the fake makes from the
stopped VM's disk carries that disk (driver files, the image's layers); a run submitted after it
boots from it and skips both. Outcomes only: the image, its labels, the VMs and disks left, the
phases the run's attempt recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from entrypoint.record import RunRecord, State
from entrypoint.store_gcs import GcsStore
from runner.launch.backends.gce_boot_image import WARM_FAMILY, WarmKey
from tests.conftest import ROOT, wait_for
from tests.standins.cloud_sim import CosGuest
from tests.standins.cos_sim.vm import read_calls
from tests.standins.compute import ComputeFake, run_compute_fake
from tests.standins.gcs_fixture import BUCKET
from tests.standins.network_guard import block_external_network
from tests.standins.registry import Registry

pytestmark = pytest.mark.docker

PROJECT = "test-project"
COS = "cos-stable-121-18867-90-38"  # what the fake's cos-stable family serves
REPOSITORY = "cos-spot-runner/warm-image"
TEST_IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")


@pytest.fixture(scope="module")
def pinned(registry: Registry, docker_client: Any) -> Iterator[str]:
    """The workload image pushed to the loopback registry: REPO@sha256:... as `runner build` prints."""
    tag = f"{registry.host}/{REPOSITORY}:w-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(TEST_IMAGE).tag(tag)
    subprocess.run(["docker", "push", tag], check=True, capture_output=True, timeout=300)
    digest = registry.manifest_digest(REPOSITORY, tag.rsplit(":", 1)[1])
    assert digest
    ref = f"{registry.host}/{REPOSITORY}@{digest}"
    docker_client.images.remove(tag, noprune=True)
    yield ref
    try:
        docker_client.images.remove(ref, noprune=True)
    except Exception:  # noqa: BLE001 - never pulled by digest, or in use
        pass


class World:
    def __init__(self, fake: ComputeFake, guest: CosGuest, emulator: str, image: str) -> None:
        self.fake, self.guest, self.image = fake, guest, image
        self.store_url = f"gs://{BUCKET}/warm-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDSDK_CONFIG": "/nonexistent",
                    "GOOGLE_CLOUD_PROJECT": "local", "STORAGE_EMULATOR_HOST": emulator,
                    "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT, "RUNNER_STORE": self.store_url,
                    "RUNNER_COMPUTE_ENDPOINT": fake.endpoint, "RUNNER_ZONES": "us-central1-a,us-central1-b",
                    "RUNNER_MACHINE_TYPE": "n1-standard-4", "RUNNER_GPU": "nvidia-tesla-t4:1",
                    "RUNNER_IMAGE": image, "RUNNER_POLL_INTERVAL": "0.5", "RUNNER_HEARTBEAT_INTERVAL": "0.5",
                    "RUNNER_SYNC_INTERVAL": "0.5", "RUNNER_GRACE_PERIOD": "8", "RUNNER_STALL_POLLS": "100000",
                    "RUNNER_GPU_TIMEOUT": "60"}
        self.procs: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def warm_images(self) -> list[Any]:
        return [i for i in self.fake.images(PROJECT) if i.family == WARM_FAMILY]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)


@pytest.fixture
def world(tmp_path: Path, gcs_emulator: str, docker_client: Any, pinned: str) -> Iterator[World]:
    with block_external_network() as blocked, run_compute_fake(PROJECT) as fake:
        guest = CosGuest(tmp_path / "vms", gcs_api=gcs_emulator, compute_api=fake.endpoint,
                         docker_client=docker_client)
        guest.follow(fake)
        w = World(fake, guest, gcs_emulator, pinned)
        try:
            yield w
        finally:
            w.close()
            guest.close()
        assert guest.errors == [] or all("startup script exited" in e for e in guest.errors), guest.errors
    assert not blocked, f"requests escaped towards real endpoints: {sorted(set(blocked))}"
    assert not fake.internal_errors, fake.internal_errors


def test_a_baked_image_holds_the_driver_and_the_image_and_a_run_boots_from_it_warm(world: World) -> None:
    p = world.cli("images", "bake")
    assert p.returncode == 0, p.stderr
    name = p.stdout.strip()
    key = WarmKey(COS, "default", world.image.rsplit("@", 1)[1])
    assert name == key.name
    (image,) = world.warm_images()
    assert image.name == name and image.status == "READY" and dict(image.labels) == key.labels
    # The bake VM and its disk are gone; the image kept what the VM installed and pulled.
    assert world.fake.instances() == [] and world.fake.disks() == []
    assert (world.guest.images[name] / "var-lib-nvidia/.runner-driver").exists()
    assert world.image in (world.guest.images[name] / "var-lib-docker/images").read_text().split()
    assert "costs ~$" in p.stderr
    listed = json.loads(world.cli("images", "list", "--json").stdout)
    assert [(i["name"], i["in_use"]) for i in listed] == [(name, True)]

    # A run of that image boots from it: no driver install from nothing, no pull.
    run_id = f"warm-{uuid.uuid4().hex[:6]}"
    p = world.cli("submit", "--run-id", run_id, "--image", world.image, "--detach", "--",
                  "python3", "-m", "examples.trainer", "--steps", "5", "--checkpoint-every", "5",
                  "--step-time", "0.1")
    assert p.returncode == 0, p.stderr
    world.procs.append(subprocess.Popen([sys.executable, "-m", "runner.cli", "supervise"], env=world.env,
                                        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    rec = RunRecord(GcsStore(world.store_url), run_id)
    st = wait_for(lambda: (lambda s: s if s and s[0].state.terminal else None)(rec.read_state()), 180,
                  f"{run_id} to end", every=0.5)[0]
    assert st.state == State.SUCCEEDED, st
    phases = rec.phases(1)
    assert phases["driver_ready"]["detail"]["path"] == "warm"
    assert phases["image_ready"]["detail"]["path"] == "warm"
    gvm = next(vm for vm in world.guest.vms.values() if vm.run_id == run_id)
    # The VM deletes itself at the end, which may power it off before its startup script returns
    # (then no Boot is recorded): read what its tools were asked to do from the calls they logged.
    calls = read_calls(gvm.cos.calls_dir)
    assert [c.argv for c in calls if c.tool == "cos-extensions"], "the driver was not even verified"
    assert [c.argv for c in calls if c.tool == "docker" and c.argv[:1] == ["pull"]] == []

    p = world.cli("images", "delete", name)
    assert p.returncode == 0, p.stderr
    assert world.warm_images() == []


def test_a_failed_bake_leaves_no_image_and_no_vm(world: World) -> None:
    world.guest.env_for = lambda attrs: {"COS_SIM_DRIVER": "never"}  # installs, but no GPU appears
    p = world.cli("images", "bake", RUNNER_GPU_TIMEOUT="5")
    assert p.returncode == 1, p.stdout
    assert "could not prepare the image" in p.stderr and "gpu_timeout" in p.stderr
    wait_for(lambda: world.fake.instances() == [], 30, "the bake VM to be gone")
    assert world.warm_images() == [] and world.fake.disks() == []
