"""Where the hosted supervisor lives: the schedule in a Cloud Scheduler location of its own, and
one supervisor per project whatever region it is moved to.

Cloud Scheduler is offered in fewer regions than Cloud Run (europe-west9 runs Cloud Run jobs and
has no Cloud Scheduler: github.com/GoogleCloudPlatform/terraform-google-cloud-workflows/pull/37;
the fakes hold each service's own list: tests/standins/cloudrun.py REGIONS,
tests/standins/scheduler.py LOCATIONS). A schedule anywhere runs the job through its global
``:run`` URL (https://cloud.google.com/run/docs/execute/jobs-on-schedule names SCHEDULER_REGION
apart from the job's region). Assertions are on what the fakes hold and on what a tick runs.
"""

from __future__ import annotations

import pytest

from runner.cloud.hosted import JOB_ID, HostedError, deploy, hosted_clients, hosted_status, target, undeploy
from runner.cloud.schedule_location import choose, nearest
from runner.config import Config

PROJECT = "test-project"
RUNNER_IMAGE = "us-central1-docker.pkg.dev/test-project/runs/runner@sha256:" + "a" * 64


def _job(region: str) -> str:
    return f"projects/{PROJECT}/locations/{region}/jobs/{JOB_ID}"


@pytest.fixture
def fakes(cloudrun_fake, scheduler_fake, gcs_store, compute_fake):
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    return cloudrun_fake, scheduler_fake, gcs_store, compute_fake


def _cfg(fakes, **over) -> Config:
    run, sched, store, compute = fakes
    return Config(**{**dict(backend="gce", project=PROJECT, zones=["us-central1-a"], store=store.url,
                            compute_endpoint=compute.endpoint, run_endpoint=run.endpoint,
                            scheduler_endpoint=sched.endpoint, supervisor_image=RUNNER_IMAGE,
                            poll_interval=2.0, stall_polls=300, gpu_timeout=300), **over})


def _deploy(cfg: Config):
    return deploy(cfg, target(cfg), hosted_clients(cfg), say=lambda s: None)


def _ticks_run(run, sched) -> list[str]:
    """Fire every schedule once; the jobs that got an execution, one entry per execution."""
    before = set(run.executions)
    assert all(code == 200 for code in sched.tick())
    run.wait_executions()
    return sorted(name.split("/executions/")[0] for name in set(run.executions) - before)


# ---- item 11: the schedule's own location ----

def test_a_job_in_a_region_without_cloud_scheduler_is_scheduled_from_a_nearby_location(fakes):
    run, sched, _, _ = fakes
    cfg = _cfg(fakes, supervisor_region="europe-west9")
    steps = _deploy(cfg)
    assert list(run.jobs) == [_job("europe-west9")]
    (schedule,) = sched.jobs.values()
    assert schedule.name == f"projects/{PROJECT}/locations/europe-west1/jobs/cos-spot-runner-supervisor"
    assert schedule.http_target.uri == f"https://run.googleapis.com/v2/{_job('europe-west9')}:run"
    assert "the schedule in europe-west1, the job in europe-west9" in steps[-1].detail
    assert _ticks_run(run, sched) == [_job("europe-west9")]


def test_scheduler_region_places_the_schedule_where_it_says(fakes):
    run, sched, _, _ = fakes
    cfg = _cfg(fakes, supervisor_region="us-central1", scheduler_region="us-east1")
    _deploy(cfg)
    assert [s.name.split("/")[3] for s in sched.jobs.values()] == ["us-east1"]
    assert _ticks_run(run, sched) == [_job("us-central1")]
    out = hosted_status(target(cfg, need_image=False), hosted_clients(cfg), fakes[2])
    assert out["schedule"]["name"].split("/")[3] == "us-east1" and out["job"]["name"] == _job("us-central1")


def test_a_scheduler_region_cloud_scheduler_does_not_offer_is_refused_before_anything_is_made(fakes):
    run, sched, _, _ = fakes
    cfg = _cfg(fakes, supervisor_region="europe-west9", scheduler_region="europe-west9")
    with pytest.raises(HostedError, match=r"scheduler_region 'europe-west9' .* not a Cloud Scheduler location.*"
                                          r"europe-west1"):
        _deploy(cfg)
    assert run.jobs == {} and sched.jobs == {}


def test_without_the_right_to_list_locations_deploy_names_the_role_and_makes_nothing(fakes):
    run, sched, _, _ = fakes
    sched.denied = {"cloudscheduler.locations.list"}
    with pytest.raises(HostedError, match=r"cloudscheduler\.locations\.list denied; you need roles/cloudscheduler\.admin"):
        _deploy(_cfg(fakes))
    assert run.jobs == {} and sched.jobs == {}


def test_a_zone_given_as_scheduler_region_names_its_region():
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store="gs://b",
                 supervisor_image=RUNNER_IMAGE, scheduler_region="us-east1-b")
    with pytest.raises(HostedError, match="scheduler_region 'us-east1-b'.*use its region us-east1"):
        target(cfg)


@pytest.mark.parametrize("region,offered,expected", [
    ("us-central1", ["europe-west1", "us-central1"], "us-central1"),          # offered: the job's own
    ("europe-west9", ["europe-west1", "europe-west2", "europe-west4"], "europe-west1"),
    ("asia-southeast3", ["asia-northeast1", "asia-southeast1", "asia-southeast2"], "asia-southeast1"),
    ("us-south1", ["us-east1", "us-west2", "us-central1"], "us-central1"),
    ("africa-south1", ["europe-west1", "us-central1"], "us-central1"),      # no area match
])
def test_the_default_schedule_location_is_the_job_region_or_the_nearest_offered(region, offered, expected):
    assert nearest(region, sorted(offered)) == expected
    assert choose(region, sorted(offered)) == expected


# ---- item 12: one supervisor per project ----

def test_moving_supervisor_region_leaves_one_live_supervisor(fakes):
    """Before: two regions' schedules would each run a reconciler every minute."""
    run, sched, _, _ = fakes
    _deploy(_cfg(fakes, supervisor_region="us-central1"))
    assert _ticks_run(run, sched) == [_job("us-central1")]
    steps = _deploy(_cfg(fakes, supervisor_region="europe-west1"))
    assert list(run.jobs) == [_job("europe-west1")]
    assert [s.name.split("/")[3] for s in sched.jobs.values()] == ["europe-west1"]
    assert _ticks_run(run, sched) == [_job("europe-west1")]  # one reconciler, in the new region
    removed = [s.name for s in steps if s.detail.startswith("deleted (moved")]
    assert removed == [f"Cloud Scheduler job projects/{PROJECT}/locations/us-central1/jobs/cos-spot-runner-supervisor",
                       f"Cloud Run job {_job('us-central1')}"]


def test_moving_only_the_schedule_keeps_the_job_and_leaves_one_schedule(fakes):
    run, sched, _, _ = fakes
    _deploy(_cfg(fakes, supervisor_region="us-central1"))
    _deploy(_cfg(fakes, supervisor_region="us-central1", scheduler_region="us-east4"))
    assert list(run.jobs) == [_job("us-central1")] and run.jobs[_job("us-central1")].generation == 1
    assert [s.name.split("/")[3] for s in sched.jobs.values()] == ["us-east4"]
    assert _ticks_run(run, sched) == [_job("us-central1")]


def test_a_schedule_of_the_same_name_that_runs_something_else_is_left_alone(fakes):
    from google.cloud import scheduler_v1

    run, sched, _, _ = fakes
    foreign = f"projects/{PROJECT}/locations/us-west1/jobs/cos-spot-runner-supervisor"
    sched.client().create_job(parent=f"projects/{PROJECT}/locations/us-west1", job=scheduler_v1.Job(
        name=foreign, schedule="0 * * * *", http_target=scheduler_v1.HttpTarget(uri="https://example.com/hook")))
    _deploy(_cfg(fakes, supervisor_region="us-central1"))
    assert foreign in sched.jobs and len(sched.jobs) == 2


def test_undeploy_removes_the_supervisor_wherever_an_older_config_put_it(fakes):
    run, sched, _, _ = fakes
    _deploy(_cfg(fakes, supervisor_region="us-central1", scheduler_region="us-east1"))
    cfg = _cfg(fakes, supervisor_region="us-central1")  # scheduler_region since removed from the config
    steps = undeploy(target(cfg, need_image=False), hosted_clients(cfg), say=lambda s: None)
    assert run.jobs == {} and sched.jobs == {}
    assert [s.changed for s in steps] == [True, True]
