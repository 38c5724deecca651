"""Networking a fresh or locked-down project (issue 19 item 9): no ``default`` network, no external
IPs allowed. The Compute fake refuses what GCE refuses (tests/standins/compute/networks.py, each
refusal with its source); the product plans the interface from ``network``/``subnetwork``/
``external_ip``, says what to do when GCE refuses, and ``runner doctor`` names what to create."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.cloud.doctor import Check, format_check, run_checks
from runner.launch.context import make_context
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.gcs_fixture import BUCKET

P = "test-project"
ZONE = "us-central1-a"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "c" * 64
NO_EXTERNAL_IP = {"listPolicy": {"allValues": "DENY"}}


def instance(name: str, nic: compute_v1.NetworkInterface) -> compute_v1.Instance:
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{ZONE}/machineTypes/n1-standard-4",
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT", on_host_maintenance="TERMINATE",
                                         automatic_restart=False),
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image="projects/cos-cloud/global/images/family/cos-stable"))],
        network_interfaces=[nic])


def insert(fake: Any, inst: compute_v1.Instance) -> Any:
    client = compute_v1.InstancesClient(**fake.client_kwargs())
    return client.insert_unary(project=P, zone=ZONE, instance_resource=inst)


EXTERNAL = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]


# ---- the fake refuses what GCE refuses --------------------------------------------------------

def test_the_fake_refuses_an_instance_on_the_default_network_of_a_project_without_one(compute_fake: Any) -> None:
    compute_fake.org_project()
    with pytest.raises(gexc.BadRequest) as e:
        insert(compute_fake, instance("vm-1", compute_v1.NetworkInterface()))
    assert ("Invalid value for field 'resource.networkInterfaces[0].network': "
            f"'projects/{P}/global/networks/default'. The referenced network resource cannot be found.") \
        in e.value.message
    assert compute_fake.instances() == []


def test_the_fake_refuses_an_external_ip_the_organisation_policy_forbids(compute_fake: Any) -> None:
    compute_fake.org_project()
    compute_fake.add_network("vpc")
    compute_fake.add_subnetwork("vpc-us", "us-central1", "vpc")
    sub = "regions/us-central1/subnetworks/vpc-us"
    with pytest.raises(gexc.PreconditionFailed) as e:
        insert(compute_fake, instance("vm-1", compute_v1.NetworkInterface(subnetwork=sub, access_configs=EXTERNAL)))
    assert e.value.code == 412 and e.value.errors[0]["reason"] == "conditionNotMet"
    assert "instances: Constraint constraints/compute.vmExternalIpAccess violated for project " in e.value.message
    assert f"Add instance projects/{P}/zones/{ZONE}/instances/vm-1 to the constraint" in e.value.message
    insert(compute_fake, instance("vm-2", compute_v1.NetworkInterface(subnetwork=sub)))
    (vm,) = compute_fake.instances()
    assert vm.name == "vm-2" and not vm.network_interfaces[0].access_configs
    assert vm.network_interfaces[0].network.endswith(f"projects/{P}/global/networks/vpc")  # the subnet's own


def test_the_fake_needs_a_subnetwork_on_a_custom_mode_network_and_one_that_exists(compute_fake: Any) -> None:
    compute_fake.add_network("vpc")
    with pytest.raises(gexc.BadRequest) as e:
        insert(compute_fake, instance("vm-1", compute_v1.NetworkInterface(network="global/networks/vpc")))
    assert "'resource.networkInterfaces[0]': ''. Subnetwork should be specified for custom subnetmode network" \
        in e.value.message
    with pytest.raises(gexc.BadRequest) as e:
        insert(compute_fake, instance("vm-1", compute_v1.NetworkInterface(
            subnetwork="regions/us-central1/subnetworks/nope")))
    assert "The referenced subnetwork resource cannot be found." in e.value.message


def test_the_admin_fakes_org_policy_is_the_one_compute_enforces(compute_fake: Any, gcp_admin_fake: GcpAdminFake) -> None:
    gcp_admin_fake.add_project(P)
    gcp_admin_fake.set_org_policy(P, "constraints/compute.vmExternalIpAccess", NO_EXTERNAL_IP)
    compute_fake.iam = gcp_admin_fake
    gcp_admin_fake.grant(P, compute_fake.operator, "roles/compute.admin")
    with pytest.raises(gexc.PreconditionFailed) as e:
        insert(compute_fake, instance("vm-1", compute_v1.NetworkInterface(access_configs=EXTERNAL)))
    assert f"violated for project {gcp_admin_fake.projects[P].number}." in e.value.message


# ---- the product: the interface it plans, and what a refusal tells the user --------------------

def gce_cfg(fake: Any, store: str, **over: Any) -> Config:
    values: dict[str, Any] = dict(backend="gce", project=P, zones=[ZONE], compute_endpoint=fake.endpoint,
                                  store=store, machine_type="n1-standard-4", no_gpu=True)
    values.update(over)
    return Config(**values)


def submit_and_pass(cfg: Config, run_id: str) -> RunRecord:
    from runner.launch.submit import submit

    ctx = make_context(cfg)
    submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)
    ctx.supervisor().reconcile(run_id)
    return RunRecord(ctx.store, run_id)


def test_without_external_ip_the_vm_gets_the_named_subnetwork_and_no_access_config(
        compute_fake: Any, gcs_store: Any, gcs_emulator: str) -> None:
    compute_fake.org_project()
    compute_fake.add_network("vpc")
    compute_fake.add_subnetwork("runner", "us-central1", "vpc", private_google_access=True)
    rec = submit_and_pass(gce_cfg(compute_fake, gcs_store.url, subnetwork="runner", external_ip=False), "net-1")
    (vm,) = compute_fake.instances()
    nic = vm.network_interfaces[0]
    assert nic.subnetwork.endswith(f"projects/{P}/regions/us-central1/subnetworks/runner")
    assert nic.network.endswith(f"projects/{P}/global/networks/vpc")
    assert not nic.access_configs
    assert rec.read_state()[0].state == State.PROVISIONING


def test_an_external_ip_the_organisation_forbids_fails_the_run_with_the_setting_to_change(
        compute_fake: Any, gcs_store: Any, gcs_emulator: str) -> None:
    compute_fake.external_ip_denied.add(P)
    rec = submit_and_pass(gce_cfg(compute_fake, gcs_store.url), "net-2")
    st = rec.read_state()[0]
    assert st.state == State.FAILED, st
    assert "external_ip = false" in st.reason and "constraints/compute.vmExternalIpAccess" in st.reason
    assert compute_fake.instances() == []


def test_a_missing_network_is_retried_and_the_journal_says_how_to_create_it(
        compute_fake: Any, gcs_store: Any, gcs_emulator: str) -> None:
    compute_fake.org_project()
    rec = submit_and_pass(gce_cfg(compute_fake, gcs_store.url, external_ip=False), "net-3")
    assert not rec.read_state()[0].state.terminal
    reasons = [e.get("reason") or "" for _, e in rec.events()]
    said = next(r for r in reasons if "create failed" in r)
    assert "have no `default` network" in said and "runner doctor" in said, said
    assert compute_fake.instances() == []


def test_a_custom_mode_network_without_a_subnetwork_fails_the_run_saying_to_name_one(
        compute_fake: Any, gcs_store: Any, gcs_emulator: str) -> None:
    compute_fake.add_network("vpc")
    rec = submit_and_pass(gce_cfg(compute_fake, gcs_store.url, network="vpc"), "net-4")
    st = rec.read_state()[0]
    assert st.state == State.FAILED, st
    assert "custom-mode VPC" in st.reason and 'Set subnetwork = "NAME" in runner.toml' in st.reason
    assert f"gcloud compute networks subnets list --project {P}" in st.reason


# ---- runner doctor: the network, its subnetwork, Private Google Access --------------------------

@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    return gcp_admin_fake


def network_of(admin: GcpAdminFake, fake: Any, **over: Any) -> Check:
    values: dict[str, Any] = dict(
        backend="gce", project=P, store=f"gs://{BUCKET}/net-{uuid.uuid4().hex[:8]}", zones=[ZONE, "europe-west4-a"],
        no_gpu=True, compute_endpoint=fake.endpoint, serviceusage_endpoint=admin.endpoint,
        resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint)
    values.update(over)
    checks = run_checks(Config(**values), active_project=lambda: None, docker_ping=lambda: True)
    return next(c for c in checks if c.name == "network")


def test_doctor_names_every_command_that_makes_a_network_for_an_organisation_project(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    compute_fake.org_project()
    admin.set_org_policy(P, "constraints/compute.vmExternalIpAccess", NO_EXTERNAL_IP)
    check = network_of(admin, compute_fake)
    assert check.ok is False
    assert "allows no VM of test-project an external IP" in check.detail
    assert "network default does not exist in test-project" in check.detail
    assert check.fix.splitlines() == [
        "runner.toml: external_ip = false",
        "gcloud compute networks create cos-spot-runner --project test-project --subnet-mode custom",
        "gcloud compute networks subnets create cos-spot-runner --project test-project --network cos-spot-runner "
        "--region europe-west4 --range 10.10.0.0/20 --enable-private-ip-google-access",
        "gcloud compute networks subnets create cos-spot-runner --project test-project --network cos-spot-runner "
        "--region us-central1 --range 10.11.0.0/20 --enable-private-ip-google-access",
        'runner.toml: network = "cos-spot-runner", subnetwork = "cos-spot-runner"',
    ]
    assert format_check(check).startswith("✗ network: ")


def test_doctor_wants_private_google_access_on_the_subnetwork_of_vms_without_external_ip(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    check = network_of(admin, compute_fake, external_ip=False, zones=[ZONE])
    assert check.ok is False
    assert "subnetwork default in us-central1 has Private Google Access off" in check.detail
    assert check.fix == ("gcloud compute networks subnets update default --project test-project --region "
                         "us-central1 --enable-private-ip-google-access")
    # The fix, applied as gcloud does it.
    compute_v1.SubnetworksClient(**compute_fake.client_kwargs()).set_private_ip_google_access_unary(
        project=P, region="us-central1", subnetwork="default",
        subnetworks_set_private_ip_google_access_request_resource=compute_v1.SubnetworksSetPrivateIpGoogleAccessRequest(
            private_ip_google_access=True))
    check = network_of(admin, compute_fake, external_ip=False, zones=[ZONE])
    assert check.ok is True, check
    assert "without external IPs on subnetwork default in us-central1, Private Google Access on" in check.detail


def test_doctor_points_a_custom_mode_network_at_its_subnetwork(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    compute_fake.add_network("vpc")
    compute_fake.add_subnetwork("vpc-central", "us-central1", "vpc")
    check = network_of(admin, compute_fake, network="vpc", zones=[ZONE])
    assert check.ok is False
    assert "network vpc is custom-mode, so VMs need a subnetwork; in us-central1 it has vpc-central" in check.detail
    assert check.fix == 'runner.toml: subnetwork = "vpc-central"'
    assert network_of(admin, compute_fake, network="vpc", subnetwork="vpc-central", zones=[ZONE]).ok is True


def test_doctor_passes_the_default_network_with_external_ips_where_they_are_allowed(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    check = network_of(admin, compute_fake)
    assert check.ok is True, check
    assert check.detail == "VMs with external IPs on subnetwork default in europe-west4; default in us-central1"


def test_an_unreadable_organisation_policy_is_said_not_failed(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    admin.deny.add("resourcemanager.projects.getEffectiveOrgPolicy")  # no orgpolicy.policy.get
    check = network_of(admin, compute_fake, zones=[ZONE])
    assert check.ok is True, check
    assert check.detail.endswith("; the external-IP organisation policy could not be read")
