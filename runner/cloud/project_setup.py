"""`runner init`: the one-time project setup a run needs, done idempotently.

Creates what is missing and leaves what exists: the bucket (uniform bucket-level access, in the
run region), a lifecycle rule that deletes Cloud Build's staged sources after a few days, the VM
service account, and the least-privilege roles it needs. Running it again changes nothing and
says so step by step ("exists", "already granted"), so it is safe in a setup script.

Least privilege: the store role (``roles/storage.objectAdmin``) is granted on the bucket, not the
project; only what has no narrower scope (writing logs and metrics, pulling images) is granted on
the project. A VM deletes itself when its job ends or its startup fails (``gcp/startup.sh``), so
its account also holds a custom role with the single permission ``compute.instances.delete``,
bound with an IAM condition to instances named ``runner-*``: it cannot create, start, read or
modify any VM, nor delete one that is not a runner VM. ("Itself" exactly would need an IAM
policy on every instance, set by whoever creates it; a condition cannot name the caller.)

The project IAM policy is changed by read-modify-write with its etag, retried when another
writer got there first (409 ABORTED), so concurrent edits are never lost.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from runner.config import Config
from runner.cloud.gcp_rest import AdminApis, ApiError, admin_apis
from runner.cloud.iam_grants import (BUCKET_ROLE, Step, ensure_bucket_role, ensure_project_roles, format_step,
                                     service_account_email)

# Where runner/build/image.py stages Cloud Build sources, at the root of the store's bucket.
STAGED_SOURCE_PREFIX = "cloudbuild/source/"
PROJECT_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter",
                 "roles/artifactregistry.reader")
SA_DISPLAY_NAME = "cos-spot-runner VMs"
SELF_DELETE_ROLE_ID = "cosSpotRunnerSelfDelete"
SELF_DELETE_PERMISSIONS = ("compute.instances.delete",)
# Instance names come from runner.naming.resource_name, whose prefix is "runner".
SELF_DELETE_CONDITION = {
    "title": "cos-spot-runner VMs only",
    "description": "A runner VM may delete runner VMs (itself, when its job is over), nothing else.",
    "expression": 'resource.type == "compute.googleapis.com/Instance" && '
                  'resource.name.extract("/instances/{name}").startsWith("runner-")',
}



def self_delete_role(project: str) -> str:
    """The full name of the custom role ``runner init`` creates for VMs to delete themselves."""
    return f"projects/{project}/roles/{SELF_DELETE_ROLE_ID}"


class SetupError(RuntimeError):
    """Setup cannot go on; the message says what to do."""


def init_project(
    cfg: Config,
    *,
    region: str,
    sa_name: str = "cos-spot-runner",
    staging_days: int = 7,
    hosted: bool = False,
    say: Callable[[str], None] = print,
    apis: AdminApis | None = None,
    storage_client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Step]:
    """Ensure bucket, lifecycle rule, service account and roles exist; returns what it did.

    Idempotent: a second run returns the same steps with ``changed=False``. Raises
    ``SetupError`` (nothing half-explained) when the config lacks a project or a gs:// store,
    or when the bucket name belongs to someone else. ``say`` gets one line per step as it ends.
    """
    from entrypoint.store_gcs import make_client, parse_gs_url

    if not cfg.project:
        raise SetupError("no GCP project: pass --project ID or set project in runner.toml")
    if not cfg.store or not cfg.store.startswith("gs://"):
        raise SetupError("init needs a gs:// store for runs: pass --store gs://BUCKET[/PREFIX] "
                         "or set store in runner.toml")
    if staging_days < 1:
        raise SetupError(f"staging_days must be at least 1, not {staging_days}")
    project = cfg.project
    bucket_name = parse_gs_url(cfg.store)[0]
    apis = apis if apis is not None else admin_apis(cfg)
    client = storage_client if storage_client is not None else make_client()
    email = service_account_email(project, sa_name)
    member = f"serviceAccount:{email}"

    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        say(format_step(step))

    bucket, step = ensure_bucket(client, bucket_name, project, region)
    record(step)
    record(ensure_lifecycle_rule(bucket, STAGED_SOURCE_PREFIX, staging_days))
    record(ensure_service_account(apis, project, sa_name))
    record(ensure_bucket_role(bucket, member, BUCKET_ROLE, sleep=sleep))
    record(ensure_self_delete_role(apis, project))
    record(ensure_project_roles(apis, project, member, PROJECT_ROLES, sleep=sleep,
                                conditional=((self_delete_role(project), SELF_DELETE_CONDITION),)))
    if cfg.service_account != email:
        say(f'next: set service_account = "{email}" in runner.toml so VMs run as it')
    if hosted:  # the hosted supervisor's own account and roles (runner/cloud/hosted_setup.py)
        from runner.cloud.hosted_setup import init_hosted

        steps += init_hosted(cfg if cfg.service_account else _with_vm_account(cfg, email), apis=apis,
                             bucket=bucket, say=say, sleep=sleep)
    return steps


def _with_vm_account(cfg: Config, email: str) -> Config:
    """The config as runs will have it once ``service_account`` names the account init made."""
    import dataclasses

    return dataclasses.replace(cfg, service_account=email)


def ensure_bucket(client: Any, name: str, project: str, region: str) -> tuple[Any, Step]:
    """The bucket, created with uniform bucket-level access in ``region`` when missing."""
    from google.api_core import exceptions as gexc

    gs = f"gs://{name}"
    bucket = client.bucket(name)
    try:
        bucket.reload()
        return bucket, Step(f"bucket {gs}", False, f"exists ({_bucket_notes(bucket, region)})")
    except gexc.NotFound:
        pass
    except gexc.Forbidden as e:
        raise SetupError(_not_ours(gs, project, e)) from None
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    try:
        bucket = client.create_bucket(bucket, project=project, location=region)
    except gexc.Conflict:  # created meanwhile (by us, fine) or a name taken by another project
        try:
            bucket = client.get_bucket(name)
        except gexc.Forbidden as e:
            raise SetupError(_not_ours(gs, project, e)) from None
        return bucket, Step(f"bucket {gs}", False, f"exists ({_bucket_notes(bucket, region)})")
    return bucket, Step(f"bucket {gs}", True,
                        f"created in {region.upper()} with uniform bucket-level access")


def _not_ours(gs: str, project: str, e: Exception) -> str:
    return (f"{gs} exists but this account cannot manage it ({getattr(e, 'message', e)}): bucket "
            f"names are global, so another project may own it; use another --store, or get "
            f"roles/storage.admin on it for the account running init in {project}")


def _bucket_notes(bucket: Any, region: str) -> str:
    notes = [f"location {bucket.location}"]
    if (bucket.location or "").upper() != region.upper():
        notes.append(f"not {region.upper()}: VMs there pay for cross-region traffic")
    if not bucket.iam_configuration.uniform_bucket_level_access_enabled:
        notes.append("uniform bucket-level access is off; turn it on with `gcloud storage buckets "
                     f"update gs://{bucket.name} --uniform-bucket-level-access` once no ACL is needed")
    return "; ".join(notes)


def ensure_lifecycle_rule(bucket: Any, prefix: str, days: int) -> Step:
    """A Delete rule for objects under ``prefix`` older than ``days``; other rules are kept.

    An existing Delete rule for exactly that prefix is reused (its age corrected if different)
    rather than duplicated.
    """
    name = f"lifecycle rule {prefix}"
    rules = [dict(r) for r in bucket.lifecycle_rules]
    for rule in rules:
        cond = rule.get("condition") or {}
        if (rule.get("action") or {}).get("type") == "Delete" and cond.get("matchesPrefix") == [prefix]:
            if cond.get("age") == days:
                return Step(name, False, f"exists (delete after {days} days)")
            old = cond.get("age")
            rule["condition"] = {**cond, "age": days}
            bucket.lifecycle_rules = rules
            bucket.patch(if_metageneration_match=bucket.metageneration)
            return Step(name, True, f"delete after {days} days (was {old})")
    rules.append({"action": {"type": "Delete"}, "condition": {"age": days, "matchesPrefix": [prefix]}})
    bucket.lifecycle_rules = rules
    bucket.patch(if_metageneration_match=bucket.metageneration)
    kept = f"; {len(rules) - 1} existing rule(s) kept" if len(rules) > 1 else ""
    return Step(name, True, f"added: delete staged sources after {days} days{kept}")


def ensure_service_account(apis: AdminApis, project: str, sa_name: str, display_name: str = SA_DISPLAY_NAME,
                           description: str = "Runs cos-spot-runner jobs on spot VMs") -> Step:
    email = service_account_email(project, sa_name)
    name = f"service account {email}"
    if apis.get_service_account(project, email) is not None:
        return Step(name, False, "exists")
    try:
        apis.create_service_account(project, sa_name, display_name, description)
    except ApiError as e:
        if e.code == 409:  # created by a concurrent init
            return Step(name, False, "exists")
        raise
    return Step(name, True, "created")


def ensure_self_delete_role(apis: AdminApis, project: str) -> Step:
    """The custom role that lets a VM delete itself exists with exactly its one permission."""
    name = f"custom role {SELF_DELETE_ROLE_ID}"
    want = sorted(SELF_DELETE_PERMISSIONS)
    role = apis.get_role(project, SELF_DELETE_ROLE_ID)
    if role is None:
        try:
            apis.create_role(project, SELF_DELETE_ROLE_ID, {
                "title": "cos-spot-runner VM self-delete",
                "description": "Lets a runner VM delete itself when its job is over.",
                "includedPermissions": want, "stage": "GA"})
            return Step(name, True, f"created with {', '.join(want)}")
        except ApiError as e:
            if e.code != 409:  # 409: created meanwhile by another init; check it below
                raise
            role = apis.get_role(project, SELF_DELETE_ROLE_ID) or {}
    if sorted(role.get("includedPermissions") or []) == want:
        return Step(name, False, f"exists with {', '.join(want)}")
    apis.update_role_permissions(project, SELF_DELETE_ROLE_ID, want)
    return Step(name, True, f"permissions set to {', '.join(want)}")
