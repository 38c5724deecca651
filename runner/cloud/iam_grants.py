"""Idempotent grants and the step they report: the building blocks ``init`` and the hosted
supervisor's setup share.

Apart from ``project_setup`` so that ``hosted_setup`` (which ``init --hosted`` calls) and ``hosted``
need not import the module that calls them: no import circle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from runner.cloud.gcp_rest import AdminApis, ApiError, member_roles

BUCKET_ROLE = "roles/storage.objectAdmin"
_POLICY_ATTEMPTS = 6


@dataclass(frozen=True)
class Step:
    """One thing init ensured: ``changed`` is False when it was already so."""

    name: str
    changed: bool
    detail: str


def format_step(step: Step) -> str:
    return f"{'+' if step.changed else '✓'} {step.name}: {step.detail}"


def service_account_email(project: str, sa_name: str) -> str:
    return f"{sa_name}@{project}.iam.gserviceaccount.com"


def not_yet_visible(e: Exception) -> bool:
    """A service account created seconds ago is not yet known to IAM policies (400)."""
    return getattr(e, "code", None) == 400 and "does not exist" in str(e)


def ensure_bucket_role(bucket: Any, member: str, role: str, *,
                       sleep: Callable[[float], None] = time.sleep) -> Step:
    """``member`` holds ``role`` on the bucket (its IAM policy, written with its etag)."""
    from google.api_core import exceptions as gexc

    name = f"{role} on gs://{bucket.name}"
    delay = 1.0
    for attempt in range(_POLICY_ATTEMPTS):
        policy = bucket.get_iam_policy(requested_policy_version=3)
        if any(b["role"] == role and member in b.get("members", ()) and not b.get("condition")
               for b in policy.bindings):
            return Step(name, False, f"already granted to {member}")
        binding = next((b for b in policy.bindings if b["role"] == role and not b.get("condition")), None)
        if binding is None:
            policy.bindings.append({"role": role, "members": {member}})
        else:
            binding["members"] = set(binding.get("members", ())) | {member}
        try:
            bucket.set_iam_policy(policy)
            return Step(name, True, f"granted to {member}")
        except (gexc.PreconditionFailed, gexc.Conflict, gexc.BadRequest) as e:
            retry = not isinstance(e, gexc.BadRequest) or not_yet_visible(e)
            if not retry or attempt == _POLICY_ATTEMPTS - 1:
                raise
        sleep(delay)
        delay = min(delay * 2, 16.0)
    raise AssertionError("unreachable")


def ensure_project_roles(apis: AdminApis, project: str, member: str, roles: tuple[str, ...], *,
                         sleep: Callable[[float], None] = time.sleep,
                         conditional: tuple[tuple[str, dict[str, str]], ...] = ()) -> Step:
    """``member`` holds every role in ``roles`` (and each of ``conditional``'s roles under its
    condition) on the project; one policy write adds all missing.

    Read-modify-write with the policy's etag: when someone else wrote in between, the write fails
    with 409 ABORTED and the whole cycle is redone on the fresh policy, keeping their change. A
    conditional binding is one role under one condition, and a policy holding one must be
    written as version 3, or Resource Manager refuses it.
    """
    name = f"project roles in {project}"
    wanted = [*roles, *(f"{r} (if {c['title']!r})" for r, c in conditional)]
    delay = 1.0
    for attempt in range(_POLICY_ATTEMPTS):
        policy = apis.get_iam_policy(project)
        bindings = policy.setdefault("bindings", [])
        added = []
        for role, cond in [*((r, None) for r in roles), *conditional]:
            expr = cond["expression"] if cond else None

            def same(b: dict[str, Any]) -> bool:
                return b.get("role") == role and (b.get("condition") or {}).get("expression") == expr

            if any(same(b) and member in (b.get("members") or []) for b in bindings):
                continue
            binding = next((b for b in bindings if same(b)), None)
            if binding is None:
                binding = {"role": role, "members": []}
                if cond:
                    binding["condition"] = dict(cond)
                bindings.append(binding)
            binding["members"] = [*(binding.get("members") or []), member]
            added.append(role if cond is None else f"{role} (if {cond['title']!r})")
        if not added:
            return Step(name, False, f"already granted to {member}: {', '.join(wanted)}")
        if conditional or any(b.get("condition") for b in bindings):
            policy["version"] = 3
        try:
            apis.set_iam_policy(project, policy)
            return Step(name, True, f"granted to {member}: {', '.join(added)}")
        except ApiError as e:
            retry = e.code == 409 or not_yet_visible(e)
            if not retry or attempt == _POLICY_ATTEMPTS - 1:
                raise
        sleep(delay)
        delay = min(delay * 2, 16.0)
    raise AssertionError("unreachable")


def grant_in_policy(read: Callable[[], dict[str, Any]], write: Callable[[dict[str, Any]], Any], role: str,
                    member: str, sleep: Callable[[float], None] = time.sleep) -> bool:
    """``member`` holds ``role`` (unconditionally) in the resource IAM policy that ``read`` returns
    and ``write`` sets: read-modify-write with the policy's etag, redone when another writer got
    there first (409) or a new account is not yet visible. Returns False when it was already so.
    One loop for every resource policy (a Cloud Run job, a service account, a repository)."""
    delay = 1.0
    for attempt in range(_POLICY_ATTEMPTS):
        policy = read()
        bindings = policy.setdefault("bindings", [])
        if role in member_roles(policy, member):
            return False
        binding = next((b for b in bindings if b.get("role") == role and not b.get("condition")), None)
        if binding is None:
            bindings.append({"role": role, "members": [member]})
        else:
            binding["members"] = [*(binding.get("members") or []), member]
        try:
            write(policy)
            return True
        except ApiError as e:
            if not (e.code == 409 or not_yet_visible(e)) or attempt == _POLICY_ATTEMPTS - 1:
                raise
        sleep(delay)
        delay = min(delay * 2, 16.0)
    raise AssertionError("unreachable")
