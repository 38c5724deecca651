"""The VM's network interface, and what GCE's refusals about networks ask the user to do.

Why a module: a fresh project of a 2024+ organisation has no ``default`` network
(``constraints/compute.skipDefaultNetworkCreation``) and forbids external IPs
(``constraints/compute.vmExternalIpAccess``), so the interface is configurable (``network``,
``subnetwork``, ``external_ip`` in runner.toml, pinned in spec.json) and a refusal must say which
setting or which missing resource to fix. ``runner doctor`` (runner/cloud/doctor_network.py)
checks the same settings before the first run and prints the gcloud commands.

What GCE answers (each quoted from a public report, see tests/standins/compute/networks.py):
a missing network or subnetwork is a 400 "The referenced network resource cannot be found."; a
custom-mode network without a subnetwork is a 400 "Subnetwork should be specified for custom
subnetmode network"; an external IP under the organisation policy is a 412 ``conditionNotMet``
"Constraint constraints/compute.vmExternalIpAccess violated for project N...".
"""

from __future__ import annotations

from typing import Any

from runner.launch.backends.base import BackendError, PermanentBackendError
from runner.naming import region_of

DEFAULT_NETWORK = "global/networks/default"
EXTERNAL_IP_CONSTRAINT = "constraints/compute.vmExternalIpAccess"


def network_url(network: str, project: str) -> str:
    """A configured network as GCE takes it: a bare name is one of ``project``'s networks."""
    return network if "/" in network else f"projects/{project}/global/networks/{network}"


def subnetwork_url(subnetwork: str, project: str, zone: str) -> str:
    """A configured subnetwork as GCE takes it: a bare name is ``project``'s subnetwork of that
    name in the zone's region (so one name serves zones of several regions)."""
    if "/" in subnetwork:
        return subnetwork
    return f"projects/{project}/regions/{region_of(zone)}/subnetworks/{subnetwork}"


def network_interface(vm: dict[str, Any], project: str, zone: str) -> Any:
    """The instance's one interface from the pinned ``spec.vm`` options.

    With a subnetwork and the network left at its default, the network is not sent: GCE takes the
    subnetwork's own, and a project without a ``default`` network must not be made to name one.
    No external IP (``external_ip = false``): no access config, so the VM reaches Cloud Storage
    and Artifact Registry only through Private Google Access on its subnetwork.
    """
    from google.cloud import compute_v1

    nic = compute_v1.NetworkInterface()
    network = vm.get("network") or DEFAULT_NETWORK
    subnetwork = vm.get("subnetwork")
    if subnetwork:
        nic.subnetwork = subnetwork_url(subnetwork, project, zone)
    if not subnetwork or network != DEFAULT_NETWORK:
        nic.network = network_url(network, project)
    if vm.get("external_ip", True):
        nic.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
    return nic


def network_refusal(e: Any, project: str) -> BackendError | None:
    """What to do about an insert GCE refused for its network settings; None for any other
    refusal. Permanent when no retry of this run can succeed (its spec pins the setting)."""
    code = getattr(e, "code", None)
    msg = str(getattr(e, "message", "") or e)
    if code == 412 and EXTERNAL_IP_CONSTRAINT in msg:
        return PermanentBackendError(
            f"project {project}'s organisation policy {EXTERNAL_IP_CONSTRAINT} allows no VM an external IP "
            f"({msg}). Set external_ip = false in runner.toml and submit again; the VMs then reach Cloud "
            "Storage and Artifact Registry through Private Google Access, which their subnetwork must have "
            "on (`runner doctor` checks it and prints the command)")
    if code != 400:
        return None
    if "Subnetwork should be specified for custom subnetmode network" in msg:
        return PermanentBackendError(
            f"the run's network is a custom-mode VPC, so GCE needs a subnetwork ({msg}). Set subnetwork = "
            f"\"NAME\" in runner.toml (list them: gcloud compute networks subnets list --project {project}) "
            "and submit again")
    for what in ("network", "subnetwork"):
        if f"The referenced {what} resource cannot be found" in msg:
            hint = (" (projects of organisations created since 2024 have no `default` network)"
                    if what == "network" and "/networks/default" in msg else "")
            return BackendError(
                f"the {what} the run uses does not exist in project {project}{hint}: {msg}. Create it "
                "(`runner doctor` prints the gcloud commands) or set network/subnetwork in runner.toml to an "
                "existing one; the supervisor tries again on its next pass")
    return None
