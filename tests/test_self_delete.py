"""Self-delete (issue 19 item 10): what a VM's account needs to delete its own VM, disks included.

Where it lives: gcp/startup.sh (``self_delete``) sends ``DELETE .../instances/NAME`` with the
token of the VM's service account; ``runner init`` (runner/cloud/project_setup.py) grants that
account a custom role with the one permission ``compute.instances.delete``, bound under a
condition to instances named ``runner-*``; ``runner doctor`` checks it.

The claim checked: does deleting an instance whose disks auto-delete also need
``compute.disks.delete``? No source found says so: the instances.delete reference names
``compute.instances.delete`` (https://cloud.google.com/compute/docs/reference/rest/v1/instances/delete),
and the auto-delete flag is documented as the instance's own ("When auto-delete is on, the
persistent disk is deleted when the instance it is attached to is deleted",
https://cloud.google.com/sdk/gcloud/reference/compute/instances/set-disk-auto-delete). So the
grant stays one permission, and the fake models it: the instance's deletion takes its
auto-delete disks without a disk permission, while the same account cannot delete a disk itself.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from google.cloud import compute_v1

from runner.config import Config
from runner.cloud.project_setup import SELF_DELETE_PERMISSIONS, init_project
from tests.conftest import wait_for
from tests.standins.gcp_admin import GcpAdminFake

P = "test-project"
ZONE = "us-central1-a"
SA = f"cos-spot-runner@{P}.iam.gserviceaccount.com"


@pytest.fixture
def project(gcp_admin_fake: GcpAdminFake, gcs_emulator: str, compute_fake: Any) -> Any:
    """A project set up by `runner init`, its VM created by an operator, the fake enforcing IAM."""
    gcp_admin_fake.add_project(P)
    cfg = Config(backend="gce", project=P, store=f"gs://self-delete-{uuid.uuid4().hex[:8]}",
                 serviceusage_endpoint=gcp_admin_fake.endpoint, resourcemanager_endpoint=gcp_admin_fake.endpoint,
                 iam_endpoint=gcp_admin_fake.endpoint)
    init_project(cfg, region="us-central1", say=lambda line: None, sleep=lambda s: None)
    for role in ("roles/compute.instanceAdmin.v1", "roles/iam.serviceAccountUser"):
        gcp_admin_fake.grant(P, compute_fake.operator, role)
    compute_fake.iam = gcp_admin_fake
    return compute_fake


def test_the_self_delete_grant_is_the_one_permission_instances_delete_needs() -> None:
    assert SELF_DELETE_PERMISSIONS == ("compute.instances.delete",)


def test_a_vm_with_only_the_self_delete_role_takes_its_auto_delete_disks_with_it(project: Any) -> None:
    fake = project
    fake.add_disk(ZONE, "dataset")  # someone else's disk, which the VM's account must not delete
    instances = compute_v1.InstancesClient(**fake.client_kwargs())  # the operator
    instances.insert_unary(project=P, zone=ZONE, instance_resource=compute_v1.Instance(
        name="runner-exp-1-a1", machine_type=f"zones/{ZONE}/machineTypes/n1-standard-4",
        service_accounts=[compute_v1.ServiceAccount(email=SA)],
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
                   source_image="projects/cos-cloud/global/images/family/cos-stable")),
               compute_v1.AttachedDisk(auto_delete=True, device_name="data",
                                       initialize_params=compute_v1.AttachedDiskInitializeParams(disk_size_gb=20))]))
    assert sorted(d.name for d in fake.disks()) == ["dataset", "runner-exp-1-a1", "runner-exp-1-a1-1"]
    token = fake.mint_token(f"serviceAccount:{SA}")
    auth = {"Authorization": f"Bearer {token}"}
    base = f"{fake.endpoint}/compute/v1/projects/{P}/zones/{ZONE}"

    refused = requests.delete(f"{base}/disks/dataset", headers=auth, timeout=10)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        f"Required 'compute.disks.delete' permission for 'projects/{P}'")

    assert requests.delete(f"{base}/instances/runner-exp-1-a1", headers=auth, timeout=10).status_code == 200
    wait_for(lambda: not fake.instances(), 10, "the VM to be gone")
    assert [d.name for d in fake.disks()] == ["dataset"]  # its boot and data disks went with it
