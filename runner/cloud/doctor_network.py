"""`runner doctor`'s network check: the VMs' VPC network and subnetwork exist, and they can reach
Google's APIs (Cloud Storage for the run record, Artifact Registry for the image).

Why a check of its own: a project of an organisation created since 2024 has no ``default``
network (``constraints/compute.skipDefaultNetworkCreation``) and often forbids external IPs
(``constraints/compute.vmExternalIpAccess``). A VM then needs a network the user creates, and,
without an external IP, a subnetwork with Private Google Access ("VMs in this subnetwork without
external IP addresses can access Google APIs and services by using Private Google Access",
compute v1 Subnetwork reference), or the startup script cannot pull the image nor write the
record. Every failure carries the gcloud commands that create or fix what is missing, with the
project, region, names and a free range filled in, and the runner.toml lines that use them.

Reads: ``networks.get``, ``subnetworks.get/list`` on ``compute_endpoint`` and Resource
Manager v1 ``projects.getEffectiveOrgPolicy`` on ``resourcemanager_endpoint`` (a policy that
cannot be read is said, not failed: reading it needs ``orgpolicy.policy.get``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from runner.launch.backends.gce_network import DEFAULT_NETWORK, EXTERNAL_IP_CONSTRAINT
from runner.naming import region_of

if TYPE_CHECKING:
    from runner.cloud.doctor import Check, _Doctor

NAME = "network"
# The network `runner doctor` proposes when the configured one is the missing `default`.
PROPOSED_NETWORK = "cos-spot-runner"


def network_check(d: "_Doctor") -> "Check":
    """✓ when every region of the configured zones has the subnetwork the VMs will get and it
    lets them reach Google's APIs; ✗ with the commands that make it so."""
    from runner.cloud.doctor import Check, _skip

    cfg = d.cfg
    if cfg.backend != "gce":
        return _skip(NAME, "only GCE VMs have a VPC network")
    if not cfg.project:
        return _skip(NAME, "no project configured")
    if not cfg.zones:
        return _skip(NAME, "no zones configured, so no region to check")
    view = _NetworkView(d)
    external = view.external_ip_policy()
    problems, fixes, good = [], [], []
    if cfg.external_ip and external == "denied":
        problems.append(f"the organisation policy {EXTERNAL_IP_CONSTRAINT} allows no VM of {view.project} "
                        "an external IP, and external_ip is true")
        fixes.append("runner.toml: external_ip = false")
    needs_pga = not cfg.external_ip or external == "denied"
    net_project, net_name = view.network_ref()
    network = view.network(net_project, net_name)
    subs = {r: view.subnetwork(r, network) for r in view.regions} if network or cfg.subnetwork else {}
    if network is None and (not subs or any(sub is None for sub, _ in subs.values())):
        # A subnetwork that exists names its own network; otherwise the network must be made first.
        hint = (" (projects of organisations created since 2024 have no `default` network)"
                if net_name == "default" else "")
        problems.append(f"network {net_name} does not exist in {net_project}{hint}")
        fixes += view.create_all(net_name)
        return _failed(problems, fixes)
    for i, region in enumerate(view.regions):
        sub, missing = subs[region]
        if sub is None:
            problems.append(missing)
            existing = re.search(r'subnetwork = "[^"]+"', missing)
            fixes += [f"runner.toml: {existing.group(0)}"] if existing else view.create_subnet(region, i, network.name)
            continue
        where = f"{_last(sub.self_link)} in {region}"
        if needs_pga and not sub.private_ip_google_access:
            problems.append(f"subnetwork {where} has Private Google Access off, so VMs without an external IP "
                            "cannot reach Cloud Storage or Artifact Registry")
            fixes.append(f"gcloud compute networks subnets update {_last(sub.self_link)} --project "
                         f"{_project_of(sub.self_link)} --region {region} --enable-private-ip-google-access")
            continue
        good.append(where + (", Private Google Access on" if sub.private_ip_google_access else ""))
    if problems:
        return _failed(problems, fixes)
    ip = "with external IPs" if cfg.external_ip and external != "denied" else "without external IPs"
    policy = {"denied": "", "allowed": "", "unknown": "; the external-IP organisation policy could not be "
              "read"}[external]
    return Check(NAME, True, f"VMs {ip} on subnetwork {'; '.join(good)}{policy}")


def _failed(problems: list[str], fixes: list[str]) -> "Check":
    from runner.cloud.doctor import Check

    unique = list(dict.fromkeys(fixes))  # one command once, in order
    return Check(NAME, False, "; ".join(problems), "\n".join(unique))


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _project_of(url: str) -> str:
    m = re.search(r"projects/([^/]+)/", url)
    return m.group(1) if m else ""


class _NetworkView:
    """The config's network settings resolved against one project, with the reads they need."""

    def __init__(self, d: "_Doctor") -> None:
        from google.cloud import compute_v1

        from runner.cloud.gcp_clients import _client_kwargs

        self.d, self.cfg = d, d.cfg
        self.project: str = d.cfg.project  # type: ignore[assignment]
        self.regions = sorted({region_of(z) for z in d.cfg.zones})
        kwargs = _client_kwargs(d.cfg.compute_endpoint)
        self.networks = compute_v1.NetworksClient(**kwargs)
        self.subnetworks = compute_v1.SubnetworksClient(**kwargs)

    def network_ref(self) -> tuple[str, str]:
        m = re.fullmatch(r"(?:.*/)?(?:projects/([^/]+)/)?global/networks/([^/]+)", self.cfg.network)
        return (m.group(1) or self.project, m.group(2)) if m else (self.project, self.cfg.network)

    def network(self, project: str, name: str) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return self.networks.get(project=project, network=name)
        except gexc.NotFound:
            return None

    def subnetwork(self, region: str, network: Any) -> tuple[Any, str]:
        """The subnetwork a VM in ``region`` gets, or None and why there is none."""
        from google.api_core import exceptions as gexc

        sub = self.cfg.subnetwork
        if sub:
            m = re.fullmatch(r"(?:.*/)?(?:projects/([^/]+)/)?regions/([^/]+)/subnetworks/([^/]+)", sub)
            project, sub_region, name = (m.group(1) or self.project, m.group(2), m.group(3)) if m \
                else (self.project, region, sub)
            if sub_region != region:
                return None, (f"subnetwork {sub} is in {sub_region}, not in {region} where zones "
                              f"{', '.join(z for z in self.cfg.zones if region_of(z) == region)} are")
            try:
                return self.subnetworks.get(project=project, region=region, subnetwork=name), ""
            except gexc.NotFound:
                return None, f"subnetwork {name} does not exist in {region} of {project}"
        if network.auto_create_subnetworks:
            try:
                return self.subnetworks.get(project=_project_of(network.self_link), region=region,
                                            subnetwork=network.name), ""
            except gexc.NotFound:
                return None, f"auto-mode network {network.name} has no subnetwork in {region}"
        # Custom mode: GCE refuses an instance that names no subnetwork; say which exist.
        found = [s.name for s in self.subnetworks.list(
            request={"project": _project_of(network.self_link), "region": region,
                     "filter": f'network = "{network.self_link}"'})]
        if found:
            return None, (f"network {network.name} is custom-mode, so VMs need a subnetwork; in {region} it "
                          f"has {', '.join(found)}: name one, e.g. subnetwork = \"{found[0]}\"")
        return None, f"custom-mode network {network.name} has no subnetwork in {region}"

    def external_ip_policy(self) -> str:
        """``denied`` (no VM may have an external IP), ``allowed``, or ``unknown`` (unreadable)."""
        from runner.cloud.gcp_rest import ApiError

        try:
            policy = self.d.client("apis").resourcemanager.post(
                f"/v1/projects/{self.project}:getEffectiveOrgPolicy", {"constraint": EXTERNAL_IP_CONSTRAINT})
        except ApiError:
            return "unknown"
        listed = policy.get("listPolicy") or {}
        # allValues DENY: no VM; allowedValues: only the instances listed by name, which runner
        # VMs (named per run and attempt) never are.
        if listed.get("allValues") == "DENY" or listed.get("allowedValues"):
            return "denied"
        return "allowed"

    # ---- the commands that make what is missing ------------------------------------------------

    def _subnet_name(self, network: str) -> str:
        sub = self.cfg.subnetwork or network
        return _last(sub)

    def create_subnet(self, region: str, index: int, network: str) -> list[str]:
        name = self._subnet_name(network)
        fixes = [f"gcloud compute networks subnets create {name} --project {self.project} --network {network} "
                 f"--region {region} --range 10.{10 + index}.0.0/20 --enable-private-ip-google-access"]
        if _last(self.cfg.subnetwork or "") != name:
            fixes.append(f'runner.toml: subnetwork = "{name}"')
        return fixes

    def create_all(self, configured: str) -> list[str]:
        """A custom-mode network with one subnetwork per region, Private Google Access on."""
        name = PROPOSED_NETWORK if configured == "default" else configured
        fixes = [f"gcloud compute networks create {name} --project {self.project} --subnet-mode custom"]
        for i, region in enumerate(self.regions):
            fixes += [f for f in self.create_subnet(region, i, name) if not f.startswith("runner.toml")]
        lines = []
        if name != configured:
            lines.append(f'network = "{name}"')
        if _last(self.cfg.subnetwork or "") != self._subnet_name(name):
            lines.append(f'subnetwork = "{self._subnet_name(name)}"')
        if lines:
            fixes.append("runner.toml: " + ", ".join(lines))
        return fixes
