"""`runner init` against the admin fake and the GCS emulator: what exists after, and that a
second run changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from runner.config import Config
from runner.cloud.doctor import run_checks
from runner.cloud.gcp_rest import ApiError, admin_apis
from runner.cloud.project_setup import (
    PROJECT_ROLES,
    STAGED_SOURCE_PREFIX,
    SetupError,
    Step,
    init_project,
)
from tests.standins.artifact_registry import ArtifactRegistryFake, artifact_registry_fake  # noqa: F401 - fixture
from tests.standins.gcp_admin import RACING_BINDING, GcpAdminFake
from tests.standins.gcs_fixture import DENIED_BUCKET

P = "test-project"
SA = f"cos-spot-runner@{P}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"
OBJ = "roles/storage.objectAdmin"


@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    return gcp_admin_fake


@pytest.fixture
def gcs(gcs_emulator: str) -> storage.Client:
    return storage.Client(project=P, credentials=AnonymousCredentials())


@pytest.fixture
def bucket_name() -> str:
    return f"init-{uuid.uuid4().hex[:10]}"


def config(admin: GcpAdminFake, store: str, **over: Any) -> Config:
    return Config(backend="gce", project=P, store=store, serviceusage_endpoint=admin.endpoint,
                  resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint, **over)


def init(cfg: Config, **kw: Any) -> tuple[list[Step], list[str]]:
    said: list[str] = []
    kw.setdefault("region", "us-central1")
    steps = init_project(cfg, say=said.append, sleep=lambda s: None, **kw)
    return steps, said


def members_of(bindings: list[dict[str, Any]], role: str) -> list[str]:
    return [m for b in bindings if b["role"] == role for m in b["members"]]


def test_init_creates_everything_and_a_second_run_changes_nothing(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    cfg = config(admin, f"gs://{bucket_name}/runs")
    first, said = init(cfg)
    assert [s.changed for s in first] == [True] * 6
    assert said[-1] == f'next: set service_account = "{SA}" in runner.toml so VMs run as it'

    bucket = gcs.get_bucket(bucket_name)
    assert bucket.location == "US-CENTRAL1"
    assert bucket.iam_configuration.uniform_bucket_level_access_enabled
    assert [dict(r) for r in bucket.lifecycle_rules] == [
        {"action": {"type": "Delete"}, "condition": {"age": 7, "matchesPrefix": [STAGED_SOURCE_PREFIX]}}]
    assert SA in admin.service_accounts(P)
    bucket_policy = bucket.get_iam_policy(requested_policy_version=3)
    assert [b["role"] for b in bucket_policy.bindings if MEMBER in b["members"]] == [OBJ]
    policy = admin.policy(P)
    for role in PROJECT_ROLES:
        assert members_of(policy["bindings"], role) == [MEMBER]
    assert members_of(policy["bindings"], OBJ) == []  # the store role is on the bucket only

    sets_before = len(admin.calls("resourcemanager.projects.setIamPolicy"))
    second, said = init(cfg)
    assert [s.name for s in second] == [s.name for s in first]
    assert [s.changed for s in second] == [False] * 6
    assert [s.detail.split(" ")[0] for s in second] == ["exists", "exists", "exists", "already", "exists",
                                                        "already"]
    assert second[3].detail == f"already granted to {MEMBER}"
    assert len(admin.calls("resourcemanager.projects.setIamPolicy")) == sets_before
    assert admin.policy(P) == policy
    assert len(list(gcs.get_bucket(bucket_name).lifecycle_rules)) == 1
    assert said[0] == f"✓ bucket gs://{bucket_name}: exists (location US-CENTRAL1)"


def test_existing_lifecycle_rules_are_kept_and_ours_is_not_duplicated(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    bucket = gcs.bucket(bucket_name)
    bucket.add_lifecycle_delete_rule(age=30, matches_prefix=["tmp/"])
    gcs.create_bucket(bucket, location="us-central1")
    cfg = config(admin, f"gs://{bucket_name}")
    steps, _ = init(cfg, staging_days=3)
    assert steps[1].detail == "added: delete staged sources after 3 days; 1 existing rule(s) kept"
    init(cfg, staging_days=3)
    rules = [dict(r) for r in gcs.get_bucket(bucket_name).lifecycle_rules]
    assert rules == [
        {"action": {"type": "Delete"}, "condition": {"age": 30, "matchesPrefix": ["tmp/"]}},
        {"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": [STAGED_SOURCE_PREFIX]}},
    ]


def test_a_different_staging_age_updates_our_rule_in_place(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    cfg = config(admin, f"gs://{bucket_name}")
    init(cfg, staging_days=7)
    steps, _ = init(cfg, staging_days=2)
    assert (steps[1].changed, steps[1].detail) == (True, "delete after 2 days (was 7)")
    rules = [dict(r) for r in gcs.get_bucket(bucket_name).lifecycle_rules]
    assert [r["condition"] for r in rules] == [{"age": 2, "matchesPrefix": [STAGED_SOURCE_PREFIX]}]


def test_existing_bucket_elsewhere_is_kept_and_the_difference_reported(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    gcs.create_bucket(bucket_name, location="europe-west4")
    steps, _ = init(config(admin, f"gs://{bucket_name}"))
    assert steps[0].changed is False
    assert "not US-CENTRAL1" in steps[0].detail
    assert "uniform bucket-level access is off" in steps[0].detail
    assert gcs.get_bucket(bucket_name).location == "EUROPE-WEST4"


def test_policy_write_is_retried_on_a_concurrent_change_and_keeps_it(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    admin.race_next_sets = 2
    steps, _ = init(config(admin, f"gs://{bucket_name}"))
    assert steps[5].changed is True
    sets = admin.calls("resourcemanager.projects.setIamPolicy")
    assert [r.status for r in sets] == [409, 409, 200]
    bindings = admin.policy(P)["bindings"]
    assert members_of(bindings, RACING_BINDING["role"]) == RACING_BINDING["members"] * 2
    for role in PROJECT_ROLES:
        assert members_of(bindings, role) == [MEMBER]


def test_a_service_account_not_yet_known_to_iam_is_retried(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    admin.propagation_sets = 2
    steps, _ = init(config(admin, f"gs://{bucket_name}"))
    assert steps[5].changed is True
    assert [r.status for r in admin.calls("resourcemanager.projects.setIamPolicy")] == [400, 400, 200]
    assert all(members_of(admin.policy(P)["bindings"], role) == [MEMBER] for role in PROJECT_ROLES)


def test_persistent_conflicts_end_in_the_api_error(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    admin.race_next_sets = 100
    with pytest.raises(ApiError) as err:
        init(config(admin, f"gs://{bucket_name}"))
    assert (err.value.code, err.value.status) == (409, "ABORTED")


def test_members_already_bound_to_a_role_are_kept(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    admin.grant(P, "user:alice@example.com", "roles/logging.logWriter")
    admin.grant(P, MEMBER, "roles/monitoring.metricWriter")
    steps, _ = init(config(admin, f"gs://{bucket_name}"))
    assert steps[5].detail == (f"granted to {MEMBER}: roles/logging.logWriter, roles/artifactregistry.reader, "
                               f"projects/{P}/roles/cosSpotRunnerSelfDelete (if 'cos-spot-runner VMs only')")
    bindings = admin.policy(P)["bindings"]
    assert members_of(bindings, "roles/logging.logWriter") == ["user:alice@example.com", MEMBER]
    assert members_of(bindings, "roles/monitoring.metricWriter") == [MEMBER]


def test_an_existing_service_account_is_reused(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str) -> None:
    admin.add_service_account(P, "cos-spot-runner")
    steps, _ = init(config(admin, f"gs://{bucket_name}", service_account=SA))
    assert steps[2] == Step(f"service account {SA}", False, "exists")
    assert admin.calls("iam.serviceAccounts.create") == []


def test_a_bucket_owned_by_someone_else_stops_init_with_the_reason(admin: GcpAdminFake, gcs: storage.Client) -> None:
    with pytest.raises(SetupError, match="another project may own it"):
        init(config(admin, f"gs://{DENIED_BUCKET}"))
    assert admin.calls("iam.serviceAccounts.create") == []


@pytest.mark.parametrize("store, project, message", [
    ("gs://b", None, "no GCP project"),
    ("file:///tmp/x", P, "needs a gs:// store"),
])
def test_init_needs_a_project_and_a_gcs_store(admin: GcpAdminFake, store: str, project: str | None,
                                              message: str) -> None:
    cfg = Config(backend="gce", project=project, store=store, iam_endpoint=admin.endpoint)
    with pytest.raises(SetupError, match=message):
        init(cfg)
    assert admin.calls() == []


def test_doctor_finds_the_vm_roles_init_granted(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str, compute_fake: Any) -> None:
    cfg = config(admin, f"gs://{bucket_name}", service_account=SA, compute_endpoint=compute_fake.endpoint,
                 zones=["us-central1-a"])
    init(cfg)
    checks = {c.name: c for c in run_checks(cfg, active_project=lambda: P)}
    assert checks["VM service account roles"].ok is True, checks["VM service account roles"]
    assert checks["bucket"].ok is True


def test_admin_apis_reach_only_the_configured_endpoints(admin: GcpAdminFake) -> None:
    apis = admin_apis(config(admin, "gs://b"))
    assert apis.project_number(P) == admin.projects[P].number
    with pytest.raises(ApiError) as err:
        apis.get_service_account(P, "x@y") or apis.iam.get(f"/v1/projects/{P}/nothing")
    assert err.value.code == 501


def test_user_credentials_bill_the_configured_project(monkeypatch: Any) -> None:
    """User ADC with no quota project would call the admin APIs as gcloud's own project."""
    import google.auth
    from google.oauth2.credentials import Credentials

    monkeypatch.setattr(google.auth, "default", lambda scopes=None: (Credentials(token="t"), None))
    apis = admin_apis(Config(backend="gce", project=P))
    assert apis.serviceusage.base == "https://serviceusage.googleapis.com"
    assert {api.session.credentials.quota_project_id
            for api in (apis.serviceusage, apis.resourcemanager, apis.iam)} == {P}


# ---- as a user types it: init, init again, then doctor ----

def test_cli_init_is_idempotent_and_then_doctor_passes(admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str,
                                                       bucket_name: str, tmp_path: Any,
                                                       artifact_registry_fake: ArtifactRegistryFake) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_EMULATOR_HOST": gcs_emulator,
           "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": P, "RUNNER_STORE": f"gs://{bucket_name}/runs",
           "RUNNER_ZONES": "us-central1-a", "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint,
           "RUNNER_SERVICEUSAGE_ENDPOINT": admin.endpoint, "RUNNER_RESOURCEMANAGER_ENDPOINT": admin.endpoint,
           "RUNNER_IAM_ENDPOINT": admin.endpoint, "CLOUDSDK_CONFIG": str(tmp_path / "no-gcloud"),
           "RUNNER_ARTIFACTREGISTRY_ENDPOINT": artifact_registry_fake.endpoint}
    artifact_registry_fake.add_project(P)

    def runner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    first = runner("init")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"+ bucket gs://{bucket_name}: created in US-CENTRAL1")
    second = json.loads(runner("init", "--json").stdout)
    # 6 run steps, then 5 build steps (repository, build account, its three grants)
    assert [s["changed"] for s in second] == [False] * len(second) and len(second) == 11

    env["RUNNER_SERVICE_ACCOUNT"] = SA
    doc = runner("doctor")
    assert "✓ bucket:" in doc.stdout and "✓ VM service account roles:" in doc.stdout, doc.stdout
    assert doc.returncode == 0, doc.stdout + doc.stderr
    checks = {c["name"]: c for c in json.loads(runner("doctor", "--json").stdout)}
    assert checks["APIs enabled"]["ok"] is True

    admin.set_service(P, "cloudbuild.googleapis.com", "DISABLED")
    broken = runner("doctor")
    assert broken.returncode == 1
    assert f"fix: gcloud services enable cloudbuild.googleapis.com --project {P}" in broken.stdout


def test_a_vm_running_as_inits_account_can_delete_itself_and_no_other_vm(
        admin: GcpAdminFake, gcs: storage.Client, bucket_name: str, compute_fake: Any) -> None:
    """What gcp/startup.sh does when its job is over: DELETE its own instance with the token the
    metadata server gives its service account, against the Compute fake enforcing init's IAM."""
    import requests
    from google.cloud import compute_v1

    init(config(admin, f"gs://{bucket_name}"))
    admin.grant(P, "user:operator@example.com", "roles/compute.instanceAdmin.v1")
    admin.grant(P, "user:operator@example.com", "roles/iam.serviceAccountUser")
    compute_fake.iam = admin
    instances = compute_v1.InstancesClient(**compute_fake.client_kwargs())  # the operator
    zone = "us-central1-a"
    for name in ("runner-exp-1-a1", "database-1"):
        instances.insert_unary(project=P, zone=zone, instance_resource=compute_v1.Instance(
            name=name, machine_type=f"zones/{zone}/machineTypes/n1-standard-4",
            service_accounts=[compute_v1.ServiceAccount(email=SA)]))
    vm_token = compute_fake.mint_token(MEMBER)

    def delete_as_vm(name: str) -> requests.Response:
        return requests.delete(f"{compute_fake.endpoint}/compute/v1/projects/{P}/zones/{zone}/instances/{name}",
                               headers={"Authorization": f"Bearer {vm_token}"}, timeout=10)

    other = delete_as_vm("database-1")
    assert other.status_code == 403
    assert other.json()["error"]["errors"][0]["reason"] == "forbidden"
    assert delete_as_vm("runner-exp-1-a1").status_code == 200
    assert [i.name for i in compute_fake.instances()] == ["database-1"]
