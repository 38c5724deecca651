"""``runner init --hosted`` and its ``runner doctor`` check: the hosted supervisor's identity.

The supervisor's service account gets exactly what one pass does, each on the narrowest scope
that has it:

- ``roles/compute.instanceAdmin.v1`` on the project: list, create, start and delete the runs'
  instances (instances have no narrower IAM scope that covers creating them);
- ``roles/storage.objectAdmin`` on the run bucket only: read and write run records;
- ``roles/iam.serviceAccountUser`` on the VM service account only: create VMs that run as it;
- ``roles/secretmanager.secretAccessor`` on the webhook secret only, when ``webhook_secret`` is set
  (IAM is on the secret: a ``webhook_secret`` naming a version is granted on its secret).

The schedule calls the job with this same account's OAuth token; ``supervise --deploy`` makes it
``roles/run.invoker`` on the one job (runner/cloud/hosted.py), so it needs nothing on Cloud Run here.

The runs' VM account gets ``roles/run.invoker`` on that one job too (in ``once`` mode): a preempted
VM's shutdown script asks for a pass at once (gcp/shutdown.sh) instead of leaving the run to the
next scheduled minute. Job IAM needs the job: when it is not deployed yet, ``supervise --deploy``
grants it (and this says so).
"""

from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import quote

from runner.config import Config
from runner.cloud.gcp_rest import AdminApis, ApiError, member_roles
from runner.cloud.gcp_clients import api_errors, api_retry, retry_exhausted_text
from runner.cloud.hosted import SUPERVISOR_SA_NAME, supervisor_email
from runner.cloud.iam_grants import (BUCKET_ROLE, Step, ensure_bucket_role, ensure_project_roles, format_step,
                                     grant_in_policy, service_account_email)

PROJECT_ROLES = ("roles/compute.instanceAdmin.v1",)
ACT_AS_ROLE = "roles/iam.serviceAccountUser"
HOSTED_APIS = ("run.googleapis.com", "cloudscheduler.googleapis.com")
SECRET_ROLE = "roles/secretmanager.secretAccessor"
# Broader roles that also grant each of the above (what doctor accepts).
GRANTED_BY = {
    "roles/compute.instanceAdmin.v1": {"roles/compute.instanceAdmin.v1", "roles/compute.admin", "roles/editor",
                                       "roles/owner"},
    BUCKET_ROLE: {BUCKET_ROLE, "roles/storage.admin", "roles/editor", "roles/owner"},
    # Not roles/iam.serviceAccountAdmin: it manages accounts but lacks iam.serviceAccounts.actAs.
    ACT_AS_ROLE: {ACT_AS_ROLE, "roles/editor", "roles/owner"},
    SECRET_ROLE: {SECRET_ROLE, "roles/secretmanager.admin", "roles/owner"},
}


def vm_service_account(cfg: Config, apis: AdminApis) -> str:
    """The account the runs' VMs use: the configured one, else the Compute default."""
    if cfg.service_account:
        return cfg.service_account
    return f"{apis.project_number(cfg.project or '')}-compute@developer.gserviceaccount.com"


def init_hosted(cfg: Config, *, apis: AdminApis, bucket: Any, say: Callable[[str], None],
                sleep: Callable[[float], None] = time.sleep) -> list[Step]:
    """Create the supervisor's service account and grant it what a pass needs; idempotent."""
    project = cfg.project or ""
    email = supervisor_email(project)
    member = f"serviceAccount:{email}"
    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        say(format_step(step))

    record(_ensure_account(apis, project, email))
    record(ensure_project_roles(apis, project, member, PROJECT_ROLES, sleep=sleep))
    record(ensure_bucket_role(bucket, member, BUCKET_ROLE, sleep=sleep))
    vm = vm_service_account(cfg, apis)
    record(ensure_act_as(apis, project, vm, member, sleep=sleep))
    vm_step = vm_may_ask_for_a_pass(cfg, vm)
    if vm_step is not None:
        record(vm_step)
    if cfg.webhook_secret:
        record(ensure_secret_access(cfg, member, sleep=sleep))
    say(f"next: runner supervise --deploy   (the job runs as {email})")
    return steps


def vm_may_ask_for_a_pass(cfg: Config, vm_email: str) -> Step | None:
    """``roles/run.invoker`` on the hosted job for the runs' VM account (None: ``loop`` mode, or no
    region to name the job in, where VMs never ask). Before the first deploy there is no job to
    grant on: the step says that deploy grants it."""
    from google.api_core import exceptions as gexc

    from runner.cloud.hosted import HostedError, JOB_ID, ensure_vm_invoker, job_clients, target

    try:
        t = target(cfg, need_image=False)
    except HostedError:
        return None
    if t.mode != "once":
        return None
    name = f"roles/run.invoker on {JOB_ID} for {vm_email}"
    try:
        clients = job_clients(cfg)
        clients.jobs.get_job(name=t.job_name, retry=api_retry())  # job IAM needs the job
        return ensure_vm_invoker(t, clients, vm_email)
    except gexc.NotFound:
        return Step(name, False, "the job is not deployed yet; `runner supervise --deploy` grants it")
    except (*api_errors(), HostedError) as e:  # e.g. the Cloud Run API not enabled yet, or down
        why = f"reading the Cloud Run job: {retry_exhausted_text(e)}" if isinstance(e, gexc.RetryError) else e
        return Step(name, False, f"not granted ({why}); `runner supervise --deploy` grants it, "
                                 "`runner doctor` checks it")


def _ensure_account(apis: AdminApis, project: str, email: str) -> Step:
    name = f"service account {email}"
    if apis.get_service_account(project, email) is not None:
        return Step(name, False, "exists")
    try:
        apis.create_service_account(project, SUPERVISOR_SA_NAME, "cos-spot-runner supervisor",
                                    "Runs the hosted supervisor (Cloud Run job) of cos-spot-runner")
    except ApiError as e:
        if e.code != 409:
            raise
        return Step(name, False, "exists")
    return Step(name, True, "created")


def _sa_path(email: str) -> str:
    """IAM's path for a service account; ``-`` lets IAM find the project (the Compute default's)."""
    project = email.split("@", 1)[1].split(".", 1)[0] if email.endswith(".iam.gserviceaccount.com") else "-"
    return f"/v1/projects/{quote(project)}/serviceAccounts/{quote(email)}"


def _grant(api: Any, resource_path: str, role: str, member: str, sleep: Callable[[float], None]) -> bool:
    """``member`` holds ``role`` in the IAM policy at ``resource_path`` (``…:getIamPolicy``);
    read-modify-write with the policy's etag, retried when another writer got there first (409)
    or a new account is not yet visible. Returns False when it was already so."""
    return grant_in_policy(lambda: api.post(resource_path + ":getIamPolicy", {}),
                           lambda policy: api.post(resource_path + ":setIamPolicy", {"policy": policy}),
                           role, member, sleep)


def ensure_act_as(apis: AdminApis, project: str, vm_email: str, member: str, *,
                  sleep: Callable[[float], None] = time.sleep) -> Step:
    """``member`` may act as ``vm_email`` (its own policy, not the project's)."""
    name = f"{ACT_AS_ROLE} on {vm_email}"
    if not _grant(apis.iam, _sa_path(vm_email), ACT_AS_ROLE, member, sleep):
        return Step(name, False, f"already granted to {member}")
    return Step(name, True, f"granted to {member} (it creates VMs that run as {vm_email})")


def _secret_of(cfg: Config) -> str:
    """``projects/P/secrets/S`` of ``webhook_secret`` (which may be a bare name or name a version)."""
    from runner.ops.notify import secret_version_name

    return secret_version_name(cfg.webhook_secret or "", cfg.project).split("/versions/", 1)[0]


def ensure_secret_access(cfg: Config, member: str, *, sleep: Callable[[float], None] = time.sleep) -> Step:
    """``member`` may read the webhook secret (Secret Manager v1: IAM is on the secret, so a
    ``webhook_secret`` naming a version is granted on its secret)."""
    from runner.cloud.gcp_rest import rest_api

    secret = _secret_of(cfg)
    api = rest_api(cfg.secretmanager_endpoint, "https://secretmanager.googleapis.com")
    name = f"{SECRET_ROLE} on {secret}"
    if not _grant(api, f"/v1/{secret}", SECRET_ROLE, member, sleep):
        return Step(name, False, f"already granted to {member}")
    return Step(name, True, f"granted to {member}")


def check_hosted(cfg: Config, apis: AdminApis, storage_client: Any) -> tuple[bool | None, str, str]:
    """Doctor: (ok, detail, fix) for the supervisor account; None = not set up (a skip)."""
    project = cfg.project
    if not project:
        return None, "no project configured", ""
    email = supervisor_email(project)
    member = f"serviceAccount:{email}"
    if apis.get_service_account(project, email) is None:
        return None, (f"no hosted supervisor account {email} (only needed for `runner supervise --deploy`; "
                      f"create it with `runner init --hosted`)"), ""
    held = member_roles(apis.get_iam_policy(project), member)
    missing, fixes = [], []
    for api in HOSTED_APIS:  # what `supervise --deploy` calls
        if apis.service_state(project, api) != "ENABLED":
            missing.append(f"the {api} API (disabled)")
            fixes.append(f"gcloud services enable {api} --project {project}")
    for role in PROJECT_ROLES:
        if not GRANTED_BY[role] & held:
            missing.append(role)
            fixes.append(f"gcloud projects add-iam-policy-binding {project} --member {member} --role {role}")
    if cfg.store_url.startswith("gs://"):
        from entrypoint.store_gcs import parse_gs_url

        bucket = parse_gs_url(cfg.store_url)[0]
        policy = storage_client.bucket(bucket).get_iam_policy(requested_policy_version=3)
        on_bucket = {b["role"] for b in policy.bindings if member in b.get("members", ())}
        if not GRANTED_BY[BUCKET_ROLE] & (held | on_bucket):
            missing.append(f"{BUCKET_ROLE} on gs://{bucket}")
            fixes.append(f"gcloud storage buckets add-iam-policy-binding gs://{bucket} --member={member} "
                         f"--role={BUCKET_ROLE}")
    vm = vm_service_account(cfg, apis)
    on_sa = member_roles(apis.iam.post(_sa_path(vm) + ":getIamPolicy", {}), member)
    if not GRANTED_BY[ACT_AS_ROLE] & (held | on_sa):
        missing.append(f"{ACT_AS_ROLE} on {vm}")
        fixes.append(f"gcloud iam service-accounts add-iam-policy-binding {vm} --member={member} "
                     f"--role={ACT_AS_ROLE}")
    if cfg.webhook_secret:
        secret = _secret_of(cfg)
        from runner.cloud.gcp_rest import rest_api

        api = rest_api(cfg.secretmanager_endpoint, "https://secretmanager.googleapis.com")
        if not GRANTED_BY[SECRET_ROLE] & (member_roles(api.post(f"/v1/{secret}:getIamPolicy", {}), member) | held):
            missing.append(f"{SECRET_ROLE} on {secret}")
            sp = secret.split("/")
            fixes.append(f"gcloud secrets add-iam-policy-binding {sp[3]} --project {sp[1]} --member={member} "
                         f"--role={SECRET_ROLE}")
    invoker = _vm_invoker_missing(cfg, vm)
    if invoker is not None:
        missing.append(invoker[0])
        fixes.append(invoker[1])
    if missing:
        return False, f"{email} lacks {', '.join(missing)}", "\n".join(fixes) + "\n(or: runner init --hosted)"
    return True, f"{email} has what a supervisor pass needs", ""


def _vm_invoker_missing(cfg: Config, vm: str) -> tuple[str, str] | None:
    """(what is missing, the fix) when the runs' VMs may not run the deployed job in ``once`` mode:
    their preemptions then wait for the next scheduled pass. None when they may, or when no job
    is deployed (nothing to call yet)."""
    from google.api_core import exceptions as gexc
    from google.iam.v1 import iam_policy_pb2

    from runner.cloud.hosted import HostedError, INVOKER_ROLE, JOB_ID, holds_invoker, job_clients, target

    try:
        t = target(cfg, need_image=False)
    except HostedError:
        return None
    if t.mode != "once":
        return None
    try:
        policy = job_clients(cfg).jobs.get_iam_policy(
            request=iam_policy_pb2.GetIamPolicyRequest(resource=t.job_name), retry=api_retry())
    except gexc.NotFound:
        return None
    except gexc.GoogleAPICallError:
        return None  # the API disabled, or no right to read the policy: the items above name that
    # A RetryError (Cloud Run kept failing) is not "granted": it goes up, and `runner doctor`
    # says the check could not be made and to run it again later.
    if holds_invoker(policy, f"serviceAccount:{vm}"):
        return None
    return (f"{INVOKER_ROLE} on the job {JOB_ID} for the VM account {vm} (a preempted VM cannot ask for "
            "a pass at once, so its run waits for the next scheduled minute)",
            f"gcloud run jobs add-iam-policy-binding {JOB_ID} --project {t.project} --region {t.region} "
            f"--member=serviceAccount:{vm} --role={INVOKER_ROLE}   (or: runner supervise --deploy)")


__all__ = ["init_hosted", "check_hosted", "service_account_email"]
