"""A loopback fake of the Artifact Registry v1 REST paths ``runner init`` and ``runner doctor`` call.

Why a fake: since Artifact Registry replaced Container Registry, a push to
``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE`` needs REPOSITORY to exist first ("Unlike
Container Registry, creating a repository is a separate operation from pushing the first image",
https://cloud.google.com/artifact-registry/docs/docker/troubleshoot). A first project fails
there unless setup creates the repository, so the fake makes a push to a missing one fail
(``push_refusal``, wired into the Cloud Build fake's ``push_refusal`` hook).

Modelled (https://cloud.google.com/artifact-registry/docs/reference/rest/v1/projects.locations.repositories/create
and its siblings ``get``, ``getIamPolicy``, ``setIamPolicy``):

- ``POST /v1/projects/P/locations/L/repositories?repositoryId=ID`` with a ``Repository`` body
  answers an ``Operation``; here it is already ``done`` with the ``Repository`` as its
  ``response`` (the real one may take a moment: the product polls ``operations/...`` until done,
  which the fake also serves). ``repositoryId`` is required; ``format`` must be given; a second
  create of the same name is 409 ``ALREADY_EXISTS``; an unknown location is 400.
- ``GET .../repositories/ID`` → the ``Repository`` or 404 ``NOT_FOUND``.
- ``GET .../repositories/ID:getIamPolicy`` (GET, with ``options.requestedPolicyVersion``) and
  ``POST ...:setIamPolicy`` with etags: a stale etag is 409 ``ABORTED``, as the IAM APIs answer.
- ``deny``: rpc names answering 403 ``PERMISSION_DENIED``; a project absent from ``projects``
  answers 403 as Google does for projects the caller cannot see.

Who may push (``repository_writers``, for the Cloud Build fake's ``push_denial`` hook): an account
holding a role with ``artifactregistry.repositories.uploadArtifacts`` on the repository or its
project (writer, repoAdmin, admin: https://cloud.google.com/iam/docs/roles-permissions/artifactregistry;
the basic editor and owner; the legacy Cloud Build account's ``roles/cloudbuild.builds.builder``,
which "has permissions to push to and pull from Artifact Registry repositories in the same Google
Cloud project", https://cloud.google.com/artifact-registry/docs/docker). Any other account is
refused with the registry's text ``denied: Permission "artifactregistry.repositories.uploadArtifacts"
denied on resource "projects/P/locations/L/repositories/R" (or it may not exist)``
(https://github.com/GoogleCloudPlatform/cymbal-superstore/pull/4). Conditions are not modelled.

Not modelled: the API being disabled, CMEK, cleanup policies, remote/virtual repositories,
per-image IAM. The error texts paraphrase the service (codes and ``status`` are the canonical
ones), and the repository id pattern below is this fake's assumption, not a documented rule.
Unknown paths answer 501 so gaps are loud.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest

from tests.standins.google_api import GoogleApiError, RoutedApi
from tests.standins.json_http_server import serve

# Repository locations (regions and the us/europe/asia multi-regions), from the location list on
# the repositories.create reference page above. Enough for tests; not every region.
LOCATIONS = frozenset({"us", "europe", "asia", "us-central1", "us-east1", "us-east4", "us-west1",
                       "us-west4", "europe-west1", "europe-west4", "asia-east1", "asia-southeast1"})
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
_REPO = r"/v1/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)/repositories"


def _error(code: int, message: str, status: str | None = None) -> GoogleApiError:
    return GoogleApiError(code, message, status=status or _STATUS.get(code, "UNKNOWN"))


@dataclass
class _Repository:
    body: dict[str, Any]
    policy: dict[str, Any] = field(default_factory=dict)


class ArtifactRegistryFake(RoutedApi):
    """Repositories and their IAM policies, per project; served by ``run_artifact_registry_fake``."""

    NAME = "artifact registry fake"
    ROUTES = [
        ("POST", _REPO, "repositories.create"),
        ("GET", _REPO + r"/(?P<repo>[^/:]+)", "repositories.get"),
        ("GET", _REPO + r"/(?P<repo>[^/:]+):getIamPolicy", "repositories.getIamPolicy"),
        ("POST", _REPO + r"/(?P<repo>[^/:]+):setIamPolicy", "repositories.setIamPolicy"),
        ("GET", r"/v1/(?P<operation>projects/[^/]+/locations/[^/]+/operations/[^/:]+)", "operations.get"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.projects: set[str] = set()
        self.deny: set[str] = set()
        self.endpoint = ""
        self._repos: dict[str, _Repository] = {}  # full name -> repository
        self._ops: dict[str, dict[str, Any]] = {}
        self._etags = itertools.count(1)
        self._op_ids = itertools.count(1)

    # ---- setup and inspection ---------------------------------------------------------------

    def add_project(self, project: str) -> None:
        with self.lock:
            self.projects.add(project)

    def add_repository(self, project: str, location: str, repo: str, fmt: str = "DOCKER") -> None:
        """A repository made outside the runner (the console, gcloud)."""
        with self.lock:
            self.projects.add(project)
            self._store(project, location, repo, {"format": fmt})

    def repository(self, project: str, location: str, repo: str) -> dict[str, Any] | None:
        with self.lock:
            got = self._repos.get(_name(project, location, repo))
            return copy.deepcopy(got.body) if got else None

    def policy(self, project: str, location: str, repo: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._repos[_name(project, location, repo)].policy)

    def push_refusal(self, image: str) -> str | None:
        """Why a push of ``image`` would be refused here, or None when it would be accepted.

        Only ``*-docker.pkg.dev`` names are judged (others belong to other registries). The text
        is what ``docker push`` prints for a repository that does not exist; its exact wording is
        not documented, only that the repository must exist (see the module docstring).
        """
        host, _, path = image.partition("/")
        if not host.endswith("-docker.pkg.dev"):
            return None
        parts = path.split("/")
        if len(parts) < 3:
            return f"name invalid: Missing image name in {image}"
        location, project, repo = host.removesuffix("-docker.pkg.dev"), parts[0], parts[1]
        with self.lock:
            found = self._repos.get(_name(project, location, repo))
        if found is None:
            return (f'name unknown: Repository "{repo}" not found (projects/{project}/locations/'
                    f"{location}/repositories/{repo})")
        if found.body.get("format") != "DOCKER":
            return f"name invalid: repository {repo} is not a Docker repository"
        return None

    # ---- HTTP --------------------------------------------------------------------------------

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> str:
        return json.dumps(self._dispatch(rpc, args, query, json.loads(body) if body else {}))

    def _dispatch(self, rpc: str, a: dict[str, str], q: dict[str, str], body: dict[str, Any]) -> Any:
        if rpc == "operations.get":
            op = self._ops.get(a["operation"])
            if op is None:
                raise _error(404, f"Operation {a['operation']} not found.")
            return op
        project, location = a["project"], a["location"]
        if project not in self.projects:
            raise _error(403, f"Permission denied on resource project {project}.")
        if rpc in self.deny:
            raise _error(403, f"Permission 'artifactregistry.{rpc}' denied on resource (or it may "
                              "not exist).")
        if location not in LOCATIONS:
            raise _error(400, f"Invalid location {location!r}.")
        if rpc == "repositories.create":
            return self._create(project, location, q.get("repositoryId", ""), body)
        repo = self._repos.get(_name(project, location, a["repo"]))
        if repo is None:
            raise _error(404, f"Requested entity was not found. ({_name(project, location, a['repo'])})")
        if rpc == "repositories.get":
            return repo.body
        if rpc == "repositories.getIamPolicy":
            return repo.policy
        policy = body.get("policy") or {}
        if policy.get("etag") and policy["etag"] != repo.policy.get("etag"):
            raise _error(409, "There were concurrent policy changes. Please retry the whole "
                              "read-modify-write with exponential backoff.", "ABORTED")
        repo.policy = {"version": policy.get("version", 1), "etag": self._etag(),
                       "bindings": copy.deepcopy(policy.get("bindings") or [])}
        return repo.policy

    def _create(self, project: str, location: str, repo_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if not repo_id:
            raise _error(400, "repositoryId is required.")
        # Assumed (not verified): lower-case letters, digits and hyphens, starting with a letter.
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", repo_id):
            raise _error(400, f"Invalid repository id {repo_id!r}.")
        if body.get("format") in (None, "", "FORMAT_UNSPECIFIED"):
            raise _error(400, "Repository format must be specified.")
        name = _name(project, location, repo_id)
        if name in self._repos:
            raise _error(409, f"the repository already exists ({name})")
        created = self._store(project, location, repo_id, body)
        op_name = f"projects/{project}/locations/{location}/operations/op-{next(self._op_ids)}"
        op = {"name": op_name, "done": True, "response": {
            "@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository", **created}}
        self._ops[op_name] = op
        return op

    def _store(self, project: str, location: str, repo_id: str, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(project, location, repo_id)
        repo = {**copy.deepcopy(body), "name": name, "createTime": "2026-01-01T00:00:00Z",
                "updateTime": "2026-01-01T00:00:00Z", "mode": body.get("mode", "STANDARD_REPOSITORY")}
        self._repos[name] = _Repository(repo, {"version": 1, "etag": self._etag(), "bindings": []})
        return copy.deepcopy(repo)

    def _etag(self) -> str:
        return f"BwYr{next(self._etags):06d}="


# Roles that carry artifactregistry.repositories.uploadArtifacts (see the module docstring).
UPLOADS_ARTIFACTS = frozenset({"roles/artifactregistry.writer", "roles/artifactregistry.repoAdmin",
                               "roles/artifactregistry.admin", "roles/editor", "roles/owner",
                               "roles/cloudbuild.builds.builder"})


def repository_writers(registry: ArtifactRegistryFake, admin: Any) -> Callable[[str, str], str | None]:
    """``(account email, image) -> refusal or None`` for the Cloud Build fake's ``push_denial``,
    judged from the repository's IAM policy (this fake's) and its project's (the admin fake's)."""

    def denial(email: str, image: str) -> str | None:
        host, _, path = image.partition("/")
        parts = path.split("/")
        if not host.endswith("-docker.pkg.dev") or len(parts) < 3:
            return None  # another registry, or a name push_refusal already refuses
        project, location, repo = parts[0], host.removesuffix("-docker.pkg.dev"), parts[1]
        member = f"serviceAccount:{email}"
        with registry.lock:
            found = registry._repos.get(_name(project, location, repo))
            bindings = copy.deepcopy(found.policy.get("bindings") or []) if found else []
        on_repo = {b["role"] for b in bindings if member in b.get("members", ()) and not b.get("condition")}
        on_project = {b["role"] for b in admin.policy(project)["bindings"]
                      if member in b.get("members", ()) and not b.get("condition")}
        if UPLOADS_ARTIFACTS & (on_repo | on_project):
            return None
        return (f'denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
                f'"{_name(project, location, repo)}" (or it may not exist)')

    return denial


def _name(project: str, location: str, repo: str) -> str:
    return f"projects/{project}/locations/{location}/repositories/{repo}"


@pytest.fixture
def artifact_registry_fake() -> Iterator[ArtifactRegistryFake]:
    """A fresh fake per test; fails the test if the fake itself crashed."""
    fake = ArtifactRegistryFake()
    with serve(fake, "artifact-registry-fake") as endpoint:
        fake.endpoint = endpoint
        yield fake
    if fake.internal_errors:
        pytest.fail(f"the artifact registry fake crashed: {fake.internal_errors}")
