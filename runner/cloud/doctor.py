"""`runner doctor`: check, before the first run, everything a run will need, and say how to fix it.

Each check is independent: one that fails (or crashes) never stops the others, because a user
fixing a setup wants the whole list at once. A failed check carries the exact command that fixes
it, with the project, bucket, service account and role filled in. What needs no check for this
config (Docker for the GCE backend, GPU quota without a GPU) is reported as skipped, with why.

Every call goes to the configured endpoints (``compute_endpoint``, ``serviceusage_endpoint``...),
so tests run all of it against loopback fakes; the I/O entry points are also parameters of
``run_checks`` for the parts that have no endpoint (credentials, gcloud's config, Docker).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from runner.config import GCE_PREEMPTION_NOTICE, Config
from runner.cloud.gcp_clients import retry_exhausted_text
from runner.cloud.gcp_rest import AdminApis, ApiError, admin_apis, member_conditional_roles, member_roles
from runner.naming import region_of
from runner.cloud.project_setup import SELF_DELETE_ROLE_ID, self_delete_role
from runner.cloud.doctor_network import network_check
from runner.cloud.doctor_gang_network import gang_network_check

REQUIRED_APIS = ("compute.googleapis.com", "storage.googleapis.com",
                 "cloudbuild.googleapis.com", "artifactregistry.googleapis.com")
QUOTA_CONSOLE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"
STORE_ROLE = "roles/storage.objectAdmin"
PULL_ROLE = "roles/artifactregistry.reader"
# Roles the VM's service account needs, each with the broader roles that also grant it.
VM_ROLES: dict[str, frozenset[str]] = {
    STORE_ROLE: frozenset({STORE_ROLE, "roles/storage.admin", "roles/editor", "roles/owner"}),
    "roles/logging.logWriter": frozenset({"roles/logging.logWriter", "roles/logging.admin",
                                          "roles/editor", "roles/owner"}),
    PULL_ROLE: frozenset({
        "roles/artifactregistry.reader", "roles/artifactregistry.writer",
        "roles/artifactregistry.repoAdmin", "roles/artifactregistry.admin",
        "roles/editor", "roles/owner"}),
}
# The VM deletes itself when its job is over (gcp/startup.sh): compute.instances.delete, which
# `runner init` grants as a one-permission custom role limited to runner VMs, and which these
# broader roles also carry.
SELF_DELETE_GRANTED_BY = frozenset({"roles/compute.instanceAdmin.v1", "roles/compute.instanceAdmin",
                                    "roles/compute.admin", "roles/editor", "roles/owner"})
# Time the shutdown script needs besides the workload's grace period (docker stop, last sync).
SHUTDOWN_HEADROOM = 3.0


@dataclass(frozen=True)
class Check:
    """One line of the report. ``ok``: True passed, False failed, None skipped (``detail`` says
    why). A ``warning`` is a failure that does not stop runs but probably surprises the user."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    warning: bool = False


def format_check(check: Check) -> str:
    """``✓ name: detail``, ``✗ name: detail`` plus an indented ``fix:``, or ``- name: skipped (why)``."""
    if check.ok is None:
        return f"- {check.name}: skipped ({check.detail})"
    if check.ok:
        return f"✓ {check.name}: {check.detail}"
    label = f"{check.name} (warning)" if check.warning else check.name
    text = f"✗ {label}: {check.detail}"
    if check.fix:
        lines = check.fix.splitlines()
        text += "\n    fix: " + "\n         ".join(lines)
    return text


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed (skips are fine), 1 when any check shows ✗, warnings included."""
    return 1 if any(c.ok is False for c in checks) else 0


def _skip(name: str, why: str) -> Check:
    return Check(name, None, why)


def _uses_gcs(cfg: Config) -> bool:
    return cfg.store_url.startswith("gs://")


class _Doctor:
    """The config and the I/O the checks share; clients are built on first use, once."""

    def __init__(self, cfg: Config, *, load_credentials: Callable[[], tuple[Any, str | None]],
                 active_project: Callable[[], str | None], apis: Callable[[Config], AdminApis],
                 storage_client: Callable[[Config], Any], regions_client: Callable[[Config], Any],
                 docker_ping: Callable[[], Any]) -> None:
        self.cfg = cfg
        self.load_credentials = load_credentials
        self.active_project = active_project
        self.docker_ping = docker_ping
        self._factories = {"apis": apis, "storage": storage_client, "regions": regions_client}
        self._made: dict[str, Any] = {}
        self.credentials: Any = None

    def client(self, kind: str) -> Any:
        if kind not in self._made:
            self._made[kind] = self._factories[kind](self.cfg)
        return self._made[kind]

    @property
    def project(self) -> str:
        return self.cfg.project or "PROJECT"

    def caller(self) -> str:
        """The IAM member running the doctor, when the credentials say; a placeholder otherwise."""
        email = getattr(self.credentials, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return f"serviceAccount:{email}"
        account = getattr(self.credentials, "account", None)
        if isinstance(account, str) and "@" in account:
            return f"user:{account}"
        return "user:YOUR_EMAIL"

    # ---- the checks, in report order ----------------------------------------------------------

    def credentials_check(self) -> Check:
        name = "credentials"
        cfg = self.cfg
        if cfg.backend != "gce" and not _uses_gcs(cfg):
            return _skip(name, "local backend and local store: no Google API is called")
        stand_ins = self._stand_in_endpoints()
        if stand_ins is not None:
            return _skip(name, f"every API is a local stand-in ({stand_ins}), which takes no credentials")
        try:
            creds, adc_project = self.load_credentials()
        except Exception as e:  # noqa: BLE001 - DefaultCredentialsError and friends: same fix
            return Check(name, False, f"Application Default Credentials did not load: {e}",
                         "gcloud auth application-default login\n"
                         "(or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file)")
        self.credentials = creds
        who = self.caller()
        who = who if who != "user:YOUR_EMAIL" else type(creds).__name__
        extra = f", quota project {adc_project}" if adc_project else ""
        return Check(name, True, f"Application Default Credentials load ({who}{extra})")

    def _stand_in_endpoints(self) -> str | None:
        """The endpoints this config calls, when all are http:// stand-ins; else None."""
        import os

        cfg = self.cfg
        used = []
        if cfg.backend == "gce":
            used += [cfg.compute_endpoint, cfg.serviceusage_endpoint,
                     cfg.resourcemanager_endpoint, cfg.iam_endpoint]
            from runner.cloud.doctor_build import builds_set_up

            if builds_set_up(cfg):  # the build checks call these two as well
                used += [cfg.cloudbuild_endpoint, cfg.artifactregistry_endpoint]
        if _uses_gcs(cfg):
            used.append(os.environ.get("STORAGE_EMULATOR_HOST"))
        if all(e and e.startswith("http://") for e in used):
            return ", ".join(sorted(set(used)))  # type: ignore[arg-type]
        return None

    def project_check(self) -> Check:
        name = "project"
        cfg = self.cfg
        if cfg.backend != "gce" and not _uses_gcs(cfg):
            return _skip(name, "local backend and local store: no project needed")
        if cfg.backend != "gce" and not cfg.project:
            return _skip(name, "the local backend needs no project; the store's bucket is named in its URL")
        active = self.active_project()
        if not cfg.project:
            hint = f' (gcloud\'s active project is {active!r}; runs never use it implicitly)' if active else ""
            example = active or "my-project"
            return Check(name, False, f"no project configured{hint}",
                         f'runner.toml: project = "{example}"  (or pass --project {example})')
        where = cfg.source.get("project", "config")
        if not active:
            return Check(name, True, f"{cfg.project} (from {where}); gcloud has no active project")
        if active == cfg.project:
            return Check(name, True, f"{cfg.project} (from {where}), also gcloud's active project")
        return Check(
            name, False,
            f"runner uses {cfg.project} (from {where}) but gcloud's active project is {active}: "
            "gcloud commands typed by hand go to the other project",
            f"gcloud config set project {cfg.project}\n"
            f'(or, if {active} is the one you mean: runner.toml: project = "{active}")',
            warning=True)

    def apis_check(self) -> Check:
        name = "APIs enabled"
        cfg = self.cfg
        if not cfg.project:
            return _skip(name, "no project configured")
        if cfg.backend == "gce":
            wanted = REQUIRED_APIS
        elif _uses_gcs(cfg):
            wanted = ("storage.googleapis.com",)
        else:
            return _skip(name, "local backend and local store: no Google API is called")
        p = cfg.project
        apis = self.client("apis")
        disabled = []
        for service in wanted:
            try:
                state = apis.service_state(p, service)
            except ApiError as e:
                if e.disabled_service == "serviceusage.googleapis.com":
                    return Check(name, False, f"the Service Usage API is disabled in {p}, so the "
                                 f"state of {', '.join(wanted)} cannot be read",
                                 f"gcloud services enable serviceusage.googleapis.com --project {p}")
                if e.code == 403:
                    return Check(name, False, f"not allowed to read which APIs are enabled in {p} ({e.message})",
                                 f"gcloud projects add-iam-policy-binding {p} --member {self.caller()} "
                                 "--role roles/serviceusage.serviceUsageViewer")
                raise
            if state != "ENABLED":
                disabled.append(service)
        if disabled:
            return Check(name, False, f"disabled in {p}: {', '.join(disabled)}",
                         f"gcloud services enable {' '.join(disabled)} --project {p}")
        return Check(name, True, f"{', '.join(s.split('.')[0] for s in wanted)} enabled in {p}")

    def bucket_check(self) -> Check:
        name = "bucket"
        cfg = self.cfg
        if not _uses_gcs(cfg):
            return _skip(name, f"the store is not a gs:// bucket ({cfg.store_url})")
        from google.api_core import exceptions as gexc

        from entrypoint.store_gcs import parse_gs_url

        bucket_name, prefix = parse_gs_url(cfg.store_url)
        gs = f"gs://{bucket_name}"
        region = region_of(cfg.zones[0]) if cfg.zones else "REGION"
        missing = Check(name, False, f"{gs} does not exist",
                        f"gcloud storage buckets create {gs} --project {self.project} "
                        f"--location {region} --uniform-bucket-level-access")

        def denied(what: str, e: Exception) -> Check:
            message = getattr(e, "message", str(e))
            return Check(name, False, f"no permission to {what} in {gs} ({message})",
                         f"gcloud storage buckets add-iam-policy-binding {gs} "
                         f"--member={self.caller()} --role={STORE_ROLE}")

        bucket = self.client("storage").bucket(bucket_name)
        # The storage library's own retry (429, 5xx, dropped connections), with the deadline every
        # other API call has: a sustained outage ends in a RetryError, said by ``run_checks``.
        from google.cloud.storage.retry import DEFAULT_RETRY

        from runner.cloud import gcp_clients

        retry = DEFAULT_RETRY.with_timeout(gcp_clients.API_RETRY_DEADLINE)
        notes = []
        try:
            bucket.reload(retry=retry)
            notes.append(f"location {bucket.location}")
        except gexc.NotFound:
            return missing
        except gexc.Forbidden:
            # storage.buckets.get is not in objectAdmin; reading and writing objects is what counts
            notes.append("bucket metadata not readable, which runs do not need")
        probe = bucket.blob(f"{prefix}.doctor/probe-{uuid.uuid4().hex[:12]}")
        data = b"runner doctor probe\n"
        try:
            probe.upload_from_string(data, if_generation_match=0, retry=retry)
        except gexc.NotFound:
            return missing
        except gexc.Forbidden as e:
            return denied("write objects", e)
        try:
            if probe.download_as_bytes(retry=retry) != data:
                return Check(name, False, f"{gs}: the probe object read back different bytes",
                             "check for a proxy or an object lifecycle/retention policy rewriting objects")
        except gexc.Forbidden as e:
            return denied("read objects", e)
        finally:
            try:
                probe.delete(retry=retry)
            except gcp_clients.api_errors():
                pass  # a delete failure is reported below, from a second attempt's answer
        if probe.exists(retry=retry):
            return Check(name, False, f"{gs}: could write and read {probe.name} but not delete it",
                         f"gcloud storage buckets add-iam-policy-binding {gs} "
                         f"--member={self.caller()} --role={STORE_ROLE}")
        where = f"{gs}/{prefix}" if prefix else gs
        return Check(name, True, f"{where} is readable and writable ({'; '.join(notes)})")

    def service_account_check(self) -> Check:
        name = "VM service account roles"
        cfg = self.cfg
        if cfg.backend != "gce":
            return _skip(name, "only GCE runs use a VM service account")
        if not cfg.project:
            return _skip(name, "no project configured")
        p = cfg.project
        apis = self.client("apis")
        if cfg.service_account:
            email = cfg.service_account
            sa_project = email.split("@", 1)[1].removesuffix(".iam.gserviceaccount.com") \
                if email.endswith(".iam.gserviceaccount.com") else None
            if sa_project and apis.get_service_account(sa_project, email) is None:
                account_id = email.split("@", 1)[0]
                return Check(name, False, f"service account {email} does not exist",
                             f"runner init --project {p}\n(or: gcloud iam service-accounts create "
                             f"{account_id} --project {sa_project})")
        else:
            email = f"{apis.project_number(p)}-compute@developer.gserviceaccount.com"
        member = f"serviceAccount:{email}"
        held = member_roles(apis.get_iam_policy(p), member)
        bucket_note = ""
        on_bucket: set[str] = set()
        gs = None
        if _uses_gcs(cfg):
            from entrypoint.store_gcs import parse_gs_url

            gs = f"gs://{parse_gs_url(cfg.store_url)[0]}"
            try:
                policy = self.client("storage").bucket(gs[5:]).get_iam_policy(requested_policy_version=3)
                on_bucket = {b["role"] for b in policy.bindings if member in b.get("members", ())}
            except Exception as e:  # noqa: BLE001 - unreadable: judge from the project policy
                bucket_note = f" (the policy of {gs} could not be read: {getattr(e, 'message', e)})"
        from runner.cloud.doctor_build import pull_grant_on_repository

        # The reader role counts on the image's repository too, as the repository check has it.
        on_repo, repo_path, repo_fix = pull_grant_on_repository(cfg, member) or (set(), "", "")
        missing, fixes = [], []
        for role, granted_by in VM_ROLES.items():
            if role == PULL_ROLE and repo_fix:
                if granted_by & (held | on_repo):
                    continue
                missing.append(f"{role} on {repo_path}")
                fixes.append(repo_fix)
            elif role == STORE_ROLE:
                if granted_by & (held | on_bucket):
                    continue
                missing.append(role + (f" on {gs}" if gs else ""))
                fixes.append(f"gcloud storage buckets add-iam-policy-binding {gs or 'gs://BUCKET'} "
                             f"--member={member} --role={role}")
            elif not granted_by & held:
                missing.append(role)
                fixes.append(f"gcloud projects add-iam-policy-binding {p} --member {member} --role {role}")
        own_role = self_delete_role(p)
        can_delete = bool(SELF_DELETE_GRANTED_BY & held)
        if not can_delete and (own_role in held or own_role in member_conditional_roles(
                apis.get_iam_policy(p), member)):
            # Bound, but the custom role must also exist and hold the permission.
            role = apis.get_role(p, SELF_DELETE_ROLE_ID) or {}
            can_delete = not role.get("deleted") and \
                "compute.instances.delete" in (role.get("includedPermissions") or [])
        if not can_delete:
            missing.append("compute.instances.delete (to delete its own VM when the job is over)")
            fixes.append(f"runner init --project {p}")
        default = "" if cfg.service_account else " (the Compute default service account)"
        if missing:
            return Check(name, False, f"{email}{default} lacks {', '.join(missing)}{bucket_note}",
                         "\n".join(fixes))
        return Check(name, True, f"{email}{default} has {', '.join(VM_ROLES)} and may delete its own VM")

    def hosted_check(self) -> Check:
        """The hosted supervisor's account (runner/cloud/hosted_setup.py), when one was set up."""
        from runner.cloud.hosted_setup import check_hosted

        if self.cfg.backend != "gce":
            return _skip("hosted supervisor roles", "only GCE runs are supervised in Cloud Run")
        ok, detail, fix = check_hosted(self.cfg, self.client("apis"), self.client("storage"))
        return _skip("hosted supervisor roles", detail) if ok is None else Check("hosted supervisor roles", ok, detail, fix)

    def docker_check(self) -> Check:
        name = "Docker"
        if self.cfg.backend != "local":
            return _skip(name, "the gce backend runs containers on the VMs, not here")
        try:
            self.docker_ping()
        except Exception as e:  # noqa: BLE001 - any reason means the same fix
            return Check(name, False, f"the Docker daemon is not reachable ({e})",
                         "start Docker (sudo systemctl start docker) and let your user reach it "
                         "(sudo usermod -aG docker $USER, then log in again), or set DOCKER_HOST")
        return Check(name, True, "the Docker daemon answers")

    def timeouts_check(self) -> Check:
        """Cross-checks Config does not reject (it already refuses a stall window shorter than
        gpu_timeout and a grace period of 30 s or more): combinations that work but misbehave."""
        cfg = self.cfg
        window = cfg.stall_window
        problems, fixes = [], []
        if cfg.heartbeat_interval * 3 > window:
            problems.append(f"heartbeat_interval {cfg.heartbeat_interval:g} s is more than a third of the "
                            f"stall window {window:g} s: two late heartbeats would restart a healthy run")
            fixes.append(f"heartbeat_interval = {window / 10:g}")
        if cfg.sync_interval > window:
            problems.append(f"sync_interval {cfg.sync_interval:g} s is longer than the stall window "
                            f"{window:g} s: a restarted run would resume from a checkpoint that old")
            fixes.append(f"sync_interval = {min(window / 2, 60.0):g}")
        if GCE_PREEMPTION_NOTICE - cfg.grace_period < SHUTDOWN_HEADROOM:
            problems.append(f"grace_period {cfg.grace_period:g} s leaves under {SHUTDOWN_HEADROOM:g} s of "
                            f"the {GCE_PREEMPTION_NOTICE:g} s preemption notice for docker stop and the last sync")
            fixes.append(f"grace_period = {GCE_PREEMPTION_NOTICE - 5:g}")
        name = "timeouts"
        gpu_wait = _gpu_wait_verdict(cfg)
        if gpu_wait.problem is not None:
            problems.insert(0, gpu_wait.problem)
            fixes.insert(0, gpu_wait.fix)
        if problems:
            return Check(name, False, "; ".join(problems), "runner.toml: " + ", ".join(fixes), warning=True)
        return Check(name, True, f"{gpu_wait.summary}; "
                     f"heartbeat every {cfg.heartbeat_interval:g} s, sync every {cfg.sync_interval:g} s, "
                     f"grace period {cfg.grace_period:g} s")


@dataclass(frozen=True)
class _GpuWaitVerdict:
    summary: str  # what a pass says
    problem: str | None = None  # what is wrong, from config's own rule
    fix: str = ""


def _gpu_wait_verdict(cfg: Config) -> _GpuWaitVerdict:
    """The stall window against the GPU wait, judged by config's one rule (``stall_window_problem``,
    the function submit's validation calls) so doctor never passes what submit refuses.

    A GPU shape that breaks the rule never gets here (Config refuses it, as submit does); a CPU
    shape that breaks it works, but the same settings with ``--gpu`` are refused: a warning.
    """
    from runner.config import stall_window_problem

    window, wait = cfg.stall_window, cfg.gpu_timeout
    problem = stall_window_problem(cfg)
    if problem is None:
        return _GpuWaitVerdict(f"stall window {window:g} s covers gpu_timeout {wait:g} s")
    if cfg.backend != "gce":
        # Local containers never wait for a GPU driver: the rule has nothing to cover there.
        return _GpuWaitVerdict(f"stall window {window:g} s (local containers do not wait for a GPU "
                               f"driver, so gpu_timeout {wait:g} s does not apply)")
    return _GpuWaitVerdict("", f"runs of this shape wait for no GPU driver, but submit refuses a GPU run "
                               f"(--gpu or a GPU machine type) with these settings: {problem}",
                           problem.rsplit("; ", 1)[-1])


def _storage_client(cfg: Config) -> Any:
    from entrypoint.store_gcs import make_client

    return make_client()


def regions_client(cfg: Config) -> Any:
    from runner.cloud.gcp_clients import regions_client as make

    return make(cfg.compute_endpoint)


def _load_adc() -> tuple[Any, str | None]:
    import google.auth

    return google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])


def _ping_docker() -> Any:
    import docker

    return docker.from_env(timeout=10).ping()


def run_checks(
    cfg: Config,
    *,
    load_credentials: Callable[[], tuple[Any, str | None]] = _load_adc,
    active_project: Callable[[], str | None] | None = None,
    apis: Callable[[Config], AdminApis] = admin_apis,
    storage_client: Callable[[Config], Any] = _storage_client,
    regions: Callable[[Config], Any] = regions_client,
    docker_ping: Callable[[], Any] = _ping_docker,
) -> list[Check]:
    """Run every check and return them in report order; never raises for a failing check.

    A check that raises is reported as ✗ with the exception, so a bug or an unexpected API
    answer in one check still lets the others report.
    """
    from runner.cloud.doctor_quota import gpu_quota_check

    if active_project is None:
        from runner.launch.context import gcloud_active_project as active_project
    doctor = _Doctor(cfg, load_credentials=load_credentials, active_project=active_project,
                     apis=apis, storage_client=storage_client, regions_client=regions,
                     docker_ping=docker_ping)
    from runner.cloud import doctor_build
    checks = [
        ("credentials", doctor.credentials_check),
        ("project", doctor.project_check),
        ("APIs enabled", doctor.apis_check),
        ("bucket", doctor.bucket_check),
        ("VM service account roles", doctor.service_account_check),
        ("hosted supervisor roles", doctor.hosted_check),
        ("network", lambda: network_check(doctor)),
        ("gang network", lambda: gang_network_check(doctor)),  # doctor_gang_network.py
        (doctor_build.REPOSITORY, lambda: doctor_build.repository_check(doctor)),
        (doctor_build.BUILD_ACCOUNT, lambda: doctor_build.build_account_check(doctor)),
        ("GPU quota", lambda: gpu_quota_check(doctor)),  # doctor_quota.py
        ("Docker", doctor.docker_check),
        ("timeouts", doctor.timeouts_check),
    ]
    needs_google = {"APIs enabled", "bucket", "VM service account roles", "hosted supervisor roles", "GPU quota",
                    "network", "gang network", doctor_build.REPOSITORY, doctor_build.BUILD_ACCOUNT}
    results: list[Check] = []
    for name, check in checks:
        if name in needs_google and results and results[0].ok is False:
            # Each would try to load the credentials again (and, off GCE, wait on the metadata
            # server each time) only to fail the same way: one failure, one fix.
            results.append(_skip(name, NO_CREDENTIALS))
            continue
        try:
            results.append(check())
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            if _no_credentials(e):
                results.append(_skip(name, NO_CREDENTIALS))
                continue
            if _retry_exhausted(e):
                results.append(Check(name, False,
                                     f"could not be checked: a Google API call is {retry_exhausted_text(e)}",
                                     "run `runner doctor` again later (https://status.cloud.google.com shows "
                                     "Google Cloud incidents)"))
                continue
            results.append(Check(name, False, f"the check itself failed: {type(e).__name__}: {e}",
                                 _generic_fix(e, cfg.project or "PROJECT")))
    return results


NO_CREDENTIALS = "needs Google credentials: fix the credentials check first"


def _retry_exhausted(e: BaseException) -> bool:
    """A fault (429/5xx) sustained past the retry deadline: Google's side, not the setup's; it
    is no ``GoogleAPICallError``, so no check's own handler sees it, and it is said here once."""
    from google.api_core.exceptions import RetryError

    return isinstance(e, RetryError)


def _no_credentials(e: BaseException) -> bool:
    """The failure is only that no credentials loaded (the credentials check says so, with the fix)."""
    from google.auth.exceptions import DefaultCredentialsError

    return isinstance(e, DefaultCredentialsError) or isinstance(e.__cause__, DefaultCredentialsError)


def _generic_fix(e: Exception, project: str) -> str:
    if isinstance(e, ApiError) and e.disabled_service:
        return f"gcloud services enable {e.disabled_service} --project {project}"
    if getattr(e, "code", None) == 403 or type(e).__name__ == "Forbidden":
        return "the caller lacks a permission named above; grant it, or run as a project owner"
    return ""
