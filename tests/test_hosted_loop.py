"""The whole loop with no local supervisor: a scheduler tick executes the deployed Cloud Run job
*as its container* (the runner image, with the command, args and env exactly as deployed) on the
local Docker, against the Compute fake and the GCS emulator; a preempted run is restarted and
reaches SUCCEEDED.

Nothing in the loop is played by hand. The CLI (`supervise --deploy`, `submit --detach`, `ops
preempt`) runs in subprocesses; every VM the Compute fake runs is a simulated COS VM
(tests/standins/cloud_sim.py) booted from the metadata the product inserted: the real ``gcp/startup.sh``
pulls the workload image by digest from a real registry on loopback (tests/standins/registry.py)
and starts the real agent container, which writes RUNNING, checkpoints, PREEMPTED and SUCCEEDED
to the GCS emulator. The deployed job is stored by the Cloud Run fake and delivered by the
scheduler fake (HTTP POST to the job's ``:run`` with the schedule's OAuth identity, authorized by
the invoker binding deploy made); the runner image is built from ``runner.build.supervisor_image``
through the ``runner build`` chain's local route.

What stands in: the runner image's registry (the deployed ``REPO@sha256:ID`` is resolved to the
local image ID, as a pull by digest would give the same bytes), and the network: the job's
container runs with the host's network so that ``127.0.0.1`` is where the fakes are, as
``*.googleapis.com`` is from a real Cloud Run job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, State
from runner.launch.supervisor_heartbeat import read_pass
from tests.conftest import IMAGE, ROOT, wait_for

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


STEPS, EVERY, STEP_TIME = 40, 5, 0.2  # 8 s of work: room for a preemption to land mid-job


def _push(docker_client, registry, image: str, repository: str) -> str:
    """Push ``image`` to the loopback registry; returns ``HOST/REPOSITORY@sha256:…`` as the
    registry answered it, the reference a VM pulls by digest."""
    tag = f"{registry.host}/{repository}:t-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(image).tag(tag)
    digest = ""
    try:
        for line in docker_client.images.push(tag, stream=True, decode=True):
            if "error" in line:
                pytest.fail(f"pushing {image} to {registry.host} failed: {line['error']}")
            digest = (line.get("aux") or {}).get("Digest", digest)
    finally:
        docker_client.images.remove(tag, noprune=True)
    assert digest.startswith("sha256:"), "the registry answered no digest for the push"
    return f"{registry.host}/{repository}@{digest}"


def test_a_preempted_run_is_restarted_by_the_hosted_supervisor_alone(
        runner_image_id, docker_client, registry, compute_fake, gcs_emulator, gcs_store, cloudrun_fake,
        scheduler_fake, tmp_path: Path):
    """submit --detach, the VM runs the real agent, `ops preempt`, a tick restarts, the run succeeds."""
    from examples.trainer import decode_checkpoint
    from runner.launch.backends.base import LABEL_RUN_ID
    from tests.standins.cloud_sim import CosGuest, LiveVmSampler

    run_id = "hosted-loop-1"
    workload = _push(docker_client, registry, IMAGE, "cos-spot-runner/hosted-loop")
    env = _env(compute_fake, gcs_store, cloudrun_fake, scheduler_fake, tmp_path) | {
        "RUNNER_ZONES": "us-central1-a", "RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_SYNC_INTERVAL": "0.5",
        "RUNNER_GRACE_PERIOD": "8", "RUNNER_POLL_INTERVAL": "0.5"}
    scheduler_fake.route("https://run.googleapis.com", cloudrun_fake.endpoint)
    containers: list[str] = []
    logs: list[str] = []
    cloudrun_fake.executor = _executor(docker_client, gcs_emulator, containers, logs)
    compute_fake.time_scale = 0.5  # GCE's 30 s preemption notice, halved: the 8 s grace fits inside
    guest = CosGuest(tmp_path / "vms", gcs_api=gcs_emulator, compute_api=compute_fake.endpoint,
                     docker_client=docker_client)
    guest.follow(compute_fake)
    sampler = LiveVmSampler(compute_fake, label=LABEL_RUN_ID)
    store, rec = gcs_store, RunRecord(gcs_store, run_id)

    def state():
        got = rec.read_state()
        return got[0] if got else None

    def step() -> int:
        hb = rec.read_heartbeat()
        return int((hb.progress or {}).get("step", 0)) if hb else 0

    def text(rel: str) -> str:
        blob = store.read(rec.name(rel))
        return blob.data.decode() if blob else ""

    def tick_until(done, ticks: int, desc: str) -> int:
        """Minute after minute (no waiting between them: time is the test's): a tick, its pass."""
        for n in range(1, ticks + 1):
            assert scheduler_fake.tick() == [200]
            cloudrun_fake.wait_executions(timeout=120)
            if done():
                return n
        raise AssertionError(f"{desc} not after {ticks} ticks; now {state()}; job logs: {logs[-1:]}")

    try:
        deployed = _cli(env, "supervise", "--deploy", "--image", f"{REPO}@{runner_image_id}")
        assert deployed.returncode == 0, deployed.stderr
        sub = _cli(env, "submit", "--run-id", run_id, "--image", workload, "--detach", "--",
                   "python3", "-m", "examples.trainer", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
                   "--step-time", str(STEP_TIME), "--hold-at", "8")  # waits there for the notice
        assert sub.returncode == 0, sub.stderr

        # The VM booted from its metadata runs the job; nobody but its agent writes the record.
        wait_for(lambda: (s := state()) and s.state == State.RUNNING and s.attempt == 1, 60,
                 f"attempt 1 RUNNING (now {state()}; guest errors {guest.errors})", every=0.2)
        wait_for(lambda: step() >= 8, 60, "attempt 1 to reach step 8", every=0.2)
        pre = _cli(env, "ops", "preempt", "--run-id", run_id)
        assert pre.returncode == 0, pre.stderr
        # A minute's tick lands inside the preemption notice: its pass sees the VM STOPPING (its
        # shutdown script still syncing) and must not start a second VM for the run meanwhile;
        # it waits the notice out (--await-notice, runner/launch/notice_wait.py) and replaces the
        # run itself, in the same execution: the next minute's tick is not needed. (The notice may
        # also end while the execution starts up: then the pass finds the VM gone, the same end.)
        # Never two live VMs either way: the sampler checks that every 50 ms.
        assert [v.status for v in compute_fake.instances()] == ["STOPPING"]
        assert scheduler_fake.tick() == [200]
        cloudrun_fake.wait_executions(timeout=120)
        assert state().attempt == 2, f"the pass in the notice did not replace the run: {state()}; {logs[-1:]}"
        journal = [doc for _name, doc in rec.events()]
        assert [e for e in journal if e["actor"] == "agent" and e["to"] == "PREEMPTED" and e["attempt"] == 1], \
            [(e["actor"], e["to"]) for e in journal]
        print(f"\n{run_id}: restarted by the pass during the notice")
        wait_for(lambda: state().state in (State.SUCCEEDED, State.FAILED), 90,
                 f"attempt 2 to finish (now {state()}; guest errors {guest.errors})", every=0.2)
        st = state()
        assert (st.state, st.attempt) == (State.SUCCEEDED, 2), st

        # The work: every step done once more at most since the last checkpoint, the rest resumed.
        summary = json.loads(text("results/summary.json"))
        assert summary["steps"] == STEPS
        reached = max(int(m) for m in re.findall(r"RUNNER_PROGRESS step=(\d+)", text("logs/1.log")))
        (resumed,) = (int(m) for m in re.findall(r"trainer: starting at step (\d+)", text("logs/2.log")))
        assert summary["starts"] == [0, resumed] and 0 < resumed and 0 <= reached - resumed <= EVERY, \
            (summary, reached)
        assert rec.read_manifest(2)["resumed_from"], "attempt 2 did not restore last.pt before starting"
        assert decode_checkpoint(store.read(rec.name("checkpoints/last.pt")).data)["step"] == STEPS
        print(f"{run_id}: attempt 1 reached step {reached}, attempt 2 resumed at {resumed}")

        # Nothing left billing: the finished VM deleted itself, and a later pass cleans the rest.
        tick_until(lambda: compute_fake.instances() == [] and not [
            d for d in compute_fake.disks() if d.name.startswith(f"runner-{run_id}-")], 3,
            "no VM or disk of the run left")
        assert guest.errors == [], guest.errors
        assert sampler.samples > 100 and sampler.api_max[run_id] == 1, dict(sampler.api_max)
        assert guest.max_live_per_run[run_id] == 1, dict(guest.max_live_per_run)

        p = read_pass(store)
        assert p.hosted and "Cloud Run job cos-spot-runner-supervisor" in p.where and p.every == 60
        assert all(ex.succeeded_count == 1 for ex in cloudrun_fake.executions_of(
            f"projects/{PROJECT}/locations/us-central1/jobs/cos-spot-runner-supervisor")), logs
        status = _cli(env, "supervise", "--status")
        assert status.returncode == 0 and "last pass" in status.stdout, status.stdout + status.stderr
    finally:
        sampler.stop()
        guest.close()
        for cid in containers:
            try:
                docker_client.containers.get(cid).remove(force=True)
            except Exception:  # noqa: BLE001 - already removed
                pass
        try:
            docker_client.images.remove(workload)
        except Exception:  # noqa: BLE001 - never pulled, or still in use
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
