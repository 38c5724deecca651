"""``runner init``'s build steps: the Artifact Registry repository images go to, and the service
account Cloud Build runs as, with exactly the roles a build of ``cloudbuild.yaml`` needs.

Why an account of our own: since 2024 a new project's builds run as the Compute Engine default
account, and an organisation that stops automatic grants to default accounts leaves it with no
roles at all (https://cloud.google.com/build/docs/cloud-build-service-account-updates); Google
recommends a user-specified account instead
(https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts).
Triggers created in new projects must name one anyway. A build of ``cloudbuild.yaml`` needs:

- ``roles/storage.objectViewer`` on the store's bucket: it reads the staged source (objects.get
  and objects.list; the FETCHSOURCE failure otherwise);
- ``roles/logging.logWriter`` on the project: the file logs to Cloud Logging only, which a build
  naming an account must (or own a logs bucket);
- ``roles/artifactregistry.writer`` on the repository: it pulls the cache image and pushes
  (https://cloud.google.com/artifact-registry/docs/docker/troubleshoot, "grant the Artifact
  Registry Writer role to the service account that runs builds").

A user-chosen account (``build_service_account``) gets the same roles; one in this project that
does not exist yet is created. The VMs' ``roles/artifactregistry.reader`` is granted on the
project by ``project_setup`` already.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from runner.cloud.artifact_registry import DEFAULT_REPOSITORY, ArtifactRegistry, Repository, repository_of
from runner.cloud.gcp_rest import AdminApis, ApiError
from runner.cloud.project_setup import ensure_service_account
from runner.cloud.iam_grants import (Step, ensure_bucket_role, ensure_project_roles, grant_in_policy,
                                     service_account_email)

BUILD_SA_NAME = "cos-spot-runner-build"
BUILD_SA_DISPLAY_NAME = "cos-spot-runner builds"
SOURCE_ROLE = "roles/storage.objectViewer"
BUILD_PROJECT_ROLES = ("roles/logging.logWriter",)
PUSH_ROLE = "roles/artifactregistry.writer"


def build_repository(cfg: Any, region: str) -> Repository | None:
    """The repository of the configured image; ``runs`` in ``region`` when no image is configured
    yet; None for an image kept outside Artifact Registry (nothing to create there)."""
    if cfg.image:
        return repository_of(cfg.image)
    return Repository(cfg.project, region, DEFAULT_REPOSITORY)


def build_account(cfg: Any) -> str:
    """The account builds run as: the configured one, else the one ``init`` creates."""
    return cfg.build_service_account or service_account_email(cfg.project, BUILD_SA_NAME)


def init_builds(cfg: Any, *, region: str, apis: AdminApis, bucket: Any, registry: ArtifactRegistry,
                say: Callable[[str], None], sleep: Callable[[float], None] = time.sleep) -> list[Step]:
    """Ensure the repository, the build account and its roles; idempotent like ``init_project``.

    ``say`` gets each step as it ends and, last, the settings to add when the config does not
    name the image or the build account yet.
    """
    from runner.cloud.iam_grants import format_step

    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        say(format_step(step))

    project = cfg.project
    repo = build_repository(cfg, region)
    email = build_account(cfg)
    member = f"serviceAccount:{email}"
    if repo is not None:
        record(ensure_docker_repository(registry, repo))
    if email.endswith(f"@{project}.iam.gserviceaccount.com"):
        record(ensure_service_account(apis, project, email.split("@", 1)[0], BUILD_SA_DISPLAY_NAME,
                                      "Cloud Build runs cos-spot-runner image builds as this account"))
    record(ensure_bucket_role(bucket, member, SOURCE_ROLE, sleep=sleep))
    record(ensure_project_roles(apis, project, member, BUILD_PROJECT_ROLES, sleep=sleep))
    if repo is not None:
        record(ensure_repository_role(registry, repo, member, PUSH_ROLE, sleep=sleep))
    else:
        say(f"note: image {cfg.image} is not in Artifact Registry: no repository created, and the "
            "build account needs the right to push there from whoever runs that registry")
    if repo is not None and not cfg.image:
        say(f'next: set image = "{repo.host_path}/workload" in runner.toml so builds push there')
    if not cfg.build_service_account:
        say(f'next: set build_service_account = "{email}" in runner.toml so builds run as it '
            "(and name it in any Cloud Build trigger: --service-account=projects/"
            f"{project}/serviceAccounts/{email})")
    return steps


def init_builds_in(cfg: Any, *, region: str, say: Callable[[str], None]) -> list[Step]:
    """``init_builds`` with the clients the config names (run after ``init_project``, which has
    checked the project and the gs:// store and made the bucket)."""
    from entrypoint.store_gcs import make_client, parse_gs_url
    from runner.cloud.artifact_registry import artifact_registry
    from runner.cloud.gcp_rest import admin_apis

    bucket = make_client().bucket(parse_gs_url(cfg.store)[0])
    return init_builds(cfg, region=region, apis=admin_apis(cfg), bucket=bucket,
                       registry=artifact_registry(cfg), say=say)


def ensure_docker_repository(registry: ArtifactRegistry, repo: Repository) -> Step:
    """The repository exists with format DOCKER; one of another format is an error that says so."""
    name = f"repository {repo.host_path}"
    got = registry.get_repository(repo)
    if got is None:
        try:
            registry.create_docker_repository(repo, "cos-spot-runner images")
            return Step(name, True, f"created (format DOCKER, location {repo.location})")
        except ApiError as e:
            if e.code != 409:  # 409: created meanwhile by another init; check it below
                raise
            got = registry.get_repository(repo) or {}
    if got.get("format", "DOCKER") != "DOCKER":
        raise ApiError(409, "FAILED_PRECONDITION",
                       f"{repo.name} exists with format {got.get('format')}, not DOCKER: set image to "
                       "a repository of Docker format (e.g. REGION-docker.pkg.dev/PROJECT/runs/workload)")
    return Step(name, False, f"exists (format DOCKER, location {repo.location})")


def ensure_repository_role(registry: ArtifactRegistry, repo: Repository, member: str, role: str, *,
                           sleep: Callable[[float], None] = time.sleep) -> Step:
    """``member`` holds ``role`` on the repository (its own IAM policy, written with its etag and
    redone on a concurrent change: ``iam_grants.grant_in_policy``)."""
    name = f"{role} on {repo.host_path}"
    if grant_in_policy(lambda: registry.get_iam_policy(repo), lambda policy: registry.set_iam_policy(repo, policy),
                       role, member, sleep):
        return Step(name, True, f"granted to {member}")
    return Step(name, False, f"already granted to {member}")
