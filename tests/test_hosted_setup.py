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
from runner.cloud.doctor import run_checks
from runner.cloud.hosted import supervisor_email
from runner.cloud.project_setup import init_project
from tests.standins.gcp_admin import GcpAdminFake

P = "test-project"
SUP = f"serviceAccount:{supervisor_email(P)}"
VM_SA = f"cos-spot-runner@{P}.iam.gserviceaccount.com"


@pytest.fixture
def admin(gcp_admin_fake: GcpAdminFake) -> GcpAdminFake:
    gcp_admin_fake.add_project(P)
    for api in ("run.googleapis.com", "cloudscheduler.googleapis.com"):  # what deploy uses
        gcp_admin_fake.projects[P].services[api] = "ENABLED"
    return gcp_admin_fake


@pytest.fixture
def cfg(admin: GcpAdminFake, gcs_emulator: str, compute_fake: Any, cloudrun_fake: Any) -> Config:
    return Config(backend="gce", project=P, store=f"gs://hosted-{uuid.uuid4().hex[:8]}/runs", zones=["us-central1-a"],
                  no_gpu=True, service_account=VM_SA, compute_endpoint=compute_fake.endpoint, serviceusage_endpoint=admin.endpoint,
                  resourcemanager_endpoint=admin.endpoint, iam_endpoint=admin.endpoint,
                  run_endpoint=cloudrun_fake.endpoint)


def _init(cfg: Config, said: list[str] | None = None):
    return init_project(cfg, region="us-central1", hosted=True, say=(said if said is not None else []).append,
                        sleep=lambda s: None)


def _roles(bindings, member):
    return {b["role"] for b in bindings if member in b.get("members", ())}


def test_init_hosted_grants_exactly_what_a_pass_needs_and_a_second_run_changes_nothing(cfg, admin):
    said: list[str] = []
    steps = _init(cfg, said)
    hosted = steps[6:]  # after the bucket, lifecycle, VM account, its bucket role, self-delete role, project roles
    # The last: run.invoker on the job for the VM account, which waits for the job's first deploy.
    assert [s.changed for s in hosted] == [True, True, True, True, False]
    assert "not deployed yet" in hosted[-1].detail and VM_SA in hosted[-1].name
    assert supervisor_email(P) in admin.service_accounts(P)
    assert _roles(admin.policy(P)["bindings"], SUP) == {"roles/compute.instanceAdmin.v1"}
    bucket = storage.Client(project=P, credentials=AnonymousCredentials()).bucket(cfg.store[5:].split("/")[0])
    assert _roles(bucket.get_iam_policy(requested_policy_version=3).bindings, SUP) == {"roles/storage.objectAdmin"}
    assert _roles(admin.sa_policies[VM_SA].policy["bindings"], SUP) == {"roles/iam.serviceAccountUser"}
    assert said[-1].startswith("next: runner supervise --deploy")
    again = _init(cfg)
    assert [s.changed for s in again[6:]] == [False] * 5


# ---- a preempted VM may ask the hosted job for a pass (gcp/shutdown.sh): run.invoker on that job ----

RUNNER_IMAGE = "us-central1-docker.pkg.dev/test-project/runs/runner@sha256:" + "a" * 64
JOB = f"projects/{P}/locations/us-central1/jobs/cos-spot-runner-supervisor"
VM = f"serviceAccount:{VM_SA}"


def _deploy(cfg: Config, scheduler_fake: Any, vm_account: str | None = None) -> None:
    import dataclasses

    from runner.cloud.hosted import deploy, hosted_clients, target

    cfg = dataclasses.replace(cfg, scheduler_endpoint=scheduler_fake.endpoint)
    deploy(cfg, target(cfg, RUNNER_IMAGE), hosted_clients(cfg), say=lambda s: None, vm_account=vm_account)


def _job_roles(cloudrun_fake: Any, member: str) -> set[str]:
    return {b.role for b in cloudrun_fake.policies[JOB].bindings if member in b.members}


def test_init_hosted_after_a_deploy_lets_the_vm_account_run_that_job_and_nothing_more(
        cfg, admin, cloudrun_fake, scheduler_fake):
    _deploy(cfg, scheduler_fake)  # an older deploy, which granted the schedule only
    assert _job_roles(cloudrun_fake, VM) == set()
    step = _init(cfg)[10]
    assert step.changed and VM_SA in step.name
    assert _job_roles(cloudrun_fake, VM) == {"roles/run.invoker"}
    assert _job_roles(cloudrun_fake, SUP) == {"roles/run.invoker"}  # the schedule's grant is kept
    assert _roles(admin.policy(P)["bindings"], VM) & {"roles/run.invoker", "roles/run.developer"} == set()
    assert not _init(cfg)[10].changed


def test_deploy_grants_the_vm_account_in_once_mode_only(cfg, cloudrun_fake, scheduler_fake):
    import dataclasses

    _deploy(dataclasses.replace(cfg, supervisor_mode="loop"), scheduler_fake, vm_account=VM_SA)
    assert _job_roles(cloudrun_fake, VM) == set()  # a loop passes every poll_interval: VMs never ask
    _deploy(cfg, scheduler_fake, vm_account=VM_SA)
    assert _job_roles(cloudrun_fake, VM) == {"roles/run.invoker"}


def test_doctor_names_a_vm_account_that_may_not_run_the_job_with_its_fix(cfg, cloudrun_fake, scheduler_fake):
    _init(cfg)
    _deploy(cfg, scheduler_fake)  # the schedule may run the job; the VM account may not
    c = _hosted_check(cfg)
    assert c.ok is False and f"roles/run.invoker on the job cos-spot-runner-supervisor for the VM account {VM_SA}" in c.detail
    assert (f"gcloud run jobs add-iam-policy-binding cos-spot-runner-supervisor --project {P} --region us-central1 "
            f"--member=serviceAccount:{VM_SA} --role=roles/run.invoker") in c.fix
    _init(cfg)
    assert _hosted_check(cfg).ok is True


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


class SecretIam:
    """Secret Manager's secret IAM (``projects.secrets.getIamPolicy/setIamPolicy``) for one secret.

    From the REST reference (https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets/getIamPolicy):
    both are ``POST /v1/projects/P/secrets/S:{get,set}IamPolicy``; IAM lives on the secret, not on
    its versions (any other path is 404); a stale ``etag`` on set answers 409 ABORTED."""

    def __init__(self, name: str) -> None:
        self.name, self.policy, self.sets = name, {"version": 1, "etag": "BwA="}, 0
        self.race_next_set = False

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        import json

        if method == "POST" and raw_path == f"/v1/{self.name}:getIamPolicy":
            return 200, json.dumps(self.policy)
        if method == "POST" and raw_path == f"/v1/{self.name}:setIamPolicy":
            sent = json.loads(body)["policy"]
            if self.race_next_set:  # another writer lands first
                self.race_next_set = False
                self.policy = {**self.policy, "etag": "Bw" + str(self.sets) + "x=",
                               "bindings": [*self.policy.get("bindings", []),
                                            {"role": "roles/viewer", "members": ["user:other@example.com"]}]}
            if sent.get("etag") != self.policy["etag"]:
                return 409, json.dumps({"error": {"code": 409, "status": "ABORTED",
                                                  "message": "There were concurrent policy changes."}})
            self.sets += 1
            self.policy = {**sent, "etag": f"Bw{self.sets}="}
            return 200, json.dumps(self.policy)
        return 404, json.dumps({"error": {"code": 404, "status": "NOT_FOUND", "message": f"{raw_path} not found"}})


@pytest.mark.parametrize("given", ["hook", "projects/test-project/secrets/hook",
                                   "projects/test-project/secrets/hook/versions/latest"])
def test_init_hosted_grants_the_webhook_secret_on_the_secret_whatever_form_names_it(cfg, given):
    """webhook_secret may name a version (runner/ops/notify.py reads it so); access is granted on the secret."""
    import dataclasses

    from tests.standins.json_http_server import serve

    sm = SecretIam(f"projects/{P}/secrets/hook")
    with serve(sm, "secret-iam") as endpoint:
        with_secret = dataclasses.replace(cfg, webhook_secret=given, secretmanager_endpoint=endpoint)
        steps = _init(with_secret)
        assert steps[-1].changed and _roles(sm.policy["bindings"], SUP) == {"roles/secretmanager.secretAccessor"}
        assert not _init(with_secret)[-1].changed and sm.sets == 1


def test_init_hosted_keeps_a_concurrent_change_to_the_secrets_policy(cfg):
    import dataclasses

    from tests.standins.json_http_server import serve

    sm = SecretIam(f"projects/{P}/secrets/hook")
    sm.race_next_set = True
    with serve(sm, "secret-iam") as endpoint:
        _init(dataclasses.replace(cfg, webhook_secret="hook", secretmanager_endpoint=endpoint))
    assert _roles(sm.policy["bindings"], SUP) == {"roles/secretmanager.secretAccessor"}
    assert _roles(sm.policy["bindings"], "user:other@example.com") == {"roles/viewer"}


def test_doctor_names_a_missing_webhook_secret_grant_with_its_fix(cfg):
    import dataclasses

    from tests.standins.json_http_server import serve

    sm = SecretIam(f"projects/{P}/secrets/hook")
    with serve(sm, "secret-iam") as endpoint:
        with_secret = dataclasses.replace(cfg, webhook_secret="hook", secretmanager_endpoint=endpoint)
        _init(with_secret)
        assert _hosted_check(with_secret).ok is True
        sm.policy["bindings"] = []
        c = _hosted_check(with_secret)
    assert c.ok is False and f"roles/secretmanager.secretAccessor on projects/{P}/secrets/hook" in c.detail
    assert (f"gcloud secrets add-iam-policy-binding hook --project {P} --member={SUP} "
            "--role=roles/secretmanager.secretAccessor") in c.fix


def test_doctor_names_the_cloud_run_and_scheduler_apis_when_they_are_disabled(cfg, admin):
    _init(cfg)
    services = admin.projects[P].services
    services.pop("run.googleapis.com", None)
    services["cloudscheduler.googleapis.com"] = "ENABLED"
    c = _hosted_check(cfg)
    assert c.ok is False and "run.googleapis.com" in c.detail
    assert f"gcloud services enable run.googleapis.com --project {P}" in c.fix
    services["run.googleapis.com"] = "ENABLED"
    assert _hosted_check(cfg).ok is True
