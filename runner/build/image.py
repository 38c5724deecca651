"""``runner build``: the workload image and its digest, by the first route that works.

The fallback chain, each step announced and its failure kept for the final message:

1. Cloud Build from the context packed here (``.gcloudignore`` honoured) and staged to
   ``gs://BUCKET/cloudbuild/source/<ts>-<hash>.tgz``, with ``cloudbuild.yaml`` as the build;
2. the same build from a freshly re-packed and re-staged tarball (what rescues the
   "archive crashed" and "staged object unreadable" cases);
3. a local ``docker buildx build --platform linux/amd64 --push`` (or ``docker build`` +
   ``docker push`` without buildx), if a Docker daemon is reachable.

``--local`` builds with the local daemon only (the local backend's route, and the tests').
The result is always a pinned reference: ``REPO/NAME@sha256:…``, or a local image id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

Say = Callable[[str], None]


class BuildError(Exception):
    """No route produced an image; the message lists what each route said."""


class NoCredentials(BuildError):
    """No Google credentials on this machine. Every Google route fails the same way (staging,
    Cloud Build, a push to Artifact Registry through gcloud's Docker credential helper:
    https://cloud.google.com/artifact-registry/docs/docker/authentication), so the chain stops
    at the first, with one message, rather than repeat it and build an image nobody can push."""


class MissingDockerfile(BuildError):
    """The context has no Dockerfile (or is not a folder): no route can build it, so say so
    before staging or building anything. ``what`` is the path that is missing."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


NO_CREDENTIALS = (
    "no Google credentials on this machine, so the image can be neither built in Cloud Build nor "
    "pushed: run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS to "
    "a service-account key), then run this again (a build for the local backend needs none: "
    "runner build --local)")


def check_context(req: BuildRequest) -> None:
    """Raise ``MissingDockerfile`` unless ``req.context_dir`` is a folder holding ``req.dockerfile``."""
    if not os.path.isdir(req.context_dir):
        raise MissingDockerfile(f"no folder {req.context_dir} to build", req.context_dir)
    path = os.path.join(req.context_dir, req.dockerfile)
    if not os.path.isfile(path):
        raise MissingDockerfile(f"no {req.dockerfile} in {os.path.abspath(req.context_dir)} to build", path)


def _no_credentials(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from) is google-auth's "no default credentials"
    (https://googleapis.dev/python/google-auth/latest/reference/google.auth.html: ``default()``
    raises ``DefaultCredentialsError`` when no source yields credentials)."""
    from google.auth.exceptions import DefaultCredentialsError

    return isinstance(e, DefaultCredentialsError) or isinstance(e.__cause__, DefaultCredentialsError)


@dataclass(frozen=True)
class BuildRequest:
    context_dir: str
    image: str                       # REPO/NAME[:TAG]; the digest is added by the build
    dockerfile: str = "Dockerfile"
    base_image: str | None = None    # BASE_IMAGE build arg; None: the Dockerfile's default
    config_file: str = "cloudbuild.yaml"
    service_account: str | None = None  # email Cloud Build runs as; None: the project's default


@dataclass
class BuildResult:
    image: str                       # pinned: REPO/NAME@sha256:... (or sha256:... for --local)
    route: str
    failures: list[str] = field(default_factory=list)


def repo_of(image: str) -> str:
    """``host/p/r/name:tag`` → ``host/p/r/name`` (a ``:`` in a registry port is kept)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


# ---- staging -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StagedSource:
    bucket: str
    object: str
    files: int
    size: int


def stage_source(req: BuildRequest, bucket: str, say: Say, tag: str = "") -> StagedSource:
    """Pack the context and upload it; a 403 names the role that is missing."""
    from entrypoint.store import StoreError
    from entrypoint.store_gcs import GcsStore
    from runner.build.build_context import IgnoreRules, collect, pack, summary

    rules = IgnoreRules.from_dir(req.context_dir)
    files = collect(req.context_dir, rules)
    with tempfile.TemporaryDirectory(prefix="runner-build-") as tmp:
        packed = pack(req.context_dir, files, os.path.join(tmp, "source.tgz"))
        name = f"cloudbuild/source/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{packed.sha256[:12]}{tag}.tgz"
        say(f"staging {summary(packed)} to gs://{bucket}/{name}")
        try:
            GcsStore(f"gs://{bucket}").upload_file(name, packed.path)
        except StoreError as e:
            if _no_credentials(e):
                raise NoCredentials(NO_CREDENTIALS) from None
            raise BuildError(f"could not stage the source to gs://{bucket}: {e}") from None
        return StagedSource(bucket, name, packed.count, packed.size_bytes)


def list_files(context_dir: str) -> list[str]:
    from runner.build.build_context import IgnoreRules, collect

    from runner.build.build_context import DIR

    return [f.path for f in collect(context_dir, IgnoreRules.from_dir(context_dir)) if f.kind != DIR]


# ---- Cloud Build -------------------------------------------------------------------------

def build_definition(req: BuildRequest, staged: StagedSource, project: str | None = None) -> Any:
    """``cloudbuild.yaml`` as a ``cloudbuild_v1.Build`` with our source, substitutions and, when
    one is configured, the service account it runs as.

    The context's own ``cloudbuild.yaml`` when it has one; else the one this runner ships
    (``runner/shipped_files.py``), which builds any context's ``_DOCKERFILE``: a user's job folder
    holds a Dockerfile, not a build definition (issue 20 §15)."""
    import yaml
    from google.cloud.devtools import cloudbuild_v1

    from runner import shipped_files

    path = os.path.join(req.context_dir, req.config_file)
    if not os.path.exists(path) and req.config_file == shipped_files.CLOUDBUILD_YAML:
        try:
            path = str(shipped_files.cloudbuild_yaml())
        except shipped_files.MissingShippedFile as e:
            raise BuildError(str(e)) from None
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e}") from None
    build = cloudbuild_v1.Build.from_json(json.dumps(doc))
    subs = dict(build.substitutions)
    subs.update(_IMAGE=repo_of(req.image), _DOCKERFILE=req.dockerfile)
    if req.base_image:
        subs["_BASE_IMAGE"] = req.base_image
    build.substitutions = subs
    build.source = cloudbuild_v1.Source(
        storage_source=cloudbuild_v1.StorageSource(bucket=staged.bucket, object_=staged.object))
    if req.service_account:
        from runner.build.build_account import account_resource

        if not _logs_allowed_with_an_account(build):
            raise BuildError(
                f"{req.config_file} keeps its logs in Cloud Storage's default bucket, which Cloud Build "
                f"refuses for a build that names a service account ({req.service_account}): set "
                "`options: logging: CLOUD_LOGGING_ONLY` (or a logsBucket you own) in it")
        build.service_account = account_resource(project or "-", req.service_account)
    return build


def _logs_allowed_with_an_account(build: Any) -> bool:
    """Cloud Build's rule for a build with ``serviceAccount``: a ``logsBucket``, the
    REGIONAL_USER_OWNED_BUCKET behaviour, or CLOUD_LOGGING_ONLY / NONE logging (the refusal quoted
    in https://github.com/cert-manager/cert-manager/pull/8851)."""
    from google.cloud.devtools import cloudbuild_v1

    opts = cloudbuild_v1.BuildOptions
    return bool(build.logs_bucket) or build.options.logging in (
        opts.LoggingMode.CLOUD_LOGGING_ONLY, opts.LoggingMode.NONE) or \
        build.options.default_logs_bucket_behavior == opts.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET


def _logs_in_storage(build: Any) -> bool:
    """Whether the build writes its log to ``logsBucket`` (GCS_ONLY, LEGACY or unspecified)."""
    from google.cloud.devtools import cloudbuild_v1

    mode = cloudbuild_v1.BuildOptions.LoggingMode
    return build.options.logging in (mode.LOGGING_UNSPECIFIED, mode.LEGACY, mode.GCS_ONLY)


_DONE = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}


def run_cloud_build(client: Any, project: str, build: Any, say: Say, poll: float = 2.0,
                    read_log: Callable[[str, str], bytes | None] | None = None) -> str:
    """Create the build, follow its log and status, and return the pushed image's digest ref.

    The log is tailed from ``logsBucket`` only when the build writes it there; a build logging to
    Cloud Logging only (``cloudbuild.yaml``'s choice, valid for triggers too) is followed by status,
    and its console URL is printed at the start.
    """
    from google.api_core import exceptions as gexc

    from runner.build.build_account import default_build_account, source_access_fix, source_denied
    from runner.cloud.gcp_clients import api_retry, retry_exhausted_text

    bucket = build.source.storage_source.bucket or None

    def fix(detail: str, what: str, account: str = "") -> str:
        return source_access_fix(detail, what, project=project, bucket=bucket, build_account=account,
                                 lookup=lambda: default_build_account(client, project))

    try:
        op = client.create_build(project_id=project, build=build, retry=api_retry())
    except gexc.Forbidden as e:
        raise BuildError(
            f"Cloud Build refused the build in project {project}: {e.message}. Grant the caller "
            "roles/cloudbuild.builds.editor, and check that the Cloud Build API is enabled"
        ) from None
    except gexc.RetryError as e:
        raise BuildError(f"Cloud Build could not create the build: {retry_exhausted_text(e)}; run "
                         "`runner build` again later (https://status.cloud.google.com shows Google Cloud "
                         "incidents)") from None
    except gexc.GoogleAPICallError as e:
        if source_denied(e.message or ""):
            raise BuildError(fix(e.message, "Cloud Build could not read the staged source",
                                 build.service_account)) from None
        raise BuildError(f"Cloud Build could not create the build: {e.message}") from None
    build_id = op.metadata.build.id
    say(f"Cloud Build {build_id} started" + (f": {op.metadata.build.log_url}" if op.metadata.build.log_url else ""))
    shown = 0
    while True:
        try:
            b = client.get_build(project_id=project, id=build_id, retry=api_retry())
        except gexc.RetryError as e:
            # The build was created and goes on in Cloud Build; only our view of it is lost.
            raise BuildError(
                f"lost track of Cloud Build {build_id}: reading its status is {retry_exhausted_text(e)}. "
                f"The build may still finish; follow it with `gcloud builds describe {build_id} --project "
                f"{project}`" + (f" (or {op.metadata.build.log_url})" if op.metadata.build.log_url else "")
                + ", or run `runner build` again later") from None
        status = b.status.name
        if read_log and b.logs_bucket and _logs_in_storage(b):
            log = read_log(b.logs_bucket, f"log-{build_id}.txt") or b""
            if len(log) > shown:
                for line in log[shown:].decode("utf-8", "replace").splitlines():
                    say(f"  | {line}")
                shown = len(log)
        if status in _DONE:
            break
        time.sleep(poll)
    if status != "SUCCESS":
        raise BuildError(_explain_build_failure(b, fix))
    want = build.substitutions["_IMAGE"]
    for img in b.results.images:
        if repo_of(img.name) == want and img.digest:
            return f"{want}@{img.digest}"
    raise BuildError(f"build {build_id} succeeded but reported no digest for {want}: is it in `images:`?")


def _explain_build_failure(b: Any, fix: Callable[[str, str, str], str]) -> str:
    """A failed build in words; a source it could not fetch gets the grant that fixes it, whether
    the text says so or only ``failureInfo.type`` does (FETCH_SOURCE_FAILED)."""
    from google.cloud.devtools import cloudbuild_v1

    detail = b.status_detail or b.failure_info.detail or b.status.name
    fetch = b.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    if fetch or _source_denied_text(detail, b.failure_info.detail):
        return fix(detail, f"build {b.id} could not read the staged source", b.service_account)
    return f"build {b.id} ended {b.status.name}: {detail}"


def _source_denied_text(*texts: str) -> bool:
    from runner.build.build_account import source_denied

    return any(source_denied(t or "") for t in texts)


# ---- local Docker ------------------------------------------------------------------------

def docker_available() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=20).returncode == 0


def _docker(args: list[str], say: Say) -> str:
    p = subprocess.run(["docker", *args], capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise BuildError(f"docker {args[0]} failed: {' | '.join(tail)}")
    return p.stdout.strip()


def local_build(req: BuildRequest, say: Say, push: bool) -> str:
    """Build with the local daemon; pushed → ``REPO@sha256:…``, else the local image id."""
    if not docker_available():
        raise BuildError("no Docker daemon is reachable (start dockerd, or set DOCKER_HOST)")
    args = ["-f", os.path.join(req.context_dir, req.dockerfile), "-t", req.image]
    if req.base_image:
        args += ["--build-arg", f"BASE_IMAGE={req.base_image}"]
    buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0
    if not push:
        return _build_and_push(req, args, buildx, say, push)
    before = _local_image_id(req.image)
    try:
        return _build_and_push(req, args, buildx, say, push)
    except BuildError:
        _restore_tag(req.image, before, say)
        raise


def _build_and_push(req: BuildRequest, args: list[str], buildx: bool, say: Say, push: bool) -> str:
    """``local_build``'s docker commands, apart so that a failed push can be undone around them."""
    if push and buildx:
        say(f"docker buildx build --platform linux/amd64 --push -t {req.image}")
        _docker(["buildx", "build", "--platform", "linux/amd64", "--push", *args, req.context_dir], say)
        _docker(["pull", "-q", req.image], say)
    else:
        say(f"docker build -t {req.image}")
        _docker(["build", "-q", *args, req.context_dir], say)
        if push:
            say(f"docker push {req.image}")
            _docker(["push", req.image], say)
    if not push:
        return _docker(["image", "inspect", "--format", "{{.Id}}", req.image], say)
    digests = json.loads(_docker(["image", "inspect", "--format", "{{json .RepoDigests}}", req.image], say))
    repo = repo_of(req.image)
    ref = next((d for d in digests if d.startswith(repo + "@")), None)
    if ref is None:
        raise BuildError(f"pushed {req.image} but docker reports no digest for {repo}")
    return ref


def _local_image_id(tag: str) -> str | None:
    p = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def _restore_tag(tag: str, before: str | None, say: Say) -> None:
    """A build whose push failed leaves no tag behind: the image it names was never pushed, and a
    later `docker push` or run would take it for one that was. Put back what ``tag`` named
    before this build (``before``), or drop the tag this build made."""
    if _local_image_id(tag) in (None, before):
        return
    args = ["tag", before, tag] if before else ["rmi", tag]
    p = subprocess.run(["docker", *args], capture_output=True, text=True)
    if p.returncode != 0:
        say(f"runner: warning: could not {'restore' if before else 'remove'} the local tag {tag} "
            f"({(p.stderr or p.stdout).strip()}); it names an image that was not pushed")


# ---- the chain -----------------------------------------------------------------------------

def build_image(req: BuildRequest, *, local_only: bool, project: str | None, bucket: str | None,
                client_factory: Callable[[], Any] | None, say: Say, poll: float = 2.0) -> BuildResult:
    """The first route that builds ``req`` (see the module's docstring). Raises
    ``MissingDockerfile`` before any route when there is nothing to build, ``NoCredentials`` at
    the first route that finds no Google credentials (no other route could do better), and
    ``BuildError`` with every route's reason when all fail."""
    check_context(req)
    if local_only:
        return BuildResult(local_build(req, say, push=False), "local")
    failures: list[str] = []
    if project and bucket and client_factory:
        read_log = _log_reader()
        for route, tag in (("cloud-build", ""), ("cloud-build-restaged", "-r")):
            say(f"[{route}] building {req.image} with Cloud Build in {project}")
            try:
                staged = stage_source(req, bucket, say, tag)
                try:
                    client = client_factory()
                except Exception as e:  # noqa: BLE001 - only "no credentials" is judged here
                    if _no_credentials(e):
                        raise NoCredentials(NO_CREDENTIALS) from None
                    raise
                ref = run_cloud_build(client, project, build_definition(req, staged, project), say,
                                      poll, read_log)
                return BuildResult(ref, route, failures)
            except NoCredentials:
                raise
            except BuildError as e:
                failures.append(f"{route}: {e}")
                say(f"[{route}] failed: {e}")
    else:
        failures.append("cloud-build: skipped (needs --project and a gs:// store for staging)")
    say("[local] building with the local Docker daemon and pushing")
    try:
        return BuildResult(local_build(req, say, push=True), "local-push", failures)
    except BuildError as e:
        failures.append(f"local-push: {e}")
    raise BuildError("no route could build the image:\n  " + "\n  ".join(failures))


def _log_reader() -> Callable[[str, str], bytes | None]:
    def read(bucket_url: str, name: str) -> bytes | None:
        from entrypoint.store import StoreError
        from entrypoint.store_gcs import GcsStore

        # logsBucket may carry a prefix (gs://BUCKET/PREFIX); GcsStore names objects under it.
        url = bucket_url if bucket_url.startswith("gs://") else f"gs://{bucket_url}"
        try:
            blob = GcsStore(url).read(name)
        except StoreError:
            return None
        return blob.data if blob else None

    return read
