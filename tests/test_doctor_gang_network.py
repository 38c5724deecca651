"""`runner doctor` on a gang's network: can its VMs reach each other over TCP?

A gang's nodes meet at rank 0 on torchrun's port and then connect to each other on ports their
collectives pick, so every unprivileged TCP port must be open between the subnetworks the gang may
use. The Compute stand-in keeps VPC firewall rules as GCE does (tests/standins/compute/firewalls.py:
the default network's four rules, none on a network the user makes, priorities, DENY over ALLOW);
the check evaluates them (runner/cloud/doctor_gang_network.py) and prints the gcloud command that
opens what is closed, which these tests then apply through the API as gcloud would.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.cloud import compute_v1

from runner.cloud.doctor import Check, run_checks
from runner.cloud.doctor_gang_network import closed_tcp
from runner.config import Config
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.gcs_fixture import BUCKET

P = "test-project"
ZONE = "us-central1-a"


@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    return gcp_admin_fake


def gang_check(admin: GcpAdminFake, fake: Any, **over: Any) -> Check:
    values: dict[str, Any] = dict(
        backend="gce", project=P, store=f"gs://{BUCKET}/gang-{uuid.uuid4().hex[:8]}", zones=[ZONE],
        no_gpu=True, nodes=2, compute_endpoint=fake.endpoint, serviceusage_endpoint=admin.endpoint,
        resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint)
    values.update(over)
    checks = run_checks(Config(**values), active_project=lambda: None, docker_ping=lambda: True)
    return next(c for c in checks if c.name == "gang network")


def apply(fake: Any, fix: str) -> None:
    """Run the printed ``gcloud compute firewall-rules create`` as gcloud would: one firewalls.insert."""
    words = fix.split()
    assert words[:4] == ["gcloud", "compute", "firewall-rules", "create"], fix
    flags = dict(zip(words[5::2], words[6::2]))
    assert flags["--direction"] == "INGRESS" and flags["--action"] == "ALLOW" and flags["--rules"] == "tcp"
    compute_v1.FirewallsClient(**fake.client_kwargs()).insert_unary(
        project=flags["--project"], firewall_resource=compute_v1.Firewall(
            name=words[4], network=f"global/networks/{flags['--network']}", direction="INGRESS",
            allowed=[compute_v1.Allowed(I_p_protocol="tcp")], source_ranges=flags["--source-ranges"].split(","),
            priority=int(flags.get("--priority", 1000))))


def test_the_default_network_lets_a_gangs_vms_reach_each_other(admin, compute_fake, gcs_emulator):
    check = gang_check(admin, compute_fake)

    assert check.ok is True, check
    cidr = compute_fake.subnetwork("us-central1", "default").ip_cidr_range  # inside default-allow-internal's
    assert f"tcp between the gang's VMs is open on network default ({cidr})" in check.detail
    assert "firewall policies were not read" in check.detail


def test_a_network_the_user_made_is_closed_until_the_printed_rule_opens_it(admin, compute_fake, gcs_emulator):
    compute_fake.add_network("vpc")
    compute_fake.add_subnetwork("vpc-central", "us-central1", "vpc", cidr="10.20.0.0/20")

    check = gang_check(admin, compute_fake, network="vpc", subnetwork="vpc-central")

    assert check.ok is False
    # Every port a gang uses, torchrun's 29500 among them.
    assert "tcp:1024-65535 from 10.20.0.0/20 is closed (no rule allows it: the implied deny-ingress)" in check.detail
    assert check.fix == ("gcloud compute firewall-rules create cos-spot-runner-gang --project test-project "
                         "--network vpc --direction INGRESS --action ALLOW --rules tcp --source-ranges 10.20.0.0/20")
    apply(compute_fake, check.fix)
    assert gang_check(admin, compute_fake, network="vpc", subnetwork="vpc-central").ok is True


def test_a_rule_for_the_rendezvous_port_alone_leaves_the_collectives_ports_closed(admin, compute_fake, gcs_emulator):
    compute_fake.add_network("vpc")
    compute_fake.add_subnetwork("vpc-central", "us-central1", "vpc", cidr="10.20.0.0/20")
    compute_fake.add_firewall("rdzv-only", "vpc", allowed=[("tcp", ["29500"])], source_ranges=["10.20.0.0/16"])

    check = gang_check(admin, compute_fake, network="vpc", subnetwork="vpc-central")

    assert check.ok is False
    assert "tcp:1024-29499 from 10.20.0.0/20 is closed" in check.detail
    assert "tcp:29501-65535 from 10.20.0.0/20 is closed" in check.detail and "tcp:29500 " not in check.detail


def test_a_deny_rule_of_higher_priority_closes_the_default_networks_internal_traffic(admin, compute_fake, gcs_emulator):
    compute_fake.add_firewall("no-internal-tcp", "default", denied=[("tcp", [])], source_ranges=["10.0.0.0/8"],
                              priority=2000)

    check = gang_check(admin, compute_fake)

    assert check.ok is False
    cidr = compute_fake.subnetwork("us-central1", "default").ip_cidr_range
    assert f"tcp:1024-65535 from {cidr} is closed (denied by rule no-internal-tcp)" in check.detail
    assert check.fix.endswith(f"--source-ranges {cidr} --priority 1999")  # beats the deny
    apply(compute_fake, check.fix)
    assert gang_check(admin, compute_fake).ok is True


def test_a_single_vm_run_skips_the_check(admin, compute_fake, gcs_emulator):
    check = gang_check(admin, compute_fake, nodes=1)

    assert check.ok is None and "nodes = 1" in check.detail


def test_rules_are_judged_as_gce_orders_them():
    def rule(name: str, priority: int, *, allow: Any = None, deny: Any = None, tags: Any = ()) -> compute_v1.Firewall:
        fw = compute_v1.Firewall(name=name, priority=priority, direction="INGRESS", source_ranges=["10.0.0.0/8"],
                                 target_tags=list(tags))
        if allow is not None:
            fw.allowed = [compute_v1.Allowed(I_p_protocol="tcp", ports=allow)]
        if deny is not None:
            fw.denied = [compute_v1.Denied(I_p_protocol="tcp", ports=deny)]
        return fw

    src = "10.1.0.0/20"
    # A DENY and an ALLOW of equal priority: the DENY wins.
    assert closed_tcp([rule("a", 100, allow=[]), rule("d", 100, deny=["29500"])], src) == [
        (29500, 29500, "denied by rule d")]
    # The ALLOW with the lower number wins over a weaker DENY.
    assert closed_tcp([rule("a", 99, allow=[]), rule("d", 100, deny=[])], src) == []
    # A rule for tagged VMs only does not open a runner VM, which has no tags.
    assert closed_tcp([rule("t", 10, allow=[], tags=["gpu"])], src) == [
        (1024, 65535, "no rule allows it: the implied deny-ingress")]
    # A source outside the rule's ranges is not let in.
    assert closed_tcp([rule("a", 10, allow=[])], "192.168.0.0/24") == [
        (1024, 65535, "no rule allows it: the implied deny-ingress")]
