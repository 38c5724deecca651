"""The whole loop with no local supervisor: a scheduler tick executes the deployed Cloud Run job
*as its container* (the runner image, with the command, args and env exactly as deployed) on the
local Docker, against the Compute fake and the GCS emulator; a preempted run is restarted and
reaches SUCCEEDED.

What is real: the CLI (`submit --detach`, `supervise --deploy`) in subprocesses; the deployed job
as stored by the Cloud Run fake; the scheduler fake's delivery (HTTP POST to the job's ``:run``
with the schedule's OAuth identity, authorized by the invoker binding deploy made); the runner
image built from ``runner.build.supervisor_image`` through the ``runner build`` chain's local route.
What stands in: the registry (the deployed ``REPO@sha256:ID`` is resolved to the local image ID,
as a pull by digest would give the same bytes); the VM's agent, whose part in the record
(RUNNING, SUCCEEDED) the test writes, as tests/test_gce_backend.py does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, State
from runner.launch.supervisor_heartbeat import read_pass
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

PROJECT = "test-project"
WORKLOAD = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64
REPO = "us-central1-docker.pkg.dev/test-project/runs/runner"
WHEELS = ROOT / ".cache" / "runner-wheels"


@pytest.fixture(scope="session")
def runner_image_id(docker_client) -> str:
    """The runner image, built once per session from this checkout (offline, from cached wheels)."""
    from runner.config import Config
    from runner.build.supervisor_image import build_runner_image, requirements

    WHEELS.mkdir(parents=True, exist_ok=True)
    if not list(WHEELS.glob("*.whl")):
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELS),
                            *[r.split(";")[0] for r in requirements()]], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"could not fetch the runner image's wheels: {p.stderr[-500:]}")
    cfg = Config(base_image="cos-spot-runner/base:bookworm-2")
    return build_runner_image(cfg, "cos-spot-runner/runner:test", say=lambda s: None, local_only=True,
                              wheels=str(WHEELS))


def _env(compute_fake, gcs_store, cloudrun_fake, scheduler_fake, tmp_path: Path) -> dict[str, str]:
    """The user's shell: every endpoint a stand-in, no runner.toml."""
    (tmp_path / "none.toml").write_text("")
    return {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT,
            "RUNNER_STORE": gcs_store.url, "RUNNER_ZONES": "us-central1-a,us-central1-b", "RUNNER_NO_GPU": "true",
            "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint, "RUNNER_RUN_ENDPOINT": cloudrun_fake.endpoint,
            "RUNNER_SCHEDULER_ENDPOINT": scheduler_fake.endpoint, "RUNNER_POLL_INTERVAL": "1",
            "RUNNER_STALL_POLLS": "100000", "RUNNER_GPU_TIMEOUT": "300", "RUNNER_CONFIG": str(tmp_path / "none.toml")}


def _executor(docker_client, gcs_emulator: str, containers: list[str], logs: list[str]):
    def execute(job, execution, run_env) -> int:
        """Cloud Run's part: run the deployed task's container, as deployed, to its exit."""
        (c,) = job.template.template.containers
        image = c.image.split("@", 1)[1]
        environment = {e.name: e.value for e in c.env} | run_env
        environment["STORAGE_EMULATOR_HOST"] = gcs_emulator  # where "GCS" is, for this stand-in only
        ctr = docker_client.containers.run(image, entrypoint=list(c.command), command=list(c.args),
                                           environment=environment, network_mode="host", detach=True,
                                           labels={"cos-spot-runner-test": "hosted-loop"})
        containers.append(ctr.id)
        try:
            code = ctr.wait(timeout=120)["StatusCode"]
            logs.append(ctr.logs().decode(errors="replace"))
        finally:
            ctr.remove(force=True)
        return code

    return execute


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_a_preempted_run_is_restarted_by_the_hosted_supervisor_alone(
        runner_image_id, docker_client, compute_fake, gcs_emulator, gcs_store, cloudrun_fake, scheduler_fake,
        tmp_path: Path):
    pinned = f"{REPO}@{runner_image_id}"
    env = _env(compute_fake, gcs_store, cloudrun_fake, scheduler_fake, tmp_path)
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    containers: list[str] = []
    logs: list[str] = []
    cloudrun_fake.executor = _executor(docker_client, gcs_emulator, containers, logs)
    try:
        deployed = _cli(env, "supervise", "--deploy", "--image", pinned)
        assert deployed.returncode == 0, deployed.stderr
        sub = _cli(env, "submit", "--run-id", "exp-1", "--image", WORKLOAD, "--detach", "--",
                   "python3", "-m", "examples.trainer")
        assert sub.returncode == 0, sub.stderr
        store = gcs_store
        rec = RunRecord(store, "exp-1")
        (vm,) = compute_fake.instances()
        assert vm.name == "runner-exp-1-a1"
        zone = vm.zone.rsplit("/", 1)[-1]
        rec.transition(State.RUNNING, "agent", expect_attempt=1, zone=zone)  # the VM's agent
        compute_fake.preempt(zone, "runner-exp-1-a1")

        # No supervisor of ours runs: the next minute's tick is what notices.
        assert scheduler_fake.tick() == [200]
        cloudrun_fake.wait_executions()
        st = rec.read_state()[0]
        assert (st.state, st.attempt) == (State.PROVISIONING, 2), logs
        assert [v.name for v in compute_fake.instances() if v.status != "TERMINATED"] == ["runner-exp-1-a2"]

        rec.transition(State.RUNNING, "agent", expect_attempt=2, zone=zone)
        rec.transition(State.SUCCEEDED, "agent", exit_code=0)
        assert scheduler_fake.tick() == [200]
        cloudrun_fake.wait_executions()
        assert rec.read_state()[0].state == State.SUCCEEDED
        assert compute_fake.instances() == [], "the finished run's VM was left billing"
        p = read_pass(store)
        assert p.hosted and "Cloud Run job cos-spot-runner-supervisor" in p.where and p.every == 60
        assert all(ex.succeeded_count == 1 for ex in cloudrun_fake.executions_of(
            f"projects/{PROJECT}/locations/us-central1/jobs/cos-spot-runner-supervisor")), logs
        status = _cli(env, "supervise", "--status")
        assert status.returncode == 0 and "last pass" in status.stdout, status.stdout + status.stderr
    finally:
        for cid in containers:
            try:
                docker_client.containers.get(cid).remove(force=True)
            except Exception:  # noqa: BLE001 - already removed
                pass


def test_overlapping_ticks_still_make_one_vm_per_run(runner_image_id, docker_client, compute_fake, gcs_emulator,
                                                     gcs_store, cloudrun_fake, scheduler_fake, tmp_path: Path):
    """A slow pass and the next minute's overlap (Cloud Run starts both executions): one VM per run."""
    from runner.config import Config
    from runner.launch.context import make_context
    from runner.launch.submit import submit

    env = _env(compute_fake, gcs_store, cloudrun_fake, scheduler_fake, tmp_path)
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    cloudrun_fake.executor = _executor(docker_client, gcs_emulator, [], [])
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a"], store=gcs_store.url, no_gpu=True,
                 compute_endpoint=compute_fake.endpoint, poll_interval=1, stall_polls=100000, gpu_timeout=300)
    ctx = make_context(cfg)
    for i in range(3):
        submit(ctx, f"exp-{i}", ["python3", "-m", "examples.trainer"], image=WORKLOAD, restart=False)
    assert _cli(env, "supervise", "--deploy", "--image", f"{REPO}@{runner_image_id}").returncode == 0
    compute_fake.operation_seconds = 2.0  # slow inserts: each pass is still creating when the next starts
    ticks = [threading.Thread(target=scheduler_fake.tick) for _ in range(3)]
    for t in ticks:
        t.start()
    for t in ticks:
        t.join(60)
    cloudrun_fake.wait_executions()
    job = f"projects/{PROJECT}/locations/us-central1/jobs/cos-spot-runner-supervisor"
    assert len(cloudrun_fake.executions_of(job)) == 3
    names = sorted(v.name for v in compute_fake.instances())
    assert names == [f"runner-exp-{i}-a1" for i in range(3)]
    assert [RunRecord(ctx.store, f"exp-{i}").read_state()[0].attempt for i in range(3)] == [1, 1, 1]
