"""A gang through ``GceBackend`` itself (plan → create → list), against the Compute stand-in.

What the supervisor sees of a gang on GCE: ``create`` of an attempt with N nodes sends one
``bulkInsert`` (minCount N) per zone (gce_gang.py; the stand-in's bulkInsert is in
tests/standins/compute/bulk.py, each behaviour with its source), and returns an ``Attempt`` whose
instances carry their rank (from the name: one bulkInsert labels every VM alike) and their
internal address (rank 0's is the rendezvous endpoint the supervisor publishes).
"""

from __future__ import annotations

import dataclasses

import pytest

from entrypoint.record import AttemptSettings, RunSpec
from runner.cloud.gcp_clients import compute_clients
from runner.launch.backends import vm_metadata as md
from runner.launch.backends.base import BackendError, CreateClaimLost, LaunchContext, PermanentBackendError
from runner.launch.backends.gce import GceBackend, vm_options_defaults
from runner.naming import node_name, resource_name
from tests.standins.compute import ComputeFake

PROJECT = "test-project"
A, B = "us-central1-a", "us-central1-b"
CTX = LaunchContext(attempt=1, store_url="gs://bucket/runs", request_key="round-1",
                    settings=AttemptSettings(heartbeat_interval=5, sync_interval=10, grace_period=25,
                                             shm_size="8g", gpu_timeout=300))


@pytest.fixture(autouse=True)
def roomy_quota(compute_fake: ComputeFake) -> None:
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 64)
    compute_fake.set_quota("us-central1", "CPUS", 512)


@pytest.fixture
def backend(compute_fake: ComputeFake) -> GceBackend:
    return GceBackend(compute_clients(compute_fake.endpoint), PROJECT).bind_store(CTX.store_url)


def spec(nodes: int, run_id: str = "big-1") -> RunSpec:
    return RunSpec(run_id=run_id, image="us-docker.pkg.dev/p/r/img@sha256:" + "a" * 64,
                   command=["torchrun", "-m", "train"], backend="gce", machine_type="n1-standard-4",
                   gpu="nvidia-tesla-t4:1", zones=[A, B], nodes=nodes, timeouts={"gpu_timeout": 300},
                   vm={**vm_options_defaults(), "project": PROJECT, "warm_images": "off"})


def in_zone(fake: ComputeFake, zone: str) -> list[str]:
    return sorted(i.name for i in fake.instances() if i.zone.endswith(f"/zones/{zone}"))


def test_a_two_node_gang_is_two_vms_in_one_zone_with_ranks_and_addresses(backend, compute_fake):
    made = backend.create(backend.plan(spec(2), CTX))

    names = [node_name("big-1", 1, 0), node_name("big-1", 1, 1)]
    assert in_zone(compute_fake, A) == names and in_zone(compute_fake, B) == []
    assert [(i.name, i.rank, i.zone) for i in made.instances] == [(names[0], 0, A), (names[1], 1, A)]
    ips = {vm.name: vm.network_interfaces[0].network_i_p for vm in compute_fake.instances()}
    assert [i.address for i in made.instances] == [ips[names[0]], ips[names[1]]]
    assert made.instances[0].address != made.instances[1].address
    assert len(compute_fake.calls("instances.bulkInsert")) == 1 and not compute_fake.calls("instances.insert")
    for vm in compute_fake.instances():  # one metadata for the gang: the size, never a rank
        meta = {i.key: i.value for i in vm.metadata.items}
        assert meta[md.NNODES] == "2" and meta[md.ATTEMPT] == "1"


def test_a_stockout_for_the_second_node_in_zone_a_moves_the_whole_gang_to_zone_b(backend, compute_fake):
    compute_fake.zone_capacity[A] = 1  # room for node 0 only

    made = backend.create(backend.plan(spec(2), CTX))

    assert in_zone(compute_fake, A) == []
    assert in_zone(compute_fake, B) == [node_name("big-1", 1, 0), node_name("big-1", 1, 1)]
    assert {i.zone for i in made.instances} == {B} and [i.rank for i in made.instances] == [0, 1]


def test_the_backend_lists_a_gangs_vms_with_the_ranks_their_names_carry(backend, compute_fake):
    backend.create(backend.plan(spec(3), CTX))
    for vm in compute_fake.instances():  # one bulkInsert: every VM has the same labels, no rank
        assert "rank" not in vm.labels

    (attempt,) = backend.attempts("big-1").values()

    assert [(i.name, i.rank) for i in attempt.instances] == [(node_name("big-1", 1, r), r) for r in range(3)]
    assert attempt.lead.name == node_name("big-1", 1, 0) and attempt.alive
    assert all(i.address.startswith("10.") for i in attempt.instances)


def test_a_claim_lost_before_the_bulk_insert_creates_nothing(backend, compute_fake):
    def lost(zone: str) -> None:
        raise CreateClaimLost(f"claim lost before {zone}")

    with pytest.raises(CreateClaimLost):
        backend.create(backend.plan(spec(2), dataclasses.replace(CTX, before_insert=lost)))

    assert compute_fake.instances() == [] and not compute_fake.calls("instances.bulkInsert")


def test_the_gangs_request_ids_come_from_the_claim_round(backend, compute_fake):
    backend.create(backend.plan(spec(2), CTX))
    backend.create(backend.plan(spec(2), CTX))  # a takeover resending the same round

    sent = compute_fake.calls("instances.bulkInsert")
    assert len(sent) == 2 and sent[0].query["requestId"] == sent[1].query["requestId"]
    assert len(compute_fake.instances()) == 2


def test_another_stores_vms_of_the_same_names_are_neither_adopted_nor_deleted(compute_fake):
    theirs = GceBackend(compute_clients(compute_fake.endpoint), PROJECT).bind_store("gs://other/runs")
    ctx_theirs = dataclasses.replace(CTX, store_url="gs://other/runs")
    theirs.create(theirs.plan(spec(2), ctx_theirs))
    ours = GceBackend(compute_clients(compute_fake.endpoint), PROJECT).bind_store(CTX.store_url)

    with pytest.raises(BackendError):
        ours.create(ours.plan(spec(2), CTX))

    assert sorted(i.name for i in compute_fake.instances()) == [node_name("big-1", 1, 0), node_name("big-1", 1, 1)]
    assert {i.store for i in theirs.list("big-1")} == {theirs.store_label}


def test_a_single_vm_run_is_still_one_insert_of_the_attempts_name(backend, compute_fake):
    plan = backend.plan(spec(1), CTX)
    made = backend.create(plan)

    assert plan.gang is None
    assert [(i.name, i.rank) for i in made.instances] == [(resource_name("big-1", 1), 0)]
    assert made.instances[0].address  # a single VM's address is known too
    assert len(compute_fake.calls("instances.insert")) == 1 and not compute_fake.calls("instances.bulkInsert")
    (vm,) = compute_fake.instances()
    assert md.NNODES not in {i.key for i in vm.metadata.items} and vm.labels["rank"] == "0"


def test_a_gang_plan_names_each_node_and_holds_one_bulk_insert_per_zone(backend):
    plan = backend.plan(spec(2), CTX)

    assert [n.name for n in plan.nodes] == [node_name("big-1", 1, 0), node_name("big-1", 1, 1)]
    assert plan.gang is not None and [z for z, _ in plan.gang.candidates] == [A, B]
    res = plan.gang.request(A).bulk_insert_instance_resource_resource
    assert (res.count, res.min_count) == (2, 2)


def test_gce_runs_gangs_up_to_the_configs_ceiling():
    GceBackend.check_nodes(64)
    with pytest.raises(BackendError, match="at most 64"):
        GceBackend.check_nodes(65)


def test_a_gang_over_the_project_wide_gpu_quota_fails_at_the_first_zone_and_leaves_nothing(backend, compute_fake):
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 1)  # one node's T4, never the gang's two

    with pytest.raises(PermanentBackendError, match=r"is 1, below the 2 GPU\(s\) one attempt of this run needs"):
        backend.create(backend.plan(spec(2), CTX))

    assert compute_fake.instances() == []
    assert [r.path.split("/zones/")[1].split("/")[0] for r in compute_fake.calls("instances.bulkInsert")] == [A]


def test_a_gang_whose_gpu_quota_other_vms_hold_waits_without_walking_zones(backend, compute_fake):
    compute_fake.set_project_quota("GPUS_ALL_REGIONS", 2)
    backend.create(backend.plan(spec(1, run_id="other"), CTX))  # another run holds one of the two

    with pytest.raises(BackendError, match="used up by the project's other GPU VMs") as err:
        backend.create(backend.plan(spec(2), CTX))

    assert not isinstance(err.value, PermanentBackendError)  # it waits: the other run may end
    assert len(compute_fake.calls("instances.bulkInsert")) == 1
    assert sorted(i.name for i in compute_fake.instances()) == [resource_name("other", 1)]
