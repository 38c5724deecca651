"""A 2-node gang on GCE the way a user runs it: ``submit --nodes 2``, then the supervisor's passes,
against the Compute stand-in and the GCS emulator (no VM boots: the agent's side of the record is
written here by hand, as tests/test_gce_backend.py does).

What must hold: the supervisor's create of a gang is one bulkInsert; the attempt's create claim
names every node with its zone, rank and internal address (rank 0's is what each node's agent
waits for); and a lost node ends the whole generation (the supervisor's gang_watch), whose
successor is a new gang, again one bulkInsert.
"""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.naming import node_name

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64
ZONES = ["us-central1-a", "us-central1-b"]


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, machine_type="n1-standard-4", gpu="nvidia-tesla-t4", nodes=2,
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 64)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 512)
    return make_context(cfg), compute_fake


def submit(ctx, run_id="gang-1"):
    from runner.launch.submit import submit as do_submit

    return do_submit(ctx, run_id, ["torchrun", "-m", "train"], image=IMAGE, restart=False)


def test_the_supervisor_creates_a_gang_with_one_bulk_insert_and_publishes_every_nodes_address(gce):
    ctx, fake = gce
    submit(ctx)

    ctx.supervisor().reconcile("gang-1")

    names = [node_name("gang-1", 1, 0), node_name("gang-1", 1, 1)]
    assert sorted(vm.name for vm in fake.instances()) == names
    assert len(fake.calls("instances.bulkInsert")) == 1 and not fake.calls("instances.insert")
    claim = RunRecord(ctx.store, "gang-1").read_claim(1)
    ips = {vm.name: vm.network_interfaces[0].network_i_p for vm in fake.instances()}
    assert sorted(claim.instances, key=lambda i: i["rank"]) == [
        {"name": names[0], "zone": ZONES[0], "rank": 0, "address": ips[names[0]]},
        {"name": names[1], "zone": ZONES[0], "rank": 1, "address": ips[names[1]]},
    ]
    assert RunRecord(ctx.store, "gang-1").read_state()[0].state == State.PROVISIONING


def test_a_preempted_node_ends_the_generation_and_the_next_one_is_a_whole_new_gang(gce):
    ctx, fake = gce
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("gang-1")
    rec = RunRecord(ctx.store, "gang-1")
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone=ZONES[0])  # rank 0's agent

    fake.preempt(ZONES[0], node_name("gang-1", 1, 1))  # GCE takes node 1 (terminationAction DELETE)
    for _ in range(6):  # a few passes: notice the loss, end the generation, create the next
        sup.reconcile("gang-1")
        if {vm.name for vm in fake.instances()} == {node_name("gang-1", 2, 0), node_name("gang-1", 2, 1)}:
            break

    # Node 0 of the old generation is gone too (it would wait for node 1 forever otherwise).
    assert sorted(vm.name for vm in fake.instances()) == [node_name("gang-1", 2, 0), node_name("gang-1", 2, 1)]
    st, _ = rec.read_state()
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    preempted = [ev for _, ev in rec.events() if ev["to"] == "PREEMPTED"]
    assert len(preempted) == 1 and "node 1" in preempted[0]["reason"] and "whole gang" in preempted[0]["reason"]
    assert "after a GCE preemption" in preempted[0]["reason"], preempted  # found by node 1's name
    assert len(fake.calls("instances.bulkInsert")) == 2 and not fake.calls("instances.insert")
    claim = rec.read_claim(2)  # the new generation's addresses, for its agents
    assert sorted(i["rank"] for i in claim.instances) == [0, 1] and all(i.get("address") for i in claim.instances)


def test_submit_refuses_a_gang_whose_gpus_together_exceed_the_project_wide_quota(gce):
    from runner.launch.backends.base import BackendError

    ctx, fake = gce
    fake.set_project_quota("GPUS_ALL_REGIONS", 1)  # room for one node's T4, not the gang's two

    with pytest.raises(BackendError, match=r"is 1, below the 2 GPU\(s\) one attempt of this run needs \(2 VMs of 1\)"):
        submit(ctx)

    assert RunRecord(ctx.store, "gang-1").read_state() is None and fake.instances() == []


def test_submit_refuses_a_gang_sharing_one_data_disk(compute_fake, gcs_store, gcs_emulator):
    from runner.launch.backends.base import BackendError

    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, machine_type="n1-standard-4", no_gpu=True, nodes=2, data_disk="datasets")

    with pytest.raises(BackendError, match="cannot share one data disk"):
        submit(make_context(cfg))

    assert RunRecord(gcs_store, "gang-1").read_state() is None
