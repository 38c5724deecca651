"""A run staging a large --data set boots for longer than its boot window: the supervisor takes
the copy's progress in the heartbeat as a sign of life, and a copy that stops moving as a stall."""

from __future__ import annotations

import time
import uuid

from entrypoint.record import Heartbeat, RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.submit import submit

IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "c" * 64


def test_staging_that_moves_is_not_a_stalled_boot_and_staging_that_stops_is(compute_fake, gcs_emulator) -> None:  # type: ignore[no-untyped-def]
    store = f"gs://test-bucket/staging-window-{uuid.uuid4().hex[:8]}"
    ctx = make_context(Config(backend="gce", project="test-project", zones=["us-central1-a"], store=store,
                              compute_endpoint=compute_fake.endpoint, poll_interval=1.0,
                              no_gpu=True, stall_polls=10,
                              data=["gs://datasets/big:/data"]))
    submit(ctx, "big-data", ["python3", "train.py"], image=IMAGE, restart=False)
    sup = ctx.supervisor()
    offset = [0.0]
    sup.now = lambda: time.time() + offset[0]
    sup.reconcile("big-data")
    rec = RunRecord(ctx.store, "big-data")
    assert rec.read_state()[0].state == State.PROVISIONING and len(compute_fake.instances()) == 1

    def staged(files: int) -> None:
        rec.write_heartbeat(Heartbeat(time=time.time() + offset[0], attempt=1, phase="staging",
                                      data={"phase": "copying", "files_done": files, "bytes_done": files << 30}))

    for step in range(1, 5):  # 4 x 8 s = 32 s, three times the 10 s window, copying all along
        offset[0] = 8.0 * step
        staged(step * 100)
        sup.reconcile("big-data")
        assert rec.read_state()[0].state == State.PROVISIONING, f"stalled at {offset[0]} s while copying"

    offset[0] += 25  # the copy stopped: no new file for longer than the window
    sup.reconcile("big-data")
    assert "still booting" in " ".join(ev.get("reason", "") or "" for _, ev in rec.events())
    sup.drain()
