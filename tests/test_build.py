"""`runner build`: staging, Cloud Build, the fallback chain, and the local route.

The real google-cloud-build and google-cloud-storage clients talk to the Cloud Build fake and
the GCS emulator; the local route uses the real Docker daemon and the real Dockerfile.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from entrypoint.store_gcs import GcsStore
from runner.build.image import BuildError, BuildRequest, build_image, list_files
from tests.conftest import ROOT

BUCKET = "test-bucket"  # created by tests/standins/gcs_fixture.py
REPO = "us-docker.pkg.dev/test-project/runs/trainer"


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A project with an ignore file that exercises negation and nested directories."""
    ctx = tmp_path / "proj"
    (ctx / "src" / "pkg").mkdir(parents=True)
    (ctx / "data" / "keep").mkdir(parents=True)
    (ctx / ".venv" / "lib").mkdir(parents=True)
    for rel, text in {
        "Dockerfile": "FROM scratch\n", "cloudbuild.yaml": (ROOT / "cloudbuild.yaml").read_text(),
        "src/pkg/a.py": "a = 1\n", "src/pkg/a.pyc": "junk", "data/big.bin": "x" * 1000,
        "data/keep/small.txt": "keep me\n", ".venv/lib/site.py": "venv\n", "notes.md": "# notes\n",
        ".gcloudignore": ".gcloudignore\n.venv/\n*.pyc\ndata/*\n!data/keep/\n*.md\n",
    }.items():
        (ctx / rel).write_text(text)
    return ctx


@pytest.fixture
def cloud(cloudbuild_fake, gcs_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="local", credentials=AnonymousCredentials())
    logs_bucket = f"{cloudbuild_fake.project_number}.cloudbuild-logs.googleusercontent.com"
    if client.lookup_bucket(logs_bucket) is None:
        client.create_bucket(logs_bucket)  # Cloud Build's default logs bucket
    staging = GcsStore(f"gs://{BUCKET}")
    cloudbuild_fake.source_exists = lambda b, o: staging.exists(o)
    cloudbuild_fake.write_log = lambda b, name, text: GcsStore(f"gs://{b.removeprefix('gs://').split('/')[0]}").write(
        name, text.encode())
    cloudbuild_fake.build_seconds = 0.2
    return cloudbuild_fake


def cloud_build(fake, ctx: Path, said: list[str], **kw):
    req = BuildRequest(str(ctx), f"{REPO}:v1", base_image="python:3.11-slim")
    return build_image(req, local_only=False, project=fake.project, bucket=BUCKET,
                       client_factory=fake.client, say=said.append, poll=0.05, **kw)


def staged_members(obj: str) -> list[str]:
    data = GcsStore(f"gs://{BUCKET}").read(obj).data
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if not m.isdir())


def test_cloud_build_stages_exactly_what_gcloudignore_selects_and_returns_the_pushed_digest(cloud, context):
    said: list[str] = []
    result = cloud_build(cloud, context, said)
    (sent,) = cloud.builds
    obj = sent.source.storage_source.object_
    assert obj.startswith("cloudbuild/source/") and obj.endswith(".tgz")
    assert staged_members(obj) == sorted(list_files(str(context)))
    assert staged_members(obj) == ["Dockerfile", "cloudbuild.yaml", "data/keep/small.txt", "src/pkg/a.py"]
    assert result.route == "cloud-build" and result.failures == []
    built = cloud.current(cloud.build_ids[0]).results.images
    assert result.image in {f"{REPO}@{img.digest}" for img in built}
    assert sent.substitutions["_IMAGE"] == REPO and sent.substitutions["_BASE_IMAGE"] == "python:3.11-slim"
    assert [s.id for s in sent.steps] == ["cache", "build", "push", "submit"]
    assert any("4 files" in s for s in said)  # the summary a user sees before the upload
    # cloudbuild.yaml logs to Cloud Logging (valid for triggers too): no bucket log to tail, so the
    # user gets the console link to it.
    assert any(s.startswith(f"Cloud Build {cloud.build_ids[0]} started: https://console.cloud.google.com/")
               for s in said)


def test_a_config_that_logs_to_a_bucket_has_its_log_streamed(cloud, context):
    yaml_path = context / "cloudbuild.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("logging: CLOUD_LOGGING_ONLY", "logging: GCS_ONLY"))
    said: list[str] = []
    cloud_build(cloud, context, said)
    assert any(s.startswith("  | ") for s in said)  # the build log, streamed


def test_a_failed_first_build_is_retried_from_a_restaged_tarball(cloud, context):
    cloud.fail_next_builds = 1
    said: list[str] = []
    result = cloud_build(cloud, context, said)
    assert result.route == "cloud-build-restaged"
    assert len(result.failures) == 1 and "archive crash" in result.failures[0]
    first, second = (b.source.storage_source.object_ for b in cloud.builds)
    assert first != second and staged_members(first) == staged_members(second)
    assert [s for s in said if s.startswith("[")][:3] == [
        f"[cloud-build] building {REPO}:v1 with Cloud Build in test-project",
        f"[cloud-build] failed: {result.failures[0].split(': ', 1)[1]}",
        f"[cloud-build-restaged] building {REPO}:v1 with Cloud Build in test-project"]


def test_when_both_cloud_builds_fail_the_local_route_is_tried_and_every_reason_is_kept(cloud, context, monkeypatch):
    cloud.fail_next_builds = 2
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(BuildError) as err:
        cloud_build(cloud, context, [])
    lines = str(err.value).splitlines()[1:]
    assert [ln.strip().split(":")[0] for ln in lines] == ["cloud-build", "cloud-build-restaged", "local-push"]
    assert "archive crash" in lines[0] and "archive crash" in lines[1]
    assert "no Docker daemon is reachable" in lines[2]


# The account a project's builds run as: the legacy Cloud Build account for projects that built
# before the 2024 change, the Compute Engine default account since
# (https://cloud.google.com/build/docs/cloud-build-service-account-updates).
ACCOUNTS = {"legacy": "{n}@cloudbuild.gserviceaccount.com", "since-2024": "{n}-compute@developer.gserviceaccount.com"}


@pytest.mark.parametrize("kind", ACCOUNTS)
def test_an_unreadable_staged_source_names_the_role_and_the_account_builds_run_as(cloud, context, monkeypatch,
                                                                                 kind):
    account = ACCOUNTS[kind].format(n=cloud.project_number)
    cloud.service_account_email = account
    cloud.source_exists = lambda b, o: False
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(BuildError) as err:
        cloud_build(cloud, context, [])
    msg = str(err.value)
    assert f"gcloud storage buckets add-iam-policy-binding gs://{BUCKET} --member=serviceAccount:{account} " \
           "--role=roles/storage.objectViewer" in msg


@pytest.mark.parametrize("kind", ACCOUNTS)
def test_a_build_that_cannot_list_its_source_is_explained_with_the_account_that_ran_it(
        cloud, context, monkeypatch, kind):
    """The FETCHSOURCE failure a 2024+ project meets when its organisation grants default accounts
    nothing: the build is created, then fails listing the staging bucket."""
    account = ACCOUNTS[kind].format(n=cloud.project_number)
    cloud.service_account_email = account
    cloud.source_readable_by = lambda who, bucket: False
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(BuildError) as err:
        cloud_build(cloud, context, [])
    first = str(err.value).splitlines()[1]
    assert first.startswith("  cloud-build: build ") and "could not read the staged source" in first
    assert "does not have storage.objects.list access" in first
    assert f"Cloud Build ran as {account} (the " in first
    assert f"--member=serviceAccount:{account} --role=roles/storage.objectViewer" in first


def test_a_source_failure_that_names_no_account_asks_cloud_build_for_the_default(cloud):
    """When only failureInfo.type says FETCH_SOURCE_FAILED, the account comes from Cloud Build's
    projects.locations.getDefaultServiceAccount."""
    from google.cloud.devtools import cloudbuild_v1

    from runner.build.build_account import default_build_account, source_access_fix
    from runner.build.image import _explain_build_failure

    client = cloud.client()
    info = cloudbuild_v1.Build.FailureInfo(type_=cloudbuild_v1.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED,
                                           detail="failed to fetch source")
    b = cloudbuild_v1.Build(id="b1", status=cloudbuild_v1.Build.Status.FAILURE, failure_info=info)
    said = _explain_build_failure(b, lambda detail, what, account: source_access_fix(
        detail, what, project=cloud.project, bucket=BUCKET, build_account=account,
        lookup=lambda: default_build_account(client, cloud.project)))
    compute_default = f"{cloud.project_number}-compute@developer.gserviceaccount.com"
    assert f"Cloud Build ran as {compute_default} (the Compute Engine default service account" in said
    assert f"--member=serviceAccount:{compute_default} --role=roles/storage.objectViewer" in said
    cloud.service_account_email = ""  # an organisation that left the project no default
    assert "gcloud builds get-default-service-account --project test-project" in _explain_build_failure(
        b, lambda detail, what, account: source_access_fix(
            detail, what, project=cloud.project, bucket=BUCKET, build_account=account,
            lookup=lambda: default_build_account(client, cloud.project)))


def test_list_files_prints_exactly_what_would_upload(context):
    p = subprocess.run([sys.executable, "-m", "runner.cli", "build", "--list-files", "--context", str(context)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["Dockerfile", "cloudbuild.yaml", "data/keep/small.txt", "src/pkg/a.py"]


@pytest.mark.docker
def test_local_build_builds_the_real_dockerfile_and_prints_the_image_id(docker_client, tmp_path):
    ctx = tmp_path / "ctx"
    shutil.copytree(ROOT, ctx, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", ".runner", "tests"))
    tag = "cos-spot-runner/test-build:local"
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RUNNER_BASE_IMAGE": os.environ.get("RUNNER_BASE_IMAGE", "cos-spot-runner/base:bookworm-2")}
    try:
        p = subprocess.run([sys.executable, "-m", "runner.cli", "build", "--local", "--context", str(ctx),
                            "--image", tag], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        image_id = p.stdout.strip()
        assert image_id.startswith("sha256:") and docker_client.images.get(tag).id == image_id
        out = docker_client.containers.run(image_id, ["-c", "import entrypoint.agent; print('ok')"],
                                           entrypoint=["python3"], remove=True, network_mode="none")
        assert out.strip() == b"ok"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.mark.docker
def test_submit_without_an_image_builds_first_and_pins_the_result(runner, run_id, tmp_path):
    ctx = tmp_path / f"autobuild-{run_id}"
    shutil.copytree(ROOT, ctx, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", ".runner", "tests"))
    configured = f"cos-spot-runner/test-autobuild-{run_id}:dev"  # what runs use: never a build's target
    tag = f"autobuild-{run_id}:dev"  # named after the folder (issue 20 §2)
    env = {**runner.env, "RUNNER_IMAGE": configured,
           "RUNNER_BASE_IMAGE": os.environ.get("RUNNER_BASE_IMAGE", "cos-spot-runner/base:bookworm-2")}
    try:
        p = subprocess.run(runner.cmd("submit", "--run-id", run_id, "--", "python3", "-m", "examples.trainer",
                                      "--steps", "3", "--step-time", "0.01"),
                           cwd=ctx, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert f"building {tag} first" in p.stderr
        spec = runner.read_json(run_id, "spec.json")
        assert spec["image"] == runner.docker.images.get(tag).id
        assert runner.state(run_id)["state"] == "SUCCEEDED"
        assert subprocess.run(["docker", "image", "inspect", configured], capture_output=True).returncode != 0
    finally:
        subprocess.run(["docker", "rmi", "-f", tag, configured], capture_output=True)


# ---- one clear message each (issue 20 §10) ---------------------------------------------------

def _runner_build(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (cwd / "none.toml").write_text("")
    base = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_CONFIG": str(cwd / "none.toml")}
    return subprocess.run([sys.executable, "-m", "runner.cli", "build", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=120)


def _docker_tag_exists(tag: str) -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def test_a_build_without_google_credentials_says_so_once_and_builds_nothing_locally(tmp_path, context):
    # A machine with no Application Default Credentials: no key file, an empty gcloud config, no
    # metadata server. google-auth's default() then raises DefaultCredentialsError
    # (https://googleapis.dev/python/google-auth/latest/reference/google.auth.html); NO_GCE_CHECK
    # skips its metadata-server probe, which is what a laptop's would answer anyway.
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")}
    env.update(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="True",
               PYTHONPATH=str(ROOT), RUNNER_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    tag = "us-docker.pkg.dev/i20-no-credentials/runs/trainer:v1"
    p = subprocess.run([sys.executable, "-m", "runner.cli", "build", "--project", "i20-no-credentials", "--store",
                        "gs://i20-no-credentials", "--context", str(context), "--image", tag],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    try:
        assert p.returncode == 1, p.stderr
        assert p.stderr.count("no Google credentials") == 1, p.stderr
        assert "gcloud auth application-default login" in p.stderr and "runner build --local" in p.stderr
        # Neither a second Cloud Build route nor a local build and push to a registry it cannot reach.
        assert "cloud-build-restaged" not in p.stderr and "[local]" not in p.stderr, p.stderr
        assert "docker build" not in p.stderr and "docker push" not in p.stderr
        assert not _docker_tag_exists(tag)
    finally:
        if _docker_tag_exists(tag):
            subprocess.run(["docker", "rmi", tag], capture_output=True)


def test_a_folder_without_a_dockerfile_is_a_usage_error_that_points_at_context(tmp_path):
    (tmp_path / "empty").mkdir()
    p = _runner_build("--local", "--context", "empty", "--image", "i20-no-dockerfile:dev", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"runner: no Dockerfile in {tmp_path / 'empty'} to build: give the folder that holds your Dockerfile "
        "with --context DIR, or a file named otherwise with --dockerfile NAME"]
    gone = _runner_build("--local", "--context", "nowhere", cwd=tmp_path)
    assert gone.returncode == 2 and "no folder nowhere" in gone.stderr and "--context DIR" in gone.stderr
    assert "Traceback" not in gone.stderr and "FileNotFoundError" not in gone.stderr


def test_list_files_of_a_folder_with_nothing_to_upload_says_so_and_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    p = _runner_build("--list-files", "--context", "empty", cwd=tmp_path)
    assert p.returncode == 1 and p.stdout == ""
    assert "nothing would be uploaded" in p.stderr and "the folder is empty" in p.stderr
    ignored = tmp_path / "ignored"
    ignored.mkdir()
    (ignored / "train.py").write_text("print(1)\n")
    (ignored / ".gcloudignore").write_text("*\n")
    p = _runner_build("--list-files", "--context", "ignored", cwd=tmp_path)
    assert p.returncode == 1 and "its .gcloudignore leaves out every file" in p.stderr
    missing = _runner_build("--list-files", "--context", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "no folder nowhere" in missing.stderr


@pytest.mark.docker
@pytest.mark.parametrize("tagged_before", [False, True])
def test_a_local_build_whose_push_fails_leaves_the_tag_as_it_found_it(tmp_path, tagged_before):
    from runner.build.image import local_build

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY stamp /stamp\n")
    (ctx / "stamp").write_text(str(tmp_path))  # unique content: a new image, never one already here
    # Port 9 (discard) on loopback: nothing listens, so the push is refused at once.
    tag = f"127.0.0.1:9/i20/stray-{'old' if tagged_before else 'new'}:v1"
    old = tmp_path / "old"
    old.mkdir()
    (old / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /old\n")
    try:
        if tagged_before:
            subprocess.run(["docker", "build", "-q", "-t", tag, str(old)], check=True, capture_output=True)
        before = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                                capture_output=True, text=True).stdout.strip()
        with pytest.raises(BuildError):
            local_build(BuildRequest(str(ctx), tag), [].append, push=True)
        after = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                               capture_output=True, text=True).stdout.strip()
        assert after == before  # the old image, or no tag at all
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
