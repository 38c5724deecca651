"""`runner supervise --deploy/--undeploy/--status` against the Cloud Run and Cloud Scheduler fakes.

The product's real clients (``google-cloud-run``, ``google-cloud-scheduler``) reach the fakes
through config alone (``run_endpoint``, ``scheduler_endpoint``); assertions are on what the fakes
hold afterwards, and on what a scheduler tick does with it.
"""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord
from runner.config import Config
from runner.cloud.hosted import (JOB_ID, HostedError, daily_cost, deploy, hosted_clients, hosted_status, plan_job,
                           supervisor_email, target, undeploy)

PROJECT = "test-project"
RUNNER_IMAGE = "us-central1-docker.pkg.dev/test-project/runs/runner@sha256:" + "a" * 64
JOB = f"projects/{PROJECT}/locations/us-central1/jobs/{JOB_ID}"


@pytest.fixture
def hosted(cloudrun_fake, scheduler_fake, gcs_store, compute_fake):
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store=gcs_store.url,
                 compute_endpoint=compute_fake.endpoint, run_endpoint=cloudrun_fake.endpoint,
                 scheduler_endpoint=scheduler_fake.endpoint, supervisor_image=RUNNER_IMAGE,
                 poll_interval=2.0, stall_polls=300, gpu_timeout=300)
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    return cfg, cloudrun_fake, scheduler_fake


def _deploy(cfg, **kw):
    return deploy(cfg, target(cfg, **kw), hosted_clients(cfg), say=lambda s: None)


def test_deploy_creates_exactly_the_job_and_the_schedule(hosted):
    cfg, run, sched = hosted
    steps = _deploy(cfg)
    assert [s.changed for s in steps] == [True, True, True]
    (job,) = run.jobs.values()
    assert job.name == JOB and job.generation == 1
    tt = job.template.template
    (c,) = tt.containers
    assert c.image == RUNNER_IMAGE
    assert list(c.command) + list(c.args) == ["python3", "-m", "runner.cli", "supervise", "--schedule-period",
                                              "60", "--once", "--await-notice", "45"]
    env = {e.name: e.value for e in c.env}
    assert env["RUNNER_STORE"] == cfg.store_url and env["RUNNER_PROJECT"] == PROJECT
    assert env["RUNNER_BACKEND"] == "gce" and env["RUNNER_POLL_INTERVAL"] == "2.0"
    assert tt.service_account == supervisor_email(PROJECT) and tt.max_retries == 0
    (s,) = sched.jobs.values()
    assert s.name == f"projects/{PROJECT}/locations/us-central1/jobs/cos-spot-runner-supervisor"
    assert s.schedule == "* * * * *" and s.time_zone == "Etc/UTC"
    assert s.http_target.uri == f"https://run.googleapis.com/v2/{JOB}:run"
    assert s.http_target.oauth_token.service_account_email == supervisor_email(PROJECT)
    (binding,) = run.policies[JOB].bindings
    assert binding.role == "roles/run.invoker" and list(binding.members) == [f"serviceAccount:{supervisor_email(PROJECT)}"]


def test_deploying_twice_changes_nothing(hosted):
    cfg, run, sched = hosted
    _deploy(cfg)
    before = (run.jobs[JOB].etag, run.jobs[JOB].generation, dict(sched.jobs))
    steps = _deploy(cfg)
    assert [s.changed for s in steps] == [False, False, False]
    assert (run.jobs[JOB].etag, run.jobs[JOB].generation) == before[:2]
    assert run.calls("jobs.patch") == [] and sched.calls("jobs.patch") == []
    assert len(run.calls("jobs.create")) == 1 and len(sched.calls("jobs.create")) == 1


def test_a_new_runner_version_updates_the_job_in_place(hosted):
    cfg, run, _ = hosted
    _deploy(cfg)
    newer = RUNNER_IMAGE.replace("a" * 64, "b" * 64)
    steps = _deploy(cfg, image=newer)
    assert steps[0].changed and "image" in steps[0].detail
    (job,) = run.jobs.values()
    assert job.generation == 2 and job.template.template.containers[0].image == newer
    assert len(run.calls("jobs.create")) == 1


def test_undeploy_removes_job_and_schedule_and_leaves_runs_alone(hosted, gcs_store, compute_fake):
    from runner.launch.context import make_context
    from runner.launch.submit import submit

    cfg, run, sched = hosted
    ctx = make_context(cfg)
    submit(ctx, "exp-1", ["python3", "-m", "examples.trainer"], image=RUNNER_IMAGE, restart=False)
    ctx.supervisor().reconcile("exp-1")
    vms = [i.name for i in compute_fake.instances()]
    _deploy(cfg)
    steps = undeploy(target(cfg, need_image=False), hosted_clients(cfg), say=lambda s: None)
    assert [s.changed for s in steps] == [True, True]
    assert run.jobs == {} and sched.jobs == {}
    assert [i.name for i in compute_fake.instances()] == vms == ["runner-exp-1-a1"]
    assert RunRecord(ctx.store, "exp-1").read_state() is not None
    again = undeploy(target(cfg, need_image=False), hosted_clients(cfg), say=lambda s: None)
    assert [s.changed for s in again] == [False, False]


@pytest.mark.parametrize("permission,role", [("run.jobs.create", "roles/run.developer"),
                                             ("iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser")])
def test_a_missing_role_is_an_error_naming_it(hosted, permission, role):
    cfg, run, _ = hosted
    run.denied = {permission}
    with pytest.raises(HostedError, match=role.replace(".", r"\.")) as e:
        _deploy(cfg)
    assert permission in str(e.value) and run.jobs == {}


def test_a_scheduler_tick_runs_the_job_as_the_schedules_identity(hosted):
    cfg, run, sched = hosted
    _deploy(cfg)
    assert sched.tick() == [200]
    run.wait_executions()
    (ex,) = run.executions_of(JOB)
    assert ex.succeeded_count == 1
    assert sched.jobs[next(iter(sched.jobs))].status.code == 0


def test_without_the_invoker_binding_the_tick_is_refused(hosted):
    cfg, run, sched = hosted
    _deploy(cfg)
    run.policies.clear()  # what a deploy that forgot the binding would leave
    assert sched.tick() == [403]
    assert run.executions == {}
    (s,) = sched.jobs.values()
    assert s.status.code == 7 and "run.jobs.run" in s.status.message


def test_an_image_not_pinned_by_digest_is_refused():
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store="gs://b",
                 supervisor_image="us-docker.pkg.dev/p/r/runner:latest")
    with pytest.raises(HostedError, match="pinned by digest"):
        target(cfg)
    with pytest.raises(HostedError, match="gs:// store"):
        target(Config(project=PROJECT, zones=["us-central1-a"], store="file:///tmp/x", supervisor_image=RUNNER_IMAGE))


def test_loop_mode_runs_a_bounded_loop():
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store="gs://b",
                 supervisor_image=RUNNER_IMAGE, supervisor_mode="loop")
    job = plan_job(cfg, target(cfg))
    assert list(job.template.template.containers[0].args)[-2:] == ["--for", "50"]


def test_status_shows_the_deployment_and_the_last_pass(hosted, gcs_store):
    cfg, run, sched = hosted
    _deploy(cfg)
    out = hosted_status(target(cfg, need_image=False), hosted_clients(cfg), gcs_store)
    assert out["job"]["image"] == RUNNER_IMAGE and out["schedule"]["schedule"] == "* * * * *"
    assert out["supervisor"]["alive"] is False  # no pass has run yet


def test_the_loop_costs_more_per_day_than_one_pass_a_minute():
    once, loop = daily_cost("once", 3.0), daily_cost("loop", 3.0)
    assert 0 < once < loop


def test_the_cli_deploys_shows_and_removes_the_hosted_supervisor(hosted, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    cfg, run, sched = hosted
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT,
           "RUNNER_STORE": cfg.store_url, "RUNNER_ZONES": "us-central1-a", "RUNNER_RUN_ENDPOINT": run.endpoint,
           "RUNNER_SCHEDULER_ENDPOINT": sched.endpoint, "RUNNER_CONFIG": str(tmp_path / "none.toml")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", "supervise", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    unpinned = cli("--deploy", "--image", "us-docker.pkg.dev/p/r/runner:latest")
    assert unpinned.returncode == 1 and "not pinned by digest" in unpinned.stderr and run.jobs == {}
    out = cli("--deploy", "--image", RUNNER_IMAGE)
    assert out.returncode == 0, out.stderr
    assert "+ Cloud Run job" in out.stderr and "once mode" in out.stdout and "$" in out.stdout
    status = cli("--status")
    assert status.returncode == 1  # deployed, but no pass has run yet: nobody is watching
    assert RUNNER_IMAGE in status.stdout and "'* * * * *'" in status.stdout
    assert "nobody is supervising" in status.stdout
    gone = cli("--undeploy")
    assert gone.returncode == 0 and run.jobs == {} and sched.jobs == {}
    assert cli("--deploy", "--undeploy").returncode == 2


@pytest.mark.parametrize("which,api", [("scheduler", "cloudscheduler.googleapis.com"), ("run", "run.googleapis.com")])
def test_a_disabled_api_is_an_error_naming_that_api_and_the_command_that_enables_it(hosted, which, api):
    cfg, run, sched = hosted
    (sched if which == "scheduler" else run).disabled = True
    with pytest.raises(HostedError) as e:
        _deploy(cfg)
    assert f"gcloud services enable {api} --project {PROJECT}" in str(e.value)


@pytest.mark.parametrize("secret", ["https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                                    "hooks.slack.com/services/T000/B000/XXXXSECRET"])
def test_a_webhook_url_given_as_webhook_secret_never_reaches_the_job(hosted, secret):
    """The job's env is readable by anyone with run.jobs.get; only a secret *name* may go there."""
    cfg, run, _ = hosted
    import dataclasses

    bad = dataclasses.replace(cfg, webhook_secret=secret)
    with pytest.raises(HostedError) as e:
        _deploy(bad)
    assert "XXXXSECRET" not in str(e.value) and "webhook_secret" in str(e.value)
    assert run.jobs == {}


def test_a_webhook_secret_name_goes_to_the_job_as_a_name(hosted):
    import dataclasses

    cfg, run, _ = hosted
    _deploy(dataclasses.replace(cfg, webhook_secret="projects/test-project/secrets/runner-webhook"))
    env = {e.name: e.value for e in run.jobs[JOB].template.template.containers[0].env}
    assert env["RUNNER_WEBHOOK_SECRET"] == "projects/test-project/secrets/runner-webhook"


def test_a_zone_given_as_the_supervisor_region_is_refused_with_the_region_to_use():
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store="gs://b",
                 supervisor_image=RUNNER_IMAGE, supervisor_region="us-central1-a")
    with pytest.raises(HostedError, match=r"supervisor_region 'us-central1-a' .*zone.*us-central1\b"):
        target(cfg)


def test_undeploy_and_status_work_after_the_store_moved_off_gcs(hosted, tmp_path):
    """Removing the hosted supervisor needs neither a gs:// store nor an image: a user who has
    switched runner.toml to a local store must still be able to take it down."""
    import dataclasses

    cfg, run, sched = hosted
    _deploy(cfg)
    moved = dataclasses.replace(cfg, store=f"file://{tmp_path}", supervisor_image=None)
    steps = undeploy(target(moved, need_image=False), hosted_clients(moved), say=lambda s: None)
    assert [s.changed for s in steps] == [True, True] and run.jobs == {} and sched.jobs == {}


def test_deploy_says_a_webhook_url_in_the_environment_is_not_passed_to_the_hosted_supervisor(hosted, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    cfg, run, _ = hosted
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT,
           "RUNNER_STORE": cfg.store_url, "RUNNER_ZONES": "us-central1-a", "RUNNER_RUN_ENDPOINT": run.endpoint,
           "RUNNER_SCHEDULER_ENDPOINT": cfg.scheduler_endpoint, "RUNNER_CONFIG": str(tmp_path / "none.toml"),
           "RUNNER_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/XXXXSECRET"}
    out = subprocess.run([sys.executable, "-m", "runner.cli", "supervise", "--deploy", "--image", RUNNER_IMAGE],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RUNNER_WEBHOOK_URL" in out.stderr and "webhook_secret" in out.stderr
    assert "XXXXSECRET" not in out.stderr + out.stdout
    env_vars = {e.name: e.value for e in run.jobs[JOB].template.template.containers[0].env}
    assert not any("XXXXSECRET" in v for v in env_vars.values())


@pytest.mark.parametrize("gone", ["job", "schedule"])
def test_half_deployed_is_completed_by_deploy_and_removed_by_undeploy(hosted, gone):
    cfg, run, sched = hosted
    _deploy(cfg)
    (run.jobs if gone == "job" else sched.jobs).clear()
    steps = _deploy(cfg)
    assert [s.changed for s in steps][0 if gone == "job" else 2] is True
    assert len(run.jobs) == 1 and len(sched.jobs) == 1 and sched.tick() == [200]
    (run.jobs if gone == "job" else sched.jobs).clear()
    steps = undeploy(target(cfg, need_image=False), hosted_clients(cfg), say=lambda s: None)
    assert [s.changed for s in steps] == ([True, False] if gone == "job" else [False, True])
    assert run.jobs == {} and sched.jobs == {}


@pytest.mark.parametrize("which", ["run", "scheduler"])
def test_two_deploys_at_once_both_succeed_and_leave_one_job_and_one_schedule(hosted, which):
    """A deploy from CI and one from a laptop: the loser of the create race (409) takes what the
    winner made, compares it with its plan, and does not fail."""
    cfg, run, sched = hosted
    (run if which == "run" else sched).race_next_create = True
    steps = _deploy(cfg)
    assert len(run.jobs) == 1 and len(sched.jobs) == 1
    assert steps[0 if which == "run" else 2].changed is False
    assert _deploy(cfg) and [s.changed for s in _deploy(cfg)] == [False, False, False]


def test_granting_the_invoker_survives_a_concurrent_change_to_the_jobs_policy(hosted):
    cfg, run, sched = hosted
    run.race_next_set_policy = True
    _deploy(cfg)
    roles = {(b.role, m) for b in run.policies[JOB].bindings for m in b.members}
    assert ("roles/run.invoker", f"serviceAccount:{supervisor_email(PROJECT)}") in roles
    assert ("roles/run.viewer", "user:other@example.com") in roles  # the other writer's change is kept
    assert sched.tick() == [200]


def test_acting_as_the_supervisor_is_fixed_on_that_account_not_project_wide(hosted):
    """Least privilege for the deployer too: actAs on the supervisor's account, not on every account."""
    cfg, run, _ = hosted
    run.denied = {"iam.serviceAccounts.actAs"}
    with pytest.raises(HostedError) as e:
        _deploy(cfg)
    assert (f"gcloud iam service-accounts add-iam-policy-binding {supervisor_email(PROJECT)} "
            f"--project {PROJECT}") in str(e.value)
    assert "gcloud projects add-iam-policy-binding" not in str(e.value)


def test_a_missing_scheduler_role_is_an_error_naming_it(hosted):
    cfg, _, sched = hosted
    sched.denied = {"cloudscheduler.jobs.create"}
    with pytest.raises(HostedError, match=r"cloudscheduler\.jobs\.create.*roles/cloudscheduler\.admin"):
        _deploy(cfg)
    assert sched.jobs == {}


def test_a_deploy_racing_an_undeploy_says_what_happened_instead_of_a_traceback(hosted):
    cfg, run, _ = hosted
    _deploy(cfg)
    run.delete_before_next_patch = True
    with pytest.raises(HostedError, match="updating the Cloud Run job.*runner supervise --deploy"):
        _deploy(cfg, image=RUNNER_IMAGE.replace("a" * 64, "c" * 64))


# ---- a preempted VM asks the deployed job for a pass: which job its metadata names ----

def _vm_metadata(cfg: Config) -> dict[str, str]:
    """The metadata the first attempt's VM would get under ``cfg`` (the plan, no API call)."""
    from runner.launch.submit import dry_run

    plan, _ = dry_run(cfg, "exp-1", ["true"], RUNNER_IMAGE)
    (_zone, inst), *_ = plan.nodes[0].candidates
    return {i.key: i.value for i in inst.metadata.items}


def test_vms_name_the_deployed_job_where_hosted_supervision_is_configured_in_once_mode(hosted):
    import dataclasses

    cfg, _, _ = hosted
    assert _vm_metadata(cfg)["runner-supervisor-job"] == JOB  # supervisor_image set: deployed from here
    plain = dataclasses.replace(cfg, supervisor_image=None)
    assert _vm_metadata(plain)["runner-supervisor-job"] == ""  # a laptop loop supervises: VMs ask nobody
    assert _vm_metadata(dataclasses.replace(plain, supervisor_region="europe-west4"))["runner-supervisor-job"] == \
        f"projects/{PROJECT}/locations/europe-west4/jobs/{JOB_ID}"
    # A loop execution passes every poll_interval already: a VM's request would start a second one.
    assert _vm_metadata(dataclasses.replace(cfg, supervisor_mode="loop"))["runner-supervisor-job"] == ""


def test_the_deployed_jobs_own_passes_name_it_to_the_vms_they_create(hosted):
    """An execution loads its config from the job's env alone (no runner.toml in Cloud Run): the
    replacements it creates must still name the job, in its region, and not in loop mode."""
    import dataclasses

    from runner.config import load_config

    cfg, run, _ = hosted
    for mode, expected in (("once", JOB), ("loop", "")):
        deployed = dataclasses.replace(cfg, supervisor_image=None, supervisor_mode=mode)
        _deploy(dataclasses.replace(deployed, supervisor_image=RUNNER_IMAGE))
        (c,) = run.jobs[JOB].template.template.containers
        in_execution = load_config(env={e.name: e.value for e in c.env}, cwd="/")
        assert in_execution.supervisor_image is None and in_execution.zones == []
        assert _vm_metadata(dataclasses.replace(in_execution, zones=["us-central1-a"]))[
            "runner-supervisor-job"] == expected
