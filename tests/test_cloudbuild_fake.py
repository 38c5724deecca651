"""The Cloud Build fake, exercised through the real google-cloud-build REST client.

Everything goes client -> HTTP -> fake -> HTTP -> client, so these tests also pin down how the
library behaves: which path ``Operation.result()`` polls (the fake's, since the REST transport
builds its operations client on its own host), what ``.result()`` raises for a failed build
(``Unknown`` with a generic message: the detail is only in ``get_build``), which errors the
client retries by itself (503 on ``get_build`` and on the operation poll; never 429, never on
``create_build``).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Iterator

import pytest
from google.api_core import exceptions, retry as retries
from google.api_core.future import polling
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1 as cb

from tests.standins.cloudbuild import (
    BUILD_FAILED_MESSAGE,
    DEFAULT_FAIL_MESSAGE,
    CloudBuildFake,
    substitute,
)
from tests.standins.gcs_fixture import BUCKET

PROJECT = "test-project"
SOURCE_BUCKET = "test-project_cloudbuild"
SOURCE_OBJECT = "source/1700000000.123-abc.tgz"
IMAGE = "us-docker.pkg.dev/test-project/runs/workload"

# What product code should pass to .result(): poll often (the default starts at 1 s and grows
# to 20 s), and retry the poll itself on the errors Cloud Build really answers under load.
FAST_POLL = retries.Retry(initial=0.05, maximum=0.2, multiplier=1.5, timeout=10,
                          predicate=polling.POLLING_PREDICATE)
TRANSIENT = retries.if_exception_type(exceptions.TooManyRequests, exceptions.ServiceUnavailable,
                                      exceptions.InternalServerError, exceptions.BadGateway)
POLL_RETRY = retries.Retry(initial=0.05, maximum=0.2, multiplier=1.5, timeout=10,
                           predicate=TRANSIENT)


@pytest.fixture
def client(cloudbuild_fake: CloudBuildFake) -> cb.CloudBuildClient:
    """The client product code would build. Builds take 0.1 s here (default 0.3 s) for speed."""
    assert cloudbuild_fake.build_seconds == 0.3
    cloudbuild_fake.build_seconds = 0.1
    return cb.CloudBuildClient(**cloudbuild_fake.client_kwargs())


def workload_build(**overrides: Any) -> cb.Build:
    """A build shaped like the runner's: storage source, docker steps, substitutions, images."""
    fields: dict[str, Any] = dict(
        source=cb.Source(storage_source=cb.StorageSource(bucket=SOURCE_BUCKET,
                                                         object_=SOURCE_OBJECT)),
        steps=[
            cb.BuildStep(id="build", name="gcr.io/cloud-builders/docker",
                         args=["build", "--build-arg=BASE_IMAGE=${_BASE_IMAGE}",
                               "--tag=${_IMAGE}:${BUILD_ID}", "--tag=${_IMAGE}:latest", "."]),
            cb.BuildStep(id="digest", name="gcr.io/cloud-builders/docker", entrypoint="bash",
                         args=["-c", "docker push ${_IMAGE}:$BUILD_ID && echo $$HOME"]),
        ],
        images=["${_IMAGE}:${BUILD_ID}", "${_IMAGE}:latest"],
        substitutions={"_IMAGE": IMAGE, "_BASE_IMAGE": "python:3.11-slim"},
        options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.GCS_ONLY),
        tags=["cos-spot-runner"],
        timeout=timedelta(seconds=1200),
    )
    fields.update(overrides)
    return cb.Build(**fields)


def wait(op: Any) -> cb.Build:
    return op.result(timeout=10, polling=FAST_POLL, retry=POLL_RETRY)


def wait_status(client: cb.CloudBuildClient, build_id: str, status: str, **kw: Any) -> cb.Build:
    deadline = time.monotonic() + 5
    while True:
        b = client.get_build(project_id=PROJECT, id=build_id, **kw)
        if b.status == cb.Build.Status[status] or time.monotonic() > deadline:
            return b
        time.sleep(0.02)


# ---- create and wait ------------------------------------------------------------------

def test_create_from_storage_source_and_wait_for_digest(cloudbuild_fake: CloudBuildFake,
                                                        client: cb.CloudBuildClient) -> None:
    started = time.monotonic()
    op = client.create_build(project_id=PROJECT, build=workload_build())

    meta = op.metadata.build  # known at once: the id, where the log goes, where to look
    assert meta.status == cb.Build.Status.QUEUED
    assert meta.id and meta.project_id == PROJECT
    assert meta.log_url == (f"https://console.cloud.google.com/cloud-build/builds/{meta.id}"
                            f"?project={cloudbuild_fake.project_number}")
    number = cloudbuild_fake.project_number
    assert meta.logs_bucket == f"gs://{number}.cloudbuild-logs.googleusercontent.com"
    assert op.operation.name.startswith(f"operations/build/{PROJECT}/")

    done = wait(op)
    assert time.monotonic() - started < 3
    assert done.status == cb.Build.Status.SUCCESS
    assert done.id == meta.id
    names = [f"{IMAGE}:{meta.id}", f"{IMAGE}:latest"]
    assert [i.name for i in done.results.images] == names
    assert [i.digest for i in done.results.images] == [
        cloudbuild_fake.digest_for(SOURCE_OBJECT, n) for n in names]
    digest = done.results.images[0].digest
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert done.source_provenance.resolved_storage_source.bucket == SOURCE_BUCKET
    assert done.start_time <= done.finish_time
    assert all(s.status == cb.Build.Status.SUCCESS for s in done.steps)

    # The poll went to the fake (a poll towards cloudbuild.googleapis.com would have been
    # refused by the network guard and failed the fixture).
    polls = cloudbuild_fake.calls("operations.get")
    assert polls and all(p.path == f"/v1/{op.operation.name}" for p in polls)


def test_digest_is_deterministic_per_source_and_image(cloudbuild_fake: CloudBuildFake) -> None:
    a = cloudbuild_fake.digest_for("source/a.tgz", f"{IMAGE}:x")
    assert a == cloudbuild_fake.digest_for("source/a.tgz", f"{IMAGE}:x")
    assert a != cloudbuild_fake.digest_for("source/b.tgz", f"{IMAGE}:x")
    assert a != cloudbuild_fake.digest_for("source/a.tgz", f"{IMAGE}:y")


def test_fake_records_the_exact_build_sent(cloudbuild_fake: CloudBuildFake,
                                           client: cb.CloudBuildClient) -> None:
    sent = workload_build()
    op = client.create_build(project_id=PROJECT, build=sent)
    assert cloudbuild_fake.builds == [sent]  # nothing the service fills in, nothing lost
    assert cloudbuild_fake.build_ids == [op.metadata.build.id]
    recorded = cloudbuild_fake.builds[0]
    assert [s.args for s in recorded.steps] == [list(s.args) for s in sent.steps]
    assert recorded.options.logging == cb.BuildOptions.LoggingMode.GCS_ONLY
    assert recorded.source.storage_source.object_ == SOURCE_OBJECT
    wait(op)


def test_substitutions_round_trip(cloudbuild_fake: CloudBuildFake,
                                  client: cb.CloudBuildClient) -> None:
    subs = {"_IMAGE": IMAGE, "_BASE_IMAGE": "python:3.11-slim"}
    op = client.create_build(project_id=PROJECT, build=workload_build(substitutions=subs))
    done = wait(op)
    assert dict(done.substitutions) == subs
    assert dict(client.get_build(project_id=PROJECT, id=done.id).substitutions) == subs
    assert dict(cloudbuild_fake.builds[0].substitutions) == subs
    assert done.steps[0].args[2] == "--tag=${_IMAGE}:${BUILD_ID}"  # the template, as sent
    assert done.results.images[0].name == f"{IMAGE}:{done.id}"  # substituted
    assert substitute("a$$b ${_X} $_X", {"_X": "1"}) == "a$b 1 1"


@pytest.mark.parametrize("subs,steps_arg,fragment", [
    ({"_IMAGE": IMAGE, "_BASE_IMAGE": "x", "_UNUSED": "y"}, None,
     'key "_UNUSED" in the substitution data is not matched in the template'),
    ({"_IMAGE": IMAGE, "_BASE_IMAGE": "x", "image": "y"}, None,
     "does not respect format"),
    ({"_IMAGE": IMAGE, "_BASE_IMAGE": "x"}, "echo $HOME",
     'key in the template "HOME" is not a valid built-in substitution'),
])
def test_strict_substitution_errors_are_400(client: cb.CloudBuildClient, subs: dict[str, str],
                                            steps_arg: str | None, fragment: str) -> None:
    build = workload_build(substitutions=subs)
    if steps_arg:
        build.steps[1].args[1] = steps_arg
    with pytest.raises(exceptions.BadRequest) as err:
        client.create_build(project_id=PROJECT, build=build)
    assert fragment in err.value.message


def test_allow_loose_accepts_unused_substitutions(client: cb.CloudBuildClient) -> None:
    build = workload_build(substitutions={"_IMAGE": IMAGE, "_BASE_IMAGE": "x", "_SPARE": "1"},
                           options=cb.BuildOptions(substitution_option="ALLOW_LOOSE"))
    assert wait(client.create_build(project_id=PROJECT, build=build)).status == \
        cb.Build.Status.SUCCESS


def test_nested_substitution_needs_dynamic_substitutions(client: cb.CloudBuildClient) -> None:
    nested = {"_IMAGE": "us-docker.pkg.dev/${PROJECT_ID}/runs/workload", "_BASE_IMAGE": "x"}
    with pytest.raises(exceptions.BadRequest, match="invalid image name"):
        client.create_build(project_id=PROJECT, build=workload_build(substitutions=nested))
    build = workload_build(substitutions=nested,
                           options=cb.BuildOptions(dynamic_substitutions=True))
    done = wait(client.create_build(project_id=PROJECT, build=build))
    assert done.results.images[1].name == f"us-docker.pkg.dev/{PROJECT}/runs/workload:latest"


# ---- failures -------------------------------------------------------------------------

def test_failed_build_surfaces_status_and_detail(cloudbuild_fake: CloudBuildFake,
                                                 client: cb.CloudBuildClient) -> None:
    cloudbuild_fake.fail_next_builds = 1
    op = client.create_build(project_id=PROJECT, build=workload_build())
    # .result() raises with a generic message: the reason is only on the Build.
    with pytest.raises(exceptions.Unknown, match="Build failed; check build logs"):
        wait(op)
    assert op.metadata.build.status == cb.Build.Status.FAILURE
    failed = client.get_build(project_id=PROJECT, id=op.metadata.build.id)
    assert failed.status == cb.Build.Status.FAILURE
    assert failed.status_detail == DEFAULT_FAIL_MESSAGE
    assert failed.failure_info.type_ == cb.Build.FailureInfo.FailureType.USER_BUILD_STEP
    assert failed.steps[0].status == cb.Build.Status.FAILURE
    assert not failed.results.images
    assert f"ERROR: {DEFAULT_FAIL_MESSAGE}" in cloudbuild_fake.log_text(failed.id)

    assert cloudbuild_fake.fail_next_builds == 0  # only the next N builds
    assert wait(client.create_build(project_id=PROJECT, build=workload_build())).status == \
        cb.Build.Status.SUCCESS

    cloudbuild_fake.fail_next_builds = 1
    cloudbuild_fake.fail_message = 'build step 0 "gcr.io/cloud-builders/docker" failed: ' \
                                   "step exited with non-zero status: 1"
    op = client.create_build(project_id=PROJECT, build=workload_build())
    with pytest.raises(exceptions.GoogleAPICallError) as err:
        wait(op)
    assert err.value.message == BUILD_FAILED_MESSAGE
    assert "non-zero status: 1" in client.get_build(project_id=PROJECT,
                                                    id=op.metadata.build.id).status_detail


@pytest.mark.parametrize("code,exc", [(403, exceptions.Forbidden),
                                      (500, exceptions.InternalServerError)])
def test_create_http_error_raises(cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient,
                                  code: int, exc: type[Exception]) -> None:
    cloudbuild_fake.fail_create_http = code
    with pytest.raises(exc) as err:
        client.create_build(project_id=PROJECT, build=workload_build())
    if code == 403:
        assert "The caller does not have permission" in err.value.message
    assert cloudbuild_fake.builds == []
    assert [c.status for c in cloudbuild_fake.calls("builds.create")] == [code]  # no retry
    cloudbuild_fake.fail_create_http = None
    assert wait(client.create_build(project_id=PROJECT, build=workload_build())).status == \
        cb.Build.Status.SUCCESS


def test_unreadable_source_fails_create_like_cloud_build(cloudbuild_fake: CloudBuildFake,
                                                         client: cb.CloudBuildClient) -> None:
    seen: list[tuple[str, str]] = []

    def exists(bucket: str, name: str) -> bool:
        seen.append((bucket, name))
        return False

    cloudbuild_fake.source_exists = exists
    # A project whose first build predates the 2024 change still runs as the legacy account.
    cloudbuild_fake.service_account_email = f"{cloudbuild_fake.project_number}@cloudbuild.gserviceaccount.com"
    with pytest.raises(exceptions.BadRequest) as err:
        client.create_build(project_id=PROJECT, build=workload_build())
    msg = err.value.message
    assert "could not resolve source" in msg and "storage.objects.get" in msg
    assert f"{cloudbuild_fake.project_number}@cloudbuild.gserviceaccount.com" in msg
    assert seen == [(SOURCE_BUCKET, SOURCE_OBJECT)]

    cloudbuild_fake.source_error = "build"  # the other shape: the build itself fails
    op = client.create_build(project_id=PROJECT, build=workload_build())
    with pytest.raises(exceptions.Unknown):
        wait(op)
    failed = client.get_build(project_id=PROJECT, id=op.metadata.build.id)
    assert failed.failure_info.type_ == cb.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    for fragment in ("storage.objects.get", "403", "roles/storage.objectViewer",
                     f"{cloudbuild_fake.project_number}@cloudbuild.gserviceaccount.com"):
        assert fragment in failed.status_detail


def test_a_build_runs_as_its_account_and_fails_fetching_a_source_that_account_may_not_list(
        cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient) -> None:
    """Since 2024 the default account is the Compute Engine default one; the FETCHSOURCE denial
    names the account the build ran as, in the shape users report (see the fake's docstring)."""
    asked: list[tuple[str, str]] = []

    def readable(account: str, bucket: str) -> bool:
        asked.append((account, bucket))
        return account.startswith("builder@")

    cloudbuild_fake.source_readable_by = readable
    default = f"{cloudbuild_fake.project_number}-compute@developer.gserviceaccount.com"
    op = client.create_build(project_id=PROJECT, build=workload_build())
    with pytest.raises(exceptions.Unknown):
        wait(op)
    failed = client.get_build(project_id=PROJECT, id=op.metadata.build.id)
    assert failed.failure_info.type_ == cb.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    assert failed.status_detail.startswith(f"AccessDeniedException: 403 {default} does not have "
                                           "storage.objects.list access to the Google Cloud Storage bucket.")
    assert failed.service_account == f"projects/{PROJECT}/serviceAccounts/{default}"
    named = f"builder@{PROJECT}.iam.gserviceaccount.com"
    ok = wait(client.create_build(project_id=PROJECT, build=workload_build(
        service_account=f"projects/{PROJECT}/serviceAccounts/{named}",
        options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY))))
    assert ok.status == cb.Build.Status.SUCCESS
    assert asked == [(default, SOURCE_BUCKET), (named, SOURCE_BUCKET)]


def test_a_push_the_registry_refuses_fails_the_build_in_its_push_step(
        cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient) -> None:
    pushed: list[str] = []

    def refuse(image: str) -> str | None:
        pushed.append(image)
        return 'name unknown: Repository "runs" not found'

    cloudbuild_fake.push_refusal = refuse
    op = client.create_build(project_id=PROJECT, build=workload_build())
    with pytest.raises(exceptions.Unknown):
        wait(op)
    failed = client.get_build(project_id=PROJECT, id=op.metadata.build.id)
    assert 'name unknown: Repository "runs" not found' in failed.status_detail
    assert pushed == [f"{IMAGE}:{failed.id}"]  # the first image, substituted, refused


def test_service_account_needs_a_logs_destination(client: cb.CloudBuildClient) -> None:
    sa = f"projects/{PROJECT}/serviceAccounts/builder@{PROJECT}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.BadRequest, match="build.logs_bucket"):
        client.create_build(project_id=PROJECT, build=workload_build(service_account=sa))
    done = wait(client.create_build(project_id=PROJECT, build=workload_build(
        service_account=sa, logs_bucket="gs://my-logs")))
    assert done.service_account == sa


def test_build_timeout(client: cb.CloudBuildClient, cloudbuild_fake: CloudBuildFake) -> None:
    cloudbuild_fake.build_seconds = 0.6
    op = client.create_build(project_id=PROJECT,
                             build=workload_build(timeout=timedelta(seconds=0.1)))
    with pytest.raises(exceptions.GoogleAPICallError):
        wait(op)
    assert client.get_build(project_id=PROJECT, id=op.metadata.build.id).status == \
        cb.Build.Status.TIMEOUT


# ---- while it runs ---------------------------------------------------------------------

def test_get_build_while_working(cloudbuild_fake: CloudBuildFake,
                                 client: cb.CloudBuildClient) -> None:
    cloudbuild_fake.hold_builds = True
    op = client.create_build(project_id=PROJECT, build=workload_build())
    build_id = op.metadata.build.id
    running = wait_status(client, build_id, "WORKING")
    assert running.status == cb.Build.Status.WORKING
    assert running.start_time and not running.finish_time
    assert running.steps[0].status == cb.Build.Status.WORKING
    assert not running.results.images
    assert not op.done()

    cloudbuild_fake.append_log(build_id, "Sending build context to Docker daemon  1.2MB\nStep 1/9")
    log = cloudbuild_fake.log_text(build_id)
    assert 'Step #0 - "build": Step 1/9' in log and "DONE" not in log

    cloudbuild_fake.finish(build_id)
    assert wait(op).status == cb.Build.Status.SUCCESS
    assert cloudbuild_fake.log_text(build_id).endswith("DONE\n")


def test_held_build_keeps_its_planned_failure(cloudbuild_fake: CloudBuildFake,
                                              client: cb.CloudBuildClient) -> None:
    cloudbuild_fake.hold_builds = True
    cloudbuild_fake.fail_next_builds = 1
    op = client.create_build(project_id=PROJECT, build=workload_build())
    cloudbuild_fake.finish(op.metadata.build.id)
    with pytest.raises(exceptions.Unknown):
        wait(op)
    assert cloudbuild_fake.current(op.metadata.build.id).status_detail == DEFAULT_FAIL_MESSAGE


def test_cancel_build(cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient) -> None:
    cloudbuild_fake.hold_builds = True
    op = client.create_build(project_id=PROJECT, build=workload_build())
    cancelled = client.cancel_build(project_id=PROJECT, id=op.metadata.build.id)
    assert cancelled.status == cb.Build.Status.CANCELLED
    with pytest.raises(exceptions.Cancelled):
        wait(op)
    assert cloudbuild_fake.calls("builds.cancel", ok=True)


def test_regional_build(cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient) -> None:
    parent = f"projects/{PROJECT}/locations/us-central1"
    op = client.create_build(request=cb.CreateBuildRequest(parent=parent,
                                                           build=workload_build()))
    build_id = op.metadata.build.id
    assert op.operation.name.startswith(
        f"projects/{cloudbuild_fake.project_number}/locations/us-central1/operations/")
    assert "builds;region=us-central1/" in op.metadata.build.log_url
    assert wait(op).status == cb.Build.Status.SUCCESS
    got = client.get_build(request={"name": f"{parent}/builds/{build_id}"})
    assert got.id == build_id
    with pytest.raises(exceptions.NotFound):  # a regional build is not in the global namespace
        client.get_build(project_id=PROJECT, id=build_id)
    # project_id *and* parent: the client uses the global URI and sends parent as a query
    # parameter; the location still comes from it.
    op = client.create_build(
        request=cb.CreateBuildRequest(project_id=PROJECT, parent=parent, build=workload_build()))
    assert cloudbuild_fake.requests[-1].path == f"/v1/projects/{PROJECT}/builds"
    assert cloudbuild_fake.requests[-1].query["parent"] == parent
    assert "/locations/us-central1/" in op.operation.name
    wait(op)


def test_list_builds_with_filter(cloudbuild_fake: CloudBuildFake,
                                 client: cb.CloudBuildClient) -> None:
    first = wait(client.create_build(project_id=PROJECT, build=workload_build()))
    second = wait(client.create_build(project_id=PROJECT,
                                      build=workload_build(tags=["other"])))
    assert [b.id for b in client.list_builds(project_id=PROJECT)] == [second.id, first.id]
    tagged = client.list_builds(project_id=PROJECT, filter='tags="cos-spot-runner"')
    assert [b.id for b in tagged] == [first.id]


# ---- transient errors and recording -------------------------------------------------

def test_transient_errors_and_what_the_client_retries(cloudbuild_fake: CloudBuildFake,
                                                      client: cb.CloudBuildClient) -> None:
    op = client.create_build(project_id=PROJECT, build=workload_build())
    build_id = op.metadata.build.id

    cloudbuild_fake.fail_next(503, times=2, rpc="builds.get")  # get_build retries 503 itself
    assert client.get_build(project_id=PROJECT, id=build_id).id == build_id
    assert [c.status for c in cloudbuild_fake.calls("builds.get")] == [503, 503, 200]

    cloudbuild_fake.fail_next(429, rpc="builds.get")  # ...but not 429
    with pytest.raises(exceptions.TooManyRequests):
        client.get_build(project_id=PROJECT, id=build_id)

    cloudbuild_fake.fail_next(429, rpc="operations.get")  # nor does the default poll retry
    with pytest.raises(exceptions.TooManyRequests):
        op.result(timeout=10, polling=FAST_POLL)
    assert wait(op).status == cb.Build.Status.SUCCESS  # with retry=POLL_RETRY it gets through

    cloudbuild_fake.fail_next(503, rpc="builds.create")  # create is never retried
    with pytest.raises(exceptions.ServiceUnavailable):
        client.create_build(project_id=PROJECT, build=workload_build())

    # A 503 on create may come after the build started: CreateBuild has no request id, so a
    # blind retry builds twice. Product code should look for its build (e.g. by tag) first.
    cloudbuild_fake.drop_create_responses = 1
    before = len(cloudbuild_fake.builds)
    with pytest.raises(exceptions.ServiceUnavailable):
        client.create_build(project_id=PROJECT, build=workload_build(tags=["run-42"]))
    assert len(cloudbuild_fake.builds) == before + 1
    assert [b.tags for b in client.list_builds(project_id=PROJECT, filter='tags="run-42"')] == \
        [["run-42"]]

    cloudbuild_fake.error_rate = 0.5  # seeded: the same requests fail on every run
    cloudbuild_fake.reset_requests()
    op = client.create_build(project_id=PROJECT, build=workload_build(),
                             retry=retries.Retry(predicate=TRANSIENT, initial=0.01,
                                                 maximum=0.05, timeout=5))
    assert wait(op).status == cb.Build.Status.SUCCESS
    assert {r.status for r in cloudbuild_fake.requests} & {429, 503}


def test_requests_recorded(cloudbuild_fake: CloudBuildFake, client: cb.CloudBuildClient) -> None:
    op = client.create_build(project_id=PROJECT, build=workload_build())
    wait(op)
    client.get_build(project_id=PROJECT, id=op.metadata.build.id)
    (create,) = cloudbuild_fake.calls("builds.create")
    assert create.method == "POST" and create.path == f"/v1/projects/{PROJECT}/builds"
    assert create.status == 200
    assert create.body["substitutions"]["_IMAGE"] == IMAGE
    assert create.body["source"]["storageSource"]["object"] == SOURCE_OBJECT
    assert len(cloudbuild_fake.calls("builds.get")) == 1
    assert cloudbuild_fake.calls("operations.get", ok=True)
    assert {r.rpc for r in cloudbuild_fake.requests} == {"builds.create", "operations.get",
                                                         "builds.get"}
    cloudbuild_fake.reset_requests()
    assert cloudbuild_fake.requests == []


def test_unimplemented_paths_are_loud(cloudbuild_fake: CloudBuildFake,
                                      client: cb.CloudBuildClient) -> None:
    with pytest.raises(exceptions.MethodNotImplemented):
        client.list_build_triggers(project_id=PROJECT)
    assert cloudbuild_fake.calls("unknown")[0].status == 501


# ---- the log, in a GCS emulator, read back like gcloud ----------------------------------

@pytest.fixture
def gcs(gcs_emulator: str) -> Iterator[storage.Bucket]:
    client = storage.Client(project="local", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_emulator})
    yield client.bucket(BUCKET)


def test_log_streams_through_the_logs_bucket(cloudbuild_fake: CloudBuildFake,
                                             client: cb.CloudBuildClient,
                                             gcs: storage.Bucket) -> None:
    gcs.blob(SOURCE_OBJECT).upload_from_string(b"fake tarball")
    cloudbuild_fake.source_exists = lambda bucket, name: gcs.blob(name).exists()
    cloudbuild_fake.write_log = lambda bucket, name, text: gcs.blob(name).upload_from_string(
        text, content_type="text/plain")
    cloudbuild_fake.hold_builds = True

    build = workload_build(source=cb.Source(storage_source=cb.StorageSource(
        bucket=BUCKET, object_=SOURCE_OBJECT)), logs_bucket=f"gs://{BUCKET}/cloudbuild-logs")
    op = client.create_build(project_id=PROJECT, build=build)
    build_id = op.metadata.build.id
    bucket, name = cloudbuild_fake.log_object(build_id)
    assert (bucket, name) == (BUCKET, f"cloudbuild-logs/log-{build_id}.txt")

    wait_status(client, build_id, "WORKING")
    cloudbuild_fake.append_log(build_id, "compiling")
    partial = gcs.blob(name).download_as_text()
    assert 'starting build "' in partial and "compiling" in partial and "DONE" not in partial

    cloudbuild_fake.finish(build_id)
    done = wait(op)
    full = gcs.blob(name).download_as_text()
    assert full.startswith(partial)  # append-only, so a tailer reading by offset is right
    assert full.endswith("DONE\n") and done.results.images[0].digest in full
    assert full == cloudbuild_fake.log_text(build_id)

    gcs.blob(SOURCE_OBJECT).delete()  # source gone: Cloud Build cannot resolve it
    with pytest.raises(exceptions.BadRequest, match="storage.objects.get"):
        client.create_build(project_id=PROJECT, build=build)


def test_cloud_logging_only_writes_no_gcs_log(cloudbuild_fake: CloudBuildFake,
                                              client: cb.CloudBuildClient) -> None:
    writes: list[str] = []
    cloudbuild_fake.write_log = lambda bucket, name, text: writes.append(name)
    wait(client.create_build(project_id=PROJECT, build=workload_build(
        options=cb.BuildOptions(logging="CLOUD_LOGGING_ONLY"))))
    assert writes == []
    done = wait(client.create_build(project_id=PROJECT, build=workload_build()))
    assert writes and set(writes) == {f"log-{done.id}.txt"}
