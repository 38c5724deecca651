"""The GCE path run whole, the way a user runs it (issue 9 §1).

Every part is real except Google itself: the ``runner`` CLI in its own processes (``submit
--backend gce --detach``, a separate ``runner supervise``), the real google-cloud clients talking
to the Compute fake and the GCS emulator, a real image registry on loopback that ``runner
build`` pushes to (its ``docker push`` fallback, Cloud Build failing first), and for every VM the
fake runs a simulated COS VM (tests/standins/cloud_sim.py) booted from the metadata the supervisor
inserted: the real ``gcp/startup.sh`` pulls the image by digest from the registry, starts the real
agent container, and the agent writes the run record to the emulator. The project is set up by
``runner init`` (bucket, the VM's service account and its roles) against the admin fake, and the
Compute fake enforces those roles: the operator's for the CLI, the VM's token for its self-delete.

The tests assert outcomes only: the state the run ends in, the VMs that exist, the bytes in the
bucket, the step each attempt started at. One Compute fake serves the whole module so that a
sampler can watch every VM the suite creates: never two live VMs for one run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from entrypoint.record import RunRecord, State
from entrypoint.store_gcs import GcsStore
from examples.trainer import decode_checkpoint
from runner.launch.backends.base import LABEL_RUN_ID
from runner.naming import label_value
from entrypoint.record.phases import ORDER
from tests.standins.cloud_sim import CosGuest, LiveVmSampler
from tests.standins.cos_sim.timings import SimClock
from tests.standins.cos_sim.vm import read_calls
from tests.standins.cloudbuild import run_cloudbuild_fake
from tests.standins.compute import ComputeFake, run_compute_fake
from tests.conftest import ROOT, wait_for
from tests.standins.artifact_registry import ArtifactRegistryFake
from tests.standins.gcp_admin import GcpAdminFake
from tests.standins.gcs_fixture import BUCKET
from tests.standins.json_http_server import serve
from tests.standins.registry import Registry
from tests.standins.network_guard import block_external_network

pytestmark = pytest.mark.docker

PROJECT = "test-project"
CLOUD_BUCKET = f"cloud-path-{uuid.uuid4().hex[:8]}"  # created by `runner init`
VM_ACCOUNT = f"cos-spot-runner@{PROJECT}.iam.gserviceaccount.com"  # what `runner init` creates
REPOSITORY = "cos-spot-runner/cloud-path"
STEPS, EVERY, STEP_TIME = 80, 5, 0.2  # 16 s of work: room for `ops preempt` (a CLI process) to land mid-job on a loaded machine
CPU = ("--machine-type", "n1-standard-4", "--no-gpu")
GPU = ("--machine-type", "n1-standard-4", "--gpu", "nvidia-tesla-t4:1")


def trainer(steps: int = STEPS, every: int = EVERY, *extra: str) -> list[str]:
    return ["python3", "-m", "examples.trainer", "--steps", str(steps), "--checkpoint-every", str(every),
            "--step-time", str(STEP_TIME), *extra]


# ---------------------------------------------------------------------------------------------
# The image: `runner build` falls back to `docker push` and the registry answers its digest
# ---------------------------------------------------------------------------------------------

def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDSDK_CONFIG": "/nonexistent",
            "GOOGLE_CLOUD_PROJECT": "local", **extra}


@pytest.fixture(scope="module")
def pushed(registry: Registry, gcs_emulator: str, docker_client: Any) -> Iterator[dict[str, Any]]:
    """``runner build`` with Cloud Build failing twice: its last route, ``docker build`` + ``docker
    push`` to the loopback registry. The local tags are then dropped, so a VM that wants the image
    must pull it from the registry by digest."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    tag = f"{registry.host}/{REPOSITORY}:b-{uuid.uuid4().hex[:8]}"
    with block_external_network(), run_cloudbuild_fake() as cloudbuild:
        client = storage.Client(project="local", credentials=AnonymousCredentials())
        logs = f"{cloudbuild.project_number}.cloudbuild-logs.googleusercontent.com"
        if client.lookup_bucket(logs) is None:
            client.create_bucket(logs)
        cloudbuild.build_seconds = 0.2
        cloudbuild.fail_next_builds = 2  # the build and its re-staged retry
        p = subprocess.run(
            [sys.executable, "-m", "runner.cli", "build", "--image", tag, "--project", PROJECT,
             "--store", f"gs://{BUCKET}/cloud-path-build", "--base-image", "cos-spot-runner/base:bookworm-2",
             "--context", str(ROOT)],
            env=cli_env(STORAGE_EMULATOR_HOST=gcs_emulator, RUNNER_CLOUDBUILD_ENDPOINT=cloudbuild.endpoint),
            capture_output=True, text=True, timeout=300, cwd=ROOT)
        builds = len(cloudbuild.builds)
    ref = p.stdout.strip()
    result = {"proc": p, "ref": ref, "tag": tag, "cloud_builds": builds}
    if p.returncode == 0:
        for local in (tag, ref):
            try:
                docker_client.images.remove(local, noprune=True)
            except Exception:  # noqa: BLE001 - already untagged with the other name
                pass
    yield result
    # The VMs' pulls left the digest reference on this Docker host: drop it (and the image, unless
    # something else still uses it), so runs do not pile up one reference per registry port.
    try:
        docker_client.images.remove(ref)
    except Exception:  # noqa: BLE001 - never pulled (the build failed), or still in use
        pass


def test_runner_build_falls_back_to_docker_push_and_pins_the_registry_digest(pushed: dict[str, Any],
                                                                             registry: Registry) -> None:
    p = pushed["proc"]
    assert p.returncode == 0, p.stderr
    assert pushed["cloud_builds"] == 2, p.stderr  # Cloud Build was tried, twice, and failed
    assert "[local] building with the local Docker daemon and pushing" in p.stderr
    assert "via local-push" in p.stderr
    repo, _, digest = pushed["ref"].partition("@")
    assert repo == f"{registry.host}/{REPOSITORY}" and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), pushed["ref"]
    # The registry itself serves that digest, under the tag that was pushed.
    assert registry.manifest_digest(REPOSITORY, digest) == digest
    assert registry.manifest_digest(REPOSITORY, pushed["tag"].rsplit(":", 1)[1]) == digest


# ---------------------------------------------------------------------------------------------
# The cloud: one Compute fake, its guest VMs, and a sampler of live VMs per run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud_parts(tmp_path_factory: pytest.TempPathFactory, gcs_emulator: str, docker_client: Any,
                pushed: dict[str, Any]) -> Iterator[tuple[ComputeFake, CosGuest, LiveVmSampler]]:
    admin = GcpAdminFake()
    admin.add_project(PROJECT)
    registry_api = ArtifactRegistryFake()  # `runner init` creates the image repository there
    registry_api.add_project(PROJECT)
    with block_external_network() as blocked, run_compute_fake(PROJECT) as fake, \
            serve(admin, "gcp-admin-fake") as admin_endpoint, \
            serve(registry_api, "artifact-registry-fake") as registry_endpoint:
        admin.endpoint = admin_endpoint
        # GCE's 30 s preemption notice, halved: the shutdown script (8 s grace) fits well inside.
        fake.time_scale = 0.5
        # The project as a user sets it up: `runner init` (bucket, VM service account and its
        # roles), an operator with the roles the README asks for, and the Compute fake enforcing
        # them, so each VM deletes itself with its own service account's token.
        p = subprocess.run([sys.executable, "-m", "runner.cli", "init"], env=cli_env(
            STORAGE_EMULATOR_HOST=gcs_emulator, RUNNER_BACKEND="gce", RUNNER_PROJECT=PROJECT,
            RUNNER_STORE=f"gs://{CLOUD_BUCKET}", RUNNER_ZONES="us-central1-a",
            RUNNER_COMPUTE_ENDPOINT=fake.endpoint, RUNNER_SERVICEUSAGE_ENDPOINT=admin_endpoint,
            RUNNER_RESOURCEMANAGER_ENDPOINT=admin_endpoint, RUNNER_IAM_ENDPOINT=admin_endpoint,
            RUNNER_ARTIFACTREGISTRY_ENDPOINT=registry_endpoint),
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert registry_api.repository(PROJECT, "us-central1", "runs") is not None
        for role in ("roles/compute.instanceAdmin.v1", "roles/iam.serviceAccountUser"):
            admin.grant(PROJECT, fake.operator, role)
        fake.iam = admin
        guest = CosGuest(tmp_path_factory.mktemp("cloud-vms"), gcs_api=gcs_emulator,
                         compute_api=fake.endpoint, docker_client=docker_client,
                         token_for=lambda inst: fake.mint_token(f"serviceAccount:{inst.service_accounts[0].email}"))
        guest.follow(fake)
        sampler = LiveVmSampler(fake, label=LABEL_RUN_ID)
        try:
            yield fake, guest, sampler
        finally:
            sampler.stop()
            guest.close()
    assert not blocked, f"requests escaped towards real endpoints: {sorted(set(blocked))}"
    assert not fake.internal_errors, fake.internal_errors
    assert not registry_api.internal_errors, registry_api.internal_errors


class Cloud:
    """One test's view: its own store prefix, the CLI with the fakes' endpoints, its supervisor."""

    def __init__(self, fake: ComputeFake, guest: CosGuest, emulator: str, image: str, name: str) -> None:
        self.fake, self.guest, self.image = fake, guest, image
        self.store_url = f"gs://{CLOUD_BUCKET}/cloud-{name[:40]}-{uuid.uuid4().hex[:6]}"
        self.store = GcsStore(self.store_url)
        self.env = cli_env(
            STORAGE_EMULATOR_HOST=emulator, RUNNER_STORE=self.store_url, RUNNER_BACKEND="gce",
            RUNNER_PROJECT=PROJECT, RUNNER_COMPUTE_ENDPOINT=fake.endpoint, RUNNER_SERVICE_ACCOUNT=VM_ACCOUNT,
            RUNNER_POLL_INTERVAL="0.5", RUNNER_HEARTBEAT_INTERVAL="0.5", RUNNER_SYNC_INTERVAL="0.5",
            RUNNER_GRACE_PERIOD="8", RUNNER_STALL_POLLS="100000", RUNNER_GPU_TIMEOUT="60")
        self.procs: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)

    def submit(self, run_id: str, *flags: str, command: list[str] | None = None,
               zones: str = "us-central1-a,us-central1-b") -> None:
        p = self.cli("submit", "--run-id", run_id, "--image", self.image, "--zones", zones, *flags,
                     "--detach", "--", *(command or trainer()))
        assert p.returncode == 0, p.stderr

    def supervise(self) -> subprocess.Popen[str]:
        """A separate `runner supervise` process, as a user (or the hosted job) runs it."""
        p = subprocess.Popen([sys.executable, "-m", "runner.cli", "supervise"], env=self.env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def record(self, run_id: str) -> RunRecord:
        return RunRecord(self.store, run_id)

    def state(self, run_id: str) -> Any:
        got = self.record(run_id).read_state()
        return got[0] if got else None

    def step(self, run_id: str) -> int:
        hb = self.record(run_id).read_heartbeat()
        return int((hb.progress or {}).get("step", 0)) if hb else 0

    def wait_state(self, run_id: str, *states: State, attempt: int | None = None, timeout: float = 90) -> Any:
        def ok() -> Any:
            st = self.state(run_id)
            return st if st and st.state in states and (attempt is None or st.attempt == attempt) else None
        return wait_for(ok, timeout, f"{run_id} to be {'/'.join(s.value for s in states)}"
                        f"{f' in attempt {attempt}' if attempt else ''} (now {self.state(run_id)})", every=0.2)

    def vms(self, run_id: str) -> list[Any]:
        return [i for i in self.fake.instances() if i.labels.get(LABEL_RUN_ID) == label_value(run_id)]

    def disks(self, run_id: str) -> list[str]:
        """The run's disks that still exist (boot disks are named after their VM)."""
        return [d.name for d in self.fake.disks() if d.name.startswith(f"runner-{run_id}-")]

    def nothing_left(self, run_id: str) -> bool:
        return self.vms(run_id) == [] and self.disks(run_id) == []

    def preempt(self, run_id: str) -> None:
        p = self.cli("ops", "preempt", "--run-id", run_id)
        assert p.returncode == 0, p.stderr

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return [doc for _name, doc in self.record(run_id).events()]

    def text(self, run_id: str, rel: str) -> str:
        blob = self.store.read(self.record(run_id).name(rel))
        return blob.data.decode() if blob else ""

    def close(self) -> str:
        out = []
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            out.append(p.stderr.read() if p.stderr else "")
        return "\n".join(out)


@pytest.fixture
def cloud(cloud_parts: tuple[ComputeFake, CosGuest, LiveVmSampler], gcs_emulator: str,
          pushed: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Cloud]:
    fake, guest, _sampler = cloud_parts
    assert pushed["proc"].returncode == 0, pushed["proc"].stderr
    fake.stockout_zones.clear()
    fake.capacity_advice_denied = False
    fake.reset_requests()
    c = Cloud(fake, guest, gcs_emulator, pushed["ref"], request.node.name.replace("_", "-").lower())
    errors_before = len(guest.errors)
    yield c
    log = c.close()
    assert guest.errors[errors_before:] == [], log[-3000:]


def last_step_in_log(text: str) -> int:
    return max((int(m) for m in re.findall(r"RUNNER_PROGRESS step=(\d+)", text)), default=0)


def started_at(text: str) -> int:
    (m,) = re.findall(r"trainer: starting at step (\d+)", text)
    return int(m)


def inserts_and_starts(fake: ComputeFake, run_id: str) -> tuple[list[str], list[str]]:
    ins = [r.body["name"] for r in fake.calls("instances.insert", ok=True) if r.body
           and r.body.get("labels", {}).get(LABEL_RUN_ID) == label_value(run_id)]
    starts = [r.path.rsplit("/", 2)[-2] for r in fake.calls("instances.start", ok=True)]
    return ins, starts


def assert_succeeded_with_bounded_redo(c: Cloud, run_id: str, attempts: int) -> None:
    st = c.state(run_id)
    assert (st.state, st.attempt) == (State.SUCCEEDED, attempts), st
    summary = json.loads(c.text(run_id, "results/summary.json"))
    assert summary["steps"] == STEPS
    assert len(summary["starts"]) == attempts and summary["starts"][0] == 0, summary
    for a in range(1, attempts):
        reached = last_step_in_log(c.text(run_id, f"logs/{a}.log"))
        resumed = started_at(c.text(run_id, f"logs/{a + 1}.log"))
        assert resumed == summary["starts"][a]
        assert 0 <= reached - resumed <= EVERY, f"attempt {a + 1} resumed at {resumed}, attempt {a} reached {reached}"
        manifest = c.record(run_id).read_manifest(a + 1)
        assert manifest and manifest["resumed_from"], manifest  # restored last.pt before the job started
    ckpt = decode_checkpoint(c.store.read(c.record(run_id).name("checkpoints/last.pt")).data)
    assert ckpt["step"] == STEPS


def agent_preempted(journal: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
    return [e for e in journal if e["actor"] == "agent" and e["to"] == "PREEMPTED" and e["attempt"] == attempt]


# ---------------------------------------------------------------------------------------------
# Preempted by `runner ops preempt`, resumed from last.pt: DELETE and STOP, CPU and GPU
# ---------------------------------------------------------------------------------------------

# The STOP variants are long ones (`make chaos`): a GPU STOP-mode preemption, resumed and
# succeeded, is also the STOP case of test_a_recovery_marks_each_phase_in_order_… below.
@pytest.mark.parametrize("shape,action", [
    ("cpu", "DELETE"), pytest.param("cpu", "STOP", marks=pytest.mark.long),
    ("gpu", "DELETE"), pytest.param("gpu", "STOP", marks=pytest.mark.long)])
def test_a_preempted_run_resumes_from_last_checkpoint_and_succeeds(cloud: Cloud, registry: Registry,
                                                                   action: str, shape: str) -> None:
    run_id = f"cp-{shape}-{action.lower()}-{uuid.uuid4().hex[:6]}"
    pulls_before = registry.docker_pulls()
    cloud.submit(run_id, *(CPU if shape == "cpu" else GPU), "--termination-action", action)
    cloud.supervise()
    cloud.wait_state(run_id, State.RUNNING, attempt=1)
    wait_for(lambda: cloud.step(run_id) >= 8, 60, "attempt 1 to reach step 8", every=0.2)
    (first,) = cloud.vms(run_id)
    cloud.preempt(run_id)

    cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=120)
    assert_succeeded_with_bounded_redo(cloud, run_id, attempts=2)
    journal = cloud.journal(run_id)
    assert agent_preempted(journal, 1), [(e["actor"], e["to"], e["reason"]) for e in journal]
    assert "SIGTERM (preemption notice)" in agent_preempted(journal, 1)[0]["reason"]
    # No VM is left, whatever the termination action (the last one deleted itself).
    wait_for(lambda: cloud.nothing_left(run_id), 30, f"{run_id}'s VMs and disks to be gone", every=0.2)
    inserts, starts = inserts_and_starts(cloud.fake, run_id)
    if action == "STOP":  # the kept VM was started again, not replaced
        assert inserts == [first.name] and starts == [first.name]
    else:
        assert len(inserts) == 2 and starts == []
    # Every new VM pulled the pinned image from the registry (the VMs share this host's Docker,
    # so only the first transfers the layers; every pull still asks the registry). A VM started
    # again in place finds it on its kept disk, verified by digest: no pull.
    assert registry.docker_pulls() - pulls_before == len(inserts)
    # Each attempt ran on a VM booted from the inserted metadata, in its zone.
    assert [cloud.record(run_id).read_manifest(a)["zone"] for a in (1, 2)] == ["us-central1-a"] * 2
    if shape == "gpu":  # every boot installed the driver, a STOP/start's too (COS forgets modules)
        for name in {*inserts, *starts}:
            gvm = cloud.guest.vms[(PROJECT, "us-central1-a", name)]
            installs = [c.argv[:2] for c in read_calls(gvm.cos.calls_dir) if c.tool == "cos-extensions"]
            assert gvm.cos.gpus == 1 and installs == [["install", "gpu"]] * (1 + starts.count(name))


# ---------------------------------------------------------------------------------------------
# The recovery timeline, under GCE-like durations: a new VM is cold, a kept disk is warm
# ---------------------------------------------------------------------------------------------

SCALE = 0.05  # modelled seconds x 0.05: a 45 s driver install waits 2.25 s here


@pytest.fixture
def modelled(cloud: Cloud) -> Iterator[Cloud]:
    """The shared fake and guest, slowed to GCE's durations (tests/standins/cos_sim/timings.py)."""
    before = (cloud.guest.clock, cloud.fake.boot_seconds, cloud.fake.operation_seconds)
    clock = SimClock(time_scale=SCALE)
    cloud.guest.clock = clock
    cloud.fake.boot_seconds = cloud.fake.operation_seconds = clock.real(clock.timings.insert_to_running_s)
    try:
        yield cloud
    finally:
        cloud.guest.clock, cloud.fake.boot_seconds, cloud.fake.operation_seconds = before


@pytest.mark.parametrize("action", ["DELETE", "STOP"])
def test_a_recovery_marks_each_phase_in_order_and_a_kept_disk_skips_the_driver_install_and_the_pull(
        modelled: Cloud, action: str) -> None:
    cloud = modelled
    run_id = f"cp-timeline-{action.lower()}-{uuid.uuid4().hex[:6]}"
    cloud.submit(run_id, *GPU, "--termination-action", action)
    cloud.supervise()
    cloud.wait_state(run_id, State.RUNNING, attempt=1)
    wait_for(lambda: cloud.step(run_id) >= 8, 60, "attempt 1 to reach step 8", every=0.2)
    cloud.preempt(run_id)
    cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=120)
    assert_succeeded_with_bounded_redo(cloud, run_id, attempts=2)

    rec = cloud.record(run_id)
    first, second = rec.phases(1), rec.phases(2)
    assert "noticed" not in first  # a start, not a recovery
    marked = [p for p in ORDER if p in second]
    assert marked[:6] == ["noticed", "replacement_requested", "vm_running", "startup_script",
                          "driver_ready", "image_ready"], sorted(second)
    times = [second[p]["time"] for p in marked]
    assert times == sorted(times), {p: second[p]["time"] for p in marked}
    # The attempt was lost when its agent took the SIGTERM of the preemption notice.
    lost = agent_preempted(cloud.journal(run_id), 1)
    assert second["noticed"]["detail"]["lost_at"] == pytest.approx(lost[0]["time"], abs=1.0)
    assert first["driver_ready"]["detail"]["path"] == first["image_ready"]["detail"]["path"] == "cold"
    manifest = rec.read_manifest(2)
    gvm = cloud.guest.vms[(PROJECT, manifest["zone"], manifest["instance"])]
    wait_for(lambda: not gvm.alive, 30, "attempt 2's boot to end", every=0.2)
    # What attempt 2's boot asked its tools, from the calls they logged (the VM deletes itself at the
    # end, and a power-off that wins that race records no Boot; the calls survive it).
    calls = [c for c in read_calls(gvm.cos.calls_dir) if c.time >= second["vm_running"]["time"] - 1]
    pulls = [c.argv for c in calls if c.tool == "docker" and c.argv[:1] == ["pull"]]
    assert [c for c in calls if c.tool == "cos-extensions"], "attempt 2 did not even verify the driver"
    if action == "STOP":  # the same disk, started again: driver files and image are there
        assert second["driver_ready"]["detail"]["path"] == "warm"
        assert second["image_ready"]["detail"]["path"] == "warm"
        assert pulls == []
    else:  # a new VM from the public COS image: both again, cold
        assert second["driver_ready"]["detail"]["path"] == "cold"
        assert second["image_ready"]["detail"]["path"] == "cold"
        assert len(pulls) == 1
    assert second["driver_ready"]["detail"]["seconds"] < (
        first["driver_ready"]["detail"]["seconds"] if action == "STOP" else 1e9)


# ---------------------------------------------------------------------------------------------
# Zones, and preemptions at the awkward moments
# ---------------------------------------------------------------------------------------------

SHORT = trainer(10, EVERY)  # 2 s of work: for the cases that are not about resuming


def test_a_stockout_in_the_first_zone_runs_the_job_in_the_second(cloud: Cloud) -> None:
    run_id = f"cp-stockout-{uuid.uuid4().hex[:6]}"
    cloud.fake.stockout_zones.add("us-central1-a")
    # Without capacity advice (a project that may not call it): the zone walk meets the stockout.
    # (test_gce_provisioning.py has the advice sending the create to b at once.)
    cloud.fake.capacity_advice_denied = True
    cloud.submit(run_id, *CPU, command=SHORT)
    cloud.supervise()
    st = cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=90)
    assert (st.state, st.attempt) == (State.SUCCEEDED, 1), st
    assert cloud.record(run_id).read_manifest(1)["zone"] == "us-central1-b"
    tried = [r.path.split("/zones/")[1].split("/")[0] for r in cloud.fake.calls("instances.insert", ok=True)]
    assert tried == ["us-central1-a", "us-central1-b"]  # refused (an operation error) in a, created in b
    assert json.loads(cloud.text(run_id, "results/summary.json"))["steps"] == 10
    wait_for(lambda: cloud.nothing_left(run_id), 30, f"{run_id}'s VM (and disk) to delete itself", every=0.2)
    # The VM asked for its own deletion with its service account's token, and init's roles let it.
    own = [r.status for r in cloud.fake.calls("instances.delete") if r.path.endswith(f"/runner-{run_id}-a1")
           and cloud.fake.tokens.get(r.headers.get("Authorization", "").removeprefix("Bearer ")) ==
           f"serviceAccount:{VM_ACCOUNT}"]
    assert own and all(code not in (401, 403) for code in own), own


def test_a_sweep_waits_in_the_queue_under_a_cpu_quota_and_every_run_finishes(cloud: Cloud, tmp_path: Path) -> None:
    """Issue 22, whole: `runner sweep` (real CLI) submits three runs; a `runner supervise`
    process admits them against a regional CPU quota that holds one VM at a time (the fake
    enforces it, regions.get reports it): each run waits QUEUED, none is refused by the quota,
    never two VMs at once, and every run's job runs to the end on its own VM."""
    fake = cloud.fake
    zone, region = "europe-west4-a", "europe-west4"  # a region no other test here uses: its usage is ours
    saved = dict(fake.region_quotas[region])
    fake.set_quota(region, "CPUS", 4)  # n1-standard-4: one VM (spot draws on CPUS: no PREEMPTIBLE_CPUS)
    sweep_file = tmp_path / "grid.yaml"
    sweep_file.write_text("grid:\n  seed: [1, 2, 3]\n")
    live_max, stop = [0], [False]

    def sample() -> None:
        while not stop[0]:
            live = [i for i in fake.instances() if i.zone.endswith(zone) and i.status != "TERMINATED"]
            live_max[0] = max(live_max[0], len(live))
            time.sleep(0.05)

    import threading
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        p = cloud.cli("sweep", str(sweep_file), "--sweep-id", "qs", "--image", cloud.image, "--zones", zone,
                      *CPU, "--", *SHORT)
        assert p.returncode == 0, p.stderr
        runs = ["qs-000", "qs-001", "qs-002"]
        cloud.supervise()
        for run_id in runs:
            st = cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=180)
            assert (st.state, st.attempt, st.restarts) == (State.SUCCEEDED, 1, 0), st
        waited = [r for r in runs if any(e.get("to") == "QUEUED" for e in cloud.journal(r))]
        assert len(waited) >= 2, waited  # all three were submitted at once; one VM fits
        queued = next(e for e in cloud.journal(waited[-1]) if e.get("to") == "QUEUED")
        assert queued["reason"] == f"waiting for 4 × CPUS in {region}: 4 of 4 in use", queued
        refused = [op for op in fake.operations(zone=zone) if op.error and
                   any(e.code == "QUOTA_EXCEEDED" for e in op.error.errors)]
        assert refused == [] and len(fake.calls("instances.insert")) >= 3
        assert live_max[0] == 1, live_max
        for run_id in runs:
            assert json.loads(cloud.text(run_id, "results/summary.json"))["steps"] == 10
        listing = cloud.cli("ops", "list", "--sweep", "qs")
        assert listing.returncode == 0 and "3 done" in listing.stdout, listing.stdout
    finally:
        stop[0] = True
        sampler.join(timeout=5)
        fake.region_quotas[region] = saved


def test_where_no_vm_may_have_an_external_ip_a_run_succeeds_on_its_subnetwork_without_one(cloud: Cloud) -> None:
    """Issue 19 item 9, whole: the organisation policy forbids external IPs (the Compute fake
    refuses any), the user names a subnetwork with Private Google Access and sets external_ip =
    false; the VM is created there without one, runs the job and deletes itself."""
    run_id = f"cp-noip-{uuid.uuid4().hex[:6]}"
    fake = cloud.fake
    if fake.subnetwork("us-central1", "org-subnet", project=PROJECT) is None:
        fake.add_network("org-net", project=PROJECT)
        fake.add_subnetwork("org-subnet", "us-central1", "org-net", private_google_access=True, project=PROJECT)
    fake.external_ip_denied.add(PROJECT)
    try:
        cloud.env.update(RUNNER_SUBNETWORK="org-subnet", RUNNER_EXTERNAL_IP="false")
        cloud.submit(run_id, *CPU, command=SHORT, zones="us-central1-a")
        cloud.supervise()
        st = cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=90)
        assert (st.state, st.attempt) == (State.SUCCEEDED, 1), st
        (body,) = [r.body for r in fake.calls("instances.insert", ok=True) if r.body
                   and r.body.get("name") == f"runner-{run_id}-a1"]
        assert body["networkInterfaces"] == [
            {"subnetwork": f"projects/{PROJECT}/regions/us-central1/subnetworks/org-subnet"}]
        wait_for(lambda: cloud.nothing_left(run_id), 30, f"{run_id}'s VM (and disk) to delete itself", every=0.2)
    finally:
        fake.external_ip_denied.discard(PROJECT)


def test_a_preemption_during_the_driver_install_restarts_the_run_on_a_new_vm(cloud: Cloud) -> None:
    run_id = f"cp-driver-{uuid.uuid4().hex[:6]}"
    # Attempt 1's installer never finishes (a real installer container that hangs); attempt 2's works.
    cloud.guest.env_for = lambda attrs: {"COS_SIM_DRIVER": "hang"} if attrs.get("runner-attempt") == "1" else {}
    try:
        cloud.submit(run_id, *GPU, command=SHORT)
        cloud.supervise()
        first = f"runner-{run_id}-a1"
        installing = lambda: [c for vm in cloud.guest.vms.values() if vm.name == first  # noqa: E731
                              for c in vm.cos.containers() if "cos-gpu-installer" in str(c.attrs["Config"]["Image"])]
        (installer,) = wait_for(installing, 60, "attempt 1's GPU installer container to run", every=0.2)
        assert cloud.state(run_id).state == State.PROVISIONING
        cloud.preempt(run_id)
        st = cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=120)
    finally:
        cloud.guest.env_for = None
    assert (st.state, st.attempt) == (State.SUCCEEDED, 2), st
    assert cloud.record(run_id).read_manifest(1) is None  # the job never started on the first VM
    summary = json.loads(cloud.text(run_id, "results/summary.json"))
    assert summary["starts"] == [0] and summary["steps"] == 10
    # Power off took the hung installer with it; the second VM installed the driver again.
    gvm = next(vm for vm in cloud.guest.vms.values() if vm.name == first)
    assert gvm.cos.containers() == []
    wait_for(lambda: cloud.nothing_left(run_id), 30, f"{run_id}'s VMs and disks to be gone", every=0.2)


def test_a_preemption_during_the_final_sync_loses_nothing(cloud: Cloud, docker_client: Any) -> None:
    run_id = f"cp-finalsync-{uuid.uuid4().hex[:6]}"
    # A 30 MB checkpoint makes the agent's final sync long enough for the notice to land in it.
    cloud.submit(run_id, *CPU, "--termination-action", "STOP",
                 command=trainer(10, EVERY, "--checkpoint-bytes", str(30 << 20)))
    cloud.supervise()
    name = f"runner-{run_id}-a1"

    def job_done() -> bool:
        for vm in cloud.guest.vms.values():
            if vm.name == name:
                for c in vm.cos.containers():
                    if c.name == vm.cos.container_name and b"trainer: done" in c.logs():
                        return True
        return False

    wait_for(job_done, 90, "the job to finish (the agent then syncs)", every=0.2)
    cloud.fake.preempt("us-central1-a", name)  # GCE's own preemption, at once
    st = cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=120)
    assert st.state == State.SUCCEEDED, st
    summary = json.loads(cloud.text(run_id, "results/summary.json"))
    assert summary["steps"] == 10
    ckpt = decode_checkpoint(cloud.store.read(cloud.record(run_id).name("checkpoints/last.pt")).data)
    assert ckpt["step"] == 10
    journal = cloud.journal(run_id)
    if agent_preempted(journal, 1):  # the notice landed in the sync: attempt 2 had nothing left to do
        assert st.attempt == 2 and summary["starts"] == [0, 10], summary
        print(f"\n{run_id}: the notice landed in the final sync; attempt 2 resumed at step 10")
    else:  # the sync finished inside the notice: the outcome stood
        assert st.attempt == 1
        print(f"\n{run_id}: the final sync finished inside the notice; SUCCEEDED stood")
    wait_for(lambda: cloud.nothing_left(run_id), 30, f"{run_id}'s VM and disk to be gone", every=0.2)


def test_a_delete_during_the_restart_is_final(cloud: Cloud) -> None:
    run_id = f"cp-delete-{uuid.uuid4().hex[:6]}"
    cloud.submit(run_id, *CPU)
    cloud.supervise()
    cloud.wait_state(run_id, State.RUNNING, attempt=1)
    wait_for(lambda: cloud.step(run_id) >= 5, 60, "attempt 1 to reach step 5", every=0.2)
    cloud.preempt(run_id)
    cloud.wait_state(run_id, State.PROVISIONING, attempt=2, timeout=60)
    p = cloud.cli("ops", "delete", "--run-id", run_id)
    assert p.returncode == 0, p.stderr
    st = cloud.wait_state(run_id, State.STOPPED, timeout=60)
    wait_for(lambda: cloud.nothing_left(run_id), 60, f"{run_id}'s VMs and disks to be gone", every=0.2)
    inserts, _ = inserts_and_starts(cloud.fake, run_id)
    time.sleep(4)  # eight supervisor passes: none may bring the run back
    assert cloud.nothing_left(run_id)
    assert inserts_and_starts(cloud.fake, run_id)[0] == inserts and len(inserts) <= 2
    assert cloud.state(run_id).state == State.STOPPED and st.attempt <= 2
    assert not [vm for vm in cloud.guest.vms.values() if vm.run_id == run_id and vm.alive]


# ---------------------------------------------------------------------------------------------
# Gangs: a generation of simulated COS VMs made by one bulkInsert, restarted whole
# ---------------------------------------------------------------------------------------------

def test_a_two_node_gang_of_cos_vms_restarts_whole_when_node_1_is_preempted(
        cloud: Cloud, cloud_parts: tuple[ComputeFake, CosGuest, LiveVmSampler]) -> None:
    """Both VMs boot from the product's bulkInsert metadata (rank from their own name), both run
    the agent; node 1 is preempted through GCE's notice (STOPPING, then deleted); the whole
    generation goes, the next one comes up in one zone and finishes the run."""
    from runner.naming import node_name

    run_id = f"cp-gang-{uuid.uuid4().hex[:6]}"
    # 40 s of work: the preemption (a CLI process, GCE's notice, the supervisor's next pass) must
    # land before rank 0's job ends, even on a loaded machine; the second generation resumes.
    cloud.submit(run_id, *CPU, "--nodes", "2", command=trainer(200))
    cloud.supervise()
    cloud.wait_state(run_id, State.RUNNING, attempt=1)
    rec = cloud.record(run_id)

    def node1_at(attempt: int) -> bool:
        hb = rec.read_heartbeat(1)
        return hb is not None and hb.attempt == attempt
    wait_for(lambda: node1_at(1) and cloud.step(run_id) >= 8, 90, "both nodes of attempt 1 to run", every=0.2)
    zone = {vm.name: vm.zone.rsplit("/", 1)[-1] for vm in cloud.vms(run_id)}
    assert sorted(zone) == [node_name(run_id, 1, 0), node_name(run_id, 1, 1)] and len(set(zone.values())) == 1
    p = cloud.cli("ops", "preempt", "--run-id", run_id, "--node", "1")
    assert p.returncode == 0 and node_name(run_id, 1, 1) in p.stdout, (p.stdout, p.stderr)

    cloud.wait_state(run_id, State.SUCCEEDED, State.FAILED, timeout=180)
    st = cloud.state(run_id)
    assert (st.state, st.attempt) == (State.SUCCEEDED, 2), st
    lost = [e for e in cloud.journal(run_id) if e["to"] == "PREEMPTED"]
    assert len(lost) == 1 and "node 1" in lost[0]["reason"], lost
    # One bulkInsert per generation, each of both nodes, and no single inserts.
    def of_run(rpc: str) -> list[Any]:
        return [c for c in cloud.fake.calls(rpc, ok=True) if run_id in json.dumps(c.body or {})]
    assert len(of_run("instances.bulkInsert")) == 2 and of_run("instances.insert") == []
    # Node 1 of the second generation ran its share (its own heartbeat and log, from its own VM).
    assert node1_at(2) and "trainer: starting at step" in cloud.text(run_id, "logs/2.node1.log")
    assert cloud.record(run_id).read_manifest(2)["instance"] == node_name(run_id, 2, 0)
    wait_for(lambda: cloud.nothing_left(run_id), 60, f"{run_id}'s VMs and disks to be gone", every=0.2)
    # Never more than the gang's 2 VMs alive at once (sampled every 50 ms through the whole test).
    _fake, guest, sampler = cloud_parts
    label = label_value(run_id)
    assert sampler.api_max[label] == 2 and guest.max_live_per_run[run_id] == 2, \
        (sampler.api_max, guest.max_live_per_run)


# ---------------------------------------------------------------------------------------------
# Over the whole module: never two live VMs for one run
# ---------------------------------------------------------------------------------------------

def test_never_two_live_vms_for_one_run_over_the_whole_suite(
        cloud_parts: tuple[ComputeFake, CosGuest, LiveVmSampler], registry: Registry,
        pushed: dict[str, Any]) -> None:
    """Runs last in this module (pytest keeps file order): the sampler has seen every case."""
    _fake, guest, sampler = cloud_parts
    assert sampler.samples > 100 and sampler.api_max, "the sampler saw nothing"
    digest = pushed["ref"].rsplit("@", 1)[1]
    resolved = [r for r in registry.requests() if r[0] in ("GET", "HEAD") and r[2] == 200
                and r[1] == f"/v2/{REPOSITORY}/manifests/{digest}" and r[3].startswith("docker/")]
    assert resolved, "no VM resolved the pinned digest at the registry"
    report = {run: (n, guest.max_live_per_run.get(run, 0)) for run, n in sorted(sampler.api_max.items())}
    print(f"\nmax live VMs per run (Compute API, booted guests) over {sampler.samples} samples: {report}")
    # A gang's generation is its N VMs (the gang test's runs are "cp-gang-*", 2 nodes): never more.
    def limit(run: str) -> int:
        return 2 if run.startswith("cp-gang-") else 1
    assert all(n <= limit(run) for run, n in sampler.api_max.items()), report
    assert all(n <= limit(run) for run, n in guest.max_live_per_run.items()), report
