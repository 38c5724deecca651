"""`runner init --hosted` and the doctor's hosted-supervisor check, against the admin fake and
the GCS emulator: the supervisor's account holds exactly what a pass needs, each on the narrowest
scope; a missing role is a ✗ naming it, with the grant command."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from runner.config import Config
from runner.doctor import run_checks
from runner.hosted import supervisor_email
from runner.project_setup import init_project
from tests.gcp_admin_fake import GcpAdminFake

P = "test-project"
SUP = f"serviceAccount:{supervisor_email(P)}"
VM_SA = f"cos-spot-runner@{P}.iam.gserviceaccount.com"


@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    return gcp_admin_fake


@pytest.fixture
def cfg(admin: GcpAdminFake, gcs_emulator: str, compute_fake: Any) -> Config:
    return Config(backend="gce", project=P, store=f"gs://hosted-{uuid.uuid4().hex[:8]}/runs", zones=["us-central1-a"],
                  no_gpu=True, service_account=VM_SA, compute_endpoint=compute_fake.endpoint, serviceusage_endpoint=admin.endpoint,
                  resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint)


def _init(cfg: Config, said: list[str] | None = None):
    return init_project(cfg, region="us-central1", hosted=True, say=(said if said is not None else []).append,
                        sleep=lambda s: None)


def _roles(bindings, member):
    return {b["role"] for b in bindings if member in b.get("members", ())}


def test_init_hosted_grants_exactly_what_a_pass_needs_and_a_second_run_changes_nothing(cfg, admin):
    said: list[str] = []
    steps = _init(cfg, said)
    hosted = steps[5:]
    assert [s.changed for s in hosted] == [True, True, True, True]
    assert supervisor_email(P) in admin.service_accounts(P)
    assert _roles(admin.policy(P)["bindings"], SUP) == {"roles/compute.instanceAdmin.v1"}
    bucket = storage.Client(project=P, credentials=AnonymousCredentials()).bucket(cfg.store[5:].split("/")[0])
    assert _roles(bucket.get_iam_policy(requested_policy_version=3).bindings, SUP) == {"roles/storage.objectAdmin"}
    assert _roles(admin.sa_policies[VM_SA].policy["bindings"], SUP) == {"roles/iam.serviceAccountUser"}
    assert said[-1].startswith("next: runner supervise --deploy")
    again = _init(cfg)
    assert [s.changed for s in again[5:]] == [False] * 4


def _hosted_check(cfg: Config):
    checks = {c.name: c for c in run_checks(cfg, active_project=lambda: None, docker_ping=lambda: True,
                                            load_credentials=lambda: (AnonymousCredentials(), P))}
    return checks["hosted supervisor roles"]


def test_doctor_skips_the_hosted_check_until_init_hosted(cfg):
    c = _hosted_check(cfg)
    assert c.ok is None and "runner init --hosted" in c.detail


def test_doctor_passes_after_init_hosted_and_names_a_missing_role_with_its_fix(cfg, admin):
    _init(cfg)
    assert _hosted_check(cfg).ok is True
    policy = admin.projects[P].policy
    policy["bindings"] = [b for b in policy["bindings"] if b["role"] != "roles/compute.instanceAdmin.v1"]
    c = _hosted_check(cfg)
    assert c.ok is False and "roles/compute.instanceAdmin.v1" in c.detail
    assert f"gcloud projects add-iam-policy-binding {P} --member {SUP} --role roles/compute.instanceAdmin.v1" in c.fix
    admin.sa_policies[VM_SA].policy["bindings"] = []
    c = _hosted_check(cfg)
    assert f"roles/iam.serviceAccountUser on {VM_SA}" in c.detail
    assert f"gcloud iam service-accounts add-iam-policy-binding {VM_SA}" in c.fix


def test_doctor_does_not_take_service_account_admin_for_acting_as_the_vm_account(cfg, admin):
    """roles/iam.serviceAccountAdmin manages accounts but lacks iam.serviceAccounts.actAs
    (https://cloud.google.com/iam/docs/service-account-permissions): a pass holding only it
    cannot create a VM that runs as the VM account, so doctor must not pass it."""
    _init(cfg)
    admin.sa_policies[VM_SA].policy["bindings"] = []
    admin.projects[P].policy["bindings"].append({"role": "roles/iam.serviceAccountAdmin", "members": [SUP]})
    c = _hosted_check(cfg)
    assert c.ok is False and f"roles/iam.serviceAccountUser on {VM_SA}" in c.detail
