"""gcp/startup.sh and gcp/shutdown.sh, run for real on a simulated COS VM (tests/cos_sim).

Each scenario boots the VM once (module-scoped fixtures) and the tests read what it left behind:
the job container as Docker reports it, the run record in the GCS emulator, the requests the fake
metadata server and Google APIs received, the shims' recorded argv and the serial console output.
The JSON decoder the script uses instead of python/jq is checked on its own first.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_gcs import GcsStore, make_client
from runner.backends.vm_metadata import VmMetadata, encode_json_b64
from tests.cos_sim.fakes import FakeGoogleApis, FakeMetadata
from tests.cos_sim.vm import Boot, CosVm
from tests.gcs_fixture import BUCKET

STARTUP = Path(__file__).resolve().parent.parent / "gcp" / "startup.sh"
WORKLOAD = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
PROJECT = "cos-sim-project"
ZONE = "us-central1-b"

# ---------------------------------------------------------------------------------------------
# The bash JSON decoder (COS has no python or jq)
# ---------------------------------------------------------------------------------------------


def bash_decode(func: str, b64: str) -> subprocess.CompletedProcess[bytes]:
    """Run one decoder function of startup.sh; the values come back NUL-separated."""
    out = 'printf "%s\\0" "${JSON_ARRAY[@]}"' if func == "decode_command_b64" else \
        'for i in "${!JSON_KEYS[@]}"; do printf "%s\\0%s\\0" "${JSON_KEYS[i]}" "${JSON_VALUES[i]}"; done'
    script = f'source "$0" && {func} "$1" || {{ printf "%s" "$_JERR" >&2; exit 3; }}; {out}'
    return subprocess.run(["bash", "-c", script, str(STARTUP), b64], capture_output=True, timeout=30)


def argv_bytes(values: list[str]) -> bytes:
    # What exec() would receive: UTF-8, with surrogateescape for non-UTF-8 bytes (as os.fsencode).
    return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)


# Any Unicode except NUL (impossible in argv), plus the surrogates Python uses for raw bytes.
ARG_TEXT = st.text(st.one_of(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)]),
    st.sampled_from(list("\"\\'$`{}[],: \t\n\r/")),
))


@settings(max_examples=60, deadline=None)
@given(st.lists(ARG_TEXT, min_size=1, max_size=6))
def test_command_decoder_returns_exactly_the_argv_that_was_encoded(argv: list[str]) -> None:
    r = bash_decode("decode_command_b64", encode_json_b64(argv))
    assert r.returncode == 0, r.stderr
    assert r.stdout == argv_bytes(argv)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(ARG_TEXT.filter(lambda k: k and "=" not in k), ARG_TEXT, max_size=5))
def test_env_decoder_returns_exactly_the_pairs_that_were_encoded(env: dict[str, str]) -> None:
    r = bash_decode("decode_env_b64", encode_json_b64(env))
    assert r.returncode == 0, r.stderr
    assert r.stdout == argv_bytes([x for kv in env.items() for x in kv])


def test_decoder_accepts_json_whitespace_and_every_escape() -> None:
    text = ' [ "a\\/b\\b\\f\\n\\r\\t" , "\\u00e9\\ud83d\\ude80" ]\n'
    r = bash_decode("decode_command_b64", base64.b64encode(text.encode()).decode())
    assert r.returncode == 0, r.stderr
    assert r.stdout == argv_bytes(json.loads(text))


@pytest.mark.parametrize("text, why", [
    ("", "expected a JSON array"),
    ("[1]", "expected a string"),
    ('{"a":"b"}', "expected a JSON array"),
    ('["a"', "expected , or ]"),
    ('["a"] ["b"]', "trailing data"),
    ('["a\\u0000b"]', "NUL"),
    ('["\\ud800"]', "unpaired surrogate"),
    ('["a\tb"]', "raw control character"),
    ('["\\x41"]', "bad escape"),
    ('["unterminated]', "unterminated string"),
])
def test_decoder_refuses_anything_but_a_list_of_strings(text: str, why: str) -> None:
    r = bash_decode("decode_command_b64", base64.b64encode(text.encode()).decode())
    assert r.returncode == 3
    assert why in r.stderr.decode()


def test_decoder_refuses_text_that_is_not_base64() -> None:
    r = bash_decode("decode_command_b64", "not base64!")
    assert (r.returncode, r.stderr) == (3, b"not valid base64")


def test_env_decoder_refuses_non_string_values_and_duplicate_keys() -> None:
    for text, why in [('{"A":1}', "only strings"), ('{"A":"1","A":"2"}', "duplicate key A")]:
        r = bash_decode("decode_env_b64", base64.b64encode(text.encode()).decode())
        assert r.returncode == 3 and why in r.stderr.decode(), (text, r.stderr)


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
def apis(gcs_emulator: str) -> Iterator[FakeGoogleApis]:
    client = make_client()

    def store(bucket: str, name: str, data: bytes, content_type: str) -> None:
        client.bucket(bucket).blob(name).upload_from_string(data, content_type=content_type or None)

    with FakeGoogleApis(store_object=store) as fake:
        yield fake


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
        (argv,) = self.boot.argv_of("docker", "run")
        return argv


class Harness:
    """Builds scenarios: seeds the run in the emulator, serves its metadata, boots, collects."""

    def __init__(self, tmp: Path, docker_client: Any, apis: FakeGoogleApis, image: str, emulator: str) -> None:
        self.tmp, self.docker, self.apis, self.image, self.emulator = tmp, docker_client, apis, image, emulator
        self.run_ids: list[str] = []

    def metadata_for(self, run_id: str, store_url: str, command: list[str], **overrides: Any) -> dict[str, str]:
        attrs = overrides.pop("attributes", {})
        meta = VmMetadata(
            run_id=run_id, attempt=1, store=store_url, image=self.image, command=command,
            # The agent in the job container reaches the emulator over the host network.
            env={**JOB_ENV, "STORAGE_EMULATOR_HOST": self.emulator, "GOOGLE_CLOUD_PROJECT": "local"},
            heartbeat_interval=0.5, sync_interval=0.5, grace_period=10, shm_size="1g", **overrides)
        return {**meta.items(), **attrs}

    def run(self, name: str, command: list[str], *, gpus: int = 0, vm_env: dict[str, str] | None = None,
            wait_for_job: bool = True, **meta: Any) -> Scenario:
        run_id = f"sim-{name}-{uuid.uuid4().hex[:6]}"
        self.run_ids.append(run_id)
        store_url = f"gs://{BUCKET}/cos-sim/{run_id}"
        store = GcsStore(store_url)
        rec = RunRecord(store, run_id)
        rec.write_spec(RunSpec(run_id=run_id, image=self.image, command=command, backend="gce"))
        rec.create_state("test")
        rec.transition(State.PROVISIONING, "test", attempt=1)
        vm = CosVm(self.tmp / run_id, gpus=gpus, name=f"cos-sim-{uuid.uuid4().hex[:8]}")
        md = FakeMetadata(attributes=self.metadata_for(run_id, store_url, command, **meta), instance=vm.name,
                          zone=ZONE, project=PROJECT, token=f"ya29.sim-{uuid.uuid4().hex}")
        seen = len(self.apis.requests)
        with md:
            boot = vm.boot({
                "METADATA_URL": md.url, "GCS_API": self.apis.url, "COMPUTE_API": self.apis.url,
                "PULL_RETRIES": "3", "PULL_BACKOFF": "1", "RUNNER_GPU_POLL": "0.2",
                "RUNNER_GPU_DIAG_INTERVAL": "1", **(vm_env or {}),
            })
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

    def job_containers(self, run_id: str) -> list[Any]:
        return self.docker.containers.list(all=True, ignore_removed=True, filters={"label": f"cos-spot-runner.run-id={run_id}"})

    def cleanup(self) -> None:
        for run_id in self.run_ids:
            for c in self.job_containers(run_id):
                c.remove(force=True)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, apis: FakeGoogleApis,
            pinned_image: str, gcs_emulator: str) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("cos-sim"), docker_client, apis, pinned_image, gcs_emulator)
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
    assert cpu.boot.phases == ["metadata", "registry-auth", "image-pull", "container-start", "container-running"]


@pytest.mark.docker
def test_cpu_run_starts_the_pinned_image_with_the_exact_argv(cpu: Scenario, harness: Harness,
                                                             docker_client: Any) -> None:
    assert cpu.job.attrs["Config"]["Image"] == harness.image
    assert cpu.job.attrs["Image"] == docker_client.images.get(harness.image).id
    assert cpu.job.attrs["Config"]["Entrypoint"] == ["python3", "-m", "entrypoint", "--"]
    assert cpu.job.attrs["Config"]["Cmd"] == PRINT_ARGV_JOB
    # ... and the job itself received it, byte for byte, through the agent.
    assert line_value(cpu.job_stdout, "ARGV") == TRICKY_ARGS


@pytest.mark.docker
def test_cpu_run_gives_the_agent_its_environment_and_the_job_its_env(cpu: Scenario, harness: Harness) -> None:
    env = dict(e.split("=", 1) for e in cpu.job.attrs["Config"]["Env"])
    assert {k: env[k] for k in env if k.startswith("RUNNER_")} == {
        "RUNNER_RUN_ID": cpu.run_id, "RUNNER_STORE": cpu.store.url, "RUNNER_ATTEMPT": "1",
        "RUNNER_CHECKPOINT_DIR": "/var/lib/runner/checkpoints", "RUNNER_RESULTS_DIR": "/var/lib/runner/results",
        "RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_SYNC_INTERVAL": "0.5", "RUNNER_GRACE_PERIOD": "10",
        "RUNNER_INSTANCE": cpu.vm.name, "RUNNER_ZONE": ZONE, "RUNNER_IMAGE": harness.image,
    }
    assert line_value(cpu.job_stdout, "ENV") == {**JOB_ENV, "LD_LIBRARY_PATH": None}
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
    # The job's output is followed onto the serial console.
    assert ["logs", "-f", cpu.vm.container_name] in cpu.boot.argv_of("docker", "logs")


@pytest.mark.docker
def test_cpu_run_has_no_driver_step_and_no_gpu_wiring(cpu: Scenario) -> None:
    assert cpu.boot.argv_of("cos-extensions") == []
    host = cpu.job.attrs["HostConfig"]
    assert not host["Devices"] and not host["Binds"] and not host.get("DeviceRequests")
    assert host["Runtime"] == "runc"
    assert no_gpu_flags(cpu.docker_run_argv())
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib64" not in cpu.job.attrs["Config"]["Env"]


@pytest.mark.docker
def test_cpu_run_configures_registry_auth_for_the_image_host(cpu: Scenario) -> None:
    # DOCKER_CONFIG under /var/lib: /root is read-only on COS.
    assert cpu.boot.argv_of("docker-credential-gcr") == [
        ["configure-docker", "--registries=us-docker.pkg.dev", "DOCKER_CONFIG=/var/lib/runner/home/.docker"]]
    assert cpu.boot.argv_of("docker", "pull") == [["pull", cpu.job.attrs["Config"]["Image"]]]


@pytest.mark.docker
def test_cpu_run_records_that_boot_reached_the_container_and_keeps_its_vm(cpu: Scenario) -> None:
    doc = cpu.record.read_startup(1)
    assert doc is not None
    assert {k: doc[k] for k in ("schema_version", "attempt", "phase", "status", "reason", "instance", "zone")} == {
        "schema_version": 1, "attempt": 1, "phase": "container-running", "status": "ok", "reason": None,
        "instance": cpu.vm.name, "zone": ZONE}
    assert abs(doc["time"] - time.time()) < 120
    (upload,) = [r for r in cpu.api_requests if r.method == "POST"]
    assert upload.query == {"uploadType": "media", "name": f"cos-sim/{cpu.run_id}/runs/{cpu.run_id}/attempts/1/startup.json"}
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
    assert {"/computeMetadata/v1/instance/attributes/runner-command-b64", "/computeMetadata/v1/instance/name",
            "/computeMetadata/v1/instance/service-accounts/default/token"} <= paths
    assert all(r.headers.get("metadata-flavor") == "Google" for r in cpu.metadata.requests)


@pytest.mark.docker
def test_the_access_token_is_never_printed_or_passed_to_the_job(cpu: Scenario) -> None:
    token = cpu.metadata.token
    assert token not in cpu.boot.stdout + cpu.boot.stderr
    assert not any(token in a for c in cpu.boot.calls for a in c.argv)
    assert not any(token in e for e in cpu.job.attrs["Config"]["Env"])


# ---- (b) a GPU run ----

@pytest.fixture(scope="module")
def gpu(harness: Harness) -> Scenario:
    sc = harness.run("gpu", PRINT_ARGV_JOB, gpus=2, gpu_count=2, gpu_driver_version="535.183.01")
    # A reboot of the same VM (terminationAction=STOP): same metadata, same disks.
    if sc.boot.exit_code == 0:
        with sc.metadata:
            sc.extra["reboot"] = sc.vm.boot({"METADATA_URL": sc.metadata.url, "GCS_API": harness.apis.url,
                                            "COMPUTE_API": harness.apis.url, "RUNNER_GPU_POLL": "0.2"})
        sc.extra["after_reboot"] = harness.docker.containers.get(sc.vm.container_name)
    return sc


@pytest.mark.docker
def test_gpu_run_installs_the_driver_then_waits_for_it(gpu: Scenario) -> None:
    assert gpu.boot.exit_code == 0, explain(gpu)
    assert gpu.boot.argv_of("cos-extensions") == [["install", "gpu", "--", "-version=535.183.01"]]
    assert gpu.boot.phases == ["metadata", "gpu-driver", "gpu-wait", "registry-auth", "image-pull",
                               "container-start", "container-running"]


@pytest.mark.docker
def test_gpu_run_wires_driver_and_devices_the_cos_way(gpu: Scenario) -> None:
    host = gpu.job.attrs["HostConfig"]
    nv, dev = gpu.vm.nvidia_root, gpu.vm.dev_root
    assert sorted(host["Binds"]) == sorted([f"{nv}/lib64:/usr/local/nvidia/lib64", f"{nv}/bin:/usr/local/nvidia/bin"])  # docker does not keep their order
    assert sorted((d["PathOnHost"], d["PathInContainer"]) for d in host["Devices"]) == sorted([
        (f"{dev}/nvidia0", "/dev/nvidia0"), (f"{dev}/nvidia1", "/dev/nvidia1"),
        (f"{dev}/nvidiactl", "/dev/nvidiactl"), (f"{dev}/nvidia-uvm", "/dev/nvidia-uvm")])
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib64" in gpu.job.attrs["Config"]["Env"]
    # Never --gpus (its CDI hook fails on COS) nor --runtime=nvidia (unknown on COS).
    assert not host.get("DeviceRequests") and host["Runtime"] == "runc"
    assert no_gpu_flags(gpu.docker_run_argv())


@pytest.mark.docker
def test_gpu_run_job_sees_the_devices_and_the_driver_libraries_path(gpu: Scenario) -> None:
    assert line_value(gpu.job_stdout, "DEV") == ["nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl"]
    assert line_value(gpu.job_stdout, "ENV")["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    assert line_value(gpu.job_stdout, "ARGV") == TRICKY_ARGS


@pytest.mark.docker
def test_reboot_skips_the_loaded_driver_and_replaces_the_old_container(gpu: Scenario) -> None:
    reboot: Boot = gpu.extra["reboot"]
    assert reboot.exit_code == 0, reboot.stdout + reboot.stderr
    assert reboot.argv_of("cos-extensions") == []
    assert "already loaded" in reboot.stdout
    assert ["rm", "-f", gpu.vm.container_name] in reboot.argv_of("docker", "rm")
    assert gpu.extra["after_reboot"].id != gpu.job.id


# ---- (c) the GPU never appears ----

@pytest.fixture(scope="module")
def gpu_never(harness: Harness) -> Scenario:
    return harness.run("gpu-never", ["true"], gpus=1, gpu_count=1, gpu_timeout=3,
                       vm_env={"COS_SIM_DRIVER": "never"})


@pytest.mark.docker
def test_gpu_that_never_appears_fails_the_boot_with_gpu_timeout(gpu_never: Scenario) -> None:
    sc = gpu_never
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "gpu-driver", "gpu-wait", "failed:gpu_timeout"]
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
    assert sc.boot.argv_of("docker", "run") == [] and sc.boot.argv_of("docker", "pull") == []
    assert sc.boot.argv_of("poweroff") == [], explain(sc)


# ---- (d) the image cannot be pulled ----

@pytest.fixture(scope="module")
def pull_fails(harness: Harness) -> Scenario:
    return harness.run("pull-fails", ["true"], vm_env={"COS_SIM_PULL_FAILS": "always"})


@pytest.mark.docker
def test_image_pull_is_retried_with_backoff_then_the_failure_is_recorded(pull_fails: Scenario) -> None:
    sc = pull_fails
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "registry-auth", "image-pull", "failed:image_pull_failed"]
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


# ---- metadata that does not decode ----

@pytest.mark.docker
def test_a_command_that_is_not_a_list_of_strings_fails_the_boot_as_bad_metadata(harness: Harness) -> None:
    bad = base64.b64encode(b'["python3", 1]').decode()
    sc = harness.run("bad-cmd", ["true"], attributes={"runner-command-b64": bad})
    assert sc.boot.exit_code == 1, explain(sc)
    assert sc.boot.phases == ["metadata", "failed:bad_metadata"]
    doc = sc.record.read_startup(1)
    assert (doc["reason"], doc["phase"]) == ("bad_metadata", "metadata")
    assert doc["detail"].startswith("runner-command-b64: expected a string")
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
    harness.apis.delete_status = 403
    try:
        sc = harness.run("no-delete", ["true"], data_disk="data", data_mount="/mnt/data")
    finally:
        harness.apis.delete_status = 200
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
def test_a_vm_whose_job_finished_deletes_itself(harness: Harness) -> None:
    # Waited for in the foreground here: the simulated VM ends with its script, a real one does not.
    sc = harness.run("finish", ["true"], vm_env={"RUNNER_RELEASE_WAIT": "foreground"})
    assert sc.boot.exit_code == 0, explain(sc)
    assert sc.boot.phases[-2:] == ["container-running", "finished"]
    (delete,) = [r for r in sc.api_requests if r.method == "DELETE"]
    assert delete.path == f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{sc.vm.name}"
    assert sc.record.read_state()[0].state == State.SUCCEEDED
