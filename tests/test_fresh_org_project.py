"""Issue 19's "Done when": a first user with a fresh project of a 2024+ organisation runs
`runner init`, then `runner doctor` until it passes, doing exactly what each ✗ says, and their
first run then gets its VM.

The organisation, as the stand-ins model it: no ``default`` network
(``constraints/compute.skipDefaultNetworkCreation``), no external IPs for any VM
(``constraints/compute.vmExternalIpAccess``, denied in the admin fake, which the Compute fake
enforces), a project policy that gives the default service accounts no role (the Compute
default account, which is also the account Cloud Build runs as since 2024,
https://cloud.google.com/build/docs/cloud-build-service-account-updates), a project-wide
``GPUS_ALL_REGIONS`` quota of 0 (the Compute fake refuses every GPU VM in every zone), and an
Artifact Registry image in runner.toml whose repository does not exist yet (the Cloud Build fake
refuses a push there, and one by an account without an uploading role, through the Artifact
Registry fake). The user is the project's owner.

The user is literal: ``follow`` turns each fix line into the call the command makes (gcloud's
REST request, a runner.toml edit, `runner init`), and a fix line it cannot follow fails the test:
every missing piece must be named with a fix a user can act on. A line ``(or ...)`` offers an
alternative to the line above it, which the user has just done, so it is not done twice.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from google.api_core.exceptions import GoogleAPICallError
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1, storage
from google.cloud.devtools import cloudbuild_v1

from entrypoint.record import RunRecord, State
from runner.build.image import BuildRequest
from runner.config import Config
from runner.cloud.artifact_registry import Repository, artifact_registry
from runner.cloud.build_setup import init_builds_in
from runner.cloud.doctor import Check, exit_code, format_check, run_checks
from runner.cloud.project_setup import init_project
from runner.launch.backends.gce import GLOBAL_GPU_QUOTA, GLOBAL_GPU_QUOTA_ID
from runner.launch.context import make_context
from tests.conftest import ROOT
from tests.standins.artifact_registry import (ArtifactRegistryFake, artifact_registry_fake,  # noqa: F401 - fixture
                                              repository_writers)
from tests.standins.cloudbuild import CloudBuildFake, run_cloudbuild_fake
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.network_guard import guarded_stand_in
from tests.standins.storage_iam import object_readers

P = "org-project"
REGION = "us-central1"
# An Artifact Registry image, set in runner.toml before the repository exists.
IMAGE = f"{REGION}-docker.pkg.dev/{P}/runs/trainer"


class User:
    """The runner.toml a user edits, and the project they act on through the stand-ins."""

    def __init__(self, admin: GcpAdminFake, compute: Any, builds: CloudBuildFake,
                 registry: ArtifactRegistryFake) -> None:
        self.admin, self.compute, self.builds, self.registry = admin, compute, builds, registry
        self.toml: dict[str, Any] = dict(
            backend="gce", project=P, store=f"gs://org-{uuid.uuid4().hex[:8]}/runs", zones=[f"{REGION}-a"],
            machine_type="n1-standard-4", gpu="nvidia-tesla-t4", image=IMAGE, compute_endpoint=compute.endpoint,
            serviceusage_endpoint=admin.endpoint, resourcemanager_endpoint=admin.endpoint,
            iam_endpoint=admin.endpoint, cloudbuild_endpoint=builds.endpoint,
            artifactregistry_endpoint=registry.endpoint)
        self.followed: list[str] = []
        self.said: list[str] = []  # what `runner init` printed, every time it ran

    def config(self) -> Config:
        return Config(**self.toml)

    def init(self) -> None:
        """`runner init` as the CLI runs it (runner/cli/cmd_setup.py): the project's pieces, then
        the build's (the repository and the account Cloud Build runs as)."""
        said: list[str] = []
        init_project(self.config(), region=REGION, say=said.append, sleep=lambda s: None)
        init_builds_in(self.config(), region=REGION, say=said.append)
        self.said += said
        for line in said:  # "next: set service_account = "..." in runner.toml so VMs run as it"
            m = re.match(r'next: set (\w+) = "([^"]+)" in runner.toml', line)
            if m:
                self.toml[m.group(1)] = m.group(2)

    def doctor(self) -> list[Check]:
        return run_checks(self.config(), active_project=lambda: P, docker_ping=lambda: True)

    def follow(self, check: Check) -> None:
        for line in check.fix.splitlines():
            if line.startswith("(or"):
                continue  # an alternative to the line above, just done
            handler = next((h for prefix, h in COMMANDS.items() if line.startswith(prefix)), None)
            if handler is None:
                pytest.fail(f"{check.name}: a user cannot act on the fix line {line!r}\n{format_check(check)}")
            handler(self, line)
            self.followed.append(line)


def _flags(line: str) -> tuple[list[str], dict[str, str]]:
    """Positional words and --flags (``--a b``, ``--a=b``, ``--switch`` → "") of a command line."""
    words, flags = [], {}
    parts = shlex.split(line)
    i = 0
    while i < len(parts):
        w = parts[i]
        if w.startswith("--"):
            key, eq, value = w[2:].partition("=")
            if not eq and i + 1 < len(parts) and not parts[i + 1].startswith("--"):
                value, i = parts[i + 1], i + 1
            flags[key] = value
        else:
            words.append(w)
        i += 1
    return words, flags


def _toml(user: User, line: str) -> None:
    for key, value in re.findall(r'(\w+) = ("[^"]*"|true|false)', line.split(":", 1)[1]):
        user.toml[key] = value.strip('"') if value.startswith('"') else value == "true"


def _runner_init(user: User, line: str) -> None:
    user.init()


def _networks_create(user: User, line: str) -> None:
    words, f = _flags(line)
    assert f["subnet-mode"] in ("custom", "auto"), line
    compute_v1.NetworksClient(**user.compute.client_kwargs()).insert_unary(
        project=f["project"], network_resource=compute_v1.Network(
            name=words[4], auto_create_subnetworks=f["subnet-mode"] == "auto"))


def _subnets_create(user: User, line: str) -> None:
    words, f = _flags(line)
    compute_v1.SubnetworksClient(**user.compute.client_kwargs()).insert_unary(
        project=f["project"], region=f["region"], subnetwork_resource=compute_v1.Subnetwork(
            name=words[5], network=f"projects/{f['project']}/global/networks/{f['network']}",
            ip_cidr_range=f["range"], private_ip_google_access="enable-private-ip-google-access" in f))


def _subnets_update(user: User, line: str) -> None:
    words, f = _flags(line)
    assert "enable-private-ip-google-access" in f, line
    compute_v1.SubnetworksClient(**user.compute.client_kwargs()).set_private_ip_google_access_unary(
        project=f["project"], region=f["region"], subnetwork=words[5],
        subnetworks_set_private_ip_google_access_request_resource=compute_v1.SubnetworksSetPrivateIpGoogleAccessRequest(
            private_ip_google_access=True))


def _project_binding(user: User, line: str) -> None:
    words, f = _flags(line)
    user.admin.grant(words[3], f["member"], f["role"])


def _bucket_create(user: User, line: str) -> None:
    words, f = _flags(line)
    client = storage.Client(project=f["project"], credentials=AnonymousCredentials())
    client.create_bucket(words[4].removeprefix("gs://"), location=f["location"])


def _bucket_binding(user: User, line: str) -> None:
    words, f = _flags(line)
    bucket = storage.Client(project=P, credentials=AnonymousCredentials()).bucket(words[4].removeprefix("gs://"))
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": f["role"], "members": {f["member"]}})
    bucket.set_iam_policy(policy)


def _repository_create(user: User, line: str) -> None:
    words, f = _flags(line)
    assert f["repository-format"] == "docker", line
    user.registry.add_repository(f["project"], f["location"], words[4], "DOCKER")


def _repository_binding(user: User, line: str) -> None:
    words, f = _flags(line)
    registry = artifact_registry(user.config())
    repo = Repository(f["project"], f["location"], words[4])
    policy = registry.get_iam_policy(repo)
    policy.setdefault("bindings", []).append({"role": f["role"], "members": [f["member"]]})
    registry.set_iam_policy(repo, policy)


def _quota_preference(user: User, line: str) -> None:
    # There is no Cloud Quotas stand-in: Google reviewing and granting the preference is modelled
    # by raising the limit the Compute fake's projects.get reports and its inserts enforce.
    # (gcloud quotas preferences create --service --project --quota-id --preferred-value:
    # https://cloud.google.com/sdk/gcloud/reference/beta/quotas/preferences/create)
    _, f = _flags(line)
    assert (f["service"], f["project"], f["quota-id"]) == ("compute.googleapis.com", P, GLOBAL_GPU_QUOTA_ID), line
    user.compute.set_project_quota(GLOBAL_GPU_QUOTA, float(f["preferred-value"]))


# What a fix line asks, by how it starts.
COMMANDS: dict[str, Callable[[User, str], None]] = {
    "runner.toml:": _toml,
    "runner init": _runner_init,
    "gcloud compute networks create ": _networks_create,
    "gcloud compute networks subnets create ": _subnets_create,
    "gcloud compute networks subnets update ": _subnets_update,
    "gcloud projects add-iam-policy-binding ": _project_binding,
    "gcloud storage buckets create ": _bucket_create,
    "gcloud storage buckets add-iam-policy-binding ": _bucket_binding,
    "gcloud artifacts repositories create ": _repository_create,
    "gcloud artifacts repositories add-iam-policy-binding ": _repository_binding,
    "gcloud quotas preferences create ": _quota_preference,
}


@pytest.fixture
def org_project(gcp_admin_fake: GcpAdminFake, compute_fake: Any, artifact_registry_fake: ArtifactRegistryFake,
                gcs_emulator: str) -> Iterator[User]:
    """A fresh project of a 2024+ organisation, its creator the owner (see the module docstring)."""
    admin = gcp_admin_fake
    number = admin.add_project(P)  # no binding for any default account
    admin.set_org_policy(P, "constraints/compute.vmExternalIpAccess", {"listPolicy": {"allValues": "DENY"}})
    compute_fake.org_project(P)  # no `default` network
    compute_fake.project = P
    compute_fake.set_project_quota(GLOBAL_GPU_QUOTA, 0.0)
    admin.grant(P, compute_fake.operator, "roles/owner")
    compute_fake.iam = admin
    artifact_registry_fake.add_project(P)  # no repository
    with guarded_stand_in(run_cloudbuild_fake(P, project_number=int(number)), "cloudbuild fake") as builds:
        # Builds that name no account run as the Compute default account (the fake's default); a
        # build reads its staged source only with a role on the bucket or the project, and pushes
        # only to a repository the Artifact Registry fake holds, as an account that may upload.
        gcs = storage.Client(project=P, credentials=AnonymousCredentials())
        builds.source_exists = lambda bucket, name: gcs.bucket(bucket).blob(name).exists()
        builds.source_readable_by = object_readers(gcs, admin, P)
        builds.push_refusal = artifact_registry_fake.push_refusal
        builds.push_denial = repository_writers(artifact_registry_fake, admin)
        builds.build_seconds = 0.2
        yield User(admin, compute_fake, builds, artifact_registry_fake)


def test_init_and_doctor_walk_an_organisation_project_to_its_first_vm(
        org_project: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = org_project
    compute_default = f"{user.builds.project_number}-compute@developer.gserviceaccount.com"
    build_account = f"cos-spot-runner-build@{P}.iam.gserviceaccount.com"

    # Before `runner init`, the doctor names every piece this organisation lacks, each with its fix.
    before = {c.name: c for c in user.doctor() if c.ok is False}
    assert list(before) == ["bucket", "VM service account roles", "network", "Artifact Registry repository",
                            "Cloud Build account", "GPU quota"], "\n".join(map(format_check, before.values()))
    assert f"{compute_default} (the Compute default service account) lacks" in before["VM service account roles"].detail
    assert "runner init" in before["VM service account roles"].fix
    assert "vmExternalIpAccess" in before["network"].detail and "default does not exist" in before["network"].detail
    assert f"{REGION}-docker.pkg.dev/{P}/runs does not exist" in before["Artifact Registry repository"].detail
    assert f"gcloud artifacts repositories create runs --repository-format=docker --location={REGION}" in \
        before["Artifact Registry repository"].fix
    assert before["Cloud Build account"].detail.startswith(  # the account, and why it is the one, said once
        f"builds run as {compute_default} (the Compute Engine default service account, Cloud Build's default "
        "since 2024), which lacks roles/storage.objectViewer")
    assert f"project-wide {GLOBAL_GPU_QUOTA} 0 free of 0" in before["GPU quota"].detail
    assert f"--quota-id={GLOBAL_GPU_QUOTA_ID} --preferred-value=1" in before["GPU quota"].fix

    # The user runs `runner init` (what the VM account and repository fixes say), then repeats
    # `runner doctor`, doing what each ✗ says, until everything passes.
    user.init()
    assert f"+ repository {REGION}-docker.pkg.dev/{P}/runs: created (format DOCKER, location {REGION})" in user.said
    assert user.toml["service_account"] == f"cos-spot-runner@{P}.iam.gserviceaccount.com"
    assert user.toml["build_service_account"] == build_account
    rounds: list[dict[str, str]] = []
    for _ in range(4):
        checks = user.doctor()
        failed = {c.name: c.fix for c in checks if c.ok is False}
        if not failed:
            break
        rounds.append(failed)
        for check in checks:
            if check.ok is False:
                user.follow(check)
    assert exit_code(user.doctor()) == 0, "\n".join(format_check(c) for c in user.doctor())
    # What `runner init` cannot do for the user, each named once with its fix: the network (an
    # organisation's choice) and the quota (Google's review).
    assert list(rounds[0]) == ["network", "GPU quota"], rounds
    assert len(rounds) == 1, rounds
    assert user.toml["external_ip"] is False
    assert user.toml["network"] == user.toml["subnetwork"] == "cos-spot-runner"
    assert any(line.startswith("gcloud quotas preferences create ") for line in user.followed)

    # `runner build`: Cloud Build runs as the account init made, reads the staged source and pushes
    # to the repository init made. A route that fell back to local Docker would fail at once.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    from runner.cli.cmd_build import run_build

    context = tmp_path / "proj"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    (context / "cloudbuild.yaml").write_text((ROOT / "cloudbuild.yaml").read_text())
    cfg = user.config()
    built = run_build(cfg, BuildRequest(str(context), f"{IMAGE}:v1", base_image=cfg.base_image), False)
    assert built.route == "cloud-build", built
    (sent,) = user.builds.builds
    assert sent.service_account == f"projects/{P}/serviceAccounts/{build_account}"
    pushed = user.builds.current(user.builds.build_ids[-1]).results.images
    assert built.image in {f"{IMAGE}@{image.digest}" for image in pushed}

    # The first GPU run: its VM is created, without an external IP, on the subnetwork made above,
    # from the image just built.
    from runner.launch.submit import submit

    ctx = make_context(cfg)
    submit(ctx, "first", ["python3", "-c", "pass"], image=built.image, restart=False)
    ctx.supervisor().reconcile("first")
    (vm,) = user.compute.instances(project=P)
    nic = vm.network_interfaces[0]
    assert nic.subnetwork.endswith(f"projects/{P}/regions/{REGION}/subnetworks/cos-spot-runner")
    assert not nic.access_configs
    assert vm.service_accounts[0].email == f"cos-spot-runner@{P}.iam.gserviceaccount.com"
    assert [a.accelerator_type.rsplit("/", 1)[-1] for a in vm.guest_accelerators] == ["nvidia-tesla-t4"]
    record = RunRecord(ctx.store, "first")
    assert record.read_state()[0].state == State.PROVISIONING
    assert record.read_spec().image == built.image  # type: ignore[union-attr]
    sub = user.compute.subnetwork(REGION, "cos-spot-runner", project=P)
    assert sub is not None and sub.private_ip_google_access


def test_a_push_by_an_account_without_an_uploading_role_is_refused_as_artifact_registry_refuses_it(
        org_project: User) -> None:
    """The stand-ins behind the walk above: Cloud Build pushes to an existing repository only as
    an account holding a role that uploads there (tests/standins/artifact_registry.py cites the
    roles and the denial's text). Here the Compute default account may read the staged source
    but not push, until the user grants it the writer role on the repository."""
    user = org_project
    default = f"{user.builds.project_number}-compute@developer.gserviceaccount.com"
    user.registry.add_repository(P, REGION, "runs")
    gcs = storage.Client(project=P, credentials=AnonymousCredentials())
    bucket = gcs.create_bucket(f"src-{uuid.uuid4().hex[:8]}")
    bucket.blob("source/x.tgz").upload_from_string(b"not read by the fake")
    user.admin.grant(P, f"serviceAccount:{default}", "roles/storage.objectViewer")
    client = user.builds.client()

    def build() -> cloudbuild_v1.Build:
        op = client.create_build(project_id=P, build=cloudbuild_v1.Build(
            steps=[cloudbuild_v1.BuildStep(id="push", name="gcr.io/cloud-builders/docker",
                                           args=["push", f"{IMAGE}:v1"])],
            images=[f"{IMAGE}:v1"], source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(
                bucket=bucket.name, object_="source/x.tgz"))))
        with contextlib.suppress(GoogleAPICallError):  # a failed build's result() raises; read its detail
            op.result(timeout=30)
        return client.get_build(project_id=P, id=op.metadata.build.id)

    refused = build()
    assert refused.status.name == "FAILURE"
    assert refused.status_detail == (
        'step exited 1: denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
        f'"projects/{P}/locations/{REGION}/repositories/runs" (or it may not exist)')
    _repository_binding(user, f"gcloud artifacts repositories add-iam-policy-binding runs --location={REGION} "
                              f"--project={P} --member=serviceAccount:{default} --role=roles/artifactregistry.writer")
    pushed = build()
    assert pushed.status.name == "SUCCESS", pushed.status_detail
    assert [image.name for image in pushed.results.images] == [f"{IMAGE}:v1"]
