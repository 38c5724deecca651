"""``runner doctor``'s build checks: the Artifact Registry repository the image goes to, and the
account Cloud Build runs as.

Why: a push to ``*-docker.pkg.dev`` fails unless the repository exists and a VM pulls only with
``roles/artifactregistry.reader`` (on the repository or the project), which an organisation that
stops automatic grants to default accounts never gives
(https://cloud.google.com/artifact-registry/docs/docker/troubleshoot). The account a build runs
as is the configured ``build_service_account``, else the project's default, read from Cloud
Build (``projects.locations.getDefaultServiceAccount``): since 2024 that is the Compute Engine
default account, which such an organisation leaves with no roles
(https://cloud.google.com/build/docs/cloud-build-service-account-updates).

Both checks apply only where builds are set up: an Artifact Registry ``image`` (or a
``build_service_account``) in the config. Each takes the doctor's shared ``_Doctor`` and returns
one ``Check``; ``doctor.run_checks`` lists them.
"""

from __future__ import annotations

from typing import Any

from runner.cloud.artifact_registry import Repository, artifact_registry, repository_of
from runner.cloud.doctor import Check
from runner.cloud.gcp_rest import member_roles

BUILD_ACCOUNT = "Cloud Build account"
REPOSITORY = "Artifact Registry repository"
# Each role a build needs, with the broader roles that also grant it. roles/cloudbuild.builds.builder
# is the legacy Cloud Build account's role, which reads sources, writes logs and pushes to the
# project's repositories ("The Cloud Build default service account has permissions to push to and
# pull from Artifact Registry repositories in the same Google Cloud project",
# https://cloud.google.com/artifact-registry/docs/docker).
_BROAD = frozenset({"roles/editor", "roles/owner"})
SOURCE_GRANTED_BY = _BROAD | {"roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin",
                              "roles/storage.admin", "roles/cloudbuild.builds.builder"}
LOGS_GRANTED_BY = _BROAD | {"roles/logging.logWriter", "roles/logging.admin", "roles/cloudbuild.builds.builder"}
PUSH_GRANTED_BY = _BROAD | {"roles/artifactregistry.writer", "roles/artifactregistry.repoAdmin",
                            "roles/artifactregistry.admin", "roles/cloudbuild.builds.builder"}
PULL_GRANTED_BY = PUSH_GRANTED_BY - {"roles/cloudbuild.builds.builder"} | {"roles/artifactregistry.reader"}


def _check(name: str, ok: bool | None, detail: str, fix: str = "") -> Check:
    return Check(name, ok, detail, fix)


def _not_set_up(cfg: Any) -> str | None:
    """Why the build checks do not apply to this config, or None when they do."""
    if cfg.backend != "gce":
        return "images for the local backend are built with the local Docker daemon"
    if not cfg.project:
        return "no project configured"
    if repository_of(cfg.image) is None and not cfg.build_service_account:
        return ("no Artifact Registry image configured (image = LOCATION-docker.pkg.dev/PROJECT/REPO/NAME); "
                "`runner init` creates the repository and a build account")
    return None


def builds_set_up(cfg: Any) -> bool:
    """Whether the build checks apply (and so call Cloud Build and Artifact Registry)."""
    return _not_set_up(cfg) is None


def repository_check(doctor: Any) -> Check:
    """The image's repository exists (format DOCKER) and the VM account may pull from it."""
    cfg = doctor.cfg
    why = _not_set_up(cfg)
    repo = repository_of(cfg.image)
    if why or repo is None:
        return _check(REPOSITORY, None, why or "the image is not in Artifact Registry")
    p = cfg.project
    registry = artifact_registry(cfg)
    got = registry.get_repository(repo)
    if got is None:
        return _check(REPOSITORY, False, f"{repo.host_path} does not exist: every push of {cfg.image} fails",
                      f"runner init --project {p}\n(or: gcloud artifacts repositories create {repo.repository} "
                      f"--repository-format=docker --location={repo.location} --project {repo.project})")
    if got.get("format") != "DOCKER":
        return _check(REPOSITORY, False, f"{repo.host_path} holds {got.get('format')} packages, not Docker images",
                      "set image to a repository of format DOCKER (`runner init` creates one)")
    apis = doctor.client("apis")
    vm = cfg.service_account or f"{apis.project_number(p)}-compute@developer.gserviceaccount.com"
    member = f"serviceAccount:{vm}"
    held = member_roles(apis.get_iam_policy(repo.project), member) | \
        member_roles(registry.get_iam_policy(repo), member)
    if not PULL_GRANTED_BY & held:
        return _check(REPOSITORY, False, f"{repo.host_path} exists, but the VM account {vm} may not pull from it "
                      "(no roles/artifactregistry.reader on the repository or the project)",
                      _repo_grant(repo, member, "roles/artifactregistry.reader"))
    return _check(REPOSITORY, True, f"{repo.host_path} (Docker, {repo.location}); the VM account {vm} may pull")


def pull_grant_on_repository(cfg: Any, member: str) -> tuple[set[str], str, str] | None:
    """(the roles ``member`` holds on the repository of ``cfg.image``, that repository's host path,
    the command granting it the reader role there), or None when the image is not in an Artifact
    Registry repository, or its policy cannot be read (then the project's policy decides, and
    ``repository_check`` says what is wrong with the repository).

    Why: a reader grant on the repository alone is enough to pull (and is the narrowest), so the
    VM account check must accept it as ``repository_check`` does; the two must never disagree."""
    repo = repository_of(cfg.image)
    if repo is None:
        return None
    try:
        held = member_roles(artifact_registry(cfg).get_iam_policy(repo), member)
    except Exception:  # noqa: BLE001 - unreadable (not created yet, denied): the project policy decides
        return None
    return held, repo.host_path, _repo_grant(repo, member, "roles/artifactregistry.reader")


def build_account_check(doctor: Any) -> Check:
    """The account Cloud Build runs as may read the staged source, write its log and push."""
    cfg = doctor.cfg
    why = _not_set_up(cfg)
    if why:
        return _check(BUILD_ACCOUNT, None, why)
    p = cfg.project
    apis = doctor.client("apis")
    email = cfg.build_service_account
    if email:
        own = email.endswith(".iam.gserviceaccount.com")
        sa_project = email.split("@", 1)[1].removesuffix(".iam.gserviceaccount.com") if own else None
        if sa_project and apis.get_service_account(sa_project, email) is None:
            return _check(BUILD_ACCOUNT, False, f"build_service_account {email} does not exist",
                          f"runner init --project {p}")
        kind = "build_service_account"
    else:
        from runner.build.build_account import default_build_account
        from runner.cloud.gcp_clients import cloudbuild_client

        email = default_build_account(cloudbuild_client(cfg.cloudbuild_endpoint), p)
        if email is None:
            return _check(BUILD_ACCOUNT, False, f"Cloud Build has no default service account in {p} "
                          "(an organisation policy can leave it none), so a build that names none cannot run",
                          f"runner init --project {p}, then set build_service_account to the account it creates")
        kind = "Cloud Build's default"
    member = f"serviceAccount:{email}"
    held = member_roles(apis.get_iam_policy(p), member)
    missing, fixes = [], []
    if _uses_bucket(cfg):
        from entrypoint.store_gcs import parse_gs_url

        gs = f"gs://{parse_gs_url(cfg.store_url)[0]}"
        on_bucket = _bucket_roles(doctor, gs, member)
        if not SOURCE_GRANTED_BY & (held | on_bucket):
            missing.append(f"roles/storage.objectViewer on {gs} (to read the staged source)")
            fixes.append(f"gcloud storage buckets add-iam-policy-binding {gs} --member={member} "
                         "--role=roles/storage.objectViewer")
    if not LOGS_GRANTED_BY & held:
        missing.append("roles/logging.logWriter (cloudbuild.yaml logs to Cloud Logging)")
        fixes.append(f"gcloud projects add-iam-policy-binding {p} --member {member} --role roles/logging.logWriter")
    repo = repository_of(cfg.image)
    if repo is not None:
        registry = artifact_registry(cfg)
        on_repo: set[str] = set()
        if registry.get_repository(repo) is not None:
            on_repo = member_roles(registry.get_iam_policy(repo), member)
        if repo.project != p:
            on_repo |= member_roles(apis.get_iam_policy(repo.project), member)
        if not PUSH_GRANTED_BY & (held | on_repo):
            missing.append(f"roles/artifactregistry.writer on {repo.host_path} (to push)")
            fixes.append(_repo_grant(repo, member, "roles/artifactregistry.writer"))
    from runner.build.build_account import describe

    # describe() already says why a default account was used; a named one gets where it came from.
    who = describe(email) if describe(email) != email else f"{email} ({kind})"
    if missing:
        return _check(BUILD_ACCOUNT, False, f"builds run as {who}, which lacks "
                      + "; ".join(missing), "\n".join(fixes + [f"(or: runner init --project {p})"]))
    return _check(BUILD_ACCOUNT, True, f"builds run as {who}, which may read the "
                  "staged source, write its log and push")


def _uses_bucket(cfg: Any) -> bool:
    return cfg.store_url.startswith("gs://")


def _bucket_roles(doctor: Any, gs: str, member: str) -> set[str]:
    try:
        policy = doctor.client("storage").bucket(gs[5:]).get_iam_policy(requested_policy_version=3)
    except Exception:  # noqa: BLE001 - unreadable: judge from the project policy alone
        return set()
    return {b["role"] for b in policy.bindings if member in b.get("members", ())}


def _repo_grant(repo: Repository, member: str, role: str) -> str:
    return (f"gcloud artifacts repositories add-iam-policy-binding {repo.repository} "
            f"--location={repo.location} --project={repo.project} --member={member} --role={role}")
