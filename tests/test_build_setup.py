"""Builds in a first Google Cloud project (issue 19, items 1 to 3): the account Cloud Build runs as,
a ``cloudbuild.yaml`` that builds with a named account (as every trigger of a new project must),
and the Artifact Registry repository a push needs.

The project modelled is a 2024+ one in an organisation that grants default accounts nothing:
Cloud Build's default account is the Compute Engine default account with no roles, and no
repository exists. The CLI runs in its own processes against the admin, Cloud Build and Artifact
Registry fakes and the GCS emulator; the Cloud Build fake reads the source only when the bucket's
or the project's IAM policy lets the build's account (``tests/standins/storage_iam.py``) and
pushes only to a repository the Artifact Registry fake holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from entrypoint.store_gcs import GcsStore
from runner.build.image import BuildError, BuildRequest, StagedSource, build_definition, build_image
from runner.config import Config
from runner.cloud.artifact_registry import Repository, artifact_registry, repository_of
from runner.cloud.build_setup import BUILD_SA_NAME, PUSH_ROLE, SOURCE_ROLE, init_builds
from runner.cloud.doctor import run_checks
from runner.cloud.gcp_rest import admin_apis
from tests.conftest import ROOT
from tests.standins.artifact_registry import ArtifactRegistryFake, artifact_registry_fake  # noqa: F401 - fixture
from tests.standins.cloudbuild import CloudBuildFake
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.storage_iam import object_readers

P = "test-project"
REGION = "us-central1"
IMAGE = f"{REGION}-docker.pkg.dev/{P}/runs/workload"
BUILD_SA = f"{BUILD_SA_NAME}@{P}.iam.gserviceaccount.com"
VM_SA = f"cos-spot-runner@{P}.iam.gserviceaccount.com"


@pytest.fixture
def project(gcp_admin_fake: GcpAdminFake, cloudbuild_fake: CloudBuildFake,
            artifact_registry_fake: ArtifactRegistryFake, gcs_emulator: str) -> dict[str, Any]:
    """A fresh 2024+ project whose organisation grants default accounts nothing."""
    number = gcp_admin_fake.add_project(P)  # no bindings at all
    assert int(number) == cloudbuild_fake.project_number  # one project, seen by every fake
    artifact_registry_fake.add_project(P)
    client = storage.Client(project=P, credentials=AnonymousCredentials())
    bucket = f"first-{uuid.uuid4().hex[:10]}"
    client.create_bucket(bucket)
    staging = GcsStore(f"gs://{bucket}")
    cloudbuild_fake.source_exists = lambda b, o: staging.exists(o)
    cloudbuild_fake.source_readable_by = object_readers(client, gcp_admin_fake, P)
    cloudbuild_fake.push_refusal = artifact_registry_fake.push_refusal
    cloudbuild_fake.build_seconds = 0.2
    return {"admin": gcp_admin_fake, "build": cloudbuild_fake, "ar": artifact_registry_fake, "gcs": client,
            "bucket": bucket, "number": number}


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "proj"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (ctx / "cloudbuild.yaml").write_text((ROOT / "cloudbuild.yaml").read_text())
    return ctx


def config(p: dict[str, Any], **over: Any) -> Config:
    values: dict[str, Any] = dict(
        backend="gce", project=P, store=f"gs://{p['bucket']}", zones=[f"{REGION}-a"], no_gpu=True,
        serviceusage_endpoint=p["admin"].endpoint, resourcemanager_endpoint=p["admin"].endpoint,
        iam_endpoint=p["admin"].endpoint, cloudbuild_endpoint=p["build"].endpoint,
        artifactregistry_endpoint=p["ar"].endpoint)
    values.update(over)
    return Config(**values)


def doctor(cfg: Config) -> list[Any]:
    return run_checks(cfg, active_project=lambda: P, docker_ping=lambda: True,
                      load_credentials=lambda: (AnonymousCredentials(), None))


def cli_env(p: dict[str, Any], compute: Any, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
            "CLOUDSDK_CONFIG": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock",
            "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": P, "RUNNER_STORE": f"gs://{p['bucket']}",
            "RUNNER_ZONES": f"{REGION}-a", "RUNNER_NO_GPU": "true", "RUNNER_COMPUTE_ENDPOINT": compute.endpoint,
            "RUNNER_SERVICEUSAGE_ENDPOINT": p["admin"].endpoint,
            "RUNNER_RESOURCEMANAGER_ENDPOINT": p["admin"].endpoint, "RUNNER_IAM_ENDPOINT": p["admin"].endpoint,
            "RUNNER_CLOUDBUILD_ENDPOINT": p["build"].endpoint,
            "RUNNER_ARTIFACTREGISTRY_ENDPOINT": p["ar"].endpoint, **extra}


def runner(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=cwd)


# ---- the whole path, as a user meets it ------------------------------------------------------

def test_a_first_project_builds_once_init_has_set_up_the_repository_and_the_build_account(
        project: dict[str, Any], compute_fake: Any, context: Path) -> None:
    env = cli_env(project, compute_fake)
    compute_default = f"{project['number']}-compute@developer.gserviceaccount.com"
    build = ("build", "--image", f"{IMAGE}:v1", "--context", str(context))

    # Before init: Cloud Build runs as the Compute Engine default account, which may not list the
    # staged source; the message names that account (not the legacy one) and the grant.
    before = runner(env, *build)
    assert before.returncode != 0
    assert f"does not have storage.objects.list access" in before.stderr
    assert f"Cloud Build ran as {compute_default} (the Compute Engine default service account" in before.stderr
    assert f"--member=serviceAccount:{compute_default} --role={SOURCE_ROLE}" in before.stderr

    doc = {c["name"]: c for c in json.loads(runner({**env, "RUNNER_IMAGE": IMAGE}, "doctor", "--json").stdout)}
    assert doc["Artifact Registry repository"]["ok"] is False
    assert f"{REGION}-docker.pkg.dev/{P}/runs does not exist" in doc["Artifact Registry repository"]["detail"]
    assert doc["Cloud Build account"]["ok"] is False
    assert f"builds run as {compute_default}" in doc["Cloud Build account"]["detail"]
    assert "roles/logging.logWriter" in doc["Cloud Build account"]["detail"]

    first = runner(env, "init")
    assert first.returncode == 0, first.stderr
    assert f"+ repository {REGION}-docker.pkg.dev/{P}/runs: created (format DOCKER, location {REGION})" in first.stdout
    assert f'next: set image = "{REGION}-docker.pkg.dev/{P}/runs/workload"' in first.stdout
    assert f'next: set build_service_account = "{BUILD_SA}"' in first.stdout
    assert project["ar"].repository(P, REGION, "runs")["format"] == "DOCKER"
    assert [b["members"] for b in project["ar"].policy(P, REGION, "runs")["bindings"]
            if b["role"] == PUSH_ROLE] == [[f"serviceAccount:{BUILD_SA}"]]

    configured = {**env, "RUNNER_IMAGE": IMAGE, "RUNNER_BUILD_SERVICE_ACCOUNT": BUILD_SA,
                  "RUNNER_SERVICE_ACCOUNT": VM_SA}
    doc = runner(configured, "doctor")
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert f"✓ Artifact Registry repository: {REGION}-docker.pkg.dev/{P}/runs (Docker, {REGION}); " \
           f"the VM account {VM_SA} may pull" in doc.stdout
    assert f"✓ Cloud Build account: builds run as {BUILD_SA} (build_service_account)" in doc.stdout

    after = runner(configured, *build)
    assert after.returncode == 0, after.stderr
    (sent,) = [b for b in project["build"].builds if b.service_account]
    assert sent.service_account == f"projects/{P}/serviceAccounts/{BUILD_SA}"
    assert sent.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
    built = project["build"].current(project["build"].build_ids[-1]).results.images
    assert after.stdout.strip() in {f"{IMAGE}@{img.digest}" for img in built}


# ---- item 2: one cloudbuild.yaml for `runner build` and for triggers ------------------------

def _shipped_build(bucket: str, obj: str, account: str | None) -> Any:
    return build_definition(BuildRequest(str(ROOT), f"{IMAGE}:v1", service_account=account),
                            StagedSource(bucket, obj, 1, 1), P)


def test_the_shipped_cloudbuild_yaml_runs_as_a_trigger_that_names_its_account(
        cloudbuild_fake: CloudBuildFake) -> None:
    """A trigger in a project created since 2024 must name a service account; Cloud Build then
    refuses a build that keeps its log in the default bucket. The shipped file must pass as the
    trigger sends it: the file as it is, the trigger's substitutions and account, no runner."""
    import yaml

    build = cloudbuild_v1.Build.from_json(json.dumps(yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())))
    build.substitutions = {**build.substitutions, "_IMAGE": IMAGE}
    build.source = cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(bucket="b", object_="s.tgz"))
    build.service_account = f"projects/{P}/serviceAccounts/{BUILD_SA}"  # --service-account of the trigger
    op = cloudbuild_fake.client().create_build(project_id=P, build=build)
    done = op.result(timeout=30)
    assert done.status == cloudbuild_v1.Build.Status.SUCCESS
    assert done.service_account == f"projects/{P}/serviceAccounts/{BUILD_SA}"


def test_the_fake_refuses_a_named_account_without_a_log_destination_in_cloud_builds_words(
        cloudbuild_fake: CloudBuildFake) -> None:
    build = _shipped_build("src-bucket", "source/x.tgz", None)
    build.service_account = f"projects/{P}/serviceAccounts/{BUILD_SA}"
    build.options.logging = cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY
    with pytest.raises(exceptions.BadRequest) as err:
        cloudbuild_fake.client().create_build(project_id=P, build=build)
    # The text Cloud Build answers (quoted in cert-manager/cert-manager#8851).
    assert err.value.message.endswith(
        "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
        "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, or "
        "(c) use either CLOUD_LOGGING_ONLY / NONE logging options: invalid argument")
    build.logs_bucket = "gs://my-own-logs"
    assert cloudbuild_fake.client().create_build(project_id=P, build=build).result(timeout=30).status == \
        cloudbuild_v1.Build.Status.SUCCESS
    assert cloudbuild_fake.calls("builds.create", ok=True)


def test_a_config_that_cloud_build_would_refuse_with_an_account_is_stopped_before_any_build(
        cloudbuild_fake: CloudBuildFake, context: Path) -> None:
    yaml_path = context / "cloudbuild.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("logging: CLOUD_LOGGING_ONLY", "logging: GCS_ONLY"))
    with pytest.raises(BuildError, match="set `options: logging: CLOUD_LOGGING_ONLY`"):
        build_definition(BuildRequest(str(context), f"{IMAGE}:v1", service_account=BUILD_SA),
                         StagedSource("b", "o", 1, 1), P)


# ---- item 1: which account, set up and checked -----------------------------------------------

def test_cloud_builds_default_account_is_read_from_cloud_build(cloudbuild_fake: CloudBuildFake) -> None:
    from runner.build.build_account import default_build_account

    client = cloudbuild_fake.client()
    assert default_build_account(client, P) == \
        f"{cloudbuild_fake.project_number}-compute@developer.gserviceaccount.com"
    cloudbuild_fake.service_account_email = f"{cloudbuild_fake.project_number}@cloudbuild.gserviceaccount.com"
    assert default_build_account(client, P) == f"{cloudbuild_fake.project_number}@cloudbuild.gserviceaccount.com"
    cloudbuild_fake.service_account_email = ""
    assert default_build_account(client, P) is None


def test_init_gives_a_user_chosen_build_account_the_roles_and_creates_nothing_else(project: dict[str, Any]) -> None:
    chosen = f"{project['number']}-compute@developer.gserviceaccount.com"
    cfg = config(project, image=f"us-docker.pkg.dev/{P}/images/trainer", build_service_account=chosen)
    said: list[str] = []
    steps = init_builds(cfg, region=REGION, apis=admin_apis(cfg), bucket=project["gcs"].bucket(project["bucket"]),
                        registry=artifact_registry(cfg), say=said.append, sleep=lambda s: None)
    assert [s.changed for s in steps] == [True] * 4  # repository and three grants; no account to create
    assert project["ar"].repository(P, "us", "images")["format"] == "DOCKER"  # the image's own location
    assert BUILD_SA not in project["admin"].service_accounts(P)
    assert not any(line.startswith("next:") for line in said)  # image and account are configured
    again = init_builds(cfg, region=REGION, apis=admin_apis(cfg), bucket=project["gcs"].bucket(project["bucket"]),
                        registry=artifact_registry(cfg), say=said.append, sleep=lambda s: None)
    assert [s.changed for s in again] == [False] * 4
    checks = {c.name: c for c in doctor(cfg)}
    assert checks["Cloud Build account"].ok is True, checks["Cloud Build account"]
    assert "the Compute Engine default service account" in checks["Cloud Build account"].detail


def test_init_creates_no_repository_for_an_image_kept_elsewhere(project: dict[str, Any]) -> None:
    cfg = config(project, image="ghcr.io/someone/trainer:v1")
    said: list[str] = []
    steps = init_builds(cfg, region=REGION, apis=admin_apis(cfg), bucket=project["gcs"].bucket(project["bucket"]),
                        registry=artifact_registry(cfg), say=said.append, sleep=lambda s: None)
    assert not [s for s in steps if s.name.startswith("repository") or PUSH_ROLE in s.name]
    assert project["ar"].calls() == []
    assert any("ghcr.io/someone/trainer:v1 is not in Artifact Registry" in line for line in said)


def test_doctor_says_when_cloud_build_has_no_default_account(project: dict[str, Any]) -> None:
    project["build"].service_account_email = ""
    cfg = config(project, image=IMAGE)
    check = {c.name: c for c in doctor(cfg)}[
        "Cloud Build account"]
    assert check.ok is False and "no default service account" in check.detail
    assert check.fix.startswith(f"runner init --project {P}")


# ---- item 3: the repository a push needs -----------------------------------------------------

def test_a_push_to_a_repository_that_does_not_exist_fails_the_build_until_init_creates_it(
        project: dict[str, Any], context: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    project["admin"].grant(P, f"serviceAccount:{project['number']}-compute@developer.gserviceaccount.com",
                           "roles/editor")  # an older project: default accounts hold Editor
    req = BuildRequest(str(context), f"{IMAGE}:v1")

    def build() -> Any:
        return build_image(req, local_only=False, project=P, bucket=project["bucket"],
                           client_factory=project["build"].client, say=lambda s: None, poll=0.05)

    with pytest.raises(BuildError) as err:
        build()
    assert 'name unknown: Repository "runs" not found' in str(err.value)
    cfg = config(project, image=IMAGE)
    init_builds(cfg, region=REGION, apis=admin_apis(cfg), bucket=project["gcs"].bucket(project["bucket"]),
                registry=artifact_registry(cfg), say=lambda s: None, sleep=lambda s: None)
    assert build().image.startswith(f"{IMAGE}@sha256:")


def test_doctor_wants_the_vm_account_to_read_the_repository_and_accepts_it_on_the_repository_alone(
        project: dict[str, Any]) -> None:
    ar: ArtifactRegistryFake = project["ar"]
    ar.add_repository(P, REGION, "runs")
    cfg = config(project, image=IMAGE, service_account=VM_SA)
    project["admin"].add_service_account(P, "cos-spot-runner")

    def check() -> Any:
        return {c.name: c for c in doctor(cfg)}[
            "Artifact Registry repository"]

    missing = check()
    assert missing.ok is False and f"the VM account {VM_SA} may not pull" in missing.detail
    assert missing.fix == (f"gcloud artifacts repositories add-iam-policy-binding runs --location={REGION} "
                           f"--project={P} --member=serviceAccount:{VM_SA} --role=roles/artifactregistry.reader")
    from runner.cloud.build_setup import ensure_repository_role

    ensure_repository_role(artifact_registry(cfg), Repository(P, REGION, "runs"), f"serviceAccount:{VM_SA}",
                           "roles/artifactregistry.reader", sleep=lambda s: None)
    assert check().ok is True


def test_the_repository_fake_answers_as_artifact_registry(artifact_registry_fake: ArtifactRegistryFake) -> None:
    from runner.cloud.gcp_rest import ApiError

    artifact_registry_fake.add_project(P)
    registry = artifact_registry(Config(backend="gce", project=P,
                                        artifactregistry_endpoint=artifact_registry_fake.endpoint))
    repo = Repository(P, REGION, "runs")
    assert registry.get_repository(repo) is None
    with pytest.raises(ApiError) as err:  # a repository needs its format
        registry.api.post(f"/v1/projects/{P}/locations/{REGION}/repositories", {}, params={"repositoryId": "x"})
    assert err.value.code == 400
    assert registry.create_docker_repository(repo, "d")["name"] == repo.name
    with pytest.raises(ApiError) as err:
        registry.create_docker_repository(repo, "d")
    assert err.value.code == 409 and err.value.status == "ALREADY_EXISTS"
    assert artifact_registry_fake.push_refusal(f"{REGION}-docker.pkg.dev/{P}/runs/img:v1") is None
    assert artifact_registry_fake.push_refusal(f"{REGION}-docker.pkg.dev/{P}/other/img:v1")
    assert repository_of(f"{REGION}-docker.pkg.dev/{P}/runs/img@sha256:00") == repo
    assert repository_of("127.0.0.1:5000/runs/img:v1") is None
