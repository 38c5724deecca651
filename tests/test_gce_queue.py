"""The queue against the Compute stand-in, through the real client library: one pass reads the
quotas with one ``regions.get`` and one ``projects.get`` whatever the number of waiting runs, and
sends no insert that the quota must refuse (issue 22, "a queue that knows the quota")."""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.queue_pass import read_queue

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "e" * 64


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a", "us-central1-b"],
                 compute_endpoint=compute_fake.endpoint, store=gcs_store.url,
                 machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 2)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 64)
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 16)
    return make_context(cfg), compute_fake


def submit(ctx, run_id: str) -> None:
    from runner.launch.submit import submit as do_submit

    do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def quota_reads(fake) -> int:
    return len(fake.calls("regions.get")) + len(fake.calls("projects.get"))


@pytest.mark.parametrize("runs", [4, 12])
def test_a_pass_reads_the_quotas_once_and_sends_no_insert_the_quota_must_refuse(gce, runs) -> None:
    ctx, fake = gce
    for i in range(runs):
        submit(ctx, f"g-{i:02d}")
    assert RunRecord(ctx.store, "g-00").read_spec().vm["vcpus"] == 4  # pinned from machineTypes.get
    fake.reset_requests()
    sup = ctx.supervisor()
    sup.reconcile_all()
    sup.drain()
    assert quota_reads(fake) == 2  # regions.get(us-central1) + projects.get, for 2 or 10 waiting runs
    inserts = fake.calls("instances.insert")
    assert len(inserts) == 2 and all(r.status == 200 for r in inserts)
    assert len(fake.instances()) == 2
    waiting = [f"g-{i:02d}" for i in range(2, runs)]
    assert all(RunRecord(ctx.store, r).read_state()[0].state == State.QUEUED for r in waiting)
    st = RunRecord(ctx.store, "g-02").read_state()[0]
    assert st.reason == "waiting for 1 × PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1: 2 of 2 in use"
    assert [read_queue(ctx.store)[r]["position"] for r in waiting] == list(range(1, runs - 1))
    fake.reset_requests()
    sup.reconcile_all()  # nothing freed up
    sup.drain()
    assert quota_reads(fake) == 2 and fake.calls("instances.insert") == []
    # No quota refusal ever reached a run's journal: nothing was refused.
    notes = [ev.get("reason") or "" for r in waiting for _, ev in RunRecord(ctx.store, r).events()]
    assert not any("QUOTA_EXCEEDED" in n or "exceeded" in n for n in notes)
