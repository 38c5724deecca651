"""gcp/shutdown.sh asks the hosted supervisor for a pass when, and only when, GCE preempts the VM.

The script runs for real in the simulated COS VM (tests/standins/cos_sim) against the fake
metadata server and the Cloud Run fake (tests/standins/cloudrun.py), with the job deployed by
the product's own ``deploy``. The job container is a plain container that ends on SIGTERM: what
the agent does with the signal is tested in test_startup_script.py; here the point is what the
script asks of Cloud Run, with whose token, and that asking never holds up ``docker stop``.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator

import pytest

from runner.config import Config
from runner.cloud.hosted import JOB_ID, deploy, hosted_clients, target
from tests.standins.cos_sim.fakes import FakeMetadata, _reply
from tests.standins.cos_sim.vm import BASE_IMAGE, Boot, CosVm

pytestmark = pytest.mark.docker

PROJECT = "test-project"
JOB = f"projects/{PROJECT}/locations/us-central1/jobs/{JOB_ID}"
VM_SA = f"cos-spot-runner@{PROJECT}.iam.gserviceaccount.com"
RUNNER_IMAGE = "us-central1-docker.pkg.dev/test-project/runs/runner@sha256:" + "a" * 64


class PreemptibleMetadata(FakeMetadata):
    """The metadata server of a spot VM: ``instance/preempted`` is ``TRUE`` once GCE preempts it
    and ``FALSE`` otherwise, a delete or stop included ("Detecting if a VM was preempted",
    https://cloud.google.com/compute/docs/instances/create-use-preemptible#detecting_if_an_instance_was_preempted).
    Everything else, the Metadata-Flavor rule included, is the cos_sim fake's."""

    preempted: bool = False

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if h.path.split("?")[0] == "/computeMetadata/v1/instance/preempted" and \
                h.headers.get("Metadata-Flavor") == "Google" and method == "GET":
            from tests.standins.cos_sim.fakes import _read

            self.requests.append(_read(h, method))
            return _reply(h, 200, "TRUE" if self.preempted else "FALSE", "application/text")
        return super()._handle(h, method)


@pytest.fixture
def vm(tmp_path: Any, docker_client: Any) -> Iterator[CosVm]:
    """A simulated VM whose job container runs and ends on SIGTERM (as the agent does)."""
    v = CosVm(tmp_path / "vm")
    docker_client.containers.run(
        BASE_IMAGE, ["bash", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], name=v.container_name,
        detach=True, labels={"cos-sim.vm": v.name})
    yield v
    for c in v.containers():
        c.remove(force=True)  # type: ignore[attr-defined]


@pytest.fixture
def run_api(cloudrun_fake: Any, scheduler_fake: Any) -> Any:
    """The Cloud Run fake, where ``_deploy`` puts the hosted job as ``runner supervise --deploy`` does."""
    return cloudrun_fake


def _deploy(run_api: Any, scheduler_fake: Any, vm_account: str | None) -> None:
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store="gs://runs-bucket/runs",
                 run_endpoint=run_api.endpoint, scheduler_endpoint=scheduler_fake.endpoint,
                 supervisor_image=RUNNER_IMAGE)
    deploy(cfg, target(cfg), hosted_clients(cfg), say=lambda s: None, vm_account=vm_account)


def _metadata(vm: CosVm, preempted: bool, job: str | None = JOB) -> PreemptibleMetadata:
    attrs = {"runner-grace-period": "5"}
    if job is not None:
        attrs["runner-supervisor-job"] = job
    md = PreemptibleMetadata(attributes=attrs, instance=vm.name, zone="us-central1-a", project=PROJECT,
                             token=f"ya29.vm-{uuid.uuid4().hex}")  # opaque, as Google's are
    md.preempted = preempted
    return md


def _shut_down(vm: CosVm, md: PreemptibleMetadata, run_api_url: str, **env: str) -> Boot:
    with md:
        return vm.boot({"METADATA_URL": md.url, "RUN_API": run_api_url, **env}, script="shutdown.sh")


def _stopped(vm: CosVm, down: Boot, docker_client: Any) -> None:
    """docker stop ran, with the grace period from metadata, and the job ended."""
    assert down.exit_code == 0, down.stdout + down.stderr
    assert down.argv_of("docker", "stop") == [["stop", "--time", "5", vm.container_name]]
    assert docker_client.containers.get(vm.container_name).status == "exited"


def _metadata_paths(md: FakeMetadata) -> list[str]:
    return [r.path.removeprefix("/computeMetadata/v1/") for r in md.requests]


def test_a_preemption_asks_the_job_for_one_pass_with_the_vms_own_token(vm, run_api, scheduler_fake, docker_client):
    _deploy(run_api, scheduler_fake, vm_account=VM_SA)
    md = _metadata(vm, preempted=True)
    run_api.tokens[md.token] = VM_SA  # what this token is, to Google: the VM's service account
    down = _shut_down(vm, md, run_api.endpoint)
    _stopped(vm, down, docker_client)
    run_api.wait_executions(timeout=30)
    (ex,) = run_api.executions_of(JOB)
    assert ex.creator == VM_SA  # the VM's identity ran it, not the schedule's
    assert len(run_api.calls("jobs.run")) == 1
    assert f"asked {JOB} for a supervisor pass now" in down.stdout
    assert md.token not in down.stdout + down.stderr  # never printed


@pytest.mark.parametrize("preempted,job", [(False, JOB), (True, None), (True, "")],
                         ids=["a-delete-or-stop", "no-job-in-metadata", "empty-job"])
def test_no_pass_is_asked_on_a_plain_delete_or_stop_nor_without_a_hosted_job(vm, run_api, scheduler_fake,
                                                                              docker_client, preempted, job):
    _deploy(run_api, scheduler_fake, vm_account=VM_SA)
    md = _metadata(vm, preempted=preempted, job=job)
    run_api.tokens[md.token] = VM_SA
    down = _shut_down(vm, md, run_api.endpoint)
    _stopped(vm, down, docker_client)
    assert run_api.calls("jobs.run") == [] and run_api.executions_of(JOB) == []
    assert "instance/service-accounts/default/token" not in _metadata_paths(md)  # no token even fetched
    if job:
        assert "not a preemption (preempted=FALSE): no supervisor pass asked" in down.stdout
    else:  # nothing hosted: the script says nothing about it, as before
        assert "supervisor pass" not in down.stdout


def test_a_vm_account_without_the_grant_is_refused_and_the_job_still_stops(vm, run_api, scheduler_fake,
                                                                            docker_client):
    _deploy(run_api, scheduler_fake, vm_account=None)  # an older deploy: only the schedule may run the job
    md = _metadata(vm, preempted=True)
    run_api.tokens[md.token] = VM_SA
    down = _shut_down(vm, md, run_api.endpoint)
    _stopped(vm, down, docker_client)
    assert run_api.executions_of(JOB) == []
    assert "failed (HTTP 403)" in down.stdout and "roles/run.invoker" in down.stdout


class SilentApi:
    """A Cloud Run endpoint that takes the request and never answers (a network that drops the
    reply): records when each request arrived and when the client gave up on it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[dict[str, Any]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        req: dict[str, Any] = {"arrived": time.time(), "head": b""}
        self.requests.append(req)
        with conn:
            while chunk := conn.recv(65536):  # b"" once the client closes: it gave up
                req["head"] += chunk
        req["closed"] = time.time()

    def close(self) -> None:
        self.sock.close()


def test_a_run_api_that_never_answers_does_not_hold_up_docker_stop(vm, docker_client):
    md = _metadata(vm, preempted=True)
    silent = SilentApi()
    try:
        down = _shut_down(vm, md, silent.url, RUNNER_PASS_REQUEST_TIMEOUT="4")
    finally:
        silent.close()
    _stopped(vm, down, docker_client)
    (req,) = silent.requests
    assert req["head"].startswith(f"POST /v2/{JOB}:run ".encode())
    assert f"Authorization: Bearer {md.token}".encode() in req["head"]
    (stop,) = [c for c in down.calls if c.tool == "docker" and c.argv[:1] == ["stop"]]
    # Order, not duration: docker stop began while the request was still waiting for its answer.
    assert stop.time < req["closed"], (stop.time, req)
    assert "failed (HTTP 000)" in down.stdout
