"""The Compute fake's ``instances.bulkInsert``, through the real google-cloud-compute client.

What a gang create leans on (sources in tests/standins/compute/bulk.py): ``minCount`` VMs or none,
a stockout for part of the count leaves nothing in the zone, quota is checked up front, the
operation says what was made and rolled back, and a replayed ``requestId`` makes no second set.
"""

from __future__ import annotations

import uuid

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1

from tests.standins.compute import ComputeFake

PROJECT = "test-project"
ZONE = "us-central1-a"


@pytest.fixture(autouse=True)
def roomy_quota(compute_fake: ComputeFake) -> None:
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 64)
    compute_fake.set_quota("us-central1", "CPUS", 512)


@pytest.fixture
def instances(compute_fake: ComputeFake) -> compute_v1.InstancesClient:
    return compute_v1.InstancesClient(**compute_fake.client_kwargs())


@pytest.fixture
def zone_ops(compute_fake: ComputeFake) -> compute_v1.ZoneOperationsClient:
    return compute_v1.ZoneOperationsClient(**compute_fake.client_kwargs())


def properties() -> compute_v1.InstanceProperties:
    """A spot T4 VM as an instance template names it (bare type names)."""
    return compute_v1.InstanceProperties(
        machine_type="n1-standard-4",
        labels={"runner": "cos-spot-runner", "run-id": "gang"},
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action="DELETE",
                                         on_host_maintenance="TERMINATE", automatic_restart=False),
        guest_accelerators=[compute_v1.AcceleratorConfig(accelerator_type="nvidia-tesla-t4",
                                                         accelerator_count=1)],
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image="projects/cos-cloud/global/images/family/cos-stable", disk_size_gb=50,
            disk_type="pd-balanced"))],
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/default")],
    )


def bulk(names: list[str], *, min_count: int | None = None, props: compute_v1.InstanceProperties | None = None
         ) -> compute_v1.BulkInsertInstanceResource:
    res = compute_v1.BulkInsertInstanceResource(
        count=len(names), instance_properties=props or properties(),
        per_instance_properties={n: compute_v1.BulkInsertInstanceResourcePerInstanceProperties(name=n)
                                 for n in names})
    if min_count is not None:
        res.min_count = min_count
    return res


def request(res: compute_v1.BulkInsertInstanceResource, zone: str = ZONE, request_id: str | None = None
            ) -> compute_v1.BulkInsertInstanceRequest:
    return compute_v1.BulkInsertInstanceRequest(project=PROJECT, zone=zone, bulk_insert_instance_resource_resource=res,
                                                request_id=request_id or str(uuid.uuid4()))


def send(instances: compute_v1.InstancesClient, zone_ops: compute_v1.ZoneOperationsClient,
         res: compute_v1.BulkInsertInstanceResource, zone: str = ZONE, request_id: str | None = None
         ) -> compute_v1.Operation:
    op = instances.bulk_insert_unary(request=request(res, zone, request_id))
    return zone_ops.wait(project=PROJECT, zone=zone, operation=op.name)


def names_in(fake: ComputeFake, zone: str = ZONE) -> list[str]:
    return sorted(i.name for i in fake.instances() if i.zone.endswith(f"/zones/{zone}"))


def test_bulk_insert_makes_every_vm_with_the_shared_shape(compute_fake, instances, zone_ops):
    op = send(instances, zone_ops, bulk(["g-n0", "g-n1", "g-n2"]))

    assert not op.error.errors
    assert op.operation_type == "bulkInsert"
    status = op.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"]
    assert (status.target_vm_count, status.created_vm_count, status.deleted_vm_count) == (3, 3, 0)
    assert names_in(compute_fake) == ["g-n0", "g-n1", "g-n2"]
    vms = {i.name: i for i in compute_fake.instances()}
    assert all(v.machine_type.endswith(f"zones/{ZONE}/machineTypes/n1-standard-4") for v in vms.values())
    assert all(v.labels["run-id"] == "gang" and v.status == "RUNNING" for v in vms.values())
    ips = {v.network_interfaces[0].network_i_p for v in vms.values()}
    assert len(ips) == 3  # each VM its own internal address


def test_stockout_for_part_of_the_count_leaves_nothing_behind(compute_fake, instances, zone_ops):
    compute_fake.zone_capacity[ZONE] = 2  # room for two of the three

    op = send(instances, zone_ops, bulk(["g-n0", "g-n1", "g-n2"]))

    assert [e.code for e in op.error.errors] == ["VM_MIN_COUNT_NOT_REACHED"]
    assert "minimum count of 3 VMs" in op.error.errors[0].message
    assert op.http_error_status_code == 503
    status = op.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"]
    assert (status.created_vm_count, status.failed_to_create_vm_count, status.deleted_vm_count) == (2, 1, 2)
    assert names_in(compute_fake) == []
    assert compute_fake.disks() == []  # the rolled-back VMs' boot disks went with them


def test_min_count_below_count_takes_what_the_zone_has(compute_fake, instances, zone_ops):
    compute_fake.zone_capacity[ZONE] = 2

    op = send(instances, zone_ops, bulk(["g-n0", "g-n1", "g-n2"], min_count=2))

    assert not op.error.errors
    assert len(names_in(compute_fake)) == 2


def test_quota_for_the_whole_gang_is_checked_up_front(compute_fake, instances, zone_ops):
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 2)

    op = send(instances, zone_ops, bulk(["g-n0", "g-n1", "g-n2"]))

    assert [e.code for e in op.error.errors] == ["QUOTA_EXCEEDED"]
    assert "PREEMPTIBLE_NVIDIA_T4_GPUS" in op.error.errors[0].message
    assert names_in(compute_fake) == []


def test_a_replayed_request_id_makes_no_second_set(compute_fake, instances, zone_ops):
    rid = str(uuid.uuid4())
    first = send(instances, zone_ops, bulk(["g-n0", "g-n1"]), request_id=rid)
    again = send(instances, zone_ops, bulk(["g-n0", "g-n1"]), request_id=rid)

    assert again.name == first.name and not again.error.errors
    assert names_in(compute_fake) == ["g-n0", "g-n1"]


def test_a_lost_reply_was_still_carried_out(compute_fake, instances):
    compute_fake.lose_reply("instances.bulkInsert")

    with pytest.raises(exceptions.ServiceUnavailable):
        instances.bulk_insert_unary(request=request(bulk(["g-n0"])), retry=None)

    assert names_in(compute_fake) == ["g-n0"]


def test_a_name_pattern_skips_taken_names(compute_fake, instances, zone_ops):
    send(instances, zone_ops, bulk(["w-02"]))
    res = compute_v1.BulkInsertInstanceResource(count=2, name_pattern="w-##", instance_properties=properties())

    op = send(instances, zone_ops, res)

    assert not op.error.errors
    assert names_in(compute_fake) == ["w-01", "w-02", "w-03"]


@pytest.mark.parametrize("change, field", [
    (lambda r: setattr(r, "min_count", 5), "minCount"),
    (lambda r: (r.per_instance_properties.clear(), None)[1], "namePattern or perInstanceProperties"),
    (lambda r: setattr(r, "count", 0), "count"),
])
def test_malformed_requests_are_refused_before_anything_is_made(compute_fake, instances, change, field):
    res = bulk(["g-n0", "g-n1"])
    change(res)

    with pytest.raises(exceptions.BadRequest, match=field):
        instances.bulk_insert_unary(request=request(res))
    assert names_in(compute_fake) == []


def test_an_existing_name_is_a_conflict(compute_fake, instances, zone_ops):
    send(instances, zone_ops, bulk(["g-n0"]))

    with pytest.raises(exceptions.Conflict):
        instances.bulk_insert_unary(request=request(bulk(["g-n0", "g-n1"])))
    assert names_in(compute_fake) == ["g-n0"]


def test_single_inserts_count_against_zone_capacity_too(compute_fake, instances, zone_ops):
    compute_fake.zone_capacity[ZONE] = 1
    send(instances, zone_ops, bulk(["g-n0"]))
    body = compute_v1.Instance.from_json(compute_v1.InstanceProperties.to_json(properties()),
                                     ignore_unknown_fields=True)
    body.name = "solo"
    body.machine_type = f"zones/{ZONE}/machineTypes/n1-standard-4"
    body.guest_accelerators[0].accelerator_type = f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4"
    body.disks[0].initialize_params.disk_type = f"zones/{ZONE}/diskTypes/pd-balanced"

    op = instances.insert_unary(project=PROJECT, zone=ZONE, instance_resource=body)
    op = zone_ops.wait(project=PROJECT, zone=ZONE, operation=op.name)

    assert [e.code for e in op.error.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    assert names_in(compute_fake) == ["g-n0"]


def test_with_iam_on_bulk_insert_needs_create_and_act_as_like_insert(compute_fake, instances, zone_ops):
    from tests.standins.gcp_admin import GcpAdminFake

    admin = GcpAdminFake()
    admin.add_project(PROJECT)
    compute_fake.iam = admin
    with pytest.raises(exceptions.Forbidden, match="Required 'compute.instances.create' permission"):
        instances.bulk_insert_unary(request=request(bulk(["g-n0", "g-n1"])))
    admin.grant(PROJECT, compute_fake.operator, "roles/compute.instanceAdmin.v1")
    props = properties()
    props.service_accounts = [compute_v1.ServiceAccount(email=f"vm@{PROJECT}.iam.gserviceaccount.com")]
    with pytest.raises(exceptions.Forbidden, match="iam.serviceAccountUser"):
        instances.bulk_insert_unary(request=request(bulk(["g-n0", "g-n1"], props=props)))
    admin.grant(PROJECT, compute_fake.operator, "roles/iam.serviceAccountUser")

    send(instances, zone_ops, bulk(["g-n0", "g-n1"], props=props))

    assert names_in(compute_fake) == ["g-n0", "g-n1"]


def test_a_rollback_that_did_not_finish_shows_in_the_operation(compute_fake, instances, zone_ops):
    compute_fake.zone_capacity[ZONE] = 2
    compute_fake.bulk_rollback_leaves[ZONE] = 1

    op = send(instances, zone_ops, bulk(["g-n0", "g-n1", "g-n2"]))

    status = op.instances_bulk_insert_operation_metadata.per_location_status[f"zones/{ZONE}"]
    assert (status.created_vm_count, status.deleted_vm_count) == (2, 1)
    assert names_in(compute_fake) == ["g-n0"]
