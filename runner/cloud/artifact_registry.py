"""Artifact Registry: the Docker repository an image is pushed to, over its v1 REST API.

Why: a push to ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE`` needs REPOSITORY to exist
("Unlike Container Registry, creating a repository is a separate operation from pushing the first
image", https://cloud.google.com/artifact-registry/docs/docker/troubleshoot), so ``runner init``
creates it and ``runner doctor`` checks it. The client library is not among our dependencies and
four calls are needed, so this speaks REST through ``gcp_rest.RestApi`` like the admin APIs:
``repositories.create`` / ``get`` / ``getIamPolicy`` (GET) / ``setIamPolicy``
(https://cloud.google.com/artifact-registry/docs/reference/rest/v1/projects.locations.repositories).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from runner.cloud.gcp_rest import ApiError, RestApi, rest_api

ARTIFACTREGISTRY = "https://artifactregistry.googleapis.com"
DOCKER_HOST_SUFFIX = "-docker.pkg.dev"
DEFAULT_REPOSITORY = "runs"


@dataclass(frozen=True)
class Repository:
    """A Docker repository, named the way image references name it."""

    project: str
    location: str  # a region (us-central1) or a multi-region (us, europe, asia)
    repository: str

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    @property
    def host_path(self) -> str:
        return f"{self.location}{DOCKER_HOST_SUFFIX}/{self.project}/{self.repository}"

    def __str__(self) -> str:
        return self.host_path


def repository_of(image: str | None) -> Repository | None:
    """``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE[:TAG|@DIGEST]`` → its repository; None for an
    image kept elsewhere (another registry, a local tag)."""
    if not image:
        return None
    host, _, path = image.partition("/")
    parts = path.split("/")
    if not host.endswith(DOCKER_HOST_SUFFIX) or len(parts) < 3 or not all(parts[:2]):
        return None
    return Repository(parts[0], host.removesuffix(DOCKER_HOST_SUFFIX), parts[1])


class ArtifactRegistry:
    """The repository calls ``init`` and ``doctor`` make."""

    def __init__(self, api: RestApi, poll: float = 1.0, wait: float = 120.0) -> None:
        self.api = api
        self.poll = poll
        self.wait = wait

    def get_repository(self, repo: Repository) -> dict[str, Any] | None:
        """The repository, or None when it does not exist."""
        try:
            return self.api.get(f"/v1/{_path(repo.name)}")
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def create_docker_repository(self, repo: Repository, description: str) -> dict[str, Any]:
        """Create it (format DOCKER) and wait for the long-running operation to finish."""
        parent = f"projects/{repo.project}/locations/{repo.location}"
        op = self.api.post(f"/v1/{_path(parent)}/repositories",
                           {"format": "DOCKER", "description": description},
                           params={"repositoryId": repo.repository})
        deadline = time.monotonic() + self.wait
        while not op.get("done"):
            if time.monotonic() > deadline:
                raise ApiError(504, "DEADLINE_EXCEEDED", f"creating {repo.name} did not finish in "
                               f"{self.wait:g} s ({op.get('name')})")
            time.sleep(self.poll)
            op = self.api.get(f"/v1/{_path(op['name'])}")
        if op.get("error"):
            err = op["error"]
            raise ApiError(int(err.get("code") or 500), "", str(err.get("message") or err))
        return self.get_repository(repo) or {}

    def get_iam_policy(self, repo: Repository) -> dict[str, Any]:
        return self.api.get(f"/v1/{_path(repo.name)}:getIamPolicy",
                            params={"options.requestedPolicyVersion": 3})

    def set_iam_policy(self, repo: Repository, policy: dict[str, Any]) -> dict[str, Any]:
        """Write ``policy``; a stale ``etag`` fails with 409 ABORTED, as on every IAM resource."""
        return self.api.post(f"/v1/{_path(repo.name)}:setIamPolicy", {"policy": policy})


def _path(name: str) -> str:
    return quote(name, safe="/")


def artifact_registry(cfg: Any, credentials: Any = None) -> ArtifactRegistry:
    """The client at ``artifactregistry_endpoint`` (a stand-in in tests), else Google's.

    User credentials without a quota project are billed to the project being set up, as
    ``gcp_rest.admin_apis`` does, or the API answers SERVICE_DISABLED for gcloud's own project.
    """
    endpoint = cfg.artifactregistry_endpoint
    if credentials is None and not (endpoint or "").startswith("http://"):
        import google.auth
        from google.oauth2.credentials import Credentials as UserCredentials

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        if cfg.project and isinstance(credentials, UserCredentials) and not credentials.quota_project_id:
            credentials = credentials.with_quota_project(cfg.project)
    return ArtifactRegistry(rest_api(endpoint, ARTIFACTREGISTRY, credentials))
