"""A gang's generation on GCE, created by the product against the Compute stand-in.

The plan is the product's own (``GceBackend.plan`` → ``gang_plan``); the create is
``create_generation`` through the real google-cloud-compute clients. What must hold: all N nodes
in one zone or none in it, the next zone when one is short, rank 0's internal address known, and
a retried create never making a second gang.
"""

from __future__ import annotations

import dataclasses

import pytest

from entrypoint.record import RunSpec
from runner.cloud.gcp_clients import compute_clients
from runner.launch.backends import vm_metadata as md
from runner.launch.backends.base import BackendError, LaunchContext
from runner.launch.backends.gce import GceBackend, ZoneExhausted, vm_options_defaults
from runner.launch.backends.gce_gang import GangPlan, create_generation, gang_plan, internal_ip
from runner.launch.backends.gang import node_env, rendezvous_id
from runner.naming import node_name, rank_of
from tests.standins.compute import ComputeFake

from tests.test_gce_gang_backend import A, B, CTX as BACKEND_CTX, roomy_quota  # noqa: F401 - an autouse fixture

CTX = dataclasses.replace(BACKEND_CTX, attempt=2)


def plan_for(nodes: int, ctx: LaunchContext = CTX, **vm: object) -> GangPlan:
    spec = RunSpec(run_id="big-1", image="us-docker.pkg.dev/p/r/img@sha256:" + "a" * 64,
                   command=["torchrun", "-m", "train"], backend="gce", machine_type="n1-standard-4",
                   gpu="nvidia-tesla-t4:1", zones=[A, B], timeouts={"gpu_timeout": 300},
                   vm={**vm_options_defaults(), "project": "test-project", "warm_images": "off", **vm})
    single = GceBackend(clients=None, project="test-project").plan(spec, ctx).only  # type: ignore[arg-type]
    return gang_plan(single, "big-1", ctx.attempt, nodes)


def in_zone(fake: ComputeFake, zone: str) -> list[str]:
    return sorted(i.name for i in fake.instances() if i.zone.endswith(f"/zones/{zone}"))


def test_a_generation_is_created_whole_in_one_zone_with_rank_0s_address(compute_fake):
    gen = create_generation(compute_clients(compute_fake.endpoint), plan_for(3))

    names = [node_name("big-1", 2, r) for r in range(3)]
    assert (gen.zone, [vm.name for vm in gen.vms]) == (A, names)
    assert in_zone(compute_fake, A) == names and in_zone(compute_fake, B) == []
    rank0 = compute_fake.instance(A, names[0])
    assert gen.master_addr == internal_ip(rank0) == rank0.network_interfaces[0].network_i_p != ""
    assert len(compute_fake.calls("instances.bulkInsert")) == 1  # one call for the whole gang
    for vm in compute_fake.instances():  # every node runs the product's own VM: metadata, labels
        meta = {i.key: i.value for i in vm.metadata.items}
        assert meta[md.RUN_ID] == "big-1" and meta[md.ATTEMPT] == "2"
        assert vm.labels["attempt"] == "2" and "rank" not in vm.labels  # the rank is in the name
        assert vm.scheduling.provisioning_model == "SPOT"


def test_a_stockout_for_node_2_leaves_nothing_in_zone_a_and_all_nodes_in_zone_b(compute_fake):
    compute_fake.zone_capacity[A] = 1  # zone a has room for node 1 only

    gen = create_generation(compute_clients(compute_fake.endpoint), plan_for(2))

    assert gen.zone == B
    assert in_zone(compute_fake, A) == []
    assert in_zone(compute_fake, B) == [node_name("big-1", 2, 0), node_name("big-1", 2, 1)]
    refused = compute_fake.operations(zone=A)
    assert [e.code for op in refused for e in op.error.errors] == ["VM_MIN_COUNT_NOT_REACHED"]


def test_a_node_a_rollback_left_behind_is_deleted_before_the_next_zone(compute_fake):
    compute_fake.zone_capacity[A] = 2  # room for two of three
    compute_fake.bulk_rollback_leaves[A] = 1  # and GCE's rollback leaves node 0 there

    gen = create_generation(compute_clients(compute_fake.endpoint), plan_for(3))

    assert gen.zone == B and len(in_zone(compute_fake, B)) == 3
    assert in_zone(compute_fake, A) == []  # at most one zone ever holds nodes of a generation


def test_no_zone_with_room_for_the_whole_gang_leaves_nothing_anywhere(compute_fake):
    compute_fake.zone_capacity.update({A: 1, B: 1})

    with pytest.raises(ZoneExhausted, match="all 2 nodes"):
        create_generation(compute_clients(compute_fake.endpoint), plan_for(2))

    assert compute_fake.instances() == [] and compute_fake.disks() == []


def test_a_lost_reply_is_retried_with_the_same_request_id_and_makes_no_second_gang(compute_fake):
    compute_fake.lose_reply("instances.bulkInsert")  # the gang is made; the answer never arrives

    gen = create_generation(compute_clients(compute_fake.endpoint), plan_for(2))

    sent = compute_fake.calls("instances.bulkInsert")
    assert [r.status for r in sent] == [503, 200]
    assert sent[0].query["requestId"] == sent[1].query["requestId"]
    assert len(compute_fake.instances()) == 2 and gen.zone == A


def test_a_takeover_resending_the_same_round_gets_the_first_gang(compute_fake):
    clients = compute_clients(compute_fake.endpoint)
    first = create_generation(clients, plan_for(2))

    again = create_generation(clients, plan_for(2))  # another supervisor, same claim round

    assert again == first and len(compute_fake.instances()) == 2


def test_a_complete_gang_of_an_earlier_round_is_adopted_not_duplicated(compute_fake):
    clients = compute_clients(compute_fake.endpoint)
    first = create_generation(clients, plan_for(2))

    later = create_generation(clients, plan_for(2, dataclasses.replace(CTX, request_key="round-2")))

    assert later == first and len(compute_fake.instances()) == 2


def test_part_of_a_gang_found_by_a_new_round_is_deleted_not_adopted(compute_fake):
    clients = compute_clients(compute_fake.endpoint)
    create_generation(clients, plan_for(2))
    clients.instances.delete_unary(project="test-project", zone=A, instance=node_name("big-1", 2, 1))

    with pytest.raises(BackendError, match="1 of the 2 nodes"):
        create_generation(clients, plan_for(2, dataclasses.replace(CTX, request_key="round-2")))

    assert compute_fake.instances() == []


def test_each_node_gets_its_rank_and_the_generations_rendezvous():
    env = node_env("big-1", 3, 1, 2, "10.128.0.2")

    assert env["RUNNER_NODE_RANK"] == env["NODE_RANK"] == "1"
    assert env["RUNNER_NNODES"] == "2"
    assert env["RUNNER_MASTER_ADDR"] == env["MASTER_ADDR"] == "10.128.0.2"
    assert env["RUNNER_MASTER_PORT"] == env["MASTER_PORT"] == "29500"
    assert env["RUNNER_RDZV_ID"] == rendezvous_id("big-1", 3) != rendezvous_id("big-1", 2)
    assert "WORLD_SIZE" not in env  # torchrun's, and it counts processes, not nodes
    with pytest.raises(ValueError, match="outside a gang"):
        node_env("big-1", 3, 2, 2, "10.128.0.2")


def test_node_names_carry_the_rank_and_never_meet_a_single_vms_name():
    assert node_name("big-1", 2, 1) == "runner-big-1-a2-n1"
    assert rank_of(node_name("big-1", 2, 1)) == 1 and rank_of("runner-big-1-a2") is None
    names = {node_name(run, a, r) for run in ("x", "x-a1", "x-a1-n0") for a in (1, 2) for r in (0, 1)}
    assert len(names) == 12


def test_the_bulk_request_asks_for_all_nodes_or_none():
    req = plan_for(3).request(A)
    res = req.bulk_insert_instance_resource_resource

    assert (res.count, res.min_count) == (3, 3)
    assert sorted(res.per_instance_properties) == [node_name("big-1", 2, r) for r in range(3)]
    assert res.instance_properties.machine_type == "n1-standard-4"
    assert req.request_id == plan_for(3).request(A).request_id != plan_for(3).request(B).request_id


def test_a_gang_refuses_one_data_disk_for_all_its_nodes():
    with pytest.raises(BackendError, match="cannot share one data disk"):
        plan_for(2, data_disk="datasets")
