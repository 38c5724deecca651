"""A loopback fake of the admin APIs `runner doctor` and `runner init` call over REST.

One server answers the v1 paths of three APIs (they do not overlap, so one port serves all):

- Service Usage: ``GET /v1/projects/P/services/NAME`` → ``{name, parent, state, config}``.
- Cloud Resource Manager: ``GET /v1/projects/P`` → ``{projectId, projectNumber, ...}``;
  ``POST /v1/projects/P:getIamPolicy`` and ``:setIamPolicy`` with etags: a set whose ``etag`` is
  not the current one fails with 409 ``ABORTED``, as the real API does on concurrent changes.
  ``POST /v1/projects/P:getEffectiveOrgPolicy`` → the v1 ``Policy`` of ``org_policies`` (e.g.
  ``listPolicy.allValues: DENY`` for ``constraints/compute.vmExternalIpAccess``), which the Compute
  fake also enforces when this fake is its ``iam``.
- IAM: ``GET /v1/projects/P/serviceAccounts/EMAIL`` (404 when missing) and
  ``POST /v1/projects/P/serviceAccounts`` (409 ``ALREADY_EXISTS`` when present); custom roles:
  ``GET /v1/projects/P/roles/ID``, ``POST /v1/projects/P/roles`` (``roleId`` + ``role``, 409
  when it exists) and ``PATCH`` with ``updateMask`` (IAM ``projects.roles`` reference).

A binding with a ``condition`` is accepted only in a policy of ``version`` 3, as Resource
Manager requires ("Policy versions", IAM docs); ``role_permissions`` tells the Compute fake what
a custom role includes, so the two fakes enforce one policy.

Errors have the real shape, ``{"error": {code, message, status, details: [ErrorInfo]}}``. The
services map is also the switch for "API disabled": when a project's
``serviceusage.googleapis.com`` (or ``iam.googleapis.com``, ``cloudresourcemanager...``) is
``DISABLED``, calls to that API answer 403 ``SERVICE_DISABLED`` naming it, as Google does.
Other switches: ``deny`` (rpc names answering 403 ``PERMISSION_DENIED``), ``race_next_sets``
(that many setIamPolicy calls lose a race with another writer, who adds a binding first) and
``propagation_sets`` (that many setIamPolicy calls naming a service account created since the
last successful set answer 400 "does not exist", as IAM does for a few seconds after creation).
A policy naming a service account of the project that was never created is always refused.
Unknown paths answer 501 so gaps are loud.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import unquote

import pytest

from tests.standins.google_api import GoogleApiError, RoutedApi
from tests.standins.json_http_server import serve

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
DEFAULT_ENABLED = ("compute.googleapis.com", "storage.googleapis.com", "cloudbuild.googleapis.com",
                   "artifactregistry.googleapis.com", "serviceusage.googleapis.com",
                   "cloudresourcemanager.googleapis.com", "iam.googleapis.com",
                   "logging.googleapis.com")
# Which API serves each rpc: a disabled API fails its own calls with SERVICE_DISABLED.
_API_OF = {"serviceusage": "serviceusage.googleapis.com",
           "resourcemanager": "cloudresourcemanager.googleapis.com",
           "iam": "iam.googleapis.com"}
# A stand-in for another writer's change, used by race_next_sets.
RACING_BINDING = {"role": "roles/viewer", "members": ["user:someone-else@example.com"]}

_P = r"/v1/projects/(?P<project>[^/:]+)"
_ROUTES = [
    ("GET", _P + r"/services/(?P<service>[^/]+)", "serviceusage.services.get"),
    ("GET", _P, "resourcemanager.projects.get"),
    ("POST", _P + r":getIamPolicy", "resourcemanager.projects.getIamPolicy"),
    ("POST", _P + r":setIamPolicy", "resourcemanager.projects.setIamPolicy"),
    ("POST", _P + r":getEffectiveOrgPolicy", "resourcemanager.projects.getEffectiveOrgPolicy"),
    ("GET", _P + r"/serviceAccounts/(?P<email>[^/]+)", "iam.serviceAccounts.get"),
    ("POST", _P + r"/serviceAccounts", "iam.serviceAccounts.create"),
    ("GET", _P + r"/roles/(?P<role>[^/]+)", "iam.roles.get"),
    ("POST", _P + r"/roles", "iam.roles.create"),
    ("PATCH", _P + r"/roles/(?P<role>[^/]+)", "iam.roles.patch"),
    # A service account's own policy (who may act as it): POST .../serviceAccounts/EMAIL:getIamPolicy
    ("POST", _P + r"/serviceAccounts/(?P<email>[^/:]+):getIamPolicy", "iam.serviceAccounts.getIamPolicy"),
    ("POST", _P + r"/serviceAccounts/(?P<email>[^/:]+):setIamPolicy", "iam.serviceAccounts.setIamPolicy"),
]


class FakeApiError(GoogleApiError):
    """The AIP-193 error the admin APIs send: ``status``, and an ``ErrorInfo`` when there is a reason."""

    def __init__(self, code: int, status: str, message: str, reason: str = "",
                 domain: str = "googleapis.com", metadata: dict[str, str] | None = None) -> None:
        self.reason, self.domain, self.metadata = reason, domain, metadata or {}
        super().__init__(code, message, status=status, summary=message, details=[
            {"@type": ERROR_INFO, "reason": reason, "domain": domain, "metadata": self.metadata}] if reason else None)


def disabled_api_error(title: str, api: str, project_number: int) -> FakeApiError:
    """What any Google API answers when it is not enabled in the caller's project."""
    return FakeApiError(
        403, "PERMISSION_DENIED",
        f"{title} has not been used in project {project_number} before or it is disabled. Enable it by "
        f"visiting https://console.developers.google.com/apis/api/{api}/overview?project={project_number} "
        "then retry. If you enabled this API recently, wait a few minutes for the action to propagate "
        "to our systems and retry.",
        "SERVICE_DISABLED", metadata={"service": api, "consumer": f"projects/{project_number}"})


@dataclass
class Request:
    method: str
    path: str
    rpc: str
    body: Any
    status: int


@dataclass
class _Project:
    number: str
    services: dict[str, str]
    policy: dict[str, Any]
    service_accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom roles, by role id


class GcpAdminFake(RoutedApi):
    """State and switches of the fake; served over HTTP by ``run_gcp_admin_fake``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.projects: dict[str, _Project] = {}
        self.deny: set[str] = set()
        self.race_next_sets = 0
        self.propagation_sets = 0
        self._fresh_accounts: set[str] = set()
        self.endpoint = ""
        self.internal_errors: list[str] = []
        self._requests: list[Request] = []
        self._numbers = itertools.count(123456789012)
        self._etags = itertools.count(1)
        self.sa_policies: dict[str, _PolicyHolder] = {}  # service account email -> its own policy
        # (project, constraint) -> the v1 organisation Policy in effect there (set_org_policy); a
        # constraint with none answers {"constraint": C}, its default (Resource Manager v1
        # projects.getEffectiveOrgPolicy: "the result of merging Policies in the resource hierarchy").
        self.org_policies: dict[tuple[str, str], dict[str, Any]] = {}

    # ---- setup and inspection ---------------------------------------------------------------

    def add_project(self, project: str, *, enabled: tuple[str, ...] = DEFAULT_ENABLED,
                    bindings: list[dict[str, Any]] | None = None) -> str:
        """Create ``project`` with ``enabled`` services and a policy; returns its number."""
        with self.lock:
            number = str(next(self._numbers))
            policy = {"version": 1, "etag": self._etag(), "bindings": copy.deepcopy(bindings or [])}
            self.projects[project] = _Project(number, {s: "ENABLED" for s in enabled}, policy)
            return number

    def set_org_policy(self, project: str, constraint: str, policy: dict[str, Any]) -> None:
        """The organisation policy in effect in ``project`` for ``constraint`` (v1 ``Policy``
        fields: ``listPolicy``, ``booleanPolicy``)."""
        with self.lock:
            self.org_policies[(project, constraint)] = copy.deepcopy(policy)

    def grant(self, project: str, member: str, role: str) -> None:
        """Add ``member`` to ``role`` in the project policy, as a console edit would (new etag)."""
        with self.lock:
            policy = self.projects[project].policy
            binding = next((b for b in policy["bindings"] if b["role"] == role), None)
            if binding is None:
                policy["bindings"].append({"role": role, "members": [member]})
            elif member not in binding["members"]:
                binding["members"].append(member)
            policy["etag"] = self._etag()

    def set_service(self, project: str, service: str, state: str) -> None:
        with self.lock:
            self.projects[project].services[service] = state

    def policy(self, project: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.projects[project].policy)

    def service_accounts(self, project: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.projects[project].service_accounts)

    def add_service_account(self, project: str, account_id: str) -> str:
        with self.lock:
            sa = self._new_sa(project, account_id, account_id, "")
            return str(sa["email"])

    def add_role(self, project: str, role_id: str, permissions: list[str]) -> str:
        """Create custom role ``role_id`` (as a console edit would); returns its name."""
        with self.lock:
            name = f"projects/{project}/roles/{role_id}"
            self.projects[project].roles[role_id] = {
                "name": name, "title": role_id, "includedPermissions": sorted(permissions),
                "stage": "GA", "etag": self._etag()}
            return name

    def delete_role(self, project: str, role_id: str) -> None:
        with self.lock:
            del self.projects[project].roles[role_id]

    def role_permissions(self, role: str) -> frozenset[str] | None:
        """The permissions of custom role ``projects/P/roles/ID``; None if it is not one."""
        m = re.fullmatch(r"projects/([^/]+)/roles/([^/]+)", role)
        with self.lock:
            proj = self.projects.get(m.group(1)) if m else None
            got = proj.roles.get(m.group(2)) if proj and m else None
            if got is None or got.get("deleted"):
                return None
            return frozenset(got.get("includedPermissions") or [])

    def calls(self, rpc: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self._requests if rpc is None or r.rpc == rpc]

    # ---- HTTP --------------------------------------------------------------------------------

    # ---- one request (the template is tests/standins/google_api.py's RoutedApi.handle) -------

    def request_path(self, raw: str) -> str:
        return raw  # routed as sent: path arguments are unquoted one by one (``_route``)

    def find_route(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        rpc, args = self._route(method, path)
        return None if rpc is None else (rpc, args)

    def not_implemented(self, method: str, path: str) -> FakeApiError:
        return FakeApiError(501, "UNIMPLEMENTED", f"admin fake: {method} {path} is not implemented")

    def crashed(self, e: Exception) -> FakeApiError:
        return FakeApiError(500, "INTERNAL", repr(e))

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> str:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return json.dumps(self._dispatch(rpc, args, parsed))

    def record(self, method: str, path: str, query: dict[str, str], body: Any, started: float, rpc: str,
               status: int, headers: dict[str, str]) -> None:
        self._requests.append(Request(method, path, rpc, body, status))

    @staticmethod
    def _route(method: str, path: str) -> tuple[str | None, dict[str, str]]:
        for verb, pattern, rpc in _ROUTES:
            m = re.fullmatch(pattern, path)
            if verb == method and m:
                return rpc, {k: unquote(v) for k, v in m.groupdict().items()}
        return None, {}

    def _dispatch(self, rpc: str, a: dict[str, str], body: Any) -> Any:
        proj = self.projects.get(a["project"])
        if proj is None:  # Google answers 403, not 404, so as not to reveal which projects exist
            raise FakeApiError(403, "PERMISSION_DENIED",
                               f"The caller does not have permission (project {a['project']})",
                               "IAM_PERMISSION_DENIED")
        api = _API_OF[rpc.split(".", 1)[0]]
        if proj.services.get(api, "DISABLED") != "ENABLED":
            raise FakeApiError(
                403, "PERMISSION_DENIED",
                f"{api} has not been used in project {proj.number} before or it is disabled. "
                f"Enable it by visiting https://console.developers.google.com/apis/api/{api}/overview"
                f"?project={proj.number} then retry.",
                "SERVICE_DISABLED", metadata={"service": api, "consumer": f"projects/{proj.number}"})
        if rpc in self.deny:
            raise FakeApiError(403, "PERMISSION_DENIED",
                               f"Permission '{rpc}' denied on resource (or it may not exist).",
                               "IAM_PERMISSION_DENIED", domain="iam.googleapis.com",
                               metadata={"permission": rpc})
        p = a["project"]
        if rpc == "serviceusage.services.get":
            name = a["service"]
            return {"name": f"projects/{proj.number}/services/{name}", "parent": f"projects/{proj.number}",
                    "config": {"name": name}, "state": proj.services.get(name, "DISABLED")}
        if rpc == "resourcemanager.projects.get":
            return {"projectNumber": proj.number, "projectId": p, "lifecycleState": "ACTIVE",
                    "name": p, "createTime": "2024-01-01T00:00:00.000Z"}
        if rpc == "resourcemanager.projects.getEffectiveOrgPolicy":
            constraint = str((body or {}).get("constraint") or "")
            return {"constraint": constraint, **self.org_policies.get((p, constraint), {})}
        if rpc == "resourcemanager.projects.getIamPolicy":
            return proj.policy
        if rpc == "resourcemanager.projects.setIamPolicy":
            return self._set_policy(proj, (body or {}).get("policy") or {})
        if rpc == "iam.serviceAccounts.get":
            sa = proj.service_accounts.get(a["email"])
            if sa is None:
                raise FakeApiError(404, "NOT_FOUND", f"Unknown service account {a['email']}")
            return sa
        if rpc in ("iam.serviceAccounts.getIamPolicy", "iam.serviceAccounts.setIamPolicy"):
            if a["email"] not in proj.service_accounts:
                raise FakeApiError(404, "NOT_FOUND", f"Unknown service account {a['email']}")
            holder = self.sa_policies.setdefault(a["email"], _PolicyHolder({"version": 1, "etag": self._etag()}))
            if rpc.endswith("getIamPolicy"):
                return holder.policy
            return self._set_policy(holder, (body or {}).get("policy") or {})  # type: ignore[arg-type]
        if rpc == "iam.serviceAccounts.create":
            body = body or {}
            account_id = body.get("accountId", "")
            if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", account_id):
                raise FakeApiError(400, "INVALID_ARGUMENT", f"Invalid accountId {account_id!r}")
            info = body.get("serviceAccount") or {}
            return self._new_sa(p, account_id, info.get("displayName", ""), info.get("description", ""))
        if rpc == "iam.roles.get":
            role = proj.roles.get(a["role"])
            if role is None:
                raise FakeApiError(404, "NOT_FOUND", f"The role named projects/{p}/roles/{a['role']} "
                                   "was not found.")
            return role
        if rpc == "iam.roles.create":
            body = body or {}
            role_id = body.get("roleId", "")
            if not re.fullmatch(r"[a-zA-Z0-9_.]{3,64}", role_id):
                raise FakeApiError(400, "INVALID_ARGUMENT", f"Invalid roleId {role_id!r}")
            if role_id in proj.roles:
                raise FakeApiError(409, "ALREADY_EXISTS", f"A role named {role_id} in projects/{p} "
                                   "already exists.")
            info = body.get("role") or {}
            proj.roles[role_id] = {"name": f"projects/{p}/roles/{role_id}",
                                   "title": info.get("title", ""),
                                   "description": info.get("description", ""),
                                   "includedPermissions": sorted(info.get("includedPermissions") or []),
                                   "stage": info.get("stage", "GA"), "etag": self._etag()}
            return proj.roles[role_id]
        if rpc == "iam.roles.patch":
            role = proj.roles.get(a["role"])
            if role is None:
                raise FakeApiError(404, "NOT_FOUND", f"The role named projects/{p}/roles/{a['role']} "
                                   "was not found.")
            for key in ("title", "description", "includedPermissions", "stage"):
                if key in (body or {}):
                    role[key] = sorted(body[key]) if key == "includedPermissions" else body[key]
            role["etag"] = self._etag()
            return role
        raise FakeApiError(501, "UNIMPLEMENTED", rpc)

    def _set_policy(self, proj: _Project, policy: dict[str, Any]) -> dict[str, Any]:
        if self.race_next_sets > 0:
            self.race_next_sets -= 1
            proj.policy["bindings"].append(copy.deepcopy(RACING_BINDING))
            proj.policy["etag"] = self._etag()
        if policy.get("etag") and policy["etag"] != proj.policy["etag"]:
            raise FakeApiError(409, "ABORTED", "There were concurrent policy changes. Please retry "
                               "the whole read-modify-write with exponential backoff.")
        for b in policy.get("bindings") or []:
            if b.get("condition") and policy.get("version", 1) < 3:
                raise FakeApiError(400, "INVALID_ARGUMENT", "Policies with conditional role "
                                   "bindings must set version 3.")
            if not b.get("members"):
                raise FakeApiError(400, "INVALID_ARGUMENT", f"binding for {b.get('role')} has no members")
            for m in b["members"]:
                email = m.removeprefix("serviceAccount:")
                fresh = email in self._fresh_accounts and self.propagation_sets > 0
                unknown = email.endswith(".iam.gserviceaccount.com") and not any(
                    email in p.service_accounts for p in self.projects.values())
                if m.startswith("serviceAccount:") and (fresh or unknown):
                    self.propagation_sets -= fresh
                    raise FakeApiError(400, "INVALID_ARGUMENT", f"Service account {email} does not exist.")
        self._fresh_accounts.clear()
        proj.policy = {"version": policy.get("version", 1), "etag": self._etag(),
                       "bindings": copy.deepcopy(policy.get("bindings") or [])}
        return proj.policy

    def _new_sa(self, project: str, account_id: str, display: str, description: str) -> dict[str, Any]:
        proj = self.projects[project]
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in proj.service_accounts:
            raise FakeApiError(409, "ALREADY_EXISTS",
                               f"Service account {account_id} already exists within project projects/{project}.")
        uid = str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))
        sa = {"name": f"projects/{project}/serviceAccounts/{email}", "projectId": project,
              "uniqueId": uid, "email": email, "displayName": display, "description": description,
              "etag": "MDEwMjE5MjA=", "oauth2ClientId": uid}
        proj.service_accounts[email] = sa
        self._fresh_accounts.add(email)
        return sa

    def _etag(self) -> str:
        return f"BwY{next(self._etags):08d}="


@dataclass
class _PolicyHolder:
    """A resource's policy, shaped like ``_Project`` for ``_set_policy``."""

    policy: dict[str, Any]


@pytest.fixture
def gcp_admin_fake() -> Iterator[GcpAdminFake]:
    """A fresh fake per test; fails the test if the fake itself crashed."""
    fake = GcpAdminFake()
    with serve(fake, "gcp-admin-fake") as endpoint:
        fake.endpoint = endpoint
        yield fake
    if fake.internal_errors:
        pytest.fail(f"the admin fake crashed: {fake.internal_errors}")
