"""VPC firewall rules (``firewalls.get/list/insert``), as far as ``runner doctor`` reads them.

Modelled (each with its source):

- The ``default`` network comes with four ingress rules at priority 65534:
  ``default-allow-internal`` (tcp 0-65535, udp 0-65535, icmp from 10.128.0.0/9, "Allow internal
  traffic on the default network"), ``default-allow-ssh`` (tcp:22), ``default-allow-rdp``
  (tcp:3389) and ``default-allow-icmp`` (icmp), the last three from 0.0.0.0/0
  (https://cloud.google.com/vpc/docs/firewalls#more_rules_default_vpc, as the gcloud commands in
  https://gist.github.com/paseaf/7e971687670eb5c045b7c011416fa7ae re-create them; the stored JSON of
  a real project's rules in https://gist.github.com/l4rz/29a04343905bf6329a4e9d619ca70d31). A network
  anyone creates has none: "No manually created network has automatically created firewall rules
  except for a default "allow" rule for outgoing traffic and a default "deny" for incoming traffic"
  (https://www.pulumi.com/docs/reference/pkg/gcp/compute/firewall/, from the API's Firewall reference).
- ``priority``: "an integer between 0 and 65535, both inclusive. The default value is 1000";
  lower is stronger, a DENY wins over an ALLOW of equal priority, and the implied rules sit at
  65535 (Firewall.priority, as mirrored in
  https://pub.dev/documentation/pulumi_google_native/latest/compute/Firewall/priority.html).
  ``direction`` defaults to INGRESS. A rule has ``allowed`` or ``denied``, not both.
- ``insert`` answers a global operation, DONE at once (as ``networks.insert`` here); a rule on a
  network that does not exist is refused 400, a taken name 409.

Not modelled: the implied rules themselves as listed objects (GCE does not list them either),
egress rules' effect, hierarchical and network firewall policies (which can override these rules:
a reader of these rules must say it did not read those), ``sourceTags``/``targetTags`` matching
against instances' tags, logging, ``update``/``patch``/``delete``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import ApiError, _copy, _invalid, _not_found, _now_ts
from tests.standins.compute.model import API, _page

# The default network's rules: (name, description, allowed, source ranges).
_DEFAULT_RULES = (
    ("default-allow-internal", "Allow internal traffic on the default network",
     [("tcp", ["0-65535"]), ("udp", ["0-65535"]), ("icmp", [])], ["10.128.0.0/9"]),
    ("default-allow-ssh", "Allow SSH from anywhere", [("tcp", ["22"])], ["0.0.0.0/0"]),
    ("default-allow-rdp", "Allow RDP from anywhere", [("tcp", ["3389"])], ["0.0.0.0/0"]),
    ("default-allow-icmp", "Allow ICMP from anywhere", [("icmp", [])], ["0.0.0.0/0"]),
)
DEFAULT_RULE_PRIORITY = 65534
DEFAULT_PRIORITY = 1000


class FirewallRecords:
    """The firewall part of ``ComputeFake``; runs under its lock."""

    def _init_firewalls(self) -> None:
        self._firewalls: dict[tuple[str, str], compute_v1.Firewall] = {}

    # ---- switches that act ------------------------------------------------------------------

    def add_firewall(self, name: str, network: str, *, allowed: Optional[list[tuple[str, list[str]]]] = None,
                     denied: Optional[list[tuple[str, list[str]]]] = None, source_ranges: Optional[list[str]] = None,
                     priority: int = DEFAULT_PRIORITY, target_tags: Optional[list[str]] = None,
                     direction: str = "INGRESS", project: Optional[str] = None) -> compute_v1.Firewall:
        """Store a rule on ``network`` (a name in the project), as ``gcloud compute firewall-rules
        create`` would."""
        p = project or self.project
        with self.lock:
            self._ensure_default(p)
            fw = compute_v1.Firewall(
                name=name, network=f"{API}/projects/{p}/global/networks/{network}", priority=priority,
                direction=direction, source_ranges=list(source_ranges or []), target_tags=list(target_tags or []))
            if allowed is not None:
                fw.allowed = [compute_v1.Allowed(I_p_protocol=proto, ports=ports) for proto, ports in allowed]
            if denied is not None:
                fw.denied = [compute_v1.Denied(I_p_protocol=proto, ports=ports) for proto, ports in denied]
            return _copy(self._store_firewall(p, fw))

    def firewalls(self, project: Optional[str] = None) -> list[compute_v1.Firewall]:
        p = project or self.project
        with self.lock:
            self._ensure_default(p)
            return [_copy(f) for (pp, _), f in sorted(self._firewalls.items()) if pp == p]

    # ---- internals --------------------------------------------------------------------------

    def _default_firewalls(self, p: str, network: compute_v1.Network) -> None:
        """The rules GCE makes with a project's ``default`` network."""
        for name, description, allowed, ranges in _DEFAULT_RULES:
            self._store_firewall(p, compute_v1.Firewall(
                name=name, description=description, network=network.self_link, priority=DEFAULT_RULE_PRIORITY,
                direction="INGRESS", source_ranges=ranges,
                allowed=[compute_v1.Allowed(I_p_protocol=proto, ports=ports) for proto, ports in allowed]))

    def _drop_firewalls_of(self, p: str, network: str) -> None:
        for key in [k for k, f in self._firewalls.items() if k[0] == p and f.network.endswith(f"/networks/{network}")]:
            del self._firewalls[key]

    def _store_firewall(self, p: str, fw: compute_v1.Firewall) -> compute_v1.Firewall:
        if (p, fw.name) in self._firewalls:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/global/firewalls/{fw.name}' "
                           "already exists")
        net_name = fw.network.rstrip("/").rsplit("/", 1)[-1] if fw.network else "default"
        if (p, net_name) not in self._networks:
            raise _invalid("resource.network", fw.network, "The referenced network resource cannot be found.")
        if fw.allowed and fw.denied:
            raise _invalid("resource", "", "Only one of allowed or denied may be specified.")
        if not 0 <= fw.priority <= 65535:
            raise _invalid("resource.priority", fw.priority, "Must be between 0 and 65535.")
        fw.kind = "compute#firewall"
        fw.id = next(self._ids)
        fw.creation_timestamp = _now_ts()
        fw.network = f"{API}/projects/{p}/global/networks/{net_name}"
        fw.self_link = f"{API}/projects/{p}/global/firewalls/{fw.name}"
        fw.direction = fw.direction or "INGRESS"
        self._firewalls[(p, fw.name)] = fw
        return fw

    # ---- request handlers (called under the lock) -------------------------------------------

    def _h_firewalls(self, rpc: str, p: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        self._ensure_default(p)
        if rpc == "firewalls.get":
            fw = self._firewalls.get((p, a["firewall"]))
            if fw is None:
                raise _not_found(f"projects/{p}/global/firewalls/{a['firewall']}")
            return fw
        if rpc == "firewalls.list":
            items, token = _page([f for (pp, _), f in sorted(self._firewalls.items()) if pp == p], q)
            return compute_v1.FirewallList(kind="compute#firewallList", id=f"projects/{p}/global/firewalls",
                                           items=items, next_page_token=token,
                                           self_link=f"{API}/projects/{p}/global/firewalls")
        try:
            fw = compute_v1.Firewall.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        if "priority" not in json.loads(body or b"{}"):
            fw.priority = DEFAULT_PRIORITY
        fw = self._store_firewall(p, fw)
        return self._new_global_op(p, "insert", fw.self_link, fw.id, 0.0)
