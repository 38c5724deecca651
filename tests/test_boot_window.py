"""A GPU VM may boot for as long as its driver wait (pinned in its spec), whatever the stall window
of the supervisor that watches it: the config rule that the window covers the wait applies only
where the config itself has a GPU, so the supervisor covers each GPU run's own wait."""

from __future__ import annotations

import time
import uuid

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.submit import submit

IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64


def test_a_gpu_vm_booting_within_its_gpu_timeout_is_not_stalled_by_a_cpu_configured_supervisor(
        compute_fake, gcs_emulator):
    store = f"gs://test-bucket/boot-window-{uuid.uuid4().hex[:8]}"
    common = dict(backend="gce", project="test-project", zones=["us-central1-a"], store=store,
                  compute_endpoint=compute_fake.endpoint, poll_interval=1.0)
    submitter = make_context(Config(**common, gpu="nvidia-tesla-t4", stall_polls=300, gpu_timeout=300))
    submit(submitter, "gpu-run", ["python3", "train.py"], image=IMAGE, restart=False)

    # A supervisor configured without a GPU: its 10 s stall window is valid for its own config.
    watcher = make_context(Config(**common, machine_type="n2-standard-4", stall_polls=10))
    sup = watcher.supervisor()
    offset = [0.0]
    sup.now = lambda: time.time() + offset[0]
    sup.reconcile("gpu-run")
    rec = RunRecord(watcher.store, "gpu-run")
    assert rec.read_state()[0].state == State.PROVISIONING and len(compute_fake.instances()) == 1

    offset[0] = 120  # longer than the stall window, well within the run's 300 s GPU wait
    sup.reconcile("gpu-run")
    assert rec.read_state()[0].state == State.PROVISIONING

    offset[0] = 320  # past the GPU wait: now it is stuck
    sup.reconcile("gpu-run")
    st = rec.read_state()[0]
    assert st.state in (State.STALLED, State.PROVISIONING) and "still booting" in " ".join(
        ev.get("reason", "") for _, ev in rec.events())
    sup.drain()
