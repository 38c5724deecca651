"""The Cloud Run and Cloud Scheduler fakes are as strict as the services where a product can err:
resource names, required and output-only fields, reserved env names, etags, and auth on `:run`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2, scheduler_v1

PARENT = "projects/test-project/locations/us-central1"


def _job(**over) -> run_v2.Job:
    c = run_v2.Container(image="us-docker.pkg.dev/p/r/i@sha256:" + "a" * 64, env=over.pop("env", []))
    return run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[c])), **over)


@pytest.mark.parametrize("job_id", ["Upper", "1starts-with-digit", "ends-with-", "x" * 64, ""])
def test_a_job_id_that_is_not_a_dns_label_is_refused(cloudrun_fake, job_id):
    with pytest.raises(gexc.BadRequest):
        cloudrun_fake.client().create_job(parent=PARENT, job=_job(), job_id=job_id)


def test_reserved_env_names_and_output_only_fields_are_refused(cloudrun_fake):
    client = cloudrun_fake.client()
    with pytest.raises(gexc.BadRequest, match="reserved env names"):
        client.create_job(parent=PARENT, job=_job(env=[run_v2.EnvVar(name="CLOUD_RUN_JOB", value="x")]), job_id="j")
    with pytest.raises(gexc.BadRequest, match="output only"):
        client.create_job(parent=PARENT, job=_job(etag="abc"), job_id="j")
    with pytest.raises(gexc.BadRequest, match="region"):
        client.create_job(parent="projects/test-project/locations/mars-north1", job=_job(), job_id="j")


def test_create_is_a_long_running_operation_and_a_second_create_conflicts(cloudrun_fake):
    client = cloudrun_fake.client()
    op = client.create_job(parent=PARENT, job=_job(), job_id="j")
    job = op.result(timeout=30)
    assert job.name == f"{PARENT}/jobs/j" and job.template.template.max_retries == 3  # server default
    assert job.template.template.timeout == timedelta(seconds=600)
    with pytest.raises(gexc.Conflict):
        client.create_job(parent=PARENT, job=_job(), job_id="j")
    with pytest.raises(gexc.NotFound):
        client.get_job(name=f"{PARENT}/jobs/missing")


def test_an_update_with_a_stale_etag_is_refused_and_every_update_bumps_the_generation(cloudrun_fake):
    client = cloudrun_fake.client()
    job = client.create_job(parent=PARENT, job=_job(), job_id="j").result(timeout=30)
    same = _job(name=job.name, etag=job.etag)
    updated = client.update_job(job=same).result(timeout=30)
    assert updated.generation == 2  # nothing changed, still a new generation: redeploy only on a diff
    with pytest.raises(gexc.Conflict):
        client.update_job(job=_job(name=job.name, etag=job.etag))


def test_an_oidc_token_is_refused_by_the_run_api(cloudrun_fake, scheduler_fake):
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    cloudrun_fake.client().create_job(parent=PARENT, job=_job(), job_id="j").result(timeout=30)
    sa = "sup-account@test-project.iam.gserviceaccount.com"
    cloudrun_fake.project_roles[f"serviceAccount:{sa}"] = {"roles/run.invoker"}
    target = scheduler_v1.HttpTarget(uri=f"https://run.googleapis.com/v2/{PARENT}/jobs/j:run",
                                     http_method=scheduler_v1.HttpMethod.POST,
                                     oidc_token=scheduler_v1.OidcToken(service_account_email=sa))
    scheduler_fake.client().create_job(parent=PARENT, job=scheduler_v1.Job(
        name=f"{PARENT}/jobs/s", schedule="* * * * *", http_target=target))
    assert scheduler_fake.tick() == [401]


def test_a_vms_access_token_acts_as_its_account_and_an_unknown_token_is_refused(cloudrun_fake):
    """What a VM's shutdown script sends: the opaque token its metadata server handed out."""
    import requests
    from google.iam.v1 import iam_policy_pb2, policy_pb2

    client = cloudrun_fake.client()
    client.create_job(parent=PARENT, job=_job(), job_id="j").result(timeout=30)
    vm_sa = "vm-account@test-project.iam.gserviceaccount.com"
    cloudrun_fake.tokens["ya29.vm-token"] = vm_sa
    url = f"{cloudrun_fake.endpoint}/v2/{PARENT}/jobs/j:run"

    def run(token: str) -> int:
        return requests.post(url, json={}, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code

    assert run("ya29.someone-elses") == 401
    assert run("ya29.vm-token") == 403  # a known account, without run.invoker on the job
    policy = policy_pb2.Policy()
    policy.bindings.add(role="roles/run.invoker", members=[f"serviceAccount:{vm_sa}"])
    client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=f"{PARENT}/jobs/j", policy=policy))
    assert run("ya29.vm-token") == 200
    cloudrun_fake.wait_executions(timeout=30)
    (ex,) = cloudrun_fake.executions_of(f"{PARENT}/jobs/j")
    assert ex.creator == vm_sa


@pytest.mark.parametrize("bad", [dict(schedule="every minute"), dict(time_zone="Mars/Olympus"),
                                 dict(name=f"{PARENT}/jobs/has space"),
                                 dict(name="projects/other/locations/us-central1/jobs/s")])
def test_the_scheduler_refuses_malformed_jobs(scheduler_fake, bad):
    fields = dict(name=f"{PARENT}/jobs/s", schedule="* * * * *", time_zone="Etc/UTC",
                  http_target=scheduler_v1.HttpTarget(uri="https://run.googleapis.com/v2/x:run"))
    fields.update(bad)
    with pytest.raises(gexc.BadRequest):
        scheduler_fake.client().create_job(parent=PARENT, job=scheduler_v1.Job(**fields))


def test_the_scheduler_refuses_a_token_of_another_projects_account(scheduler_fake):
    target = scheduler_v1.HttpTarget(uri="https://run.googleapis.com/v2/x:run", oauth_token=scheduler_v1.OAuthToken(
        service_account_email="sa@elsewhere.iam.gserviceaccount.com"))
    with pytest.raises(gexc.BadRequest, match="must belong to project"):
        scheduler_fake.client().create_job(parent=PARENT, job=scheduler_v1.Job(
            name=f"{PARENT}/jobs/s", schedule="* * * * *", http_target=target))


def _schedule(**over) -> scheduler_v1.Job:
    fields = dict(name=f"{PARENT}/jobs/s", schedule="* * * * *",
                  http_target=scheduler_v1.HttpTarget(uri="https://run.googleapis.com/x"))
    return scheduler_v1.Job(**{**fields, **over})


@pytest.mark.parametrize("over", [dict(attempt_deadline=timedelta(seconds=5)),
                                  dict(attempt_deadline=timedelta(hours=1)),
                                  dict(retry_config=scheduler_v1.RetryConfig(retry_count=6)),
                                  dict(description="x" * 501)])
def test_the_scheduler_fake_refuses_what_the_job_reference_forbids(scheduler_fake, over):
    with pytest.raises(gexc.BadRequest):
        scheduler_fake.client().create_job(parent=PARENT, job=_schedule(**over))


@pytest.mark.parametrize("location", ["europe-west9", "us-central1-a"])
def test_a_location_cloud_scheduler_does_not_offer_answers_as_google_did(scheduler_fake, location):
    """europe-west9 runs Cloud Run jobs, not Cloud Scheduler; the 403 is what Google answered for
    such a location (github.com/hashicorp/terraform-provider-google/issues/7001)."""
    from tests.standins.cloudrun import REGIONS

    assert location not in scheduler_fake.locations
    parent = f"projects/test-project/locations/{location}"
    with pytest.raises(gexc.Forbidden, match=r'lacks IAM permission "cloudscheduler.jobs.create" for the resource '
                                             rf'"{parent}" \(or the resource may not exist\)'):
        scheduler_fake.client().create_job(parent=parent, job=_schedule(name=f"{parent}/jobs/s"))
    with pytest.raises(gexc.Forbidden, match='"cloudscheduler.jobs.get"'):
        scheduler_fake.client().get_job(name=f"{parent}/jobs/s")
    assert (location in REGIONS) == (location == "europe-west9")  # a Cloud Run region, not a Scheduler one


def test_the_scheduler_fake_lists_its_own_locations_page_by_page(scheduler_fake):
    from google.cloud.location import locations_pb2

    client, seen, token = scheduler_fake.client(), [], ""
    while True:
        page = client.list_locations(request=locations_pb2.ListLocationsRequest(
            name="projects/test-project", page_token=token))
        seen.append([loc.location_id for loc in page.locations])
        token = page.next_page_token
        if not token:
            break
    assert len(seen) > 1 and sorted(sum(seen, [])) == sorted(scheduler_fake.locations)
    assert {"us-central1", "europe-west1", "europe-west4"} <= scheduler_fake.locations
