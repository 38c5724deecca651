"""The queue against the Compute stand-in, through the real client library: one pass reads the
quotas with one ``regions.get`` and one ``projects.get`` whatever the number of waiting runs, and
sends no insert that the quota must refuse (issue 22, "a queue that knows the quota")."""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord, State
from runner.launch.queue_pass import read_queue
from tests.test_gce_global_gpu_quota import gce, submit  # noqa: F401 - gce is a fixture



def gce_queue(gce):
    """The GPU-quota world of tests/test_gce_global_gpu_quota.py, with room for two T4 VMs."""
    ctx, fake = gce
    fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 2)
    fake.set_project_quota("GPUS_ALL_REGIONS", 16)
    return ctx, fake


def quota_reads(fake) -> int:
    return len(fake.calls("regions.get")) + len(fake.calls("projects.get"))


@pytest.mark.parametrize("runs", [4, 12])
def test_a_pass_reads_the_quotas_once_and_sends_no_insert_the_quota_must_refuse(gce, runs) -> None:  # noqa: F811
    ctx, fake = gce_queue(gce)
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
