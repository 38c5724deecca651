"""`runner doctor` against loopback fakes: what it says is wrong, and the exact command to fix it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage

from runner.config import Config
from runner.cloud.doctor import Check, exit_code, format_check, run_checks
from tests.standins.network_guard import block_external_network
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.gcs_fixture import BUCKET, DENIED_BUCKET

P = "test-project"
LOG = "roles/logging.logWriter"
AR = "roles/artifactregistry.reader"
OBJ = "roles/storage.objectAdmin"


@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    return gcp_admin_fake


def default_sa(admin: GcpAdminFake) -> str:
    return f"{admin.projects[P].number}-compute@developer.gserviceaccount.com"


SELF_DELETE = f"projects/{P}/roles/cosSpotRunnerSelfDelete"


def grant_all(admin: GcpAdminFake, email: str) -> None:
    for role in (OBJ, LOG, AR, SELF_DELETE):
        admin.grant(P, f"serviceAccount:{email}", role)
    admin.add_role(P, "cosSpotRunnerSelfDelete", ["compute.instances.delete"])  # as `runner init` does


def gce_config(admin: GcpAdminFake, compute: Any, **over: Any) -> Config:
    values: dict[str, Any] = dict(
        backend="gce", project=P, store=f"gs://{BUCKET}/doctor-{uuid.uuid4().hex[:8]}",
        zones=["us-central1-a"], machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
        compute_endpoint=compute.endpoint, serviceusage_endpoint=admin.endpoint,
        resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint)
    values.update(over)
    return Config(**values)


def doctor(cfg: Config, **kw: Any) -> dict[str, Check]:
    kw.setdefault("active_project", lambda: None)
    kw.setdefault("docker_ping", lambda: True)
    checks = run_checks(cfg, **kw)
    assert len({c.name for c in checks}) == len(checks) == 13
    return {c.name: c for c in checks}


@pytest.fixture
def healthy(admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> Config:
    grant_all(admin, default_sa(admin))
    return gce_config(admin, compute_fake)


# ---- the whole report ------------------------------------------------------------------------

def test_healthy_gce_setup_passes_every_check_that_applies(healthy: Config, admin: GcpAdminFake) -> None:
    checks = doctor(healthy, active_project=lambda: P)
    assert {n: c.ok for n, c in checks.items()} == {
        "credentials": None, "project": True, "APIs enabled": True, "bucket": True,
        "VM service account roles": True, "hosted supervisor roles": None, "network": True,
        "gang network": None,  # nodes = 1: no traffic between VMs (tests/test_doctor_gang_network.py)
        "Artifact Registry repository": None, "Cloud Build account": None,  # no Artifact Registry image set
        "GPU quota": True, "Docker": None, "timeouts": True}
    assert exit_code(list(checks.values())) == 0
    assert default_sa(admin) in checks["VM service account roles"].detail
    assert "PREEMPTIBLE_NVIDIA_T4_GPUS 1 free" in checks["GPU quota"].detail
    lines = [format_check(c) for c in checks.values()]
    assert lines[0].startswith("- credentials: skipped (every API is a local stand-in")
    assert lines[3].startswith(f"✓ bucket: {healthy.store}/ is readable and writable")


def test_bucket_probe_leaves_nothing_behind(healthy: Config) -> None:
    doctor(healthy)
    prefix = healthy.store.split("/", 3)[3]  # type: ignore[union-attr]
    client = storage.Client(project="local", credentials=_anonymous())
    assert list(client.list_blobs(BUCKET, prefix=prefix)) == []


def test_a_check_that_crashes_is_a_failure_and_the_others_still_run(healthy: Config) -> None:
    def broken(cfg: Config) -> Any:
        raise RuntimeError("admin client exploded")

    checks = doctor(healthy, apis=broken)
    assert checks["APIs enabled"].ok is False
    assert "admin client exploded" in checks["APIs enabled"].detail
    assert checks["VM service account roles"].ok is False
    assert checks["bucket"].ok and checks["GPU quota"].ok and checks["timeouts"].ok


# ---- credentials -----------------------------------------------------------------------------

def test_missing_application_default_credentials_say_how_to_log_in(monkeypatch: Any) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    cfg = Config(backend="gce", project=P, store="gs://real-bucket", zones=["us-central1-a"])

    def no_adc() -> Any:
        raise DefaultCredentialsError("Your default credentials were not found.")

    def offline(cfg: Config) -> Any:
        raise RuntimeError("no network in tests")

    with block_external_network() as escaped:
        checks = doctor(cfg, load_credentials=no_adc, apis=offline, storage_client=offline,
                        regions=offline)
    assert escaped == []
    creds = checks["credentials"]
    assert creds.ok is False
    assert "Your default credentials were not found" in creds.detail
    assert creds.fix.splitlines()[0] == "gcloud auth application-default login"


def test_loaded_credentials_name_the_account(monkeypatch: Any) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    class ServiceAccountCreds:
        service_account_email = "ci@p.iam.gserviceaccount.com"

    cfg = Config(backend="local", store="gs://real-bucket")

    def offline(cfg: Config) -> Any:
        raise RuntimeError("no network in tests")

    with block_external_network():
        checks = doctor(cfg, load_credentials=lambda: (ServiceAccountCreds(), "p"),
                        storage_client=offline)
    assert checks["credentials"].ok is True
    assert "serviceAccount:ci@p.iam.gserviceaccount.com" in checks["credentials"].detail


# ---- project ---------------------------------------------------------------------------------

def test_project_differing_from_gcloud_active_project_is_a_warning(healthy: Config) -> None:
    check = doctor(healthy, active_project=lambda: "other-project")["project"]
    assert (check.ok, check.warning) == (False, True)
    assert check.fix == ("gcloud config set project test-project\n"
                         '(or, if other-project is the one you mean: runner.toml: project = "other-project")')
    assert format_check(check).startswith("✗ project (warning): runner uses test-project")


def test_no_project_suggests_gclouds_active_one(admin: GcpAdminFake, compute_fake: Any,
                                                gcs_emulator: str) -> None:
    cfg = gce_config(admin, compute_fake, project=None)
    checks = doctor(cfg, active_project=lambda: "my-proj")
    assert checks["project"].fix == 'runner.toml: project = "my-proj"  (or pass --project my-proj)'
    assert checks["APIs enabled"].ok is None


# ---- APIs ------------------------------------------------------------------------------------

def test_disabled_apis_are_listed_with_one_enable_command(healthy: Config, admin: GcpAdminFake) -> None:
    admin.set_service(P, "compute.googleapis.com", "DISABLED")
    admin.set_service(P, "artifactregistry.googleapis.com", "DISABLED")
    check = doctor(healthy)["APIs enabled"]
    assert check.ok is False
    assert check.detail == f"disabled in {P}: compute.googleapis.com, artifactregistry.googleapis.com"
    assert check.fix == ("gcloud services enable compute.googleapis.com "
                         "artifactregistry.googleapis.com --project test-project")


def test_disabled_service_usage_api_says_to_enable_it_first(healthy: Config, admin: GcpAdminFake) -> None:
    admin.set_service(P, "serviceusage.googleapis.com", "DISABLED")
    check = doctor(healthy)["APIs enabled"]
    assert check.ok is False
    assert "Service Usage API is disabled" in check.detail
    assert check.fix == "gcloud services enable serviceusage.googleapis.com --project test-project"


def test_permission_denied_on_service_usage_names_the_viewer_role(healthy: Config, admin: GcpAdminFake) -> None:
    admin.deny.add("serviceusage.services.get")
    check = doctor(healthy)["APIs enabled"]
    assert check.ok is False
    assert check.fix == ("gcloud projects add-iam-policy-binding test-project --member user:YOUR_EMAIL "
                         "--role roles/serviceusage.serviceUsageViewer")


# ---- bucket ----------------------------------------------------------------------------------

def test_missing_bucket_gives_the_create_command_in_the_run_region(healthy: Config, admin: GcpAdminFake,
                                                                   compute_fake: Any) -> None:
    cfg = gce_config(admin, compute_fake, store="gs://no-such-bucket-7f3a/runs",
                     zones=["europe-west4-a"], gpu=None)
    check = doctor(cfg)["bucket"]
    assert check.ok is False
    assert check.detail == "gs://no-such-bucket-7f3a does not exist"
    assert check.fix == ("gcloud storage buckets create gs://no-such-bucket-7f3a --project test-project "
                         "--location europe-west4 --uniform-bucket-level-access")


def test_forbidden_bucket_names_the_object_admin_grant(healthy: Config, admin: GcpAdminFake,
                                                        compute_fake: Any) -> None:
    cfg = gce_config(admin, compute_fake, store=f"gs://{DENIED_BUCKET}")
    check = doctor(cfg)["bucket"]
    assert check.ok is False
    assert check.detail.startswith(f"no permission to write objects in gs://{DENIED_BUCKET}")
    assert check.fix == (f"gcloud storage buckets add-iam-policy-binding gs://{DENIED_BUCKET} "
                         "--member=user:YOUR_EMAIL --role=roles/storage.objectAdmin")


def test_local_store_skips_the_bucket_check(tmp_path: Any) -> None:
    checks = doctor(Config(backend="local", store=f"file://{tmp_path}"))
    assert checks["bucket"].ok is None
    assert [n for n, c in checks.items() if c.ok is not None] == ["Docker", "timeouts"]


# ---- VM service account ----------------------------------------------------------------------

def test_each_missing_vm_role_gets_its_grant_command(admin: GcpAdminFake, compute_fake: Any,
                                                     gcs_emulator: str) -> None:
    sa = default_sa(admin)
    admin.grant(P, f"serviceAccount:{sa}", LOG)
    cfg = gce_config(admin, compute_fake)
    check = doctor(cfg)["VM service account roles"]
    assert check.ok is False
    assert check.detail.startswith(f"{sa} (the Compute default service account) lacks "
                                   f"roles/storage.objectAdmin on gs://{BUCKET}, {AR}")
    assert check.fix.splitlines() == [
        f"gcloud storage buckets add-iam-policy-binding gs://{BUCKET} --member=serviceAccount:{sa} "
        "--role=roles/storage.objectAdmin",
        f"gcloud projects add-iam-policy-binding test-project --member serviceAccount:{sa} "
        "--role roles/artifactregistry.reader",
        "runner init --project test-project",
    ]


def test_a_vm_account_that_cannot_delete_its_own_vm_is_flagged_with_init_as_the_fix(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    """The VM deletes itself when its job ends; without compute.instances.delete it keeps billing."""
    sa = default_sa(admin)
    for role in (OBJ, LOG, AR):
        admin.grant(P, f"serviceAccount:{sa}", role)
    check = doctor(gce_config(admin, compute_fake))["VM service account roles"]
    assert check.ok is False
    assert "compute.instances.delete" in check.detail
    assert check.fix.splitlines()[-1] == f"runner init --project {P}"


@pytest.mark.parametrize("role", ["roles/compute.instanceAdmin.v1", f"projects/{P}/roles/cosSpotRunnerSelfDelete"])
def test_a_role_that_lets_the_vm_delete_itself_satisfies_doctor(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str, role: str) -> None:
    grant_all(admin, default_sa(admin))
    admin.grant(P, f"serviceAccount:{default_sa(admin)}", role)
    assert doctor(gce_config(admin, compute_fake))["VM service account roles"].ok is True


def test_a_binding_to_a_self_delete_role_that_does_not_exist_is_flagged(
        admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    grant_all(admin, default_sa(admin))
    admin.delete_role(P, "cosSpotRunnerSelfDelete")
    check = doctor(gce_config(admin, compute_fake))["VM service account roles"]
    assert check.ok is False and "compute.instances.delete" in check.detail


def test_object_admin_on_the_bucket_satisfies_the_store_role(admin: GcpAdminFake, compute_fake: Any,
                                                            gcs_emulator: str) -> None:
    sa = "vm@test-project.iam.gserviceaccount.com"
    admin.add_service_account(P, "vm")
    admin.grant(P, f"serviceAccount:{sa}", LOG)
    admin.grant(P, f"serviceAccount:{sa}", AR)
    admin.grant(P, f"serviceAccount:{sa}", SELF_DELETE)
    admin.add_role(P, "cosSpotRunnerSelfDelete", ["compute.instances.delete"])
    bucket_name = f"doctor-{uuid.uuid4().hex[:8]}"
    client = storage.Client(project="local", credentials=_anonymous())
    bucket = client.create_bucket(bucket_name)
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": OBJ, "members": {f"serviceAccount:{sa}"}})
    bucket.set_iam_policy(policy)
    cfg = gce_config(admin, compute_fake, store=f"gs://{bucket_name}", service_account=sa)
    check = doctor(cfg)["VM service account roles"]
    assert check.ok is True, check
    assert check.detail == f"{sa} has {OBJ}, {LOG}, {AR} and may delete its own VM"


def test_editor_role_covers_every_vm_role(admin: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> None:
    admin.grant(P, f"serviceAccount:{default_sa(admin)}", "roles/editor")
    assert doctor(gce_config(admin, compute_fake))["VM service account roles"].ok is True


def test_configured_service_account_that_does_not_exist(admin: GcpAdminFake, compute_fake: Any,
                                                        gcs_emulator: str) -> None:
    cfg = gce_config(admin, compute_fake, service_account="ghost@test-project.iam.gserviceaccount.com")
    check = doctor(cfg)["VM service account roles"]
    assert check.ok is False
    assert check.detail == "service account ghost@test-project.iam.gserviceaccount.com does not exist"
    assert check.fix.splitlines()[0] == "runner init --project test-project"


def test_unreadable_project_policy_is_reported_not_raised(healthy: Config, admin: GcpAdminFake) -> None:
    admin.deny.add("resourcemanager.projects.getIamPolicy")
    check = doctor(healthy)["VM service account roles"]
    assert check.ok is False
    assert "PERMISSION_DENIED" in check.detail


# ---- GPU quota -------------------------------------------------------------------------------

def test_short_spot_gpu_quota_points_to_the_quota_page(healthy: Config, admin: GcpAdminFake,
                                                       compute_fake: Any) -> None:
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 2, usage=1)
    cfg = gce_config(admin, compute_fake, gpu="nvidia-tesla-t4:2", zones=["us-central1-a", "us-central1-b"])
    check = doctor(cfg)["GPU quota"]
    assert check.ok is False
    assert "us-central1: PREEMPTIBLE_NVIDIA_T4_GPUS 1 free of 2" in check.detail
    assert check.fix == ("request PREEMPTIBLE_NVIDIA_T4_GPUS >= 2 in us-central1 at "
                         "https://console.cloud.google.com/iam-admin/quotas?project=test-project")


def test_every_region_of_the_configured_zones_is_checked(healthy: Config, admin: GcpAdminFake,
                                                         compute_fake: Any) -> None:
    compute_fake.set_quota("europe-west4", "PREEMPTIBLE_NVIDIA_L4_GPUS", 0)
    compute_fake.set_quota("europe-west4", "NVIDIA_L4_GPUS", 0)
    cfg = gce_config(admin, compute_fake, machine_type="g2-standard-8", gpu=None,
                     zones=["us-central1-a", "europe-west4-a"])
    check = doctor(cfg)["GPU quota"]
    assert check.ok is False
    assert check.fix.startswith("request PREEMPTIBLE_NVIDIA_L4_GPUS >= 1 in europe-west4 at")
    assert "us-central1: PREEMPTIBLE_NVIDIA_L4_GPUS 1 free of 1" in check.detail


def test_without_spot_quota_the_standard_gpu_quota_counts(healthy: Config, admin: GcpAdminFake,
                                                          compute_fake: Any) -> None:
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 0)
    compute_fake.set_quota("us-central1", "NVIDIA_T4_GPUS", 4, usage=1)
    cfg = gce_config(admin, compute_fake, gpu="nvidia-tesla-t4:2")
    check = doctor(cfg)["GPU quota"]
    assert check.ok is True
    assert "us-central1: NVIDIA_T4_GPUS 3 free of 4" in check.detail


def test_gpu_quota_is_skipped_without_a_gpu(healthy: Config, admin: GcpAdminFake, compute_fake: Any) -> None:
    check = doctor(gce_config(admin, compute_fake, gpu=None))["GPU quota"]
    assert check.ok is None
    assert format_check(check) == "- GPU quota: skipped (no GPU on n1-standard-4)"


# ---- Docker and timeouts ---------------------------------------------------------------------

def test_unreachable_docker_fails_the_local_backend(tmp_path: Any) -> None:
    def down() -> Any:
        raise ConnectionError("Error while fetching server API version")

    check = doctor(Config(backend="local", store=f"file://{tmp_path}"), docker_ping=down)["Docker"]
    assert check.ok is False
    assert "Error while fetching server API version" in check.detail
    assert "sudo usermod -aG docker $USER" in check.fix


def test_docker_is_not_checked_for_the_gce_backend(healthy: Config) -> None:
    def must_not_run() -> Any:
        raise AssertionError("docker pinged")

    assert doctor(healthy, docker_ping=must_not_run)["Docker"].ok is None


@pytest.mark.parametrize("over, expect", [
    ({}, None),
    ({"heartbeat_interval": 300.0}, "heartbeat_interval 300 s is more than a third of the stall window 600 s"),
    ({"sync_interval": 900.0}, "sync_interval 900 s is longer than the stall window 600 s"),
    ({"grace_period": 28.0}, "grace_period 28 s leaves under 3 s of the 30 s preemption notice"),
])
def test_timeout_cross_checks_warn_about_working_but_bad_combinations(
        tmp_path: Any, over: dict[str, float], expect: str | None) -> None:
    cfg = Config(backend="local", store=f"file://{tmp_path}", poll_interval=3.0, stall_polls=200, **over)
    check = doctor(cfg)["timeouts"]
    if expect is None:
        assert check.ok is True
    else:
        assert (check.ok, check.warning) == (False, True)
        assert expect in check.detail
        assert check.fix.startswith("runner.toml: ")


# ---- rendering -------------------------------------------------------------------------------

def test_format_and_exit_code() -> None:
    ok = Check("bucket", True, "gs://b is fine")
    bad = Check("APIs enabled", False, "disabled", "gcloud services enable a\nsecond line")
    skipped = Check("Docker", None, "gce backend")
    assert format_check(ok) == "✓ bucket: gs://b is fine"
    assert format_check(bad) == ("✗ APIs enabled: disabled\n    fix: gcloud services enable a\n"
                                 "         second line")
    assert format_check(skipped) == "- Docker: skipped (gce backend)"
    assert exit_code([ok, skipped]) == 0
    assert exit_code([ok, bad, skipped]) == 1


def _anonymous() -> Any:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def test_cli_without_credentials_names_the_fix_once_and_skips_what_needs_them(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST") and not k.startswith("RUNNER_")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               NO_GCE_CHECK="true")  # never look for the real metadata server
    p = subprocess.run([sys.executable, "-m", "runner.cli", "doctor", "--backend", "gce", "--project", P,
                        "--store", "gs://some-bucket", "--zones", "us-central1-a", "--gpu", "nvidia-tesla-t4"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    assert lines[0].startswith("✗ credentials:") and lines[1] == "    fix: gcloud auth application-default login"
    for name in ("APIs enabled", "bucket", "VM service account roles", "GPU quota"):
        assert f"- {name}: skipped (needs Google credentials: fix the credentials check first)" in lines
    assert p.stdout.count("fix:") == 1


# ---- issue 20 item 6: doctor and submit judge the stall window by one rule --------------------

def _offline_doctor(cfg: Config) -> dict[str, Check]:
    """Only the timeouts check matters here; everything that would reach Google is refused."""
    def no_adc() -> Any:
        raise DefaultCredentialsError("no credentials in this test")

    def offline(cfg: Config) -> Any:
        raise RuntimeError("no network in tests")

    with block_external_network() as escaped:
        checks = doctor(cfg, load_credentials=no_adc, apis=offline, storage_client=offline, regions=offline)
    assert escaped == []
    return checks


def test_doctor_never_passes_a_stall_window_that_submit_refuses_for_a_gpu_run(tmp_path: Any) -> None:
    """The issue's case: a CPU default config with a 30 s stall window and gpu_timeout 600 s.
    doctor said "✓ stall window 30 s covers gpu_timeout 600 s" while `submit --gpu` refused."""
    from runner.config import ConfigError, load_config

    settings = {"backend": "gce", "project": P, "store": "gs://real-bucket", "zones": ["us-central1-a"],
                "machine_type": "n1-standard-4", "poll_interval": 1.0, "stall_polls": 30, "gpu_timeout": 600.0}
    check = _offline_doctor(load_config(cli=settings, cwd=str(tmp_path), env={}))["timeouts"]
    with pytest.raises(ConfigError) as refused:  # what submit --gpu does with the same numbers
        load_config(cli={**settings, "gpu": "nvidia-tesla-t4"}, cwd=str(tmp_path), env={})
    assert check.ok is False and check.warning is True
    assert "covers" not in check.detail
    rule = str(refused.value).split("the stall window ", 1)[1].split(" (poll_interval from", 1)[0]
    assert rule in check.detail  # the same words: one rule, one code path
    assert "raise stall_polls to at least 600" in check.fix


def test_a_local_run_says_gpu_timeout_does_not_apply_instead_of_claiming_it_is_covered(tmp_path: Any) -> None:
    cfg = Config(backend="local", store=f"file://{tmp_path}", poll_interval=1.0, stall_polls=30,
                 heartbeat_interval=5.0, sync_interval=10.0, gpu_timeout=600.0)
    check = doctor(cfg)["timeouts"]
    assert check.ok is True
    assert "covers" not in check.detail and "does not apply" in check.detail
