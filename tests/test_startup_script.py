"""gcp/startup.sh and gcp/shutdown.sh, run for real on a simulated COS VM (tests/standins/cos_sim).

Each scenario boots the VM once (module-scoped fixtures) and the tests read what it left behind:
the job container as Docker reports it, the run record in the GCS emulator, the requests the fake
metadata server received and the Google API calls the script made (recorded on their way to the GCS
emulator and the Compute stand-in, the same stand-ins the cloud path uses), the shims' recorded
argv and the serial console output.
The VM's metadata holds scalars only: the agent reads the job's command and env from spec.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from google.cloud import compute_v1

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_gcs import GcsStore
from runner.launch.backends.vm_metadata import SHUTDOWN_SCRIPT, STARTUP_SCRIPT, VmMetadata
from tests.standins.compute import ComputeFake, run_compute_fake
from tests.standins.cos_sim.fakes import FakeMetadata, GoogleApiTap
from tests.standins.cos_sim.vm import Boot, CosVm
from tests.standins.gcs_fixture import BUCKET

STARTUP = Path(__file__).resolve().parent.parent / "gcp" / "startup.sh"
WORKLOAD = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
PROJECT = "cos-sim-project"
ZONE = "us-central1-b"

# ---------------------------------------------------------------------------------------------
# Booting the simulated VM
# ---------------------------------------------------------------------------------------------

# Arguments a shell, docker or a naive JSON parser would mangle.
TRICKY_ARGS = ["two words", "it's \"quoted\"", "$HOME and ${PATH} and $(id) and `id`", "back\\slash",
               "new\nline", "tab\there", "ünïcødé ✓ 🚀", "", "--not-a-docker-flag", "*", "-e"]
PRINT_ARGV_JOB = ["python3", "-c",
                  "import json, os, sys\n"
                  "print('ARGV=' + json.dumps(sys.argv[1:]))\n"
                  "print('ENV=' + json.dumps({k: os.environ.get(k) for k in ("
                  "'JOB_GREETING', 'JOB_MULTILINE', 'LD_LIBRARY_PATH')}))\n"
                  "print('DEV=' + json.dumps(sorted(n for n in os.listdir('/dev') if n.startswith('nvidia'))))\n",
                  *TRICKY_ARGS]
JOB_ENV = {"JOB_GREETING": "hello $USER 'there'", "JOB_MULTILINE": "line one\nline two=2"}


@pytest.fixture(scope="module")
def pinned_image(docker_client: Any) -> Iterator[str]:
    """The workload image under an Artifact Registry name, so the script configures auth for it."""
    ref = f"us-docker.pkg.dev/{PROJECT}/runner/workload:sim-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(WORKLOAD).tag(ref)
    yield ref
    docker_client.images.remove(ref, noprune=True)


@pytest.fixture(scope="module")
def compute() -> Iterator[ComputeFake]:
    """The Compute stand-in the VMs delete themselves through (each scenario's VM is in it)."""
    with run_compute_fake(PROJECT) as fake:
        yield fake
    assert not fake.internal_errors, fake.internal_errors


@pytest.fixture(scope="module")
def apis(gcs_emulator: str, compute: ComputeFake) -> Iterator[GoogleApiTap]:
    with GoogleApiTap(gcs_api=gcs_emulator, compute_api=compute.endpoint) as tap:
        yield tap


@dataclass
class Scenario:
    """One boot of a simulated VM for a freshly submitted run, and everything it left behind."""

    run_id: str
    store: GcsStore
    vm: CosVm
    metadata: FakeMetadata
    boot: Boot
    api_requests: list[Any]
    job: Any = None          # the job container (docker SDK), reloaded after it exited
    job_stdout: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> RunRecord:
        return RunRecord(self.store, self.run_id)

    def docker_run_argv(self) -> list[str]:
        # The job's; cos-extensions runs its installer with `docker run` too.
        (argv,) = [a for a in self.boot.argv_of("docker", "run") if self.vm.container_name in a]
        return argv


class Harness:
    """Builds scenarios: seeds the run in the emulator, serves its metadata, boots, collects."""

    def __init__(self, tmp: Path, docker_client: Any, apis: GoogleApiTap, compute: ComputeFake, image: str,
                 emulator: str) -> None:
        self.tmp, self.docker, self.apis, self.image, self.emulator = tmp, docker_client, apis, image, emulator
        self.compute = compute
        self.run_ids: list[str] = []
        self.vms: list[CosVm] = []

    def metadata_for(self, run_id: str, store_url: str, image: str, **overrides: Any) -> dict[str, str]:
        attrs = overrides.pop("attributes", {})
        meta = VmMetadata(run_id=run_id, attempt=1, store=store_url, image=image, heartbeat_interval=0.5,
                          sync_interval=0.5, grace_period=10, shm_size="1g", **overrides)
        return {**meta.items(), **attrs}

    def run(self, name: str, command: list[str], *, gpus: int = 0, vm_env: dict[str, str] | None = None,
            wait_for_job: bool = True, image: str | None = None, docker_ready_after: float = 0,
            boot_timeout: float = 90, during_boot: Callable[[CosVm, FakeMetadata, RunRecord], None] | None = None,
            from_metadata: bool = False, spec: dict[str, Any] | None = None, **meta: Any) -> Scenario:
        run_id = f"sim-{name}-{uuid.uuid4().hex[:6]}"
        self.run_ids.append(run_id)
        image = image or self.image
        store_url = f"gs://{BUCKET}/cos-sim/{run_id}"
        store = GcsStore(store_url)
        rec = RunRecord(store, run_id)
        # The command and env reach the VM only through spec.json, as `runner submit` writes it.
        rec.write_spec(RunSpec(run_id=run_id, image=image, command=command, backend="gce", env=JOB_ENV, **(spec or {})))
        rec.create_state("test")
        rec.transition(State.PROVISIONING, "test", attempt=1)
        vm = CosVm(self.tmp / run_id, gpus=gpus, name=f"cos-sim-{uuid.uuid4().hex[:8]}")
        self.vms.append(vm)
        # The VM exists in Compute, as the GCE backend's insert left it: the script deletes it there.
        self.compute.seed_instance(ZONE, compute_v1.Instance(name=vm.name, status="RUNNING"), project=PROJECT)
        attributes = self.metadata_for(run_id, store_url, image, **meta)
        if from_metadata:  # the scripts too, as the GCE backend inserts them
            attributes.update({STARTUP_SCRIPT: STARTUP.read_text(), SHUTDOWN_SCRIPT: STARTUP.with_name("shutdown.sh").read_text()})
        md = FakeMetadata(attributes=attributes, instance=vm.name,
                          zone=ZONE, project=PROJECT, token=f"ya29.sim-{uuid.uuid4().hex}")
        seen = len(self.apis.requests)
        with md:
            # Something that happens to the VM while its startup script runs (a preemption).
            meanwhile = threading.Thread(target=during_boot, args=(vm, md, rec)) if during_boot else None
            if meanwhile:
                meanwhile.start()
            env = {**self.vm_env(md), "PULL_RETRIES": "3", "PULL_BACKOFF": "1", "RUNNER_GPU_DIAG_INTERVAL": "1",
                   **(vm_env or {})}
            if from_metadata:
                boot = vm.boot_from_metadata(md, env, timeout=boot_timeout)
            else:
                boot = vm.boot(env, docker_ready_after=docker_ready_after, timeout=boot_timeout)
            if meanwhile:
                meanwhile.join(timeout=60)
            sc = Scenario(run_id, store, vm, md, boot, self.apis.requests[seen:])
            if wait_for_job and boot.exit_code == 0:
                sc.job = self.docker.containers.get(vm.container_name)
                deadline = time.time() + 60
                while sc.job.status != "exited" and time.time() < deadline:
                    time.sleep(0.2)
                    sc.job.reload()
                assert sc.job.status == "exited", sc.job.logs().decode()
                sc.job_stdout = sc.job.logs(stdout=True, stderr=False).decode()
        return sc

    def vm_env(self, md: FakeMetadata) -> dict[str, str]:
        """Where the simulated VM finds Google: the stand-ins through the tap, the emulator for the agent."""
        return {"METADATA_URL": md.url, "GCS_API": self.apis.url, "COMPUTE_API": self.apis.url,
                "STORAGE_EMULATOR_HOST": self.emulator, "RUNNER_GPU_POLL": "0.2"}

    def job_containers(self, run_id: str) -> list[Any]:
        return self.docker.containers.list(all=True, ignore_removed=True, filters={"label": f"cos-spot-runner.run-id={run_id}"})

    def cleanup(self) -> None:
        for run_id in self.run_ids:
            for c in self.job_containers(run_id):
                c.remove(force=True)
        for vm in self.vms:
            for c in vm.containers():
                c.remove(force=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, apis: GoogleApiTap,
            compute: ComputeFake, pinned_image: str, gcs_emulator: str) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("cos-sim"), docker_client, apis, compute, pinned_image, gcs_emulator)
    yield h
    h.cleanup()


def explain(sc: Scenario) -> str:
    return f"exit {sc.boot.exit_code}\n--- stdout\n{sc.boot.stdout}\n--- stderr\n{sc.boot.stderr}"


def line_value(stdout: str, key: str) -> Any:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(key + "=")]
    return json.loads(line[len(key) + 1:])


def no_gpu_flags(argv: list[str]) -> bool:
    return not any(a.startswith(("--gpus", "--runtime")) for a in argv)


# ---- (a) a CPU-only run ----

@pytest.fixture(scope="module")
def cpu(harness: Harness) -> Scenario:
    return harness.run("cpu", PRINT_ARGV_JOB)


@pytest.mark.docker
def test_cpu_run_boots_cleanly_through_every_phase_in_order(cpu: Scenario) -> None:
    assert cpu.boot.exit_code == 0, explain(cpu)
    assert cpu.boot.phases == ["metadata", "docker", "registry-auth", "image-pull", "container-start", "container-running"]


@pytest.mark.docker
def test_cpu_run_starts_the_pinned_image_with_the_exact_argv(cpu: Scenario, harness: Harness,
                                                             docker_client: Any) -> None:
    assert cpu.job.attrs["Config"]["Image"] == harness.image
    assert cpu.job.attrs["Image"] == docker_client.images.get(harness.image).id
    assert cpu.job.attrs["Config"]["Entrypoint"] == ["python3", "-m", "entrypoint", "--"]
    # No argv through metadata or docker: the agent reads it from spec.json ...
    assert not cpu.job.attrs["Config"]["Cmd"]
    # ... and the job itself received it, byte for byte.
    assert line_value(cpu.job_stdout, "ARGV") == TRICKY_ARGS


def test_vm_metadata_holds_scalars_only_and_no_job_command_or_env() -> None:
    items = VmMetadata(run_id="r", attempt=1, store="gs://b", image="i@sha256:0", gpu_count=1).items()
    assert all(k.startswith("runner-") for k in items)
    assert not any(k.endswith("-b64") or "command" in k or k.endswith("-env") for k in items)
    assert all("\n" not in v and not v.startswith(("[", "{")) for v in items.values())


@pytest.mark.docker
def test_cpu_run_gives_the_agent_its_environment_and_the_job_its_env(cpu: Scenario, harness: Harness) -> None:
    env = dict(e.split("=", 1) for e in cpu.job.attrs["Config"]["Env"])
    assert {k: env[k] for k in env if k.startswith("RUNNER_")} == {
        "RUNNER_COMMAND_FROM_SPEC": "1",
        "RUNNER_RUN_ID": cpu.run_id, "RUNNER_STORE": cpu.store.url, "RUNNER_ATTEMPT": "1",
        "RUNNER_CHECKPOINT_DIR": "/var/lib/runner/checkpoints", "RUNNER_RESULTS_DIR": "/var/lib/runner/results",
        "RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_SYNC_INTERVAL": "0.5", "RUNNER_GRACE_PERIOD": "10",
        "RUNNER_INSTANCE": cpu.vm.name, "RUNNER_ZONE": ZONE, "RUNNER_IMAGE": harness.image,
    }
    assert line_value(cpu.job_stdout, "ENV") == {**JOB_ENV, "LD_LIBRARY_PATH": None}
    assert not any(e.startswith("JOB_") for e in env)  # the job's env came from spec.json
    # The agent ran the job to completion against the bucket and recorded where it ran.
    state, _gen = cpu.record.read_state()
    assert state.state == State.SUCCEEDED, state
    manifest = cpu.record.read_manifest(1)
    assert (manifest["instance"], manifest["zone"], manifest["image"]) == (cpu.vm.name, ZONE, harness.image)


@pytest.mark.docker
def test_cpu_run_container_has_the_cos_runtime_settings(cpu: Scenario) -> None:
    host = cpu.job.attrs["HostConfig"]
    assert host["NetworkMode"] == "host"
    assert host["ShmSize"] == 1024 ** 3
    assert host["RestartPolicy"]["Name"] in ("no", "")
    assert host["LogConfig"]["Type"] == "json-file"
    assert cpu.job.attrs["Config"]["StopTimeout"] == 10
    assert cpu.job.attrs["Config"]["Labels"]["cos-spot-runner.run-id"] == cpu.run_id


@pytest.mark.docker
def test_cpu_run_has_no_driver_step_and_no_gpu_wiring(cpu: Scenario) -> None:
    assert cpu.boot.argv_of("cos-extensions") == []
    host = cpu.job.attrs["HostConfig"]
    assert not host["Devices"] and not host.get("DeviceRequests")
    # The one bind: the checkpoint directory on the VM's own disk (kept by a STOP/start).
    assert [b.split(":", 1)[1] for b in host["Binds"]] == ["/var/lib/runner/checkpoints"]
    assert host["Binds"][0].split(":", 1)[0].endswith("/checkpoints")
    assert host["Runtime"] == "runc"
    assert no_gpu_flags(cpu.docker_run_argv())
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib64" not in cpu.job.attrs["Config"]["Env"]


@pytest.mark.docker
def test_cpu_run_configures_registry_auth_for_the_image_host(cpu: Scenario) -> None:
    # DOCKER_CONFIG under /var/lib/runner (the VM's state dir): /root is read-only on COS.
    assert cpu.boot.argv_of("docker-credential-gcr") == [
        ["configure-docker", "--registries=us-docker.pkg.dev", f"DOCKER_CONFIG={cpu.vm.state_dir}/home/.docker"]]
    assert cpu.boot.argv_of("docker", "pull") == [["pull", cpu.job.attrs["Config"]["Image"]]]


@pytest.mark.docker
def test_cpu_run_records_that_boot_reached_the_container_and_keeps_its_vm(cpu: Scenario) -> None:
    doc = cpu.record.read_startup(1)
    assert doc is not None
    assert {k: doc[k] for k in ("schema_version", "attempt", "phase", "status", "reason", "instance", "zone")} == {
        "schema_version": 1, "attempt": 1, "phase": "container-running", "status": "ok", "reason": None,
        "instance": cpu.vm.name, "zone": ZONE}
    assert abs(doc["time"] - time.time()) < 120
    uploads = {r.query["name"]: r for r in cpu.api_requests if r.method == "POST"}
    prefix = f"cos-sim/{cpu.run_id}/runs/{cpu.run_id}/attempts/1/"
    upload = uploads.pop(prefix + "startup.json")
    assert upload.query == {"uploadType": "media", "name": prefix + "startup.json"}
    # The rest are the attempt's timeline marks, each create-only (entrypoint/record/phases.py).
    assert sorted(uploads) == [prefix + f"phases/{p}.json" for p in
                               ("driver_ready", "image_ready", "startup_script", "vm_running")]
    assert {r.query.get("ifGenerationMatch") for r in uploads.values()} == {"0"}
    marks = cpu.record.phases(1)
    assert marks["driver_ready"]["detail"] == {"path": "none"}
    assert marks["image_ready"]["detail"]["path"] == "cold"  # nothing on this VM's disk before
    assert marks["vm_running"]["time"] <= marks["startup_script"]["time"] <= marks["image_ready"]["time"]
    assert upload.headers["authorization"] == f"Bearer {cpu.metadata.token}"
    assert upload.headers["content-type"] == "application/json"
    assert [r for r in cpu.api_requests if r.method == "DELETE"] == []
    assert cpu.boot.argv_of("poweroff") == []


@pytest.mark.docker
def test_metadata_server_refuses_requests_without_the_flavor_header_and_the_script_sends_it(cpu: Scenario) -> None:
    # (e) The fake is as strict as GCE's: 403 without the header ...
    with FakeMetadata(attributes={"runner-run-id": "x"}, instance="i", zone=ZONE, project=PROJECT,
                      token="t") as probe:
        attr = f"{probe.url}/instance/attributes/runner-run-id"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(attr, timeout=5)
        assert refused.value.code == 403
        with urllib.request.urlopen(urllib.request.Request(attr, headers={"Metadata-Flavor": "Google"})) as ok:
            assert ok.read() == b"x"
    # ... and the CPU boot, which read everything it needed from it, had no request refused.
    assert cpu.boot.exit_code == 0
    assert cpu.metadata.refused == []
    paths = {r.path for r in cpu.metadata.requests}
    assert {"/computeMetadata/v1/instance/attributes/runner-run-id", "/computeMetadata/v1/instance/name",
            "/computeMetadata/v1/instance/service-accounts/default/token"} <= paths
    assert all(r.headers.get("metadata-flavor") == "Google" for r in cpu.metadata.requests)


@pytest.mark.docker
def test_the_access_token_is_never_printed_or_passed_to_the_job(cpu: Scenario) -> None:
    token = cpu.metadata.token
    assert token not in cpu.boot.stdout + cpu.boot.stderr
    assert not any(token in a for c in cpu.boot.calls for a in c.argv)
    assert not any(token in e for e in cpu.job.attrs["Config"]["Env"])


# ---- (b) a GPU run ----

IMAGE_LIB_PATH = "/opt/ngc/lib:/usr/local/cuda/lib64"


@pytest.fixture(scope="module")
def ngc_like_image(docker_client: Any, pinned_image: str, harness: Harness) -> Iterator[str]:
    """The workload image with its own LD_LIBRARY_PATH, as PyTorch/NGC images set one, and a CMD
    (which `docker run IMAGE` passes on: the agent must still run spec.json's command)."""
    ref = pinned_image.rsplit(":", 1)[0] + f":ngc-{uuid.uuid4().hex[:8]}"
    base = docker_client.containers.create(pinned_image)
    try:
        repo, tag = ref.rsplit(":", 1)
        base.commit(repository=repo, tag=tag, changes=[f"ENV LD_LIBRARY_PATH={IMAGE_LIB_PATH}", 'CMD ["python3", "-c", "print(1)"]'])
    finally:
        base.remove(force=True)
    yield ref
    harness.cleanup()  # its containers first: an image in use cannot be removed
    docker_client.images.remove(ref, noprune=True)


@pytest.fixture(scope="module")
def gpu(harness: Harness, ngc_like_image: str) -> Scenario:
    # docker.service comes up 2 s after the startup script starts, as it may on COS.
    sc = harness.run("gpu", PRINT_ARGV_JOB, gpus=2, gpu_count=2, gpu_driver_version="535.183.01",
                     image=ngc_like_image, docker_ready_after=2)
    if sc.boot.exit_code == 0:
        # A STOP/start of the same VM (terminationAction=STOP): same metadata and disks, but the
        # kernel lost the driver's modules.
        sc.vm.power_cycle()
        smi = subprocess.run([str(sc.vm.nvidia_root / "bin" / "nvidia-smi")], capture_output=True, text=True,
                             env={"COS_SIM_KERNEL": str(sc.vm.kernel), "PATH": os.environ["PATH"]})
        sc.extra["nvidia_smi_after_stop"] = smi.returncode
        with sc.metadata:
            sc.extra["reboot"] = sc.vm.boot(harness.vm_env(sc.metadata))
        sc.extra["after_reboot"] = harness.docker.containers.get(sc.vm.container_name)
    return sc


@pytest.mark.docker
def test_gpu_run_installs_the_driver_then_waits_for_it(gpu: Scenario) -> None:
    assert gpu.boot.exit_code == 0, explain(gpu)
    assert gpu.boot.phases == ["metadata", "docker", "gpu-driver", "gpu-wait", "registry-auth", "image-pull",
                               "container-start", "container-running"]


@pytest.mark.docker
def test_gpu_driver_install_waits_for_docker_and_succeeds_first_time(gpu: Scenario) -> None:
    # cos-extensions runs its installer in Docker: started before the daemon is up, it fails
    # and the boot loses a retry (10 s) or, with too few tries, the whole run.
    assert gpu.boot.argv_of("cos-extensions") == [["install", "gpu", "--", "-version=535.183.01"]], explain(gpu)
    assert "failed" not in gpu.boot.stdout


@pytest.mark.docker
def test_gpu_run_wires_driver_and_devices_the_cos_way(gpu: Scenario) -> None:
    host = gpu.job.attrs["HostConfig"]
    nv, dev = gpu.vm.nvidia_root, gpu.vm.dev_root
    binds = [b for b in host["Binds"] if not b.endswith(":/var/lib/runner/checkpoints")]  # the kept checkpoint dir
    assert sorted(binds) == sorted([f"{nv}/lib64:/usr/local/nvidia/lib64", f"{nv}/bin:/usr/local/nvidia/bin"])  # docker does not keep their order
    assert sorted((d["PathOnHost"], d["PathInContainer"]) for d in host["Devices"]) == sorted([
        (f"{dev}/nvidia0", "/dev/nvidia0"), (f"{dev}/nvidia1", "/dev/nvidia1"),
        (f"{dev}/nvidiactl", "/dev/nvidiactl"), (f"{dev}/nvidia-uvm", "/dev/nvidia-uvm")])
    # Never --gpus (its CDI hook fails on COS) nor --runtime=nvidia (unknown on COS).
    assert not host.get("DeviceRequests") and host["Runtime"] == "runc"
    assert no_gpu_flags(gpu.docker_run_argv())


@pytest.mark.docker
def test_gpu_run_job_sees_the_devices_and_the_driver_libraries_path(gpu: Scenario) -> None:
    assert line_value(gpu.job_stdout, "DEV") == ["nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl"]
    # The image's own CMD reached the agent, which ran spec.json's command all the same.
    assert gpu.job.attrs["Config"]["Cmd"] == ["python3", "-c", "print(1)"]
    assert line_value(gpu.job_stdout, "ARGV") == TRICKY_ARGS


@pytest.mark.docker
def test_gpu_run_prepends_the_driver_path_to_the_images_own_library_path(gpu: Scenario) -> None:
    # PyTorch/NGC images set LD_LIBRARY_PATH for CUDA; replacing it breaks them.
    assert line_value(gpu.job_stdout, "ENV")["LD_LIBRARY_PATH"] == f"/usr/local/nvidia/lib64:{IMAGE_LIB_PATH}"


@pytest.mark.docker
def test_after_a_stop_start_the_driver_installs_again_and_the_old_container_is_replaced(gpu: Scenario) -> None:
    # COS forgets the kernel modules at power-off: nvidia-smi fails until the installer runs again.
    assert gpu.extra["nvidia_smi_after_stop"] == 9
    reboot: Boot = gpu.extra["reboot"]
    assert reboot.exit_code == 0, reboot.stdout + reboot.stderr
    assert reboot.argv_of("cos-extensions") == [["install", "gpu", "--", "-version=535.183.01"]]
    assert "gpu-driver" in reboot.phases
    # What the kept disk saves is the image: the pull finds it already there.
    assert reboot.argv_of("docker", "pull") == [["pull", gpu.job.attrs["Config"]["Image"]]]
    assert ["rm", "-f", gpu.vm.container_name] in reboot.argv_of("docker", "rm")
    assert gpu.extra["after_reboot"].id != gpu.job.id
    # The new container sees the old one's checkpoint directory on the kept disk: the agent
    # resumes from it without a download (entrypoint.tiers; tests/test_mirror_resume.py).
    def kept(c: Any) -> list[str]:
        return [b for b in c.attrs["HostConfig"]["Binds"] if b.endswith(":/var/lib/runner/checkpoints")]
    assert len(kept(gpu.job)) == 1 and kept(gpu.extra["after_reboot"]) == kept(gpu.job)


@pytest.mark.docker
def test_a_driver_install_that_times_out_leaves_no_installer_container(harness: Harness) -> None:
    # The installer runs in a container: killing cos-extensions alone leaves it running (and
    # holding the driver files) on a VM that then deletes itself or, with STOP, boots again.
    sc = harness.run("gpu-hang", ["true"], gpus=1, gpu_count=1, gpu_timeout=4,
                     vm_env={"COS_SIM_DRIVER": "hang"}, boot_timeout=40)
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases[-1] == "failed:gpu_timeout", explain(sc)
    running = [c.name for c in sc.vm.containers() if c.status == "running"]  # type: ignore[attr-defined]
    assert running == [], explain(sc)
    assert len([r for r in sc.api_requests if r.method == "DELETE"]) == 1


# ---- (c) the GPU never appears ----

@pytest.fixture(scope="module")
def gpu_never(harness: Harness) -> Scenario:
    return harness.run("gpu-never", ["true"], gpus=1, gpu_count=1, gpu_timeout=3,
                       vm_env={"COS_SIM_DRIVER": "never"})


@pytest.mark.docker
def test_gpu_that_never_appears_fails_the_boot_with_gpu_timeout(gpu_never: Scenario) -> None:
    sc = gpu_never
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "docker", "gpu-driver", "gpu-wait", "failed:gpu_timeout"]
    assert 3 <= sc.boot.seconds < 15
    assert "gpu-wait diagnostics" in sc.boot.stdout
    doc = sc.record.read_startup(1)
    assert doc is not None, explain(sc)
    assert {k: doc[k] for k in ("schema_version", "attempt", "phase", "status", "reason", "instance", "zone")} == {
        "schema_version": 1, "attempt": 1, "phase": "gpu-wait", "status": "failed", "reason": "gpu_timeout",
        "instance": sc.vm.name, "zone": ZONE}
    assert "nvidia-smi" in doc["detail"]


@pytest.mark.docker
def test_gpu_timeout_deletes_the_vm_and_starts_no_container(gpu_never: Scenario, harness: Harness) -> None:
    sc = gpu_never
    (delete,) = [r for r in sc.api_requests if r.method == "DELETE"]
    assert delete.path == f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{sc.vm.name}"
    assert delete.headers["authorization"] == f"Bearer {sc.metadata.token}"
    assert harness.job_containers(sc.run_id) == []
    assert sc.boot.argv_of("docker", "pull") == []
    assert not any(sc.vm.container_name in a for a in sc.boot.argv_of("docker", "run"))
    assert sc.boot.argv_of("poweroff") == [], explain(sc)


# ---- (d) the image cannot be pulled ----

@pytest.fixture(scope="module")
def pull_fails(harness: Harness) -> Scenario:
    return harness.run("pull-fails", ["true"], vm_env={"COS_SIM_PULL_FAILS": "always"})


@pytest.mark.docker
def test_image_pull_is_retried_with_backoff_then_the_failure_is_recorded(pull_fails: Scenario) -> None:
    sc = pull_fails
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "docker", "registry-auth", "image-pull", "failed:image_pull_failed"]
    pulls = [c for c in sc.boot.calls if c.tool == "docker" and c.argv[:1] == ["pull"]]
    assert len(pulls) == 3  # PULL_RETRIES
    gaps = [b.time - a.time for a, b in zip(pulls, pulls[1:])]
    assert gaps[0] >= 1 and gaps[1] >= 2, gaps  # PULL_BACKOFF=1, doubled
    doc = sc.record.read_startup(1)
    assert doc is not None, explain(sc)
    assert (doc["status"], doc["reason"], doc["phase"]) == ("failed", "image_pull_failed", "image-pull")
    image = sc.metadata.attributes["runner-image"]
    assert doc["detail"].endswith(
        f'Error response from daemon: manifest for {image} not found: manifest unknown: Failed to fetch "{image.rsplit(":", 1)[1]}"')


@pytest.mark.docker
def test_image_pull_failure_deletes_the_vm_and_starts_no_container(pull_fails: Scenario, harness: Harness) -> None:
    sc = pull_fails
    assert [r.path for r in sc.api_requests if r.method == "DELETE"] == [
        f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{sc.vm.name}"]
    assert harness.job_containers(sc.run_id) == []


# ---- metadata that is not usable ----

@pytest.mark.docker
def test_an_attempt_that_is_not_a_number_fails_the_boot_as_bad_metadata(harness: Harness) -> None:
    sc = harness.run("bad-attempt", ["true"], attributes={"runner-attempt": "1; rm -rf /"})
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "failed:bad_metadata"]
    assert "runner-attempt must be a whole number" in sc.boot.stdout
    assert len([r for r in sc.api_requests if r.method == "DELETE"]) == 1
    assert harness.job_containers(sc.run_id) == []


# ---- data disk: only under /var/lib ----

@pytest.mark.docker
def test_data_mount_outside_var_lib_is_refused_before_driver_or_pull(harness: Harness) -> None:
    sc = harness.run("data-mnt", ["true"], gpus=1, gpu_count=1, data_disk="data", data_mount="/mnt/disks/data")
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "failed:data_disk_failed"]
    doc = sc.record.read_startup(1)
    assert (doc["reason"], doc["phase"]) == ("data_disk_failed", "metadata")
    assert "/var/lib" in doc["detail"]
    assert sc.boot.argv_of("cos-extensions") == [] and sc.boot.argv_of("docker", "pull") == []
    assert len([r for r in sc.api_requests if r.method == "DELETE"]) == 1


@pytest.mark.docker
def test_a_vm_that_cannot_delete_itself_powers_off(harness: Harness) -> None:
    # A stopped spot VM bills for its disks only; CPUs and GPUs stop billing.
    harness.compute.fail_next(403, rpc="instances.delete", reason="forbidden")
    sc = harness.run("no-delete", ["true"], data_disk="data", data_mount="/mnt/data")
    assert sc.boot.exit_code == 1, explain(sc)
    assert len([r for r in sc.api_requests if r.method == "DELETE"]) == 1
    assert sc.boot.argv_of("poweroff") == [[]]
    assert sc.record.read_startup(1)["reason"] == "data_disk_failed"


# ---- preemption: the shutdown script ----

@pytest.mark.docker
def test_shutdown_script_sigterms_the_job_within_the_notice_and_the_agent_records_preempted(
        harness: Harness) -> None:
    sc = harness.run("preempt", ["python3", "-c", "import time; print('working', flush=True); time.sleep(600)"],
                     wait_for_job=False)
    assert sc.boot.exit_code == 0, explain(sc)
    deadline = time.time() + 30
    while sc.record.read_state()[0].state != State.RUNNING and time.time() < deadline:
        time.sleep(0.2)
    assert sc.record.read_state()[0].state == State.RUNNING
    with sc.metadata:
        down = sc.vm.boot({"METADATA_URL": sc.metadata.url}, script="shutdown.sh")
    assert down.exit_code == 0, down.stdout + down.stderr
    assert down.phases == ["shutdown"]
    assert down.seconds < 30  # the preemption notice
    assert down.argv_of("docker", "stop") == [["stop", "--time", "10", sc.vm.container_name]]
    job = harness.docker.containers.get(sc.vm.container_name)
    assert job.status == "exited"
    state, _gen = sc.record.read_state()
    assert state.state == State.PREEMPTED, state



@pytest.mark.docker
def test_a_job_stopped_by_a_shutdown_leaves_the_vm_to_it(harness: Harness) -> None:
    # With terminationAction=STOP the VM is to be kept for a restart in place: the watcher that
    # releases a VM whose job ended must not delete it when the job ended because the VM stops.
    downs: list[Boot] = []

    def preempt(vm: CosVm, md: FakeMetadata, rec: RunRecord) -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not ((st := rec.read_state()) and st[0].state == State.RUNNING):
            time.sleep(0.2)
        downs.append(vm.boot({"METADATA_URL": md.url}, script="shutdown.sh"))

    sc = harness.run("stop-keep", ["python3", "-c", "import time; time.sleep(600)"], wait_for_job=False,
                     vm_env={"RUNNER_RELEASE_WAIT": "foreground"}, during_boot=preempt)
    assert sc.boot.exit_code == 0, explain(sc)
    assert [d.exit_code for d in downs] == [0], [d.stdout for d in downs]
    assert "finished" not in sc.boot.phases and "during a shutdown" in sc.boot.stdout, explain(sc)
    assert [r for r in sc.api_requests if r.method == "DELETE"] == []
    assert sc.record.read_state()[0].state == State.PREEMPTED


@pytest.mark.docker
def test_a_vm_whose_job_finished_deletes_itself(harness: Harness) -> None:
    # Waited for in the foreground here: the simulated VM ends with its script, a real one does not.
    # Booted as a GCE guest does: the startup-script found in the instance's metadata.
    sc = harness.run("finish", ["true"], vm_env={"RUNNER_RELEASE_WAIT": "foreground"}, from_metadata=True)
    assert sc.boot.exit_code == 0, explain(sc)
    assert sc.boot.phases[-2:] == ["container-running", "finished"]
    assert (sc.vm.scripts / "startup-script.sh").read_text() == STARTUP.read_text()
    (delete,) = [r for r in sc.api_requests if r.method == "DELETE"]
    assert delete.path == f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{sc.vm.name}"
    assert harness.compute.instance(ZONE, sc.vm.name, PROJECT) is None  # Compute took the delete
    assert sc.record.read_state()[0].state == State.SUCCEEDED


@pytest.mark.docker
def test_job_output_does_not_flood_the_serial_console(harness: Harness) -> None:
    # GCE keeps 1 MiB of serial output; `ops logs` reads the runner-phase lines from it. The job's
    # log goes to the bucket; the console gets only a bounded tail of it when the job ends.
    chatty = ["python3", "-c", "import sys\nfor i in range(40000): print(f'job line {i:06d} ' + 'x' * 40)\n"
              "print('THE LAST LINE', flush=True)"]
    sc = harness.run("chatty", chatty, vm_env={"RUNNER_RELEASE_WAIT": "foreground"})
    assert sc.boot.exit_code == 0, explain(sc)
    serial = sc.vm.serial.read_bytes() if sc.vm.serial.exists() else b""
    console = serial + sc.boot.stdout.encode()
    assert len(console) < 64 * 1024, len(console)
    assert sc.boot.phases[-2:] == ["container-running", "finished"]
    assert b"THE LAST LINE" in console
    # The job's output is in the bucket instead, whole (the agent drains its pipe before the
    # final upload: tests/test_agent_log_tail.py).
    log = sc.store.read(sc.record.name(RunRecord.log_name(1)))
    assert log is not None and log.data.startswith(b"job line 000000") and len(log.data) > 1024 * 1024
    assert log.data.rstrip().endswith(b"THE LAST LINE"), log.data[-200:]


# ---- the agent's side: the command and env come from spec.json ----

def test_agent_takes_the_exact_argv_and_env_from_the_spec(local_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from entrypoint.agent import AgentConfig, job_from_spec

    env = {**JOB_ENV, "LD_LIBRARY_PATH": "/opt/mine", "RUNNER_RUN_ID": "hijack"}
    RunRecord(local_store, "r1").write_spec(RunSpec(run_id="r1", image="i", command=PRINT_ARGV_JOB, backend="gce", env=env))
    monkeypatch.setenv("RUNNER_RUN_ID", "r1")
    monkeypatch.setenv("RUNNER_STORE", local_store.url)
    monkeypatch.setenv("RUNNER_ATTEMPT", "1")
    monkeypatch.setenv("RUNNER_GPU_LIB_DIR", "/usr/local/nvidia/lib64")
    argv, job_env = job_from_spec(AgentConfig.from_env())
    assert argv == PRINT_ARGV_JOB
    # The runner's own variables are not the job's to set; the driver stays first on the path.
    assert job_env == {**JOB_ENV, "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/opt/mine"}


def test_agent_without_a_command_or_the_spec_to_read_it_from_prints_its_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    from entrypoint.agent import main

    monkeypatch.delenv("RUNNER_COMMAND_FROM_SPEC", raising=False)
    assert main(["--"]) == 2
