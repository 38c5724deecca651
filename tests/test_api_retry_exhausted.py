"""Issue 19, item 8 beyond the GCE backend: a fault sustained past the retry deadline is said, where
it happens, as what it is and what to do: in ``runner build`` (Cloud Build), the hosted supervisor's
deploy (Cloud Run, Cloud Scheduler), ``runner init --hosted`` and ``runner doctor`` (its bucket
probe, and any check).

Every call retries 429/5xx with ``api_retry`` (or, for Cloud Storage, the storage library's own
retry given the same deadline); past the deadline google-api-core raises ``RetryError``, which is
not a ``GoogleAPICallError`` (https://googleapis.dev/python/google-api-core/latest/_modules/google/api_core/retry/retry_unary.html)
and so slipped past every handler written for those. The deadline is shortened here, and each fake
answers 503 to every request of one kind (``fail_next``; the GCS emulator through
``tests/standins/gcs_fault_proxy.py``), so the fault outlasts it within the test. Each test also
checks that the fault was met more than once: retried, not refused at the first answer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from runner.build.image import BuildError
from runner.config import Config
from runner.cloud.doctor import run_checks
from runner.cloud.hosted import HostedError, deploy, hosted_clients, target
from tests.standins.gcs_fault_proxy import FaultRule
from tests.standins.gcs_fixture import client_through
# The fixtures and helpers of the suites these paths already have, so the setups are theirs.
from tests.test_build import cloud, cloud_build, context  # noqa: F401 - fixtures
from tests.test_doctor import doctor, grant_all, gce_config, default_sa
from tests.test_hosted import RUNNER_IMAGE
from tests.test_hosted_setup import VM_SA, _hosted_check, _init
from tests.test_hosted_setup import admin, cfg  # noqa: F401 - fixtures

DEADLINE = 1.5
EXHAUSTED = rf"still failing after {DEADLINE:g} s of retries \(last answer: 503"


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runner.cloud.gcp_clients.API_RETRY_DEADLINE", DEADLINE)


# ---- runner build: Cloud Build ----------------------------------------------------------------

def test_a_build_cloud_build_will_not_create_is_said_with_what_to_do(cloud, context: Path,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.fail_next(503, times=10_000, rpc="builds.create")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # the last route fails too
    with pytest.raises(BuildError) as err:
        cloud_build(cloud, context, [])
    lines = str(err.value).splitlines()[1:]
    assert [ln.strip().split(":")[0] for ln in lines] == ["cloud-build", "cloud-build-restaged", "local-push"]
    for line in lines[:2]:
        assert "Cloud Build could not create the build: still failing after 1.5 s of retries (last answer: 503" \
            in line and "run `runner build` again later" in line
    assert cloud.builds == [] and len(cloud.calls("builds.create", ok=False)) > 2  # two routes, each retried


def test_a_build_whose_status_cannot_be_read_names_the_build_to_follow(cloud, context: Path,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.fail_next(503, times=10_000, rpc="builds.get")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(BuildError) as err:
        cloud_build(cloud, context, [])
    first = str(err.value).splitlines()[1]
    build_id = cloud.build_ids[0]
    assert f"lost track of Cloud Build {build_id}: reading its status is still failing after 1.5 s" in first
    assert f"gcloud builds describe {build_id} --project {cloud.project}" in first
    assert len(cloud.builds) == 2  # both routes' builds were created: Cloud Build has them
    assert len(cloud.calls("builds.get", ok=False)) > 2  # two routes, each retried


# ---- the hosted supervisor: Cloud Run, Cloud Scheduler ----------------------------------------

@pytest.fixture
def hosted(cloudrun_fake: Any, scheduler_fake: Any, gcs_store: Any, compute_fake: Any) -> tuple[Config, Any, Any]:
    cfg = Config(backend="gce", project="test-project", zones=["us-central1-a"], store=gcs_store.url,
                 compute_endpoint=compute_fake.endpoint, run_endpoint=cloudrun_fake.endpoint,
                 scheduler_endpoint=scheduler_fake.endpoint, supervisor_image=RUNNER_IMAGE)
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    return cfg, cloudrun_fake, scheduler_fake


@pytest.mark.parametrize("service, rpc, what", [
    ("run", "jobs.get", "reading the Cloud Run job"),
    ("scheduler", "locations.list", "listing Cloud Scheduler locations"),
])
def test_a_deploy_under_a_sustained_fault_says_what_it_was_doing_and_to_run_it_again(hosted, service, rpc,
                                                                                  what) -> None:
    cfg, run, sched = hosted
    fake = run if service == "run" else sched
    fake.fail_next(503, times=10_000, rpc=rpc)
    with pytest.raises(HostedError, match=rf"^{what}: {EXHAUSTED}.*run the same command again later"):
        deploy(cfg, target(cfg), hosted_clients(cfg), say=lambda s: None)
    assert len(fake.calls(rpc, ok=False)) > 1
    assert run.jobs == {} and sched.jobs == {}  # it stopped there: nothing half made after it


# ---- runner init --hosted, runner doctor's hosted check ---------------------------------------

def _deploy(cfg: Config, scheduler_fake: Any, vm_account: str | None = None) -> None:
    cfg = dataclasses.replace(cfg, scheduler_endpoint=scheduler_fake.endpoint)
    deploy(cfg, target(cfg, RUNNER_IMAGE), hosted_clients(cfg), say=lambda s: None, vm_account=vm_account)


def test_init_hosted_says_a_grant_it_could_not_make_for_a_sustained_fault(cfg, cloudrun_fake,  # noqa: F811
                                                                          scheduler_fake) -> None:
    _deploy(cfg, scheduler_fake)
    cloudrun_fake.fail_next(503, times=10_000, rpc="jobs.get")
    step = _init(cfg)[10]
    assert VM_SA in step.name and not step.changed
    assert "not granted (reading the Cloud Run job: still failing after 1.5 s of retries (last answer: 503" \
        in step.detail
    assert len(cloudrun_fake.calls("jobs.get", ok=False)) > 1


def test_doctor_never_passes_a_job_grant_it_could_not_read(cfg, cloudrun_fake, scheduler_fake) -> None:  # noqa: F811
    _init(cfg)
    _deploy(cfg, scheduler_fake, vm_account=VM_SA)
    assert _hosted_check(cfg).ok is True  # everything granted: only the fault below can fail it
    cloudrun_fake.fail_next(503, times=10_000, rpc="jobs.getIamPolicy")
    check = _hosted_check(cfg)
    assert check.ok is False
    assert check.detail.startswith("could not be checked: a Google API call is still failing after 1.5 s")
    assert "run `runner doctor` again later" in check.fix
    assert len(cloudrun_fake.calls("jobs.getIamPolicy", ok=False)) > 1


# ---- runner doctor's bucket probe: Cloud Storage ----------------------------------------------

def test_the_bucket_probe_under_a_sustained_fault_says_so_not_that_the_check_broke(
        admin, compute_fake, gcs_emulator, fault_proxy) -> None:  # noqa: F811
    grant_all(admin, default_sa(admin))
    cfg = gce_config(admin, compute_fake)
    rule = fault_proxy.add(FaultRule(action="503", match=".doctor/probe-"))  # the probe's upload
    check = doctor(cfg, storage_client=lambda c: client_through(fault_proxy),
                   load_credentials=lambda: (AnonymousCredentials(), cfg.project))["bucket"]
    assert check.ok is False
    assert check.detail.startswith("could not be checked: a Google API call is still failing after 1.5 s "
                                   "of retries (last answer: 503"), check.detail
    assert "run `runner doctor` again later" in check.fix
    assert rule.applied > 1
