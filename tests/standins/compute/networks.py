"""VPC networks and subnetworks, and the organisation policy on external IPs, as an instance
insert meets them.

Modelled (each with its source):

- A project starts with the ``default`` network, auto mode, one subnetwork per region named
  ``default``, Private Google Access off ("Default network", VPC docs:
  https://cloud.google.com/vpc/docs/vpc#default-network). A project of an organisation that sets
  ``constraints/compute.skipDefaultNetworkCreation`` has none (``org_project``, or
  ``skip_default_network``): the 2024+ organisations' default (the "secure by default" policies,
  reported in https://github.com/GoogleCloudPlatform/cloud-ops-sandbox/issues/678).
- An instance whose interface names a network that does not exist (or names none, when the
  project has no ``default``) is refused with HTTP 400 ``invalid``: "Invalid value for field
  'resource.networkInterfaces[0].network': 'projects/P/global/networks/N'. The referenced network
  resource cannot be found." (quoted in https://github.com/google/anthos-microk8s/issues/1; the
  default network's case in https://github.com/GoogleCloudPlatform/magic-modules/pull/18826).
- A missing subnetwork: 400 "... 'resource.networkInterfaces[0].subnetwork': '...'. The referenced
  subnetwork resource cannot be found." (https://github.com/hashicorp/terraform-provider-google/issues/2140).
- A custom-mode network with no subnetwork named: 400 "Invalid value for field
  'resource.networkInterfaces[0]': ''. Subnetwork should be specified for custom subnetmode
  network" (https://github.com/hashicorp/terraform-provider-google/issues/175). An auto-mode
  network's interface gets the network's subnetwork of the zone's region; a subnetwork alone
  names its network.
- ``constraints/compute.vmExternalIpAccess`` denying every VM (``external_ip_denied``; an
  organisation project): an interface with an access config (an external IP) is refused with
  HTTP 412 ``conditionNotMet``, "Constraint constraints/compute.vmExternalIpAccess violated for
  project NUMBER. Add instance projects/P/zones/Z/instances/N to the constraint to use external
  IP with it." (https://github.com/gardener/gardener-extension-provider-gcp/issues/415,
  https://github.com/fortinet/fortigate-terraform-deploy/issues/34).
- ``networks.get/list/insert``, ``subnetworks.get/list/insert`` and
  ``subnetworks.setPrivateIpGoogleAccess`` (``privateIpGoogleAccess``: "VMs in this subnetwork
  without external IP addresses can access Google APIs and services by using Private Google
  Access", compute v1 Subnetwork reference), so a test can apply what ``runner doctor`` says the
  way gcloud does.

Not modelled: Private Google Access itself (a VM without an external IP on a subnet without it
cannot reach Cloud Storage or Artifact Registry; the fake's guests reach the emulators anyway),
firewall rules' effect on traffic (the rules themselves: firewalls.py), Cloud NAT, a subnetwork named with another network than its own, Shared VPC host projects, IP ranges overlapping, the ``allowedValues``
form of the external-IP constraint (a list of instances that may have one), and the
``compute.subnetworks.use``/``useExternalIp`` permissions an insert also needs. Network and
subnetwork operations are DONE at once; subnetwork (regional) operations are answered but not
kept, so ``regionOperations`` is not served.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.catalogue import ZONES
from tests.standins.compute.errors import ApiError, _copy, _invalid, _not_found, _now_ts
from tests.standins.compute.model import API, _last, _page, _region

EXTERNAL_IP_CONSTRAINT = "constraints/compute.vmExternalIpAccess"
DEFAULT_NETWORK = "default"
# A project number for the constraint's message when no admin fake knows the project's.
FALLBACK_PROJECT_NUMBER = "123456789012"


def _regions() -> list[str]:
    return sorted({_region(z) for z in ZONES})


def _network_ref(url: str, project: str) -> tuple[str, str]:
    """(project, name) of a full or partial network URL, or a bare name."""
    m = re.fullmatch(r"(?:.*/)?(?:projects/([^/]+)/)?global/networks/([^/]+)", url or "")
    if m:
        return m.group(1) or project, m.group(2)
    return project, _last(url)


def _subnet_ref(url: str, project: str, region: str) -> tuple[str, str, str]:
    """(project, region, name) of a full or partial subnetwork URL, or a bare name."""
    m = re.fullmatch(r"(?:.*/)?(?:projects/([^/]+)/)?regions/([^/]+)/subnetworks/([^/]+)", url or "")
    if m:
        return m.group(1) or project, m.group(2), m.group(3)
    return project, region, _last(url)


class NetworkRecords:
    """The networks part of ``ComputeFake``; runs under its lock."""

    def _init_networks(self) -> None:
        self._networks: dict[tuple[str, str], compute_v1.Network] = {}
        self._subnets: dict[tuple[str, str, str], compute_v1.Subnetwork] = {}
        self._defaults_made: set[str] = set()
        # Projects created under constraints/compute.skipDefaultNetworkCreation: no `default`.
        self.skip_default_network: set[str] = set()
        # Projects whose constraints/compute.vmExternalIpAccess allows no VM an external IP.
        self.external_ip_denied: set[str] = set()

    # ---- switches that act ------------------------------------------------------------------

    def org_project(self, project: Optional[str] = None) -> None:
        """Make ``project`` one of a 2024+ organisation: no default network, no external IPs."""
        p = project or self.project
        with self.lock:
            self.skip_default_network.add(p)
            self.external_ip_denied.add(p)
            if p not in self._defaults_made:
                return
            for key in [k for k in self._subnets if k[0] == p and _last(
                    self._subnets[k].network) == DEFAULT_NETWORK]:
                del self._subnets[key]
            self._networks.pop((p, DEFAULT_NETWORK), None)
            self._drop_firewalls_of(p, DEFAULT_NETWORK)

    def add_network(self, name: str, *, auto: bool = False, project: Optional[str] = None
                    ) -> compute_v1.Network:
        """Store a network (auto mode: with a subnetwork of its name in every region)."""
        p = project or self.project
        with self.lock:
            self._ensure_default(p)
            return _copy(self._new_network(p, name, auto))

    def add_subnetwork(self, name: str, region: str, network: str, *, private_google_access: bool = False,
                       cidr: str = "10.10.0.0/20", project: Optional[str] = None) -> compute_v1.Subnetwork:
        p = project or self.project
        with self.lock:
            self._ensure_default(p)
            return _copy(self._new_subnet(p, region, name, _network_ref(network, p)[1], cidr,
                                          private_google_access))

    def subnetwork(self, region: str, name: str, project: Optional[str] = None
                   ) -> Optional[compute_v1.Subnetwork]:
        p = project or self.project
        with self.lock:
            self._ensure_default(p)
            s = self._subnets.get((p, region, name))
            return _copy(s) if s else None

    # ---- internals --------------------------------------------------------------------------

    def _ensure_default(self, p: str) -> None:
        """A project's `default` network comes into being with the project (here: on first use)."""
        if p in self._defaults_made:
            return
        self._defaults_made.add(p)
        if p not in self.skip_default_network:
            self._default_firewalls(p, self._new_network(p, DEFAULT_NETWORK, auto=True))  # firewalls.py

    def _new_network(self, p: str, name: str, auto: bool) -> compute_v1.Network:
        net = compute_v1.Network(
            kind="compute#network", id=next(self._ids), name=name, creation_timestamp=_now_ts(),
            self_link=f"{API}/projects/{p}/global/networks/{name}", auto_create_subnetworks=auto,
            routing_config=compute_v1.NetworkRoutingConfig(routing_mode="REGIONAL"),
            network_firewall_policy_enforcement_order="AFTER_CLASSIC_FIREWALL")
        self._networks[(p, name)] = net
        if auto:  # one /20 per region out of 10.128.0.0/9, as the auto-mode ranges are
            for i, region in enumerate(_regions()):
                self._new_subnet(p, region, name, name, f"10.{128 + i}.0.0/20", False)
        return net

    def _new_subnet(self, p: str, region: str, name: str, network: str, cidr: str, pga: bool
                    ) -> compute_v1.Subnetwork:
        if (p, network) not in self._networks:
            raise _not_found(f"projects/{p}/global/networks/{network}")
        net = self._networks[(p, network)]
        sub = compute_v1.Subnetwork(
            kind="compute#subnetwork", id=next(self._ids), name=name, creation_timestamp=_now_ts(),
            network=net.self_link, ip_cidr_range=cidr, region=f"{API}/projects/{p}/regions/{region}",
            gateway_address=cidr.split("/")[0].rsplit(".", 1)[0] + ".1",
            self_link=f"{API}/projects/{p}/regions/{region}/subnetworks/{name}",
            private_ip_google_access=pga, stack_type="IPV4_ONLY", purpose="PRIVATE")
        self._subnets[(p, region, name)] = sub
        net.subnetworks.append(sub.self_link)
        return sub

    def _external_ip_forbidden(self, p: str) -> bool:
        """The constraint denies every VM: set here, or in the admin fake's organisation policy
        (``listPolicy.allValues: DENY``) when that fake is ``iam``, so both enforce one policy."""
        if p in self.external_ip_denied:
            return True
        policy = (getattr(self.iam, "org_policies", None) or {}).get((p, EXTERNAL_IP_CONSTRAINT)) or {}
        return (policy.get("listPolicy") or {}).get("allValues") == "DENY"

    def _project_number(self, p: str) -> str:
        projects = getattr(self.iam, "projects", None) or {}
        return str(getattr(projects.get(p), "number", "") or FALLBACK_PROJECT_NUMBER)

    def _resolve_interfaces(self, p: str, zone: str, inst: compute_v1.Instance, *, check: bool
                            ) -> list[tuple[str, str]]:
        """(network URL, subnetwork URL) of each interface, as GCE resolves them; with
        ``check``, refuse what GCE refuses (see the module docstring for the messages)."""
        self._ensure_default(p)
        region = _region(zone)
        out = []
        for i, nic in enumerate(inst.network_interfaces):
            field = f"resource.networkInterfaces[{i}]"
            sub = None
            if nic.subnetwork:
                sp, sr, sn = _subnet_ref(nic.subnetwork, p, region)
                sub = self._subnets.get((sp, sr, sn))
                if sub is None or sr != region:
                    if check:
                        raise _invalid(f"{field}.subnetwork", f"projects/{sp}/regions/{sr}/subnetworks/{sn}",
                                       "The referenced subnetwork resource cannot be found.")
                    out.append((nic.network or "", nic.subnetwork))
                    continue
            if nic.network or sub is None:
                np_, nn = _network_ref(nic.network or f"global/networks/{DEFAULT_NETWORK}", p)
                net = self._networks.get((np_, nn))
                if net is None:
                    if check:
                        raise _invalid(f"{field}.network", f"projects/{np_}/global/networks/{nn}",
                                       "The referenced network resource cannot be found.")
                    out.append((f"{API}/projects/{np_}/global/networks/{nn}", nic.subnetwork))
                    continue
                if sub is None:
                    sub = self._subnets.get((np_, region, nn)) if net.auto_create_subnetworks else None
                    if sub is None:
                        if check:
                            raise _invalid(field, "", "Subnetwork should be specified for custom "
                                           "subnetmode network")
                        out.append((net.self_link, ""))
                        continue
            out.append((sub.network, sub.self_link))
        if check and self._external_ip_forbidden(p) and any(n.access_configs for n in inst.network_interfaces):
            raise ApiError(412, "conditionNotMet", f"Constraint {EXTERNAL_IP_CONSTRAINT} violated for "
                           f"project {self._project_number(p)}. Add instance projects/{p}/zones/{zone}/"
                           f"instances/{inst.name} to the constraint to use external IP with it.")
        return out

    # ---- request handlers (called under the lock) -------------------------------------------

    def _h_networks(self, rpc: str, p: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        self._ensure_default(p)
        if rpc == "networks.get":
            net = self._networks.get((p, a["network"]))
            if net is None:
                raise _not_found(f"projects/{p}/global/networks/{a['network']}")
            return net
        if rpc == "networks.list":
            items, token = _page([n for (pp, _), n in sorted(self._networks.items()) if pp == p], q)
            return compute_v1.NetworkList(kind="compute#networkList", id=f"projects/{p}/global/networks",
                                          items=items, next_page_token=token,
                                          self_link=f"{API}/projects/{p}/global/networks")
        doc = json.loads(body or b"{}")
        name = str(doc.get("name") or "")
        if (p, name) in self._networks:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/global/networks/{name}' "
                           "already exists")
        if "autoCreateSubnetworks" not in doc and "IPv4Range" not in doc:
            # The API's default is the legacy network; gcloud always says which mode.
            raise _invalid("resource.autoCreateSubnetworks", "", "Must be specified.")
        net = self._new_network(p, name, bool(doc.get("autoCreateSubnetworks")))
        return self._new_global_op(p, "insert", net.self_link, net.id, 0.0)

    def _h_subnetworks(self, rpc: str, p: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        self._ensure_default(p)
        region = a["region"]
        if region not in _regions():
            raise _not_found(f"projects/{p}/regions/{region}")
        if rpc == "subnetworks.list":
            items, token = _page([s for (pp, r, _), s in sorted(self._subnets.items())
                                  if pp == p and r == region], q)
            return compute_v1.SubnetworkList(
                kind="compute#subnetworkList", id=f"projects/{p}/regions/{region}/subnetworks",
                items=items, next_page_token=token, self_link=f"{API}/projects/{p}/regions/{region}/subnetworks")
        if rpc == "subnetworks.insert":
            doc = json.loads(body or b"{}")
            name = str(doc.get("name") or "")
            if (p, region, name) in self._subnets:
                raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/regions/{region}/"
                               f"subnetworks/{name}' already exists")
            np_, nn = _network_ref(str(doc.get("network") or ""), p)
            if (np_, nn) not in self._networks:
                raise _invalid("resource.network", doc.get("network"), "The referenced network resource "
                               "cannot be found.")
            if not doc.get("ipCidrRange"):
                raise _invalid("resource.ipCidrRange", "", "Must be specified.")
            sub = self._new_subnet(np_, region, name, nn, str(doc["ipCidrRange"]),
                                   bool(doc.get("privateIpGoogleAccess")))
            return self._region_op(p, region, "insert", sub)
        sub = self._subnets.get((p, region, a["subnetwork"]))
        if sub is None:
            raise _not_found(f"projects/{p}/regions/{region}/subnetworks/{a['subnetwork']}")
        if rpc == "subnetworks.get":
            return sub
        sub.private_ip_google_access = bool(json.loads(body or b"{}").get("privateIpGoogleAccess"))
        return self._region_op(p, region, "setPrivateIpGoogleAccess", sub)

    def _region_op(self, p: str, region: str, op_type: str, target: compute_v1.Subnetwork) -> Any:
        ts = _now_ts()
        name = f"operation-{next(self._op_seq):013x}-{self._rng.getrandbits(32):08x}"
        return compute_v1.Operation(
            kind="compute#operation", id=next(self._ids), name=name, operation_type=op_type,
            region=f"{API}/projects/{p}/regions/{region}", target_link=target.self_link, target_id=target.id,
            status="DONE", progress=100, insert_time=ts, start_time=ts, end_time=ts,
            self_link=f"{API}/projects/{p}/regions/{region}/operations/{name}")
