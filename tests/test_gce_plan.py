"""The GCE instance plan, built without any server: what a restart would recreate, exactly."""

from __future__ import annotations

import json

import pytest

from entrypoint.record import AttemptSettings, RunSpec
from runner.launch.backends import vm_metadata as md
from runner.launch.backends.base import BackendError, LaunchContext
from runner.launch.backends.gce import GceBackend, vm_options_defaults
from runner.launch.backends.gce_shapes import ShapeError, resolve_gpu

CTX = LaunchContext(attempt=3, store_url="gs://bucket/prefix",
                    settings=AttemptSettings(heartbeat_interval=5, sync_interval=10, grace_period=25,
                                             shm_size="8g", gpu_timeout=300))


def spec(**kw) -> RunSpec:
    base = dict(run_id="Exp 1 α", image="us-docker.pkg.dev/p/r/img@sha256:" + "a" * 64,
                command=["python3", "-c", "print('a b $HOME \"q\"')"], backend="gce",
                machine_type="n1-standard-8", gpu="nvidia-tesla-t4:2", zones=["us-central1-a", "us-central1-b"],
                timeouts={"gpu_timeout": 300}, vm={**vm_options_defaults(), "project": "proj"})
    base.update(kw)
    return RunSpec(**base)


def plan(s: RunSpec):
    return GceBackend(clients=None, project="proj").plan(s, CTX).only  # type: ignore[arg-type]


def meta(inst) -> dict[str, str]:
    return {i.key: i.value for i in inst.metadata.items}


def test_a_spot_vm_is_planned_per_zone_in_the_order_given():
    p = plan(spec(run_id="Exp 1"))
    assert [z for z, _ in p.candidates] == ["us-central1-a", "us-central1-b"]
    z, inst = p.candidates[1]
    assert inst.name == p.name and inst.name.endswith("-a3")
    s = inst.scheduling
    assert (s.provisioning_model, s.instance_termination_action, s.on_host_maintenance) == ("SPOT", "DELETE", "TERMINATE")
    assert s.automatic_restart is False
    assert inst.machine_type == "zones/us-central1-b/machineTypes/n1-standard-8"
    assert [(a.accelerator_type, a.accelerator_count) for a in inst.guest_accelerators] == [
        ("zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4", 2)]
    assert inst.disks[0].initialize_params.source_image == "projects/cos-cloud/global/images/family/cos-stable"


def test_metadata_carries_the_full_run_id_and_scalars_only():
    inst = plan(spec()).candidates[0][1]
    m = meta(inst)
    assert all(k.startswith(md.PREFIX) or k in (md.STARTUP_SCRIPT, md.SHUTDOWN_SCRIPT) for k in m)
    assert m[md.RUN_ID] == "Exp 1 α" and m[md.ATTEMPT] == "3"
    assert not any("command" in k or k.endswith("-b64") for k in m)  # the agent reads them from spec.json
    assert m[md.STORE] == "gs://bucket/prefix" and m[md.IMAGE].endswith("@sha256:" + "a" * 64)
    assert (m[md.GPU_COUNT], m[md.GPU_TIMEOUT], m[md.SHM_SIZE]) == ("2", "300", "8g")
    assert m[md.STARTUP_SCRIPT].startswith("#!") and "runner-phase" in m[md.STARTUP_SCRIPT]
    assert inst.labels["runner"] == "cos-spot-runner" and inst.labels["attempt"] == "3"
    assert all(c.isascii() and (c.islower() or c.isdigit() or c in "-_") for c in inst.labels["run-id"])


def test_no_credentials_or_tokens_reach_the_metadata():
    inst = plan(spec(env={"EPOCHS": "3"})).candidates[0][1]
    values = {k: v for k, v in meta(inst).items() if k not in (md.STARTUP_SCRIPT, md.SHUTDOWN_SCRIPT)}
    blob = json.dumps(values).lower()
    for needle in ("private_key", "access_token", "client_secret", "bearer "):
        assert needle not in blob


@pytest.mark.parametrize("machine,gpu,count,has_accel", [
    ("g2-standard-8", None, 1, False),
    ("a2-highgpu-2g", None, 2, False),
    ("n1-standard-4", "nvidia-tesla-t4", 1, True),
    ("e2-standard-4", None, 0, False),
])
def test_gpu_shapes_are_planned_as_gce_requires(machine, gpu, count, has_accel):
    inst = plan(spec(machine_type=machine, gpu=gpu)).candidates[0][1]
    assert bool(inst.guest_accelerators) is has_accel
    assert meta(inst)[md.GPU_COUNT] == str(count)


@pytest.mark.parametrize("machine,gpu,fix", [
    ("g2-standard-8", "nvidia-l4", "drop --gpu"),
    ("e2-standard-4", "nvidia-tesla-t4", "n1-standard-8"),
    ("n1-standard-4", "nvidia-l4", "g2-"),
    ("n1-standard-4", "nvidia-tesla-t4:x", "COUNT"),
])
def test_impossible_shapes_are_refused_with_the_fix(machine, gpu, fix):
    with pytest.raises(ShapeError, match=fix):
        resolve_gpu(machine, gpu)
    with pytest.raises(BackendError):
        plan(spec(machine_type=machine, gpu=gpu))


def test_cpu_only_runs_ask_for_no_driver():
    inst = plan(spec(vm={**vm_options_defaults(), "no_gpu": True})).candidates[0][1]
    assert not inst.guest_accelerators and meta(inst)[md.GPU_COUNT] == "0"


def test_an_existing_data_disk_pins_the_zone_and_is_never_auto_deleted():
    s = spec(vm={**vm_options_defaults(), "data_disk": "datasets"})
    p = plan(s)
    assert [z for z, _ in p.candidates] == ["us-central1-a"]
    disk = p.candidates[0][1].disks[1]
    assert disk.source.endswith("/zones/us-central1-a/disks/datasets") and disk.auto_delete is False
    assert meta(p.candidates[0][1])[md.DATA_DISK] == "data"


def test_stop_termination_and_max_run_duration_reach_the_scheduling():
    s = spec(vm={**vm_options_defaults(), "termination_action": "STOP", "max_run_duration_s": 7200})
    sched = plan(s).candidates[0][1].scheduling
    assert sched.instance_termination_action == "STOP" and sched.max_run_duration.seconds == 7200


def test_the_same_spec_plans_the_same_instance_every_time():
    a, b = plan(spec()), plan(spec())
    assert a.to_dict() == b.to_dict()
