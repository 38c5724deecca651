"""Issue 19, item 7: every value of ``compute_v1.Instance.Status`` is classified on purpose, and a
VM that is going away (``PENDING_STOP``, ``DEPROVISIONING``, ``STOPPING``…) never looks alive.

The table is walked over the library's own enum, so a status the library adds later fails here
instead of silently passing as "starting" (which made a dying VM look alive: no replacement).
Meanings: the ``Instance.Status`` reference (PENDING: a Flex-start VM waiting for capacity;
DEPROVISIONING: "halted ... releasing quota, IP, tearing down disks"),
https://docs.cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.Instance.Types.Status
"""

from __future__ import annotations

import pytest
from google.cloud import compute_v1

from runner.launch.backends.base import Instance, InstanceStatus

ALIVE = {"PENDING", "PROVISIONING", "STAGING", "RUNNING", "REPAIRING"}
GOING_AWAY = {"PENDING_STOP", "STOPPING", "SUSPENDING", "DEPROVISIONING"}
ENDED = {"STOPPED", "SUSPENDED", "TERMINATED"}


def _instance(status: InstanceStatus) -> Instance:
    return Instance(name="vm", run_label="r", attempt=1, status=status)


@pytest.mark.parametrize("status", list(compute_v1.Instance.Status))
def test_every_status_of_the_enum_is_classified_explicitly(status: compute_v1.Instance.Status) -> None:
    from runner.launch.backends.gce import _STATUS

    if status.name == "UNDEFINED_STATUS":
        assert status.name not in _STATUS  # "the enum field is not set": the unknown case
        return
    assert status.name in _STATUS, f"{status.name} is not classified in gce._STATUS"
    assert status.name in ALIVE | GOING_AWAY | ENDED, f"{status.name}: decide what it means here"


@pytest.mark.parametrize("status", list(compute_v1.Instance.Status))
def test_a_vm_going_away_or_unknown_never_looks_alive(status: compute_v1.Instance.Status) -> None:
    from runner.launch.backends.gce import classify_status

    inst = _instance(classify_status(status))
    assert inst.alive is (status.name in ALIVE)
    if status.name in GOING_AWAY or status.name == "UNDEFINED_STATUS":
        assert inst.going_away  # nobody acts on it, nobody starts its replacement beside it


def test_a_status_newer_than_the_table_is_not_alive() -> None:
    from runner.launch.backends.gce import UNKNOWN_STATUS, classify_status

    assert classify_status("HIBERNATING") == UNKNOWN_STATUS
    assert not _instance(classify_status("HIBERNATING")).alive


@pytest.mark.parametrize("status", ["DEPROVISIONING", "PENDING_STOP"])
def test_a_listed_vm_that_is_being_torn_down_is_going_away_not_alive(compute_fake, status: str) -> None:
    """Through the real client and the fake: what ``list()`` makes of the status GCE reports."""
    from runner.cloud.gcp_clients import compute_clients
    from runner.launch.backends.gce import GceBackend

    vm = compute_v1.Instance(
        name="runner-r-a1", machine_type="zones/us-central1-a/machineTypes/n1-standard-4",
        labels={"runner": "cos-spot-runner", "run-id": "r", "attempt": "1"},
        scheduling=compute_v1.Scheduling(provisioning_model="SPOT"))
    compute_fake.seed_instance("us-central1-a", vm)
    with compute_fake.lock:
        compute_fake._vms[(compute_fake.project, "us-central1-a", "runner-r-a1")].instance.status = status
    (listed,) = GceBackend(compute_clients(compute_fake.endpoint), compute_fake.project).list("r")
    assert listed.going_away and not listed.alive
