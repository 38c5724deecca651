"""Authorization as Compute does it: the permission each method needs, the predefined roles by the
permissions they carry, and the check against the project's IAM policy (opt-in: ``iam``)."""

from __future__ import annotations

import json
import re

from tests.standins.compute.errors import ApiError


# The permission each method needs (the compute v1 reference names it per method).
_PERMISSIONS: dict[str, str] = {
    "instances.insert": "compute.instances.create",
    # bulkInsert makes instances: the same permission, checked per VM name (the fake's reading;
    # the reference's exact wording for bulkInsert was not found).
    "instances.bulkInsert": "compute.instances.create",
    "instances.list": "compute.instances.list",
    "instances.aggregatedList": "compute.instances.list",
    "instances.get": "compute.instances.get",
    "instances.delete": "compute.instances.delete",
    "instances.getSerialPortOutput": "compute.instances.getSerialPortOutput",
    "instances.simulateMaintenanceEvent": "compute.instances.simulateMaintenanceEvent",
    "instances.start": "compute.instances.start",
    "instances.stop": "compute.instances.stop",
    "instances.setMetadata": "compute.instances.setMetadata",
    "instances.setLabels": "compute.instances.setLabels",
    "zoneOperations.get": "compute.zoneOperations.get",
    "zoneOperations.wait": "compute.zoneOperations.get",
    "zoneOperations.list": "compute.zoneOperations.list",
    "zoneOperations.delete": "compute.zoneOperations.delete",
    "images.getFromFamily": "compute.images.getFromFamily",
    "images.get": "compute.images.get",
    "images.list": "compute.images.list",
    "images.insert": "compute.images.create",
    "images.delete": "compute.images.delete",
    "globalOperations.get": "compute.globalOperations.get",
    "globalOperations.wait": "compute.globalOperations.get",
    "machineTypes.get": "compute.machineTypes.get",
    "machineTypes.list": "compute.machineTypes.list",
    "machineTypes.aggregatedList": "compute.machineTypes.list",
    "acceleratorTypes.get": "compute.acceleratorTypes.get",
    "acceleratorTypes.list": "compute.acceleratorTypes.list",
    "acceleratorTypes.aggregatedList": "compute.acceleratorTypes.list",
    "zones.get": "compute.zones.get",
    "zones.list": "compute.zones.list",
    "regions.get": "compute.regions.get",
    "projects.get": "compute.projects.get",
    "instances.attachDisk": "compute.instances.attachDisk",
    "instances.detachDisk": "compute.instances.detachDisk",
    "disks.insert": "compute.disks.create",
    "disks.list": "compute.disks.list",
    "disks.get": "compute.disks.get",
    "disks.delete": "compute.disks.delete",
    "networks.get": "compute.networks.get",
    "networks.list": "compute.networks.list",
    "networks.insert": "compute.networks.create",
    "subnetworks.get": "compute.subnetworks.get",
    "subnetworks.list": "compute.subnetworks.list",
    "subnetworks.insert": "compute.subnetworks.create",
    "subnetworks.setPrivateIpGoogleAccess": "compute.subnetworks.setPrivateIpGoogleAccess",
    "firewalls.get": "compute.firewalls.get",
    "firewalls.list": "compute.firewalls.list",
    "firewalls.insert": "compute.firewalls.create",
}
# Deleting an instance is authorised by compute.instances.delete on the instance alone: its
# disks marked autoDelete go with it without a compute.disks.delete check (the permission the
# instances.delete reference names; no source found says more, see _h_delete's disks), which is
# why `runner init`'s self-delete role holds that one permission.
_PUBLIC_IMAGE_PROJECTS = {"cos-cloud"}
# Predefined roles, by the permissions that matter here ("*" at the end: a prefix).
_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/owner": frozenset({"compute.*", "iam.serviceAccounts.actAs"}),
    "roles/editor": frozenset({"compute.*", "iam.serviceAccounts.actAs"}),
    "roles/compute.admin": frozenset({"compute.*"}),
    "roles/compute.instanceAdmin.v1": frozenset({
        "compute.instances.*", "compute.zoneOperations.*", "compute.disks.*",
        "compute.images.get", "compute.images.getFromFamily", "compute.images.list",
        "compute.machineTypes.*", "compute.acceleratorTypes.*", "compute.zones.*",
        "compute.regions.*", "compute.projects.get",
        # "read access to all Compute Engine networking resources" (the role's description)
        "compute.networks.get", "compute.networks.list", "compute.subnetworks.get",
        "compute.subnetworks.list"}),
    "roles/compute.viewer": frozenset({"compute.projects.get"} | {
        f"compute.{r}.{v}" for r in ("instances", "zoneOperations", "images", "machineTypes",
                                     "acceleratorTypes", "zones", "regions", "disks", "networks",
                                     "subnetworks", "firewalls")
        for v in ("get", "list")} | {"compute.images.getFromFamily"}),
    "roles/iam.serviceAccountUser": frozenset({"iam.serviceAccounts.actAs"}),
    # Images and disks ("Compute Storage Admin", https://docs.cloud.google.com/iam/docs/roles-permissions/compute):
    # what `runner images bake/delete` needs beyond instanceAdmin.v1.
    "roles/compute.storageAdmin": frozenset({
        "compute.images.*", "compute.disks.*", "compute.snapshots.*", "compute.globalOperations.*",
        "compute.zoneOperations.*", "compute.regions.*", "compute.zones.*"}),
}
_ROLE_PERMISSIONS["roles/viewer"] = _ROLE_PERMISSIONS["roles/compute.viewer"]
# Networks and subnetworks ("Compute Network Admin", https://docs.cloud.google.com/iam/docs/roles-permissions/compute):
# what the network fixes `runner doctor` prints need.
_ROLE_PERMISSIONS["roles/compute.networkAdmin"] = frozenset({
    "compute.networks.*", "compute.subnetworks.*", "compute.globalOperations.*", "compute.regions.*"})


def _condition_holds(expression: str, resource: str) -> bool:
    """Evaluate the CEL subset ``runner init`` writes; anything else does not hold."""
    for clause in (c.strip() for c in expression.split("&&")):
        m = re.fullmatch(r'resource\.type\s*==\s*"([^"]+)"', clause)
        if m:
            kind = "compute.googleapis.com/Instance" if "/instances/" in resource else "project"
            if m.group(1) != kind:
                return False
            continue
        m = re.fullmatch(r'resource\.name(?:\.extract\("([^"]*)\{name\}"\))?'
                         r'\.startsWith\("([^"]*)"\)', clause)
        if m:
            value = resource
            if m.group(1) is not None:
                i = resource.find(m.group(1))
                value = resource[i + len(m.group(1)):] if i >= 0 else ""
            if not value.startswith(m.group(2)):
                return False
            continue
        return False
    return True


class IamChecks:
    """The authorization part of ``ComputeFake``; runs under its lock."""

    # ---- switches that act ------------------------------------------------------------------

    def mint_token(self, member: str) -> str:
        """A bearer token that identifies ``member`` (``serviceAccount:EMAIL``) to this fake."""
        token = f"ya29.fake-{self._rng.getrandbits(64):016x}"
        with self.lock:
            self.tokens[token] = member
        return token

    def _authorize(self, rpc: str, a: dict[str, str], headers: dict[str, str], body: bytes) -> None:
        """Refuse, as GCE does, a request whose identity lacks the permission (``iam`` set)."""
        if self.iam is None or rpc not in _PERMISSIONS:
            return
        p = a.get("project", "")
        if rpc.startswith("images.") and p in _PUBLIC_IMAGE_PROJECTS:
            return
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if auth:
            member = self.tokens.get(auth.removeprefix("Bearer ").strip())
            if member is None:
                raise ApiError(401, "authError", "Invalid Credentials")
        else:
            member = self.operator
        if "instance" in a:
            resource = f"projects/{p}/zones/{a.get('zone')}/instances/{a['instance']}"
        elif "zone" in a and rpc.startswith("instances."):
            name = ""
            if rpc == "instances.insert":
                try:
                    name = json.loads(body or b"{}").get("name", "")
                except ValueError:
                    name = ""
            elif rpc == "instances.bulkInsert":
                for other in _bulk_insert_names(body)[1:]:  # every VM's name must be allowed
                    self._authorize_one(p, member, rpc, f"projects/{p}/zones/{a['zone']}/instances/{other}")
                name = (_bulk_insert_names(body) or [""])[0]
            resource = f"projects/{p}/zones/{a['zone']}/instances/{name}"
        else:
            resource = f"projects/{p}"
        self._authorize_one(p, member, rpc, resource)
        if rpc in ("instances.insert", "instances.bulkInsert"):
            try:
                doc = json.loads(body or b"{}")
                if rpc == "instances.bulkInsert":
                    doc = doc.get("instanceProperties") or {}
                accounts = [sa.get("email", "") for sa in doc.get("serviceAccounts", [])]
            except (ValueError, AttributeError):
                accounts = []
            for email in accounts:
                if not self._allowed(p, member, "iam.serviceAccounts.actAs", f"projects/{p}"):
                    raise ApiError(403, "forbidden", f"The user does not have access to service "
                                   f"account '{email}'.  User: '{member.split(':', 1)[-1]}'.  Ask "
                                   "a project owner to grant you the iam.serviceAccountUser role "
                                   "on the service account")

    def _authorize_one(self, p: str, member: str, rpc: str, resource: str) -> None:
        permission = _PERMISSIONS[rpc]
        if not self._allowed(p, member, permission, resource):
            raise ApiError(403, "forbidden", f"Required '{permission}' permission for '{resource}'")

    def _allowed(self, project: str, member: str, permission: str, resource: str) -> bool:
        assert self.iam is not None
        try:
            policy = self.iam.policy(project)
        except KeyError:
            return False
        for b in policy.get("bindings") or []:
            if member not in (b.get("members") or []):
                continue
            cond = b.get("condition")
            if cond and not _condition_holds(str(cond.get("expression", "")), resource):
                continue
            perms = _ROLE_PERMISSIONS.get(b["role"])
            if perms is None:
                perms = self.iam.role_permissions(b["role"]) or frozenset()
            if any(permission == g or (g.endswith("*") and permission.startswith(g[:-1]))
                   for g in perms):
                return True
        return False


def _bulk_insert_names(body: bytes) -> list[str]:
    """The VM names a bulkInsert body gives (perInstanceProperties; a namePattern's are not
    known before the fake picks them, so only the given ones are checked)."""
    try:
        per = json.loads(body or b"{}").get("perInstanceProperties") or {}
    except (ValueError, AttributeError):
        return []
    return [(v or {}).get("name") or k for k, v in per.items()]
