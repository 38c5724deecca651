"""The Compute Engine fake, exercised through the real google-cloud-compute REST clients.

These tests pin down the behaviour that supervisor tests will lean on: if the fake drifted from
what the client library sends and parses, every test built on it would pass while proving
nothing. So nothing here calls the fake's handlers directly except the filter-parser unit tests;
everything else goes client -> HTTP -> fake -> HTTP -> client.

One library trap is documented by a test of its own: the extended operation returned by
``InstancesClient.insert()`` polls through an internal ZoneOperationsClient built with the
*default* endpoint. Waiting is therefore done with our own ``ZoneOperationsClient``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.api_core import exceptions, retry as retries
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from tests.standins.compute import (
    ComputeFake,
    ExternalNetworkBlocked,
    block_external_network,
    parse_filter,
    run_compute_fake,
)

PROJECT = "test-project"
ZONE = "us-central1-a"


# ---- helpers ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def roomy_quota(compute_fake: ComputeFake) -> None:
    """Most tests here make several T4 VMs: a project whose quota was raised (a new project's
    1 T4 would refuse the second). Quota tests set their own limits."""
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 64)
    compute_fake.set_quota("us-central1", "CPUS", 512)


@pytest.fixture
def instances(compute_fake: ComputeFake) -> compute_v1.InstancesClient:
    return compute_v1.InstancesClient(**compute_fake.client_kwargs())


@pytest.fixture
def zone_ops(compute_fake: ComputeFake) -> compute_v1.ZoneOperationsClient:
    return compute_v1.ZoneOperationsClient(**compute_fake.client_kwargs())


def spot_vm(name: str, zone: str = ZONE, *, action: str = "STOP", gpu: str = "nvidia-tesla-t4",
            labels: dict[str, str] | None = None) -> compute_v1.Instance:
    """A VM shaped like the ones the runner creates: spot, COS boot disk, a GPU, metadata."""
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/n1-standard-4",
        labels=labels if labels is not None else {"runner": "cos-spot-runner", "run-id": name},
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT",
                                         instance_termination_action=action,
                                         on_host_maintenance="TERMINATE",
                                         automatic_restart=False),
        guest_accelerators=[compute_v1.AcceleratorConfig(
            accelerator_type=f"zones/{zone}/acceleratorTypes/{gpu}", accelerator_count=1)],
        metadata=compute_v1.Metadata(items=[
            compute_v1.Items(key="startup-script", value="#!/bin/bash\necho hello\n"),
            compute_v1.Items(key="run-spec", value='{"image": "trainer:dev"}'),
        ]),
        disks=[compute_v1.AttachedDisk(
            boot=True, auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image="projects/cos-cloud/global/images/family/cos-stable",
                disk_size_gb=50, disk_type=f"zones/{zone}/diskTypes/pd-balanced"))],
        network_interfaces=[compute_v1.NetworkInterface(
            network="global/networks/default",
            access_configs=[compute_v1.AccessConfig(name="External NAT")])],
    )


def insert(client: compute_v1.InstancesClient, inst: compute_v1.Instance, zone: str = ZONE,
           **kw: Any) -> compute_v1.Operation:
    """insert_unary: the raw Operation, with no hidden polling through the default endpoint."""
    return client.insert_unary(project=PROJECT, zone=zone, instance_resource=inst, **kw)


def wait(zone_ops: compute_v1.ZoneOperationsClient, op: compute_v1.Operation,
         zone: str = ZONE) -> compute_v1.Operation:
    return zone_ops.wait(project=PROJECT, zone=zone, operation=op.name)


def fast_retry() -> retries.Retry:
    return retries.Retry(
        predicate=retries.if_exception_type(exceptions.TooManyRequests,
                                            exceptions.ServiceUnavailable),
        initial=0.01, maximum=0.05, multiplier=2, timeout=10)


# ---- instances: round trip and errors --------------------------------------------------------

def test_insert_then_get_returns_what_the_product_sent(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    sent = spot_vm("trainer-1", action="DELETE")
    op = insert(instances, sent)
    assert wait(zone_ops, op).status == compute_v1.Operation.Status.DONE

    got = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")

    assert got.scheduling.provisioning_model == "SPOT"
    assert got.scheduling.instance_termination_action == "DELETE"
    assert got.scheduling.on_host_maintenance == "TERMINATE"
    assert got.scheduling.automatic_restart is False
    assert dict(got.labels) == {"runner": "cos-spot-runner", "run-id": "trainer-1"}
    assert {i.key: i.value for i in got.metadata.items} == {
        "startup-script": "#!/bin/bash\necho hello\n", "run-spec": '{"image": "trainer:dev"}'}
    assert [(a.accelerator_type.rsplit("/", 1)[-1], a.accelerator_count)
            for a in got.guest_accelerators] == [("nvidia-tesla-t4", 1)]
    (disk,) = got.disks
    assert disk.boot and disk.auto_delete
    assert disk.initialize_params.source_image == "projects/cos-cloud/global/images/family/cos-stable"
    assert disk.initialize_params.disk_size_gb == 50
    # And the wire request is recorded, camelCase JSON as the library sent it.
    (call,) = compute_fake.calls("instances.insert")
    assert call.method == "POST" and call.path.endswith(f"/zones/{ZONE}/instances")
    assert call.body["scheduling"]["provisioningModel"] == "SPOT"


def test_insert_fills_the_fields_gce_fills(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    op = insert(instances, spot_vm("trainer-1"))
    got = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")

    base = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}"
    assert got.status == "RUNNING"
    assert got.id and got.creation_timestamp and got.fingerprint and got.metadata.fingerprint
    assert got.self_link == f"{base}/instances/trainer-1"
    assert got.zone == base
    assert got.machine_type == f"{base}/machineTypes/n1-standard-4"  # GCE answers full URLs
    assert got.scheduling.preemptible is True
    assert got.network_interfaces[0].network_i_p.startswith("10.")
    assert got.network_interfaces[0].access_configs[0].nat_i_p
    assert op.kind == "compute#operation" and op.operation_type == "insert"
    assert op.target_link == got.self_link and op.zone == base
    # The fake keeps exactly what it serves, for assertions without an API call.
    (stored,) = compute_fake.instances()
    assert stored == got


def test_inserting_a_name_taken_in_the_zone_is_a_conflict_but_other_zones_are_free(
        instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))

    with pytest.raises(exceptions.Conflict) as err:
        insert(instances, spot_vm("trainer-1"))
    assert err.value.errors[0]["reason"] == "alreadyExists"

    insert(instances, spot_vm("trainer-1", zone="us-central1-b"), zone="us-central1-b")


def test_getting_a_missing_instance_is_not_found(instances: compute_v1.InstancesClient) -> None:
    with pytest.raises(exceptions.NotFound) as err:
        instances.get(project=PROJECT, zone=ZONE, instance="nope")
    assert "instances/nope" in err.value.message
    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone="mars-north1-a", instance="nope")


def test_list_filters_by_label_and_name_and_pages_with_max_results(
        instances: compute_v1.InstancesClient) -> None:
    for name, run in [("a-1", "run-a"), ("a-2", "run-a"), ("b-1", "run-b")]:
        insert(instances, spot_vm(name, labels={"runner": "cos-spot-runner", "run-id": run}))

    def names(flt: str, **kw: Any) -> list[str]:
        req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter=flt, **kw)
        return [i.name for i in instances.list(request=req)]

    assert names("labels.run-id = run-a") == ["a-1", "a-2"]
    assert names("labels.run-id=run-b") == ["b-1"]
    assert names('(labels.run-id = "run-a") AND (name = a-2)') == ["a-2"]
    assert names("(labels.runner = cos-spot-runner) (name != a-1)") == ["a-2", "b-1"]
    assert names("name eq a-.*") == ["a-1", "a-2"]
    assert names("labels.other = x") == []
    # The pager follows nextPageToken: three pages, one request each.
    assert names("", max_results=1) == ["a-1", "a-2", "b-1"]


@pytest.mark.parametrize("flt", [
    'labels.run-id = "run-a" AND name = a-2',  # the form Compute refuses (filters.py)
    "status = RUNNING OR name = a-1",
    "(labels.run-id = run-a AND name = a-2)",  # two expressions in one pair of parentheses
    "(labels.run-id = run-a) name = a-2",
])
def test_several_expressions_not_each_in_parentheses_are_refused_as_compute_does(
        instances: compute_v1.InstancesClient, flt: str) -> None:
    req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter=flt)
    with pytest.raises(exceptions.BadRequest) as err:
        list(instances.list(request=req))
    assert err.value.message.endswith(f"Invalid value for field 'filter': '{flt}'. "
                                      "Invalid list filter expression.")


def test_a_filter_the_fake_cannot_parse_is_a_bad_request(
        instances: compute_v1.InstancesClient) -> None:
    req = compute_v1.ListInstancesRequest(project=PROJECT, zone=ZONE, filter="labels.x = (")
    with pytest.raises(exceptions.BadRequest):
        list(instances.list(request=req))


def test_aggregated_list_sees_every_zone_in_one_request(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    for zone in ("us-central1-a", "us-central1-c", "europe-west4-a"):
        insert(instances, spot_vm(f"vm-{zone}", zone=zone, gpu="nvidia-tesla-a100"
                                  if zone == "europe-west4-a" else "nvidia-tesla-t4",
                                  labels={"runner": "cos-spot-runner"}), zone=zone)
    insert(instances, spot_vm("other", labels={"runner": "someone-else"}))
    compute_fake.reset_requests()

    req = compute_v1.AggregatedListInstancesRequest(
        project=PROJECT, filter="labels.runner = cos-spot-runner")
    found = {(scope, inst.name) for scope, scoped in instances.aggregated_list(request=req)
             for inst in scoped.instances}

    assert found == {("zones/us-central1-a", "vm-us-central1-a"),
                     ("zones/us-central1-c", "vm-us-central1-c"),
                     ("zones/europe-west4-a", "vm-europe-west4-a")}
    (call,) = compute_fake.requests
    assert call.rpc == "instances.aggregatedList"
    assert call.query["filter"] == "labels.runner = cos-spot-runner"

    # Paged: the pager follows nextPageToken; zones empty on a page carry a warning, as on GCE.
    paged = compute_v1.AggregatedListInstancesRequest(project=PROJECT, max_results=2)
    pages = list(instances.aggregated_list(request=paged).pages)
    assert len(pages) == 2
    assert sum(len(s.instances) for p in pages for s in p.items.values()) == 4
    assert any(s.warning.code == "NO_RESULTS_ON_PAGE" for s in pages[0].items.values())


def test_delete_removes_the_instance(
        instances: compute_v1.InstancesClient, zone_ops: compute_v1.ZoneOperationsClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    op = instances.delete_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert wait(zone_ops, op).operation_type == "delete"
    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    with pytest.raises(exceptions.NotFound):
        instances.delete_unary(project=PROJECT, zone=ZONE, instance="trainer-1")


# ---- capacity, quota and transient errors ----------------------------------------------------

def test_stockout_is_an_operation_error_not_an_exception(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.stockout_zones.add(ZONE)

    op = insert(instances, spot_vm("trainer-1"))  # the call itself succeeds, as on GCE
    done = wait(zone_ops, op)

    assert done.status == compute_v1.Operation.Status.DONE
    assert [e.code for e in done.error.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    assert done.http_error_status_code == 503
    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    # Another zone still has capacity.
    ok = wait(zone_ops, insert(instances, spot_vm("trainer-1", zone="us-central1-b"),
                               zone="us-central1-b"), zone="us-central1-b")
    assert not ok.error.errors


def test_stockout_can_be_reported_as_http_503_instead(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.stockout_zones.add(ZONE)
    compute_fake.stockout_as_http = True
    with pytest.raises(exceptions.ServiceUnavailable) as err:
        insert(instances, spot_vm("trainer-1"))
    assert err.value.errors[0]["reason"] == "ZONE_RESOURCE_POOL_EXHAUSTED"


def test_gpu_quota_exhaustion_is_http_403_forbidden_naming_the_quota(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.quota_zones.add(ZONE)
    with pytest.raises(exceptions.Forbidden) as err:
        insert(instances, spot_vm("trainer-1"))
    assert err.value.errors[0]["reason"] == "quotaExceeded"
    assert "NVIDIA_T4_GPUS" in err.value.message
    assert compute_fake.instances() == []


def test_injected_errors_are_retried_by_the_library_and_recorded(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.error_rate = 0.5

    for i in range(4):
        insert(instances, spot_vm(f"vm-{i}"), retry=fast_retry())
    for i in range(4):
        instances.get(project=PROJECT, zone=ZONE, instance=f"vm-{i}", retry=fast_retry())

    failed = compute_fake.calls(ok=False)
    assert failed, "with error_rate=0.5 some of these requests must have been refused first"
    assert {r.status for r in failed} <= {429, 503}
    assert len(compute_fake.calls("instances.insert", ok=True)) == 4  # each retried until done
    assert len(compute_fake.instances()) == 4  # errors come before processing: no duplicates


def test_fail_next_refuses_exactly_the_requests_asked_for(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.fail_next(429, times=2, rpc="instances.insert")
    with pytest.raises(exceptions.TooManyRequests):
        insert(instances, spot_vm("trainer-1"))  # insert has no default retry
    insert(instances, spot_vm("trainer-1"), retry=fast_retry())
    assert [r.status for r in compute_fake.calls("instances.insert")] == [429, 429, 200]


def test_get_retries_503_by_default_but_not_429(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    """Library defaults worth knowing: read methods retry ServiceUnavailable on their own."""
    insert(instances, spot_vm("trainer-1"))
    compute_fake.fail_next(503, rpc="instances.get")
    instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert [r.status for r in compute_fake.calls("instances.get")] == [503, 200]

    compute_fake.fail_next(429, rpc="instances.get")
    with pytest.raises(exceptions.TooManyRequests):
        instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")


def test_a_request_id_makes_a_retried_insert_idempotent(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    req = compute_v1.InsertInstanceRequest(project=PROJECT, zone=ZONE,
                                           instance_resource=spot_vm("trainer-1"),
                                           request_id="0b9c8a2e-7d7f-4b9a-9f8e-1c2d3e4f5a6b")
    first = instances.insert_unary(request=req)
    again = instances.insert_unary(request=req)  # a retry after a lost response: no 409
    assert again.name == first.name
    assert len(compute_fake.instances()) == 1


def test_a_request_id_is_scoped_to_method_and_zone_and_expires(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    rid = "0b9c8a2e-7d7f-4b9a-9f8e-1c2d3e4f5a6b"
    for zone in (ZONE, "us-central1-b"):  # another zone: another request
        instances.insert_unary(request=compute_v1.InsertInstanceRequest(
            project=PROJECT, zone=zone, instance_resource=spot_vm("trainer-1", zone=zone), request_id=rid))
    assert len(compute_fake.instances()) == 2
    op = instances.delete_unary(request=compute_v1.DeleteInstanceRequest(  # another method
        project=PROJECT, zone=ZONE, instance="trainer-1", request_id=rid))
    assert op.operation_type == "delete"
    assert compute_fake.instance(ZONE, "trainer-1") is None
    compute_fake.time_scale = 0.0001  # the 60 min memory → 0.36 s
    time.sleep(0.4)
    again = compute_v1.InsertInstanceRequest(project=PROJECT, zone="us-central1-b", request_id=rid,
                                             instance_resource=spot_vm("trainer-1", zone="us-central1-b"))
    with pytest.raises(exceptions.Conflict):  # forgotten: a new insert of an existing VM
        instances.insert_unary(request=again)


@pytest.mark.parametrize("rid", ["retry-1", "00000000-0000-0000-0000-000000000000"])
def test_a_request_id_must_be_a_non_zero_uuid(instances: compute_v1.InstancesClient, rid: str) -> None:
    with pytest.raises(exceptions.BadRequest, match="requestId"):
        instances.insert_unary(request=compute_v1.InsertInstanceRequest(
            project=PROJECT, zone=ZONE, instance_resource=spot_vm("trainer-1"), request_id=rid))


# ---- serial console --------------------------------------------------------------------------

def test_serial_output_is_read_from_byte_offsets(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    compute_fake.append_serial(ZONE, "trainer-1", "startup-script: pulling image\n")

    first = instances.get_serial_port_output(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert first.contents == "startup-script: pulling image\n"
    assert (first.start, first.next_) == (0, len(first.contents))

    compute_fake.append_serial(ZONE, "trainer-1", "startup-script: container started\n")
    req = compute_v1.GetSerialPortOutputInstanceRequest(
        project=PROJECT, zone=ZONE, instance="trainer-1", port=1, start=first.next_)
    second = instances.get_serial_port_output(request=req)
    assert second.contents == "startup-script: container started\n"
    assert second.start == first.next_
    assert second.next_ == first.next_ + len(second.contents)

    req.start = second.next_
    assert instances.get_serial_port_output(request=req).contents == ""


def test_serial_offsets_older_than_the_retained_megabyte_are_moved_forward(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    compute_fake.append_serial(ZONE, "trainer-1", "x" * (1 << 20))
    compute_fake.append_serial(ZONE, "trainer-1", "tail\n")  # pushes 5 bytes out

    req = compute_v1.GetSerialPortOutputInstanceRequest(
        project=PROJECT, zone=ZONE, instance="trainer-1", start=0)
    out = instances.get_serial_port_output(request=req)

    assert out.start == 5  # GCE moves start to the oldest byte still kept and says so
    assert out.next_ == (1 << 20) + 5
    assert len(out.contents) == 1 << 20 and out.contents.endswith("tail\n")

    req.start = -5  # negative: the most recent N bytes
    assert instances.get_serial_port_output(request=req).contents == "tail\n"


# ---- preemption and lifecycle ----------------------------------------------------------------

def preempted_ops(zone_ops: compute_v1.ZoneOperationsClient, target: str) -> list[compute_v1.Operation]:
    req = compute_v1.ListZoneOperationsRequest(
        project=PROJECT, zone=ZONE,
        filter=f'(operationType = "compute.instances.preempted") (targetLink = "{target}")')
    return list(zone_ops.list(request=req))


def test_simulated_maintenance_preempts_a_spot_vm(
        instances: compute_v1.InstancesClient, zone_ops: compute_v1.ZoneOperationsClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    insert(instances, spot_vm("bystander"))

    op = instances.simulate_maintenance_event_unary(project=PROJECT, zone=ZONE,
                                                    instance="trainer-1")
    wait(zone_ops, op)

    vm = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert vm.status == "TERMINATED"
    (preempted,) = preempted_ops(zone_ops, vm.self_link)
    assert preempted.status == compute_v1.Operation.Status.DONE
    assert preempted.target_link == vm.self_link
    bystander = instances.get(project=PROJECT, zone=ZONE, instance="bystander")
    assert bystander.status == "RUNNING"
    assert preempted_ops(zone_ops, bystander.self_link) == []


def test_a_spot_vm_with_delete_action_is_gone_after_preemption(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    insert(instances, spot_vm("trainer-1", action="DELETE"))
    self_link = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").self_link

    compute_fake.preempt(ZONE, "trainer-1")

    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert len(preempted_ops(zone_ops, self_link)) == 1


def test_preempt_after_takes_effect_once_its_deadline_passes(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    insert(instances, spot_vm("trainer-2"))
    compute_fake.preempt_after(lambda i: i.labels.get("run-id") == "trainer-2", 0.5)

    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-2").status == "RUNNING"
    time.sleep(0.55)
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-2").status == "TERMINATED"
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "RUNNING"


def test_stop_and_start_drive_status_and_boot_seconds_stage_the_boot(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.boot_seconds = 0.6
    insert(instances, spot_vm("trainer-1"))

    def status() -> str:
        return instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status

    assert status() == "PROVISIONING"  # then STAGING after half of boot_seconds
    time.sleep(0.65)
    assert status() == "RUNNING"
    instances.stop_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert status() == "TERMINATED"
    compute_fake.boot_seconds = 0
    instances.start_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert status() == "RUNNING"


class RecordingGuest:
    """A guest that records the events it gets and takes ``shutdown_s`` to run its script."""

    def __init__(self, shutdown_s: float = 0.0) -> None:
        self.shutdown_s = shutdown_s
        self.events: list[tuple[str, str, float]] = []  # (event, name, monotonic time)
        self.metadata: dict[str, dict[str, str]] = {}

    def on_running(self, project: str, zone: str, name: str,
                   instance: compute_v1.Instance) -> None:
        self.metadata[name] = {i.key: i.value for i in instance.metadata.items}
        self.events.append(("running", name, time.monotonic()))

    def on_shutdown(self, project: str, zone: str, name: str, notice_seconds: float) -> None:
        self.events.append(("shutdown", name, time.monotonic()))
        time.sleep(self.shutdown_s)
        self.events.append(("halted", name, time.monotonic()))

    def on_power_off(self, project: str, zone: str, name: str) -> None:
        self.events.append(("power_off", name, time.monotonic()))

    def kinds(self, name: str) -> list[str]:
        return [e for e, n, _ in self.events if n == name]


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.parametrize("action,after", [("STOP", "TERMINATED"), ("DELETE", None)])
def test_a_preemption_is_a_timeline_stopping_then_off_after_the_notice(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        action: str, after: str | None) -> None:
    compute_fake.time_scale = 0.02  # the 30 s spot notice becomes 0.6 s
    insert(instances, spot_vm("trainer-1", action=action))

    def status() -> str | None:
        try:
            return instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status
        except exceptions.NotFound:
            return None

    started = time.monotonic()
    instances.simulate_maintenance_event_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert status() == "STOPPING"  # what a supervisor that looks now sees
    wait_for(lambda: status() != "STOPPING")
    assert time.monotonic() - started >= 0.6 * 0.9
    assert status() == after


def test_the_guest_is_booted_shut_down_and_powered_off_in_order(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    guest = RecordingGuest(shutdown_s=0.1)
    compute_fake.guest = guest
    compute_fake.time_scale = 0.1  # a 3 s notice: the guest halts well before it
    insert(instances, spot_vm("trainer-1"))
    wait_for(lambda: guest.kinds("trainer-1") == ["running"])
    assert guest.metadata["trainer-1"]["startup-script"] == "#!/bin/bash\necho hello\n"

    started = time.monotonic()
    compute_fake.preempt(ZONE, "trainer-1")
    wait_for(lambda: "power_off" in guest.kinds("trainer-1"))

    assert guest.kinds("trainer-1") == ["running", "shutdown", "halted", "power_off"]
    assert time.monotonic() - started < 2.0  # a guest that halts early is off early
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "TERMINATED"
    op = instances.start_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    wait(zone_ops, op)
    wait_for(lambda: guest.kinds("trainer-1")[-1:] == ["running"])


def test_a_guest_that_overruns_its_notice_is_powered_off_anyway(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    guest = RecordingGuest(shutdown_s=2.0)
    compute_fake.guest = guest
    compute_fake.time_scale = 0.01  # 0.3 s notice
    insert(instances, spot_vm("trainer-1"))
    wait_for(lambda: guest.kinds("trainer-1") == ["running"])

    compute_fake.preempt(ZONE, "trainer-1")
    wait_for(lambda: "power_off" in guest.kinds("trainer-1"), timeout=1.5)

    assert guest.kinds("trainer-1") == ["running", "shutdown", "power_off"]  # not halted yet
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "TERMINATED"


def test_delete_goes_through_stopping_and_its_operation_is_done_only_when_the_vm_is_gone(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.time_scale = 0.02
    insert(instances, spot_vm("trainer-1"))

    op = instances.delete_unary(project=PROJECT, zone=ZONE, instance="trainer-1")

    assert op.status == compute_v1.Operation.Status.RUNNING
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "STOPPING"
    done = wait(zone_ops, op)
    assert done.status == compute_v1.Operation.Status.DONE
    with pytest.raises(exceptions.NotFound):
        instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")


def test_stop_goes_through_stopping_and_a_stopping_vm_cannot_be_started(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.time_scale = 0.02
    insert(instances, spot_vm("trainer-1"))

    op = instances.stop_unary(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "STOPPING"
    with pytest.raises(exceptions.BadRequest, match="not ready"):
        instances.start_unary(project=PROJECT, zone=ZONE, instance="trainer-1")

    wait(zone_ops, op)
    assert instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").status == "TERMINATED"


def test_operations_can_stay_running_until_wait_returns_them_done(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.operation_seconds = 0.5
    op = insert(instances, spot_vm("trainer-1"))
    assert op.status == compute_v1.Operation.Status.RUNNING
    polled = zone_ops.get(project=PROJECT, zone=ZONE, operation=op.name)
    assert polled.status == compute_v1.Operation.Status.RUNNING

    done = wait(zone_ops, op)  # blocks server-side until done, like GCE's wait

    assert done.status == compute_v1.Operation.Status.DONE


def test_a_done_extended_operation_resolves_without_polling(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    """insert() returning an already-DONE operation never touches its internal poller."""
    extended = instances.insert(project=PROJECT, zone=ZONE, instance_resource=spot_vm("vm-1"))
    assert extended.result(timeout=5) is None
    assert [r.rpc for r in compute_fake.requests] == ["instances.insert"]


def test_polling_a_pending_extended_operation_escapes_to_the_default_endpoint() -> None:
    """The library trap: ``insert().result()`` polls compute.googleapis.com, not our endpoint.

    Product code must wait through its own ZoneOperationsClient (or ``*_unary`` + ``wait``).
    The guard turns the escape into an error instead of a real network call.
    """
    with block_external_network() as blocked, run_compute_fake() as fake:
        fake.operation_seconds = 5
        client = compute_v1.InstancesClient(**fake.client_kwargs())
        extended = client.insert(project=PROJECT, zone=ZONE, instance_resource=spot_vm("vm-1"))
        with pytest.raises(ExternalNetworkBlocked):
            extended.result(timeout=5)
    assert blocked == ["compute.googleapis.com"]


def test_a_client_without_the_fake_endpoint_cannot_reach_google() -> None:
    with block_external_network() as blocked:
        client = compute_v1.ZonesClient(credentials=AnonymousCredentials())  # default endpoint
        with pytest.raises(ExternalNetworkBlocked):
            client.get(project=PROJECT, zone=ZONE)
    assert blocked == ["compute.googleapis.com"]


# ---- images and catalogue --------------------------------------------------------------------

def test_cos_stable_family_resolves_to_a_concrete_image(compute_fake: ComputeFake) -> None:
    images = compute_v1.ImagesClient(**compute_fake.client_kwargs())

    image = images.get_from_family(project="cos-cloud", family="cos-stable")

    assert image.name == "cos-stable-121-18867-90-38"
    assert image.family == "cos-stable"
    assert image.self_link == ("https://www.googleapis.com/compute/v1/projects/cos-cloud/"
                               "global/images/cos-stable-121-18867-90-38")
    assert images.get(project="cos-cloud", image=image.name).id == image.id
    old = images.get(project="cos-cloud", image="cos-stable-117-18613-164-4")
    assert old.deprecated.state == "DEPRECATED" and old.deprecated.replacement == image.self_link
    assert images.get_from_family(project="cos-cloud", family="cos-121-lts").name.startswith(
        "cos-121-")
    with pytest.raises(exceptions.NotFound):
        images.get_from_family(project="cos-cloud", family="cos-99-lts")


def test_the_catalogue_differs_by_zone(compute_fake: ComputeFake) -> None:
    kw = compute_fake.client_kwargs()
    machine_types = compute_v1.MachineTypesClient(**kw)
    accelerators = compute_v1.AcceleratorTypesClient(**kw)
    zones = compute_v1.ZonesClient(**kw)

    assert sorted(z.name for z in zones.list(project=PROJECT)) == [
        "europe-west4-a", "us-central1-a", "us-central1-b", "us-central1-c"]
    assert zones.get(project=PROJECT, zone=ZONE).region.endswith("/regions/us-central1")

    g2 = machine_types.get(project=PROJECT, zone=ZONE, machine_type="g2-standard-8")
    assert (g2.guest_cpus, g2.memory_mb) == (8, 32768)
    assert [(a.guest_accelerator_type, a.guest_accelerator_count) for a in g2.accelerators] == [
        ("nvidia-l4", 1)]
    a2 = machine_types.get(project=PROJECT, zone=ZONE, machine_type="a2-highgpu-1g")
    assert a2.accelerators[0].guest_accelerator_type == "nvidia-tesla-a100"
    assert "a3-highgpu-8g" not in {m.name for m in machine_types.list(project=PROJECT,
                                                                       zone="us-central1-b")}

    def gpus(zone: str) -> set[str]:
        return {a.name for a in accelerators.list(project=PROJECT, zone=zone)}

    assert {"nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100"} <= gpus(ZONE)
    assert "nvidia-tesla-t4" not in gpus("europe-west4-a")
    with pytest.raises(exceptions.NotFound):
        accelerators.get(project=PROJECT, zone="europe-west4-a", accelerator_type="nvidia-tesla-t4")
    t4 = accelerators.get(project=PROJECT, zone=ZONE, accelerator_type="nvidia-tesla-t4")
    assert t4.maximum_cards_per_instance == 4


# ---- validation GCE would do -----------------------------------------------------------------

def _bare_machine_type(i: compute_v1.Instance) -> None:
    i.machine_type = "n1-standard-4"


def _gpu_live_migration(i: compute_v1.Instance) -> None:
    i.scheduling = compute_v1.Scheduling(on_host_maintenance="MIGRATE")


def _t4_in_europe(i: compute_v1.Instance) -> None:
    i.machine_type = "zones/europe-west4-a/machineTypes/n1-standard-4"


def _uppercase_label(i: compute_v1.Instance) -> None:
    i.labels["Run-Id"] = "x"


def _restarting_spot(i: compute_v1.Instance) -> None:
    i.scheduling.automatic_restart = True


@pytest.mark.parametrize("spoil", [_bare_machine_type, _gpu_live_migration, _uppercase_label,
                                   _restarting_spot])
def test_requests_gce_would_reject_are_bad_requests(
        instances: compute_v1.InstancesClient, spoil: Any) -> None:
    inst = spot_vm("trainer-1")
    spoil(inst)
    with pytest.raises(exceptions.BadRequest):
        insert(instances, inst)


def test_a_gpu_the_zone_lacks_is_a_bad_request(instances: compute_v1.InstancesClient) -> None:
    with pytest.raises(exceptions.BadRequest) as err:
        insert(instances, spot_vm("trainer-1", zone="europe-west4-a"), zone="europe-west4-a")
    assert "does not exist in zone 'europe-west4-a'" in err.value.message


def test_unimplemented_methods_fail_loudly(instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    with pytest.raises(exceptions.MethodNotImplemented):
        instances.set_tags_unary(
            project=PROJECT, zone=ZONE, instance="trainer-1",
            tags_resource=compute_v1.Tags(items=["a"]))


def test_set_labels_needs_the_current_fingerprint(instances: compute_v1.InstancesClient) -> None:
    insert(instances, spot_vm("trainer-1"))
    with pytest.raises(exceptions.PreconditionFailed):
        instances.set_labels_unary(
            project=PROJECT, zone=ZONE, instance="trainer-1",
            instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(
                labels={"a": "b"}, label_fingerprint="stale"))
    fp = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").label_fingerprint
    instances.set_labels_unary(
        project=PROJECT, zone=ZONE, instance="trainer-1",
        instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(
            labels={"a": "b"}, label_fingerprint=fp))
    assert dict(instances.get(project=PROJECT, zone=ZONE, instance="trainer-1").labels) == {"a": "b"}


# ---- filter parser ---------------------------------------------------------------------------

RESOURCE = {"name": "vm-1", "status": "RUNNING", "labels": {"run-id": "r1", "team": "ml"},
            "scheduling": {"preemptible": True},
            "targetLink": "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/vm-1",
            "networkInterfaces": [{"networkIP": "10.0.0.2"}]}


@pytest.mark.parametrize("flt, expected", [
    ("", True),
    ("labels.run-id = r1", True),
    ("labels.run-id=r2", False),
    ("labels.run-id != r2", True),
    ("labels.missing = x", False),
    ("labels.team:*", True),
    ("labels.owner:*", False),
    ("labels:team", True),
    ("scheduling.preemptible = true", True),
    ('targetLink = "https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/vm-1"', True),
    ("targetLink:instances/vm-1", True),
    ("target_link:instances/vm-2", False),
    ("networkInterfaces.networkIP = 10.0.0.2", True),
    ("name eq vm-\\d+", True),
    ("name ne vm-.*", False),
    ("name = vm-*", True),
    ("(status = RUNNING) (labels.team = ml)", True),
    ("(status = RUNNING) AND (labels.team = infra)", False),
    ("(status = TERMINATED) OR (labels.team = ml)", True),
    ("NOT (status = TERMINATED)", True),
])
def test_filter_expressions(flt: str, expected: bool) -> None:
    assert parse_filter(flt)(RESOURCE) is expected


# ---- authorization (opt-in) ------------------------------------------------------------------

def test_with_iam_on_a_caller_without_the_role_is_refused_as_gce_refuses(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    from tests.standins.gcp_admin import GcpAdminFake

    admin = GcpAdminFake()
    admin.add_project(PROJECT)
    compute_fake.iam = admin
    with pytest.raises(exceptions.Forbidden, match="Required 'compute.instances.create' permission"):
        insert(instances, spot_vm("trainer-1"))
    admin.grant(PROJECT, compute_fake.operator, "roles/compute.instanceAdmin.v1")
    vm = spot_vm("trainer-1")
    vm.service_accounts = [compute_v1.ServiceAccount(email=f"vm@{PROJECT}.iam.gserviceaccount.com")]
    with pytest.raises(exceptions.Forbidden, match="iam.serviceAccountUser"):
        insert(instances, vm)  # running a VM as an account needs actAs on it
    admin.grant(PROJECT, compute_fake.operator, "roles/iam.serviceAccountUser")
    insert(instances, vm)
    assert [i.name for i in compute_fake.instances()] == ["trainer-1"]


def test_with_iam_on_a_token_names_its_member_and_an_unknown_token_is_401(
        compute_fake: ComputeFake) -> None:
    import requests

    from tests.standins.gcp_admin import GcpAdminFake

    admin = GcpAdminFake()
    admin.add_project(PROJECT)
    admin.grant(PROJECT, "serviceAccount:reader@x.iam.gserviceaccount.com", "roles/compute.viewer")
    compute_fake.iam = admin
    url = f"{compute_fake.endpoint}/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances"
    token = compute_fake.mint_token("serviceAccount:reader@x.iam.gserviceaccount.com")
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    denied = requests.post(url, json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert denied.status_code == 403
    assert denied.json()["error"]["errors"][0]["reason"] == "forbidden"


# ---- quotas ----------------------------------------------------------------------------------

def test_an_insert_over_the_regional_gpu_quota_fails_with_quota_exceeded_in_the_operation(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 1)
    regions = compute_v1.RegionsClient(**compute_fake.client_kwargs())
    wait(zone_ops, insert(instances, spot_vm("trainer-1")))

    op = wait(zone_ops, insert(instances, spot_vm("trainer-2", zone="us-central1-b"), zone="us-central1-b"),
              "us-central1-b")

    (err,) = op.error.errors
    assert err.code == "QUOTA_EXCEEDED"
    assert err.message == "Quota 'PREEMPTIBLE_NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
    assert op.http_error_status_code == 403
    assert [i.name for i in compute_fake.instances()] == ["trainer-1"]
    usage = {q.metric: q.usage for q in regions.get(project=PROJECT, region="us-central1").quotas}
    assert usage["PREEMPTIBLE_NVIDIA_T4_GPUS"] == 1
    instances.stop_unary(project=PROJECT, zone=ZONE, instance="trainer-1")  # stopped: no quota
    assert not wait(zone_ops, insert(instances, spot_vm("trainer-2", zone="us-central1-b"), zone="us-central1-b"),
              "us-central1-b").error.errors


def test_spot_cpus_draw_on_cpus_when_the_project_has_no_preemptible_cpu_quota(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.set_quota("us-central1", "CPUS", 6)  # PREEMPTIBLE_CPUS stays 0: not granted
    assert not wait(zone_ops, insert(instances, spot_vm("trainer-1"))).error.errors
    op = wait(zone_ops, insert(instances, spot_vm("trainer-2")))
    assert op.error.errors[0].message == "Quota 'CPUS' exceeded.  Limit: 6.0 in region us-central1."
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 8)
    assert not wait(zone_ops, insert(instances, spot_vm("trainer-2"))).error.errors


# ---- maxRunDuration --------------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [29, 120 * 86400 + 1])
def test_a_max_run_duration_outside_gces_range_is_refused(
        instances: compute_v1.InstancesClient, seconds: int) -> None:
    vm = spot_vm("trainer-1")
    vm.scheduling.max_run_duration = compute_v1.Duration(seconds=seconds)
    with pytest.raises(exceptions.BadRequest, match="between 30 seconds and 120 days"):
        insert(instances, vm)


def test_a_vm_is_terminated_by_its_action_when_its_max_run_duration_ends(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient) -> None:
    compute_fake.time_scale = 0.02  # 30 s of run time → 0.6 s, the notice → 0.6 s
    vm = spot_vm("trainer-1", action="DELETE")
    vm.scheduling.max_run_duration = compute_v1.Duration(seconds=30)
    insert(instances, vm)
    got = instances.get(project=PROJECT, zone=ZONE, instance="trainer-1")
    assert got.status == "RUNNING" and got.resource_status.scheduling.termination_timestamp

    wait_for(lambda: compute_fake.instance(ZONE, "trainer-1") is None, timeout=5)


# ---- disks -----------------------------------------------------------------------------------

def with_data_disk(vm: compute_v1.Instance, source: str, mode: str = "READ_WRITE") -> compute_v1.Instance:
    vm.disks.append(compute_v1.AttachedDisk(boot=False, source=source, mode=mode, device_name="data"))
    return vm


def test_a_read_write_disk_attaches_to_one_vm_only_and_in_its_own_zone(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.add_disk(ZONE, "dataset")
    src = f"projects/{PROJECT}/zones/{ZONE}/disks/dataset"
    wait(zone_ops, insert(instances, with_data_disk(spot_vm("trainer-1"), src)))
    with pytest.raises(exceptions.BadRequest, match="already being used by"):
        insert(instances, with_data_disk(spot_vm("trainer-2"), src))
    with pytest.raises(exceptions.BadRequest, match="same zone"):
        insert(instances, with_data_disk(spot_vm("trainer-3", zone="us-central1-b"), src), zone="us-central1-b")
    with pytest.raises(exceptions.NotFound):
        insert(instances, with_data_disk(spot_vm("trainer-4"), f"zones/{ZONE}/disks/nope"))
    disks = compute_v1.DisksClient(**compute_fake.client_kwargs())
    with pytest.raises(exceptions.BadRequest, match="already being used"):
        disks.delete_unary(project=PROJECT, zone=ZONE, disk="dataset")
    assert sorted(d.name for d in compute_fake.disks()) == ["dataset", "trainer-1"]  # boot disk too


def test_a_deleted_vm_takes_its_auto_delete_disks_and_leaves_the_others_visible(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    vm = spot_vm("trainer-1")  # its boot disk has autoDelete
    vm.disks.append(compute_v1.AttachedDisk(  # autoDelete unset: false in the API
        boot=False, device_name="scratch",
        initialize_params=compute_v1.AttachedDiskInitializeParams(disk_size_gb=20)))
    wait(zone_ops, insert(instances, vm))
    assert sorted(d.name for d in compute_fake.disks()) == ["trainer-1", "trainer-1-1"]

    wait(zone_ops, instances.delete_unary(project=PROJECT, zone=ZONE, instance="trainer-1"))

    (leaked,) = compute_fake.disks()
    assert leaked.name == "trainer-1-1" and list(leaked.users) == []
    with pytest.raises(exceptions.Conflict):  # a new VM of that name cannot recreate it
        insert(instances, vm)


def test_attach_and_detach_follow_the_same_read_write_rule(
        compute_fake: ComputeFake, instances: compute_v1.InstancesClient,
        zone_ops: compute_v1.ZoneOperationsClient) -> None:
    compute_fake.add_disk(ZONE, "dataset")
    wait(zone_ops, insert(instances, spot_vm("trainer-1")))
    wait(zone_ops, insert(instances, spot_vm("trainer-2")))
    src = f"zones/{ZONE}/disks/dataset"
    wait(zone_ops, instances.attach_disk_unary(project=PROJECT, zone=ZONE, instance="trainer-1",
                                               attached_disk_resource=compute_v1.AttachedDisk(
                                                   source=src, device_name="data")))
    with pytest.raises(exceptions.BadRequest, match="already being used by"):
        instances.attach_disk_unary(project=PROJECT, zone=ZONE, instance="trainer-2",
                                    attached_disk_resource=compute_v1.AttachedDisk(source=src))
    wait(zone_ops, instances.detach_disk_unary(project=PROJECT, zone=ZONE, instance="trainer-1",
                                               device_name="data"))
    wait(zone_ops, instances.attach_disk_unary(project=PROJECT, zone=ZONE, instance="trainer-2",
                                               attached_disk_resource=compute_v1.AttachedDisk(source=src)))
    (dataset,) = [d for d in compute_fake.disks() if d.name == "dataset"]
    assert [u.rsplit("/", 1)[-1] for u in dataset.users] == ["trainer-2"]
