"""The hosted supervisor: a Cloud Run job running ``runner supervise`` and a Cloud Scheduler job
that runs it every minute, so runs survive preemptions while no laptop is awake.

Plan, then act (docs/architecture.md#plan-then-act): ``plan_job`` and ``plan_schedule`` build the exact
``run_v2.Job`` and ``scheduler_v1.Job`` from config, with no I/O; ``deploy`` compares them with
what exists and creates, updates in place (a new runner image, new settings) or leaves alone
(deploying twice changes nothing: no PATCH is sent, so the job's generation does not move).
``undeploy`` removes the schedule first (so no tick runs a half-deleted job), then the job;
runs and their VMs are never touched. ``hosted_status`` says what is deployed and how the last
pass went (from ``supervisor/heartbeat.json``).

Where: the job in ``supervisor_region``, the schedule in a Cloud Scheduler location of its own
(``scheduler_region``; by default the job's region when Cloud Scheduler offers it, else a nearby
one: runner/cloud/schedule_location.py). One supervisor per project: a deploy that finds this
runner's schedule in another location (a changed ``supervisor_region`` or ``scheduler_region``)
removes it, and the job it ran, once the new one is in place; two schedules would be two
reconcilers passing over the same runs (safe, as every record write is a compare-and-swap,
but billed twice and noisy). ``undeploy`` removes them wherever they are.

Identity: the job runs as the supervisor's service account (``runner init --hosted`` creates it
with the roles a pass needs), and the schedule calls the job's ``:run`` with an OAuth token of
that same account, which ``deploy`` makes ``roles/run.invoker`` on this one job, nothing wider.
A ``:run`` URL is a Google API (run.googleapis.com), so it takes an OAuth access token; an
OIDC token (what Cloud Run *services* take) would be refused there
(https://cloud.google.com/run/docs/execute/jobs-on-schedule).

Two modes, the trade-off documented in README (daily cost from ``runner/data/cloudrun_prices.json``):
``once``, one pass per execution (a preemption waits up to the 60 s period plus a pass, unless
the preempted VM asks for a pass at once: ``supervisor_job_for_vms``), or
``loop``, each execution passing every ``poll_interval`` for ``LOOP_SECONDS`` (detection close to
the poll interval, billed for most of every minute).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from importlib import resources
from typing import Any, Callable

from runner.config import Config
from runner.cloud.gcp_clients import api_errors, api_retry, retry_exhausted_text
from runner.cloud.iam_grants import Step, format_step, service_account_email

JOB_ID = "cos-spot-runner-supervisor"
SCHEDULER_JOB_ID = "cos-spot-runner-supervisor"
SUPERVISOR_SA_NAME = "cos-spot-runner-sup"  # IAM account ids are 6-30 characters
SCHEDULE = "* * * * *"
PERIOD_S = 60.0
LOOP_SECONDS = 50.0  # a loop execution ends before the next minute's starts
NOTICE_WAIT_S = 45.0  # runner.launch.notice_wait.DEFAULT_WAIT_S: a 30 s notice plus power-off and listing lag
MODES = ("once", "loop")
CPU, MEMORY = "1", "512Mi"
LABELS = {"managed-by": "cos-spot-runner"}
RUN_API = "https://run.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
INVOKER_ROLE = "roles/run.invoker"
# Roles that hold run.jobs.run on a job (https://cloud.google.com/run/docs/reference/iam/roles).
INVOKER_GRANTED_BY = {INVOKER_ROLE, "roles/run.developer", "roles/run.admin", "roles/editor", "roles/owner"}
# Settings a pass reads; passed as RUNNER_* env exactly as configured where the deploy ran.
PASS_KEYS = ("backend", "store", "project", "poll_interval", "stall_polls", "gpu_timeout",
             "heartbeat_interval", "sync_interval", "grace_period", "shm_size", "webhook_secret",
             "compute_endpoint", "secretmanager_endpoint")
# What each permission a deploy uses is granted by, for an error that names the role to get.
ROLE_FOR_PERMISSION = {
    "run.jobs.create": "roles/run.developer", "run.jobs.update": "roles/run.developer",
    "run.jobs.get": "roles/run.viewer", "run.jobs.delete": "roles/run.developer",
    "run.jobs.getIamPolicy": "roles/run.admin", "run.jobs.setIamPolicy": "roles/run.admin",
    "run.jobs.run": "roles/run.invoker", "iam.serviceAccounts.actAs": "roles/iam.serviceAccountUser",
    "cloudscheduler.jobs.create": "roles/cloudscheduler.admin",
    "cloudscheduler.jobs.update": "roles/cloudscheduler.admin",
    "cloudscheduler.jobs.delete": "roles/cloudscheduler.admin",
    "cloudscheduler.jobs.get": "roles/cloudscheduler.viewer",
    # Deploying needs the admin role anyway, which holds both
    # (https://docs.cloud.google.com/iam/docs/roles-permissions/cloudscheduler).
    "cloudscheduler.locations.list": "roles/cloudscheduler.admin",
    "cloudscheduler.locations.get": "roles/cloudscheduler.admin",
}
SCAN_THREADS = 8  # a deploy reads every Cloud Scheduler location for this runner's schedule


class HostedError(RuntimeError):
    """The hosted supervisor cannot be deployed, removed or shown; the message says what to do."""


@dataclass(frozen=True)
class HostedTarget:
    """Where the hosted supervisor lives, all derived from config."""

    project: str
    region: str
    service_account: str
    image: str | None
    mode: str
    # The schedule's Cloud Scheduler location: configured (scheduler_region), or None until
    # ``locate_schedule`` picks one from the locations Cloud Scheduler offers.
    schedule_region: str | None = None

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def job_name(self) -> str:
        return f"{self.parent}/jobs/{JOB_ID}"

    @property
    def schedule_parent(self) -> str:
        if not self.schedule_region:
            raise AssertionError("the schedule's location is not known yet: call locate_schedule first")
        return f"projects/{self.project}/locations/{self.schedule_region}"

    @property
    def schedule_name(self) -> str:
        return f"{self.schedule_parent}/jobs/{SCHEDULER_JOB_ID}"

    @property
    def run_url(self) -> str:
        return f"{RUN_API}/v2/{self.job_name}:run"


def schedule_name_in(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}/jobs/{SCHEDULER_JOB_ID}"


def _is_region_name(name: str) -> bool:
    return re.fullmatch(r"[a-z]+(-[a-z]+)+\d+", name) is not None


def supervisor_email(project: str) -> str:
    return service_account_email(project, SUPERVISOR_SA_NAME)


def target(cfg: Config, image: str | None = None, need_image: bool = True) -> HostedTarget:
    """The deployment's coordinates; refuses what cannot work, naming the fix.

    ``need_image``: for a deploy, which also needs a pinned image and a gs:// store; removing or
    showing the deployment needs neither (a user whose store moved off GCS can still undeploy)."""
    from runner.naming import region_of

    if not cfg.project:
        raise HostedError("no GCP project: pass --project ID or set project in runner.toml")
    if need_image and not cfg.store_url.startswith("gs://"):
        raise HostedError(f"the hosted supervisor needs a gs:// store (it runs in Cloud Run, which cannot "
                          f"see {cfg.store_url}): pass --store gs://BUCKET or set store in runner.toml")
    if cfg.supervisor_mode not in MODES:
        raise HostedError(f"supervisor_mode {cfg.supervisor_mode!r} (from {cfg.source.get('supervisor_mode')}) "
                          f"is not one of {', '.join(MODES)}")
    region = cfg.supervisor_region or (region_of(cfg.zones[0]) if cfg.zones else None)
    if not region:
        raise HostedError("no region for the hosted supervisor: set supervisor_region (e.g. us-central1) "
                          "or zones in runner.toml")
    for key, value in (("supervisor_region", region), ("scheduler_region", cfg.scheduler_region)):
        if value is not None and not _is_region_name(value):
            hint = f"; {value} is a zone, use its region {region_of(value)}" if re.fullmatch(
                r"[a-z]+(-[a-z]+)+\d+-[a-z]", value) else ""
            raise HostedError(f"{key} {value!r} (from {cfg.source.get(key, 'config')}) "
                              f"is not a region name such as us-central1{hint}")
    image = image or cfg.supervisor_image
    if need_image:
        if not image:
            raise HostedError("no runner image: build it with `runner supervise --deploy --build` (or "
                              "pass --image REPO@sha256:..., or set supervisor_image in runner.toml)")
        if "@sha256:" not in image:
            raise HostedError(f"supervisor image {image} is not pinned by digest; pass REPO@sha256:... "
                              "(`runner build` prints it) so every pass runs the same runner")
    return HostedTarget(cfg.project, region, supervisor_email(cfg.project), image, cfg.supervisor_mode,
                        schedule_region=cfg.scheduler_region)


def locate_schedule(t: HostedTarget, clients: HostedClients,
                    configured_from: str = "config") -> tuple[HostedTarget, list[str]]:
    """``t`` with its schedule's location decided (``t.schedule_region``, the configured one, is
    checked) from the locations Cloud Scheduler offers, which are returned too: a deploy looks
    for this runner's schedule in each."""
    from runner.cloud.schedule_location import ScheduleLocationError, choose

    offered = offered_schedule_locations(t, clients)
    try:
        where = choose(t.region, offered, t.schedule_region, configured_from)
    except ScheduleLocationError as e:
        raise HostedError(str(e)) from None
    return replace(t, schedule_region=where), offered


def offered_schedule_locations(t: HostedTarget, clients: HostedClients) -> list[str]:
    from runner.cloud.schedule_location import offered_locations

    return _call("listing Cloud Scheduler locations", t.project, passes=(),
                 fn=lambda: offered_locations(clients.scheduler, t.project))


def supervisor_job_for_vms(cfg: Config) -> str:
    """The job a run's VM asks for a pass when GCE preempts it (metadata ``runner-supervisor-job``,
    read by gcp/shutdown.sh), or "" when VMs should ask nobody.

    Named exactly as ``supervise --deploy`` names it (``target``), and only where hosted
    supervision is configured: ``supervisor_region`` or ``supervisor_image`` set (a deployed job's
    own passes always have both region and mode: ``plan_job`` passes them), in ``once`` mode. A
    ``loop`` execution already passes every ``poll_interval``; a VM's request would only start a
    second, billed, 50-second loop beside it. Without hosted config a laptop loop supervises, and
    a VM calling a job that does not exist would only log a 404 in every preemption."""
    if cfg.backend != "gce" or cfg.supervisor_mode != "once":
        return ""
    if not (cfg.supervisor_region or cfg.supervisor_image):
        return ""
    try:
        return target(cfg, need_image=False).job_name
    except HostedError:
        return ""  # no project or region: nothing a VM could call (doctor and deploy say why)


# A Secret Manager secret id is 1-255 of [A-Za-z0-9_-]
# (https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets/create).
_SECRET_NAME = re.compile(r"(projects/[^/\s]+/secrets/)?[A-Za-z0-9_-]{1,255}(/versions/[A-Za-z0-9_-]+)?")


def job_env(cfg: Config) -> dict[str, str]:
    """The config a pass needs, as ``RUNNER_*`` variables (sorted: a redeploy compares equal).

    Anyone who may read the job (``run.jobs.get``) reads its env, so a credential must never go
    there: ``webhook_secret`` is passed only when it is a secret's *name*; a webhook URL put in
    its place is refused, without echoing it."""
    if cfg.webhook_secret and not _SECRET_NAME.fullmatch(cfg.webhook_secret.strip()):
        raise HostedError(f"webhook_secret (from {cfg.source.get('webhook_secret', 'config')}) is not a Secret "
                          "Manager secret name; it looks like the webhook URL itself, which would be readable "
                          "in the Cloud Run job. Store the URL in a secret (gcloud secrets create runner-webhook "
                          "--data-file=-) and set webhook_secret = \"runner-webhook\"")
    out = {}
    for key in PASS_KEYS:
        value = getattr(cfg, key)
        if key == "backend":
            value = "gce"  # the hosted supervisor supervises GCE runs, whatever this shell's default
        if key == "store":
            value = cfg.store_url
        if value is None:
            continue
        out["RUNNER_" + key.upper()] = value if isinstance(value, str) else json.dumps(value)
    return dict(sorted(out.items()))


def supervisor_args(mode: str) -> list[str]:
    """The container's arguments: one pass, or a bounded loop; both announce the 60 s schedule."""
    base = ["supervise", "--schedule-period", f"{PERIOD_S:g}"]
    if mode == "once":
        # A pass that finds a run's VM in its preemption notice (a VM's own request for this pass,
        # gcp/shutdown.sh) waits it out and replaces it now (runner.launch.notice_wait).
        return base + ["--once", "--await-notice", f"{NOTICE_WAIT_S:g}"]
    return base + ["--for", f"{LOOP_SECONDS:g}"]


def plan_job(cfg: Config, t: HostedTarget) -> Any:
    """The ``run_v2.Job`` to deploy (pure)."""
    from google.cloud import run_v2

    # Region and mode as resolved here, so each pass knows the job it runs in and names it to the
    # VMs it creates (supervisor_job_for_vms), whatever the config it was deployed from left out.
    env = {**job_env(cfg), "RUNNER_SUPERVISOR_REGION": t.region, "RUNNER_SUPERVISOR_MODE": t.mode}
    container = run_v2.Container(
        name="supervisor", image=t.image, command=["python3", "-m", "runner.cli"], args=supervisor_args(t.mode),
        env=[run_v2.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
        resources=run_v2.ResourceRequirements(limits={"cpu": CPU, "memory": MEMORY}))
    timeout = timedelta(seconds=PERIOD_S * 3)  # a stuck pass ends before it piles up
    return run_v2.Job(
        labels=dict(LABELS),
        template=run_v2.ExecutionTemplate(
            task_count=1, parallelism=1,
            template=run_v2.TaskTemplate(containers=[container], service_account=t.service_account,
                                         max_retries=0, timeout=timeout)))


def plan_schedule(t: HostedTarget) -> Any:
    """The ``scheduler_v1.Job`` that runs the job every minute (pure)."""
    from google.cloud import scheduler_v1

    return scheduler_v1.Job(
        name=t.schedule_name,
        description="cos-spot-runner: one supervisor pass per minute (runner supervise --deploy)",
        schedule=SCHEDULE, time_zone="Etc/UTC",
        http_target=scheduler_v1.HttpTarget(
            uri=t.run_url, http_method=scheduler_v1.HttpMethod.POST,
            oauth_token=scheduler_v1.OAuthToken(service_account_email=t.service_account, scope=SCOPE)),
        retry_config=scheduler_v1.RetryConfig(retry_count=0),  # the next minute is the retry
        attempt_deadline=timedelta(seconds=60))


# ---- comparing what is deployed with the plan ----

def _job_view(job: Any) -> dict[str, Any]:
    """The fields of a Job that deploy owns, as plain data."""
    tt = job.template.template
    c = tt.containers[0] if tt.containers else None
    return {
        "image": c.image if c else None,
        "command": list(c.command) if c else None,
        "args": list(c.args) if c else None,
        "env": {e.name: e.value for e in c.env} if c else None,
        "resources": dict(c.resources.limits) if c else None,
        "service_account": tt.service_account,
        "max_retries": tt.max_retries,
        "timeout": tt.timeout.total_seconds() if tt.timeout else None,
        "task_count": job.template.task_count,
        "labels": dict(job.labels),
    }


def _schedule_view(job: Any) -> dict[str, Any]:
    t = job.http_target
    return {"schedule": job.schedule, "time_zone": job.time_zone, "uri": t.uri,
            "http_method": int(t.http_method), "oauth": t.oauth_token.service_account_email,
            "scope": t.oauth_token.scope, "description": job.description,
            "retry_count": job.retry_config.retry_count,
            "attempt_deadline": job.attempt_deadline.total_seconds() if job.attempt_deadline else None}


def differences(planned: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [k for k in planned if planned[k] != current.get(k)]


# ---- clients and errors ----

@dataclass
class HostedClients:
    jobs: Any
    scheduler: Any


def hosted_clients(cfg: Config) -> HostedClients:
    """Cloud Run v2 and Cloud Scheduler v1 clients over REST, at the configured endpoints."""
    from google.cloud import run_v2, scheduler_v1

    from runner.cloud.gcp_clients import _client_kwargs

    return HostedClients(
        jobs=run_v2.JobsClient(transport="rest", **_client_kwargs(cfg.run_endpoint)),
        scheduler=scheduler_v1.CloudSchedulerClient(transport="rest", **_client_kwargs(cfg.scheduler_endpoint)))


def job_clients(cfg: Config) -> HostedClients:
    """Only the Cloud Run client (job IAM: init and doctor need no Cloud Scheduler)."""
    from google.cloud import run_v2

    from runner.cloud.gcp_clients import _client_kwargs

    return HostedClients(jobs=run_v2.JobsClient(transport="rest", **_client_kwargs(cfg.run_endpoint)),
                         scheduler=None)


def explain(e: Exception, what: str, project: str) -> HostedError:
    """A Google API error as a message naming the missing role or API and the command that fixes it."""
    from google.api_core import exceptions as gexc

    msg = getattr(e, "message", None) or str(e)
    if isinstance(e, gexc.RetryError):
        # Google kept answering 429/5xx: nothing of ours to fix, and every step before this one
        # is done; deploy and undeploy are idempotent, so running them again resumes here.
        return HostedError(f"{what}: {retry_exhausted_text(e)}. The steps before it are done; run the same "
                           "command again later (https://status.cloud.google.com shows Google Cloud incidents)")
    if isinstance(e, gexc.Forbidden):
        # Cloud Run writes "Permission 'iam.serviceaccounts.actAs' denied ..." (lowercase), other
        # APIs "lacks IAM permission \"X\"": match either, and the permission case-insensitively.
        m = re.search(r"Permission '([\w.]+)' denied|lacks IAM permission \"([\w.]+)\"", msg)
        perm = (m.group(1) or m.group(2)) if m else None
        perm = next((p for p in ROLE_FOR_PERMISSION if perm and p.lower() == perm.lower()), perm)
        role = ROLE_FOR_PERMISSION.get(perm or "", "")
        if getattr(e, "reason", None) == "SERVICE_DISABLED" or "has not been used" in msg or "is disabled" in msg:
            api = _disabled_api(e, msg, what)
            return HostedError(f"{what}: the API is disabled ({msg}); fix: gcloud services enable {api} --project {project}")
        if role == "roles/iam.serviceAccountUser":  # acting as the supervisor: grant it on that account only
            return HostedError(f"{what}: permission {perm} denied; you need {role} on {supervisor_email(project)}. "
                               f"fix: gcloud iam service-accounts add-iam-policy-binding {supervisor_email(project)} "
                               f"--project {project} --member user:YOU --role {role}")
        if role:
            return HostedError(f"{what}: permission {perm} denied; you need {role}. fix: gcloud projects "
                               f"add-iam-policy-binding {project} --member user:YOU --role {role}")
        return HostedError(f"{what}: permission denied ({msg})")
    if isinstance(e, gexc.NotFound) and not what.startswith("creating"):
        return HostedError(f"{what} failed: it is gone ({msg}); was it removed meanwhile (`runner supervise "
                           "--undeploy` elsewhere)? Run `runner supervise --deploy` again")
    return HostedError(f"{what} failed: {type(e).__name__}: {msg}")


def _disabled_api(e: Exception, msg: str, what: str) -> str:
    """The service a SERVICE_DISABLED error names: its ErrorInfo, else the console URL in the
    message (older answers carry only a Help link), else the API the failing call belongs to."""
    service = (getattr(e, "metadata", None) or {}).get("service")
    m = re.search(r"/apis/api/([a-z0-9.-]+\.googleapis\.com)/", msg)
    return service or (m.group(1) if m else
                       "cloudscheduler.googleapis.com" if "scheduler" in what.lower() else "run.googleapis.com")


def _call(what: str, project: str, fn: Callable[[], Any], passes: tuple[type, ...] | None = None) -> Any:
    """``fn()``, with a Google API error turned into a ``HostedError`` saying what to do, except
    those in ``passes`` (default: NotFound), which the caller handles.

    Reads and deletes pass ``retry=api_retry()``: the Cloud Run client retries nothing by default
    and the Scheduler client retries its reads for 600 s; with ours both get the one deadline,
    and a fault that outlasts it (a ``RetryError``, among ``api_errors()``) is said here too."""
    from google.api_core import exceptions as gexc

    try:
        return fn()
    except passes if passes is not None else (gexc.NotFound,):
        raise
    except api_errors() as e:
        raise explain(e, what, project) from None


# ---- act ----

def deploy(cfg: Config, t: HostedTarget, clients: HostedClients, say: Callable[[str], None] = print,
           timeout: float = 300, vm_account: str | None = None) -> list[Step]:
    """Create or update the job, its invoker bindings and the schedule; idempotent.

    ``vm_account``: the account runs' VMs use (runner.cloud.hosted_setup.vm_service_account);
    in ``once`` mode it too may run this job, so a preempted VM can ask for a pass at once
    (gcp/shutdown.sh). ``runner init --hosted`` grants the same once the job exists.

    The schedule's location is decided first (nothing is created when it cannot be); a
    supervisor of this runner found in another location is removed last, once this one is in
    place, so runs are never left unsupervised by a deploy that fails half way."""
    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        say(format_step(step))

    t, offered = locate_schedule(t, clients, cfg.source.get("scheduler_region", "config"))
    record(_ensure_job(cfg, t, clients, timeout))
    record(_ensure_invoker(t, clients))
    if vm_account and t.mode == "once":
        record(ensure_vm_invoker(t, clients, vm_account))
    record(_ensure_schedule(t, clients))
    for step in _remove_others(t, clients, offered, timeout, why=f"moved: the supervisor now runs {t.job_name}"):
        record(step)
    return steps


def _ensure_job(cfg: Config, t: HostedTarget, clients: HostedClients, timeout: float) -> Step:
    from google.api_core import exceptions as gexc

    planned = plan_job(cfg, t)
    name = f"Cloud Run job {t.job_name}"
    try:
        current = _call("reading the Cloud Run job", t.project,
                        lambda: clients.jobs.get_job(name=t.job_name, retry=api_retry()))
    except gexc.NotFound:
        current = None
    if current is None:
        try:
            op = _call("creating the Cloud Run job", t.project, passes=(gexc.Conflict,),
                       fn=lambda: clients.jobs.create_job(parent=t.parent, job=planned, job_id=JOB_ID))
            _call("creating the Cloud Run job", t.project, lambda: op.result(timeout=timeout), passes=(gexc.Conflict,))
            return Step(name, True, f"created: {t.mode} mode, image {t.image}, as {t.service_account}")
        except gexc.Conflict:  # a concurrent deploy created it first: compare with what it made
            current = _call("reading the Cloud Run job", t.project, passes=(),
                            fn=lambda: clients.jobs.get_job(name=t.job_name, retry=api_retry()))
    changed = differences(_job_view(planned), _job_view(current))
    if not changed:
        return Step(name, False, f"up to date (image {t.image}, {t.mode} mode)")
    planned.name = t.job_name
    planned.etag = current.etag  # a concurrent deploy makes this one fail, not silently lose
    op = _call("updating the Cloud Run job", t.project, lambda: clients.jobs.update_job(job=planned), passes=())
    _call("updating the Cloud Run job", t.project, lambda: op.result(timeout=timeout), passes=())
    return Step(name, True, f"updated in place: {', '.join(changed)}")


def ensure_vm_invoker(t: HostedTarget, clients: HostedClients, vm_account: str) -> Step:
    """The runs' VM account may run this job, and nothing more: what a preempted VM's request for
    an immediate pass needs (``run.jobs.run``; not ``runWithOverrides``, which would let a VM
    change what the job runs)."""
    return _ensure_invoker(t, clients, member=f"serviceAccount:{vm_account}",
                           why="a preempted VM asks for a pass at once")


def holds_invoker(policy: Any, member: str) -> bool:
    """Whether ``member`` may run the job under ``policy`` (a role that has ``run.jobs.run``)."""
    return any(b.role in INVOKER_GRANTED_BY and member in b.members for b in policy.bindings)


def _ensure_invoker(t: HostedTarget, clients: HostedClients, attempts: int = 5, member: str | None = None,
                    why: str = "the schedule's identity") -> Step:
    """``member`` (default: the schedule's identity) may run this job (the job's own policy,
    read-modify-write with its etag; retried when another writer changed the policy in between,
    so neither change is lost)."""
    from google.api_core import exceptions as gexc
    from google.iam.v1 import iam_policy_pb2

    member = member or f"serviceAccount:{t.service_account}"
    name = f"{INVOKER_ROLE} on {JOB_ID} for {member.split(':', 1)[1]}"
    for attempt in range(attempts):
        policy = _call("reading the job's IAM policy", t.project, passes=(),
                       fn=lambda: clients.jobs.get_iam_policy(
                           request=iam_policy_pb2.GetIamPolicyRequest(resource=t.job_name), retry=api_retry()))
        for b in policy.bindings:
            if b.role == INVOKER_ROLE and member in b.members:
                return Step(name, False, f"already granted to {member}")
        binding = next((b for b in policy.bindings if b.role == INVOKER_ROLE), None)
        if binding is None:
            binding = policy.bindings.add(role=INVOKER_ROLE)
        binding.members.append(member)
        try:
            _call("granting the schedule the right to run the job", t.project,
                  passes=(gexc.Conflict, gexc.Aborted) if attempt < attempts - 1 else (),
                  fn=lambda: clients.jobs.set_iam_policy(
                      request=iam_policy_pb2.SetIamPolicyRequest(resource=t.job_name, policy=policy)))
            return Step(name, True, f"granted to {member} ({why}), on this job only")
        except (gexc.Conflict, gexc.Aborted):
            continue
    raise AssertionError("unreachable")


def _ensure_schedule(t: HostedTarget, clients: HostedClients) -> Step:
    from google.api_core import exceptions as gexc
    from google.protobuf import field_mask_pb2

    planned = plan_schedule(t)
    name = f"Cloud Scheduler job {t.schedule_name}"
    try:
        current = _call("reading the Cloud Scheduler job", t.project,
                        lambda: clients.scheduler.get_job(name=t.schedule_name, retry=api_retry()))
    except gexc.NotFound:
        current = None
    if current is None:
        try:
            _call("creating the Cloud Scheduler job", t.project, passes=(gexc.Conflict,),
                  fn=lambda: clients.scheduler.create_job(parent=t.schedule_parent, job=planned))
            where = "" if t.schedule_region == t.region else f" (the schedule in {t.schedule_region}, the job in {t.region})"
            return Step(name, True, f"created: '{SCHEDULE}' (every minute, UTC) → POST {t.run_url}{where}")
        except gexc.Conflict:  # a concurrent deploy created it first: compare with what it made
            current = _call("reading the Cloud Scheduler job", t.project, passes=(),
                            fn=lambda: clients.scheduler.get_job(name=t.schedule_name, retry=api_retry()))
    changed = differences(_schedule_view(planned), _schedule_view(current))
    if not changed:
        return Step(name, False, f"up to date ('{SCHEDULE}')")
    mask = field_mask_pb2.FieldMask(paths=["description", "schedule", "time_zone", "http_target",
                                           "retry_config", "attempt_deadline"])
    _call("updating the Cloud Scheduler job", t.project, passes=(),
          fn=lambda: clients.scheduler.update_job(job=planned, update_mask=mask))
    return Step(name, True, f"updated: {', '.join(changed)}")


def undeploy(t: HostedTarget, clients: HostedClients, say: Callable[[str], None] = print,
             timeout: float = 300) -> list[Step]:
    """Remove this runner's schedule wherever it is (every offered location is looked at: the
    config that placed it may have changed since), then the job, and any other job a found
    schedule ran; what is already gone is fine. Runs are not touched."""
    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        say(format_step(step))

    found = _schedules_in(t, clients, offered_schedule_locations(t, clients))
    for schedule in found:
        record(_delete_schedule(t, clients, schedule.name, "deleted"))
    if not found:
        record(Step(f"Cloud Scheduler job {SCHEDULER_JOB_ID}", False, "not there (in no Cloud Scheduler location)"))
    ran = {j for j in (_job_run_by(s) for s in found) if j}
    for job in [t.job_name] + sorted(ran - {t.job_name}):
        record(_delete_job(t, clients, job, "deleted", timeout))
    return steps


_RUN_TARGET = re.compile(re.escape(RUN_API) + r"/v2/(projects/[^/]+/locations/[^/]+/jobs/" + re.escape(JOB_ID) + r"):run")


def _job_run_by(schedule: Any) -> str | None:
    """The Cloud Run job of this runner that ``schedule`` runs, or None when it runs another."""
    m = _RUN_TARGET.fullmatch(schedule.http_target.uri or "")
    return m.group(1) if m else None


def _schedules_in(t: HostedTarget, clients: HostedClients, locations: list[str]) -> list[Any]:
    """This runner's schedules in ``locations`` (read side by side: there are some forty). One
    with our name that runs some other job is not ours, and is left alone."""
    from google.api_core import exceptions as gexc

    def read(location: str) -> Any:
        try:
            return _call("looking for the supervisor's schedule", t.project,
                         lambda: clients.scheduler.get_job(name=schedule_name_in(t.project, location),
                                                           retry=api_retry()))
        except gexc.NotFound:
            return None

    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        found = [s for s in pool.map(read, locations) if s is not None]
    return sorted((s for s in found if _job_run_by(s)), key=lambda s: s.name)


def _remove_others(t: HostedTarget, clients: HostedClients, offered: list[str], timeout: float,
                   why: str) -> list[Step]:
    """Delete this runner's schedules elsewhere, then the jobs they ran (never ``t``'s own job)."""
    others = _schedules_in(t, clients, [loc for loc in offered if loc != t.schedule_region])
    steps = [_delete_schedule(t, clients, s.name, f"deleted ({why})") for s in others]
    jobs = sorted({j for j in (_job_run_by(s) for s in others) if j and j != t.job_name})
    return steps + [_delete_job(t, clients, j, f"deleted ({why})", timeout) for j in jobs]


def _delete_schedule(t: HostedTarget, clients: HostedClients, name: str, done: str) -> Step:
    from google.api_core import exceptions as gexc

    try:
        _call("deleting the Cloud Scheduler job", t.project,
              lambda: clients.scheduler.delete_job(name=name, retry=api_retry()))
        return Step(f"Cloud Scheduler job {name}", True, done)
    except gexc.NotFound:
        return Step(f"Cloud Scheduler job {name}", False, "not there")


def _delete_job(t: HostedTarget, clients: HostedClients, name: str, done: str, timeout: float) -> Step:
    from google.api_core import exceptions as gexc

    try:
        op = _call("deleting the Cloud Run job", t.project,
                   lambda: clients.jobs.delete_job(name=name, retry=api_retry()))
        _call("deleting the Cloud Run job", t.project, lambda: op.result(timeout=timeout))
        return Step(f"Cloud Run job {name}", True, done)
    except gexc.NotFound:
        return Step(f"Cloud Run job {name}", False, "not there")


def hosted_status(t: HostedTarget, clients: HostedClients, store: Any) -> dict[str, Any]:
    """What is deployed (image, mode, schedule, last execution) and the last pass from the heartbeat."""
    from google.api_core import exceptions as gexc

    from runner.launch.supervisor_heartbeat import watchfulness

    t, _ = locate_schedule(t, clients)
    out: dict[str, Any] = {"job": None, "schedule": None}
    try:
        job = _call("reading the Cloud Run job", t.project,
                    lambda: clients.jobs.get_job(name=t.job_name, retry=api_retry()))
        v = _job_view(job)
        last = job.latest_created_execution
        out["job"] = {"name": job.name, "image": v["image"], "args": v["args"],
                      "service_account": v["service_account"], "generation": job.generation,
                      "executions": job.execution_count,
                      "last_execution": last.name or None,
                      "last_execution_at": last.create_time.isoformat() if last.name else None}
    except gexc.NotFound:
        pass
    try:
        s = _call("reading the Cloud Scheduler job", t.project,
                  lambda: clients.scheduler.get_job(name=t.schedule_name, retry=api_retry()))
        out["schedule"] = {"name": s.name, "schedule": s.schedule, "time_zone": s.time_zone,
                           "state": s.state.name, "uri": s.http_target.uri,
                           "last_attempt_at": s.last_attempt_time.isoformat() if s.last_attempt_time else None,
                           "last_attempt_error": s.status.message or None}
    except gexc.NotFound:
        pass
    out["supervisor"] = watchfulness(store).to_dict()
    return out


# ---- cost of the two modes ----

def cloud_run_prices() -> dict[str, Any]:
    return json.loads(resources.files("runner.data").joinpath("cloudrun_prices.json").read_text())


def daily_cost(mode: str, pass_seconds: float, startup_seconds: float = 5.0,
               prices: dict[str, Any] | None = None) -> float:
    """USD per day for the job's CPU and memory (before the free tier), plus the schedule.

    ``once``: each minute's execution is billed for its startup plus one pass; ``loop``: for its
    startup plus ``LOOP_SECONDS`` of passes (or a pass, whichever is longer). Billing rounds up
    to 100 ms per execution, as Cloud Run does.
    """
    import math

    p = prices or cloud_run_prices()
    busy = pass_seconds if mode == "once" else max(LOOP_SECONDS, pass_seconds)
    per_exec = math.ceil((startup_seconds + busy) * 10) / 10
    execs = 86400 / PERIOD_S
    cpu = float(CPU) * p["jobs_vcpu_second_usd"]
    mem = 0.5 * p["jobs_gib_second_usd"]
    return execs * per_exec * (cpu + mem) + p["scheduler_job_month_usd"] / 30
