"""Issue 19, item 6: machine shapes as GCE defines them, not as their names suggest.

- A built-in-GPU machine type's GPU count is what ``machineTypes.get`` says
  (``accelerators[].guestAcceleratorCount``): g2-standard-24/48/96 carry 2/4/8 L4s (GPU platforms
  page, G2 table, https://cloud.google.com/compute/docs/gpus/). Submit pins it; the VM's GPU wait
  (its ``gpu-count`` metadata) and the quota check count it.
- A3 Ultra (and A4) boot from Hyperdisk only (Vertex AI DiskSpec: "for A3U machines, the default
  value is hyperdisk-balanced", https://docs.cloud.google.com/vertex-ai/docs/reference/rest/v1/DiskSpec).
- Each GPU family has its own quota metric; the A3 variants differ (H100, H100 Mega, H200).
- K80 is end of life; the COS GPU installer does not run on dev-channel images.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from entrypoint.record import RunRecord
from runner.config import Config
from runner.launch.backends import vm_metadata as md
from runner.launch.backends.base import BackendError
from runner.launch.backends.gce_shapes import ShapeError, resolve_gpu
from runner.launch.context import make_context

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "e" * 64


def context(compute_fake, gcs_store, **over):
    values = dict(backend="gce", project=PROJECT, zones=["us-central1-a"],
                  compute_endpoint=compute_fake.endpoint, store=gcs_store.url, gpu=None,
                  poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    values.update(over)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 512)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS", 16)
    return make_context(Config(**values))


def submit(ctx, run_id: str = "exp-1") -> None:
    from runner.launch.submit import submit as do_submit

    do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def metadata(vm: compute_v1.Instance) -> dict[str, str]:
    return {i.key: i.value for i in vm.metadata.items}


def test_a_g2_standard_24_waits_for_the_two_l4s_machine_types_get_reports(compute_fake, gcs_store,
                                                                         gcs_emulator) -> None:
    ctx = context(compute_fake, gcs_store, machine_type="g2-standard-24")
    submit(ctx)
    spec = RunRecord(ctx.store, "exp-1").read_spec()
    assert spec.vm["gpu_count"] == 2
    assert ctx.backend.gpu_of(spec).count == 2  # what cost and warm images count
    ctx.supervisor().reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert metadata(vm)[md.GPU_COUNT] == "2"  # the VM waits for both GPUs, not one


@pytest.mark.parametrize("machine, count", [("g2-standard-24", 2), ("g2-standard-48", 4),
                                            ("g2-standard-96", 8), ("g2-standard-8", 1),
                                            ("a3-highgpu-8g", 8), ("a2-highgpu-1g", 1)])
def test_without_the_api_the_known_counts_are_used_not_the_name(machine: str, count: int) -> None:
    assert resolve_gpu(machine, None).count == count


def test_a3_ultra_boots_from_hyperdisk_and_the_fake_refuses_persistent_disk(compute_fake, gcs_store,
                                                                          gcs_emulator) -> None:
    ctx = context(compute_fake, gcs_store, machine_type="a3-ultragpu-8g")
    submit(ctx)
    spec = RunRecord(ctx.store, "exp-1").read_spec()
    assert spec.vm["boot_disk_type"] == "hyperdisk-balanced" and spec.vm["gpu_count"] == 8
    from runner.launch.backends.base import LaunchContext

    launch = LaunchContext(attempt=1, store_url=gcs_store.url, settings=spec.attempt_settings())
    plan = ctx.backend.plan(spec, launch).only
    (_, body), = plan.candidates
    assert body.disks[0].initialize_params.disk_type.endswith("/diskTypes/hyperdisk-balanced")
    body.disks[0].initialize_params.disk_type = "zones/us-central1-a/diskTypes/pd-balanced"
    client = compute_v1.InstancesClient(**compute_fake.client_kwargs())
    with pytest.raises(gexc.BadRequest, match="Hyperdisk only"):
        client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=body)


def test_an_explicit_persistent_disk_on_a4_is_refused_at_submit_with_the_fix(compute_fake, gcs_store,
                                                                            gcs_emulator) -> None:
    ctx = context(compute_fake, gcs_store, machine_type="a4-highgpu-8g", boot_disk_type="pd-ssd")
    with pytest.raises(BackendError, match='boot_disk_type = "hyperdisk-balanced"'):
        submit(ctx)
    assert compute_fake.instances() == []


@pytest.mark.parametrize("machine, gpu, metric", [
    ("a3-highgpu-8g", "nvidia-h100-80gb", "NVIDIA_H100_GPUS"),
    ("a3-megagpu-8g", "nvidia-h100-mega-80gb", "NVIDIA_H100_MEGA_GPUS"),
    ("a3-ultragpu-8g", "nvidia-h200-141gb", "NVIDIA_H200_GPUS"),
    ("a4-highgpu-8g", "nvidia-b200", "NVIDIA_B200_GPUS"),
    ("a2-ultragpu-1g", "nvidia-a100-80gb", "NVIDIA_A100_80GB_GPUS"),
    ("a2-highgpu-1g", "nvidia-tesla-a100", "NVIDIA_A100_GPUS"),
    ("g2-standard-24", "nvidia-l4", "NVIDIA_L4_GPUS"),
])
def test_each_gpu_family_has_its_own_quota_metric(machine: str, gpu: str, metric: str) -> None:
    from runner.launch.backends.gce_shapes import gpu_quota_metric

    assert gpu_quota_metric(machine, None) == (gpu, metric)


def test_k80_is_refused_as_end_of_life_with_what_to_use() -> None:
    with pytest.raises(ShapeError, match="end of support.*nvidia-tesla-t4"):
        resolve_gpu("n1-standard-4", "nvidia-tesla-k80")


def test_a_gpu_run_on_a_cos_dev_image_is_refused_before_any_vm(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = context(compute_fake, gcs_store, machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                  vm_image="projects/cos-cloud/global/images/family/cos-dev")
    with pytest.raises(BackendError, match="dev-channel.*cos-stable"):
        submit(ctx)
    assert compute_fake.instances() == []


def test_doctor_counts_the_l4s_machine_types_get_reports_against_the_regional_quota(
        compute_fake, gcs_emulator, gcp_admin_fake) -> None:
    from tests.test_doctor import default_sa, doctor, gce_config, grant_all

    gcp_admin_fake.add_project(PROJECT)
    grant_all(gcp_admin_fake, default_sa(gcp_admin_fake))
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS", 1)  # a new project's
    check = doctor(gce_config(gcp_admin_fake, compute_fake, machine_type="g2-standard-24", gpu=None))["GPU quota"]
    assert check.ok is False
    assert check.detail.startswith("2 x nvidia-l4 needed per VM; us-central1: PREEMPTIBLE_NVIDIA_L4_GPUS 1 free of 1")
    assert check.fix.startswith("request PREEMPTIBLE_NVIDIA_L4_GPUS >= 2 in us-central1")
