"""scripts/gpu-check.sh on a machine without a GPU (CI's): its arguments, its fail-fast checks,
and the COS GPU wiring of the containers it would start. The GPU run itself needs a GPU machine
(see the script); nothing here does."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from pathlib import Path

import pytest

from entrypoint.record import AttemptSettings, RunSpec
from runner.launch.backends.base import LaunchContext
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})


def fake_driver(tmp_path: Path, smi: str) -> Path:
    """A COS-shaped driver directory whose nvidia-smi is a shell script."""
    root = tmp_path / "nvidia"
    (root / "lib64").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin" / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
    (root / "bin" / "nvidia-smi").chmod(0o755)
    return root


def test_help_prints_the_usage_and_exits_0():
    out = gpu_check("--help")
    assert out.returncode == 0
    assert "--image IMAGE" in out.stderr and "Exit codes" in out.stderr


@pytest.mark.parametrize("args, message", [
    ((), "--image is required"),
    (("--image", "x", "--bogus"), "unknown argument '--bogus'"),
    (("--image", "x", "--steps", "ten"), "--steps needs a whole number, got 'ten'"),
    (("--image", "x", "--steps", "50", "--preempt-at", "50"), "must be between 1 and --steps - 1"),
])
def test_usage_errors_exit_2_and_say_what_is_wrong(args, message):
    out = gpu_check(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_without_a_gpu_it_fails_at_once_with_exit_3(tmp_path):
    started = time.monotonic()
    out = gpu_check("--image", "cos-spot-runner/no-such-image", "--nvidia-root", str(tmp_path / "none"))
    assert out.returncode == 3, out.stderr
    assert "nvidia-smi is missing" in out.stderr
    assert time.monotonic() - started < 10  # before Docker or any image is touched


def test_a_driver_whose_nvidia_smi_fails_is_no_gpu(tmp_path):
    root = fake_driver(tmp_path, 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver"; exit 9')
    out = gpu_check("--image", "x", "--nvidia-root", str(root))
    assert out.returncode == 3
    assert "nvidia-smi failed: NVIDIA-SMI has failed" in out.stderr


def test_a_working_driver_without_device_nodes_is_no_gpu(tmp_path):
    root = fake_driver(tmp_path, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"')
    (tmp_path / "dev").mkdir()
    out = gpu_check("--image", "x", "--nvidia-root", str(root), RUNNER_DEV_ROOT=str(tmp_path / "dev"))
    assert out.returncode == 3
    assert "no GPU device node" in out.stderr


def test_containers_get_the_gpu_the_cos_way_never_with_gpus(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    backend = mod.CosGpuLocalBackend("/var/lib/nvidia", ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"],
                                     image_ld_path="/opt/lib")
    plan = backend.plan(RunSpec(run_id="g-1", image="img", command=["python3"], backend="local"),
                        LaunchContext(attempt=1, store_url=f"file://{tmp_path}",
                                      settings=AttemptSettings(heartbeat_interval=1, sync_interval=1,
                                                               grace_period=20, shm_size="2g"))).only
    assert plan.volumes["/var/lib/nvidia/lib64"] == {"bind": "/usr/local/nvidia/lib64", "mode": "ro"}
    assert plan.volumes["/var/lib/nvidia/bin"] == {"bind": "/usr/local/nvidia/bin", "mode": "ro"}
    assert plan.volumes[str(tmp_path)]["bind"] == "/var/lib/runner/store"  # the store is still there
    assert plan.extra["devices"] == ["/dev/nvidia0:/dev/nvidia0:rwm", "/dev/nvidiactl:/dev/nvidiactl:rwm",
                                     "/dev/nvidia-uvm:/dev/nvidia-uvm:rwm"]
    # Prepended, not overwritten (docs/architecture.md#on-the-vm-cos).
    assert plan.environment["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64:/opt/lib"
    assert not {"device_requests", "runtime"} & set(plan.extra)  # what --gpus / --runtime=nvidia become


@pytest.mark.docker
@pytest.mark.torch
@pytest.mark.long  # `make chaos`: ~1 min; the pieces it orchestrates are tested above, without Docker
def test_the_gpu_checks_orchestration_preempts_resumes_and_compares_on_cpu(tmp_path, docker_client):
    """Everything gpu_check.py does after the GPU checks, on the CPU torch image: submit through
    the agent with the driver mounts (empty here), preempt once, resume, compare bit for bit."""
    from tests.test_torch_resume import TORCH_IMAGE

    root = fake_driver(tmp_path, "true")
    store = tmp_path / "store"
    store.mkdir()
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else "python3",
         str(ROOT / "scripts" / "gpu_check.py"), "--image", TORCH_IMAGE, "--nvidia-root", str(root),
         "--steps", "40", "--preempt-at", "12", "--store", str(store), "--train-device", "cpu"],
        capture_output=True, text=True, timeout=420)
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        import json

        verdict = json.loads(out.stdout.strip().splitlines()[-1])
        assert verdict["equal"] and verdict["attempts"] == 2 and verdict["tensors_compared"] >= 35, verdict
        assert verdict["starts"][0] == 0 and 12 <= verdict["starts"][1] < 40, verdict
    finally:
        from runner.launch.backends.base import LABEL_STORE
        from runner.naming import store_label

        mine = f"{LABEL_STORE}={store_label(f'file://{store}')}"
        for c in docker_client.containers.list(all=True, filters={"label": mine}):
            c.remove(force=True)
