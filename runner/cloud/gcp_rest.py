"""The Google admin APIs we call without a client library: Service Usage, Resource Manager, IAM.

Their Python clients are not among our dependencies, and we need three calls from each, so we
speak their documented v1 REST (``google.auth``'s ``AuthorizedSession``, already installed). An
``http://`` endpoint is a local stand-in (tests, an emulator): it gets anonymous credentials, so
no code path can look for, or send, real ones there.

Errors arrive as ``{"error": {"code", "message", "status", "details": [ErrorInfo...]}}``;
``ApiError`` keeps the parts product code decides on: the HTTP code, the canonical ``status``
(``PERMISSION_DENIED``, ``ABORTED``...), and the ``ErrorInfo`` reason and metadata, which is how
"the API you called is disabled" (``SERVICE_DISABLED``, ``metadata.service``) is told apart from
"you lack the permission".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

SERVICEUSAGE = "https://serviceusage.googleapis.com"
RESOURCEMANAGER = "https://cloudresourcemanager.googleapis.com"
IAM = "https://iam.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_RETRYABLE = {429, 500, 502, 503, 504}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@dataclass
class ApiError(Exception):
    """A non-2xx answer from a Google REST API, parsed from its JSON error body."""

    code: int
    status: str
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.status or 'error'}: {self.message}"

    @property
    def disabled_service(self) -> str | None:
        """The API that must be enabled for the call to work, when that is the error."""
        if self.reason == "SERVICE_DISABLED":
            return self.metadata.get("service") or "the API"
        return None


def _error(status_code: int, text: str) -> ApiError:
    import json

    try:
        err = json.loads(text).get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    info = next((d for d in err.get("details") or [] if isinstance(d, dict)
                 and d.get("@type") == _ERROR_INFO), {})
    return ApiError(code=int(err.get("code") or status_code), status=str(err.get("status") or ""),
                    message=str(err.get("message") or text[:300]), reason=str(info.get("reason") or ""),
                    metadata=dict(info.get("metadata") or {}))


class RestApi:
    """JSON over HTTP to one API's base URL; 429/5xx are retried, anything else raises ApiError."""

    def __init__(self, base: str, session: Any, attempts: int = 4, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.session = session
        self.attempts = attempts
        self.timeout = timeout

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", path, json=body, params=params)

    def patch(self, path: str, body: dict[str, Any], params: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        return self._call("PATCH", path, json=body, params=params)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        delay = 0.5
        for attempt in range(self.attempts):
            resp = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
            if resp.status_code < 400:
                return resp.json() if resp.content else {}
            if resp.status_code not in _RETRYABLE or attempt == self.attempts - 1:
                raise _error(resp.status_code, resp.text)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


def rest_api(endpoint: str | None, default: str, credentials: Any = None) -> RestApi:
    """A ``RestApi`` on ``endpoint`` (else ``default``), with ADC unless the endpoint is http://."""
    from google.auth.transport.requests import AuthorizedSession

    base = endpoint or default
    if base.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    elif credentials is None:
        import google.auth

        credentials, _ = google.auth.default(scopes=_SCOPES)
    return RestApi(base, AuthorizedSession(credentials))


@dataclass
class AdminApis:
    """The three admin APIs, with the handful of calls the runner makes on each."""

    serviceusage: RestApi
    resourcemanager: RestApi
    iam: RestApi

    def service_state(self, project: str, service: str) -> str:
        """``ENABLED`` or ``DISABLED`` (Service Usage ``services.get``)."""
        got = self.serviceusage.get(f"/v1/projects/{quote(project)}/services/{quote(service)}")
        return str(got.get("state") or "STATE_UNSPECIFIED")

    def project_number(self, project: str) -> str:
        return str(self.resourcemanager.get(f"/v1/projects/{quote(project)}")["projectNumber"])

    def get_iam_policy(self, project: str) -> dict[str, Any]:
        return self.resourcemanager.post(f"/v1/projects/{quote(project)}:getIamPolicy",
                                         {"options": {"requestedPolicyVersion": 3}})

    def set_iam_policy(self, project: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Write ``policy``; its ``etag`` makes a concurrent change fail with 409 ABORTED."""
        return self.resourcemanager.post(f"/v1/projects/{quote(project)}:setIamPolicy",
                                         {"policy": policy, "updateMask": "bindings,etag"})

    def get_service_account(self, project: str, email: str) -> dict[str, Any] | None:
        """The service account, or None when it does not exist."""
        try:
            return self.iam.get(f"/v1/projects/{quote(project)}/serviceAccounts/{quote(email)}")
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def create_service_account(self, project: str, account_id: str, display_name: str,
                               description: str = "") -> dict[str, Any]:
        return self.iam.post(f"/v1/projects/{quote(project)}/serviceAccounts", {
            "accountId": account_id,
            "serviceAccount": {"displayName": display_name, "description": description},
        })

    def get_role(self, project: str, role_id: str) -> dict[str, Any] | None:
        """The project's custom role ``role_id``, or None when it does not exist."""
        try:
            return self.iam.get(f"/v1/projects/{quote(project)}/roles/{quote(role_id)}")
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def create_role(self, project: str, role_id: str, role: dict[str, Any]) -> dict[str, Any]:
        return self.iam.post(f"/v1/projects/{quote(project)}/roles", {"roleId": role_id, "role": role})

    def update_role_permissions(self, project: str, role_id: str, permissions: list[str]
                                ) -> dict[str, Any]:
        return self.iam.patch(f"/v1/projects/{quote(project)}/roles/{quote(role_id)}",
                              {"includedPermissions": permissions},
                              params={"updateMask": "includedPermissions"})


def admin_apis(cfg: Any, credentials: Any = None) -> AdminApis:
    """The admin APIs at the configured endpoints (``*_endpoint`` keys), else Google's."""
    endpoints = (cfg.serviceusage_endpoint, cfg.resourcemanager_endpoint, cfg.iam_endpoint)
    if credentials is None and not all(e and e.startswith("http://") for e in endpoints):
        import google.auth

        credentials, _ = google.auth.default(scopes=_SCOPES)  # once, not once per API
        # User ADC without a quota project is billed to gcloud's own project, where these
        # APIs answer SERVICE_DISABLED; bill the project being set up instead, as gcloud does.
        from google.oauth2.credentials import Credentials as UserCredentials

        if cfg.project and isinstance(credentials, UserCredentials) and not credentials.quota_project_id:
            credentials = credentials.with_quota_project(cfg.project)
    return AdminApis(
        serviceusage=rest_api(cfg.serviceusage_endpoint, SERVICEUSAGE, credentials),
        resourcemanager=rest_api(cfg.resourcemanager_endpoint, RESOURCEMANAGER, credentials),
        iam=rest_api(cfg.iam_endpoint, IAM, credentials),
    )


def member_conditional_roles(policy: dict[str, Any], member: str) -> dict[str, list[str]]:
    """role -> the condition expressions under which ``member`` holds it (conditional only)."""
    out: dict[str, list[str]] = {}
    for b in policy.get("bindings") or []:
        if member in (b.get("members") or []) and b.get("condition"):
            out.setdefault(b["role"], []).append(str(b["condition"].get("expression", "")))
    return out


def member_roles(policy: dict[str, Any], member: str) -> set[str]:
    """The roles ``member`` holds directly in ``policy`` (conditional bindings excluded)."""
    return {b["role"] for b in policy.get("bindings") or []
            if member in (b.get("members") or []) and not b.get("condition")}
