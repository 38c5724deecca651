"""Issue 19, item 4: the project-wide ``GPUS_ALL_REGIONS`` quota.

Many projects have it at 0 ("Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally.",
https://github.com/fastai/course-v3/pull/165), and spot VMs do not escape it: then every zone
refuses, so walking zones (and retrying them every pass) cannot help. The fake enforces it in
every zone with GCE's operation error (tests/standins/compute/quotas.py); the product says so
once, with the quota's name and limit, and `runner doctor` checks it before the first run.
"""

from __future__ import annotations

import pytest
from google.cloud import compute_v1

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from tests.test_doctor import admin, default_sa, doctor, gce_config, grant_all  # noqa: F401 - fixture

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "d" * 64
CONSOLE = f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT}"


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a", "us-central1-b"],
                 compute_endpoint=compute_fake.endpoint, store=gcs_store.url,
                 machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 8)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 64)
    return make_context(cfg), compute_fake


def submit(ctx, run_id: str) -> None:
    from runner.launch.submit import submit as do_submit

    do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def test_the_fake_refuses_a_gpu_vm_over_gpus_all_regions_as_gce_does(compute_fake) -> None:
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 0)
    client = compute_v1.InstancesClient(**compute_fake.client_kwargs())
    vm = compute_v1.Instance(
        name="gpu-vm", machine_type="zones/us-central1-a/machineTypes/n1-standard-4",
        guest_accelerators=[compute_v1.AcceleratorConfig(
            accelerator_type="zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4", accelerator_count=1)],
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT", on_host_maintenance="TERMINATE",
                                         automatic_restart=False))
    op = client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=vm)
    (err,) = op.error.errors
    assert err.code == "QUOTA_EXCEEDED"
    assert err.message == "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
    info = err.error_details[0].quota_info
    assert (info.metric_name, info.limit_name, info.limit) == (
        "compute.googleapis.com/gpus_all_regions", "GPUS-ALL-REGIONS-per-project", 0.0)
    assert compute_fake.instances() == []
    project = compute_v1.ProjectsClient(**compute_fake.client_kwargs()).get(project=PROJECT)
    assert [(q.metric, q.limit, q.usage) for q in project.quotas] == [("GPUS_ALL_REGIONS", 0.0, 0.0)]


def test_submit_refuses_a_gpu_run_the_project_wide_quota_can_never_hold(gce) -> None:
    from runner.launch.backends.base import BackendError

    ctx, fake = gce
    fake.set_project_quota("GPUS_ALL_REGIONS", 0)
    with pytest.raises(BackendError) as err:
        submit(ctx, "exp-1")
    assert "GPUS_ALL_REGIONS of project test-project is 0" in str(err.value) and CONSOLE in str(err.value)
    assert RunRecord(ctx.store, "exp-1").read_state() is None  # nothing was recorded
    assert fake.calls("instances.insert") == []


def test_lowered_to_zero_after_submit_the_run_fails_once_and_tries_no_other_zone(gce) -> None:
    ctx, fake = gce
    submit(ctx, "exp-1")
    fake.set_project_quota("GPUS_ALL_REGIONS", 0)  # e.g. an org policy lowered it since
    ctx.supervisor().reconcile("exp-1")
    st = RunRecord(ctx.store, "exp-1").read_state()[0]
    assert st.state == State.FAILED
    assert "GPUS_ALL_REGIONS" in st.reason and "is 0" in st.reason and CONSOLE in st.reason
    # The queue read the quota before any insert: none was sent, in no zone (every zone would
    # refuse alike).
    assert fake.calls("instances.insert") == []
    ctx.supervisor().reconcile("exp-1")
    assert fake.calls("instances.insert") == [] and fake.instances() == []


def test_when_other_gpu_vms_hold_the_quota_the_run_waits_without_walking_zones(gce) -> None:
    ctx, fake = gce
    fake.set_project_quota("GPUS_ALL_REGIONS", 1)
    submit(ctx, "first")
    submit(ctx, "second")
    sup = ctx.supervisor()
    sup.reconcile("first")
    assert [v.name for v in fake.instances()] == ["runner-first-a1"]
    fake.reset_requests()
    sup.reconcile("second")
    rec = RunRecord(ctx.store, "second")
    st = rec.read_state()[0]
    assert st.state == State.QUEUED  # waits in the queue: the quota can free up
    assert st.reason == "waiting for 1 × GPUS_ALL_REGIONS project-wide: 1 of 1 in use"
    assert fake.calls("instances.insert") == []  # no insert the quota must refuse, in no zone


def test_doctor_names_gpus_all_regions_at_zero_with_the_request_to_file(admin, compute_fake,  # noqa: F811
                                                                         gcs_emulator) -> None:
    grant_all(admin, default_sa(admin))
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 0)
    check = doctor(gce_config(admin, compute_fake))["GPU quota"]
    assert check.ok is False
    assert "project-wide GPUS_ALL_REGIONS 0 free of 0" in check.detail
    assert check.fix.splitlines()[0] == (
        "gcloud quotas preferences create --service=compute.googleapis.com --project=test-project "
        "--quota-id=GPUS-ALL-REGIONS-per-project --preferred-value=1")
    assert f"request GPUS_ALL_REGIONS >= 1 at {CONSOLE}" in check.fix
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 4)
    check = doctor(gce_config(admin, compute_fake))["GPU quota"]
    assert check.ok is True and "project-wide GPUS_ALL_REGIONS 4 free of 4" in check.detail
