"""A run's settings live in its spec: whichever supervisor restarts it, the next attempt gets what
the run was submitted with (grace period, heartbeat and sync intervals, shm size, stall window,
recovery strategy), never the restarting supervisor's own config.

Against the Compute fake and the GCS emulator, with the product's real clients: the outcome
asserted is the second VM's metadata, as GCE stores it.
"""

from __future__ import annotations

import time

from entrypoint.record import AttemptSettings, Heartbeat, RunRecord, RunSpec, State
from runner.config import Config
from runner.launch.backends import vm_metadata as md
from runner.launch.context import make_context
from runner.launch.submit import submit

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "c" * 64
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]


def _configs(compute_fake, store_url: str) -> tuple[Config, Config]:
    common = dict(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                  store=store_url, no_gpu=True)
    submitted = Config(**common, grace_period=10, heartbeat_interval=2, sync_interval=3, shm_size="512m",
                       poll_interval=2.0, stall_polls=500, recovery="next-zone-first")
    # The hosted supervisor, say: every attempt setting different from the run's.
    supervising = Config(**common, grace_period=25, heartbeat_interval=7, sync_interval=11, shm_size="8g",
                         poll_interval=1.0, stall_polls=30)
    return submitted, supervising


def _meta(vm) -> dict[str, str]:
    return {i.key: i.value for i in vm.metadata.items}


def _running(store, run_id: str, zone: str) -> None:
    """What the agent writes when its job starts (no VM boots here)."""
    rec = RunRecord(store, run_id)
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone=zone)


def test_a_restart_by_a_differently_configured_supervisor_gets_the_runs_own_settings(
        compute_fake, gcs_store, gcs_emulator):
    submitted, supervising = _configs(compute_fake, gcs_store.url)
    submit(make_context(submitted), "pinned", ["python3", "train.py"], image=IMAGE, restart=False)
    ctx = make_context(supervising)
    sup = ctx.supervisor()
    sup.reconcile("pinned")
    (first,) = compute_fake.instances()
    assert first.zone.endswith("/us-central1-a")
    _running(ctx.store, "pinned", "us-central1-a")

    compute_fake.preempt("us-central1-a", first.name)
    sup.reconcile("pinned")
    st = RunRecord(ctx.store, "pinned").read_state()[0]
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    (second,) = compute_fake.instances()
    meta = _meta(second)
    assert [float(meta[k]) for k in (md.GRACE_PERIOD, md.HEARTBEAT_INTERVAL, md.SYNC_INTERVAL)] == [10, 2, 3]
    assert meta[md.SHM_SIZE] == "512m"
    # The run's recovery strategy (next zone first), not the supervisor's default (in order).
    assert second.zone.endswith("/us-central1-b")


def test_the_stall_window_is_the_runs_not_the_supervisors(compute_fake, gcs_store, gcs_emulator):
    submitted, supervising = _configs(compute_fake, gcs_store.url)  # run: 1000 s; supervisor: 30 s
    submit(make_context(submitted), "patient", ["python3", "train.py"], image=IMAGE, restart=False)
    ctx = make_context(supervising)
    sup = ctx.supervisor()
    offset = [0.0]
    sup.now = lambda: time.time() + offset[0]
    sup.reconcile("patient")
    _running(ctx.store, "patient", "us-central1-a")
    rec = RunRecord(ctx.store, "patient")
    rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="running", progress={"step": 5},
                                  progress_changed_at=time.time()))
    sup.reconcile("patient")  # the supervisor sees step 5: its own clock times the stall from here

    offset[0] = 300  # ten of the supervisor's windows, well within the run's
    sup.reconcile("patient")
    assert rec.read_state()[0].state == State.RUNNING

    offset[0] = 1100  # past the run's own window
    sup.reconcile("patient")
    st = rec.read_state()[0]
    assert st.attempt == 2 or st.state == State.STALLED
    stalled = [ev["reason"] for _, ev in rec.events() if ev["to"] == "STALLED"]
    assert stalled and "(window 1000s)" in stalled[0]


def test_a_spec_written_before_settings_were_pinned_keeps_what_it_pinned_and_borrows_the_rest():
    legacy = RunSpec.from_dict({"run_id": "old", "image": IMAGE, "command": ["x"], "backend": "gce",
                                "timeouts": {"gpu_timeout": 300, "stall_window": 900, "grace_period": 12}})
    supervisor_config = AttemptSettings(grace_period=25, heartbeat_interval=7, sync_interval=11, shm_size="8g",
                                        stall_window=30, gpu_timeout=600)
    got = legacy.attempt_settings(supervisor_config)
    assert (got.gpu_timeout, got.stall_window, got.grace_period) == (300, 900, 12)
    assert (got.heartbeat_interval, got.sync_interval, got.shm_size) == (7, 11, "8g")
    assert got.recovery == "in-order"


def test_ops_delete_and_preempt_give_the_job_the_runs_own_grace_period_by_default(local_store):
    from types import SimpleNamespace

    from runner.cli.cmd_ops import _run_grace

    cfg = Config(store=local_store.url, grace_period=25)
    RunRecord(local_store, "mine").write_spec(RunSpec(run_id="mine", image="sha256:x", command=["x"], backend="local",
                                                      settings={"grace_period": 8}))
    ctx = SimpleNamespace(cfg=cfg, store=local_store)
    assert _run_grace(ctx, "mine") == 8
    assert _run_grace(ctx, "unknown") == 25  # no spec to read: the config's
    local_store.write("runs/torn/spec.json", b'{"run_id": "torn", "ima')
    assert _run_grace(ctx, "torn") == 25  # unreadable: the stop still goes ahead


def test_a_new_spec_still_tells_an_older_runner_the_three_settings_it_reads(local_store):
    """An older hosted supervisor reads only ``timeouts``: a run submitted now must keep its own GPU
    wait there, or that supervisor's restart would give its driver install only the default 600 s."""
    from runner.launch.submit import build_spec

    cfg = Config(store=local_store.url, backend="gce", project="p", zones=["us-central1-a"], gpu="nvidia-tesla-t4",
                 gpu_timeout=1200, poll_interval=3.0, stall_polls=400, grace_period=12)
    spec = build_spec(cfg, "r", ["x"], IMAGE, max_restarts=None, retry_on_failure=None, env={})
    assert spec.timeouts == {"gpu_timeout": 1200, "stall_window": 1200, "grace_period": 12}
    assert spec.attempt_settings().gpu_timeout == 1200


def test_a_recovery_strategy_this_version_does_not_know_still_recovers_the_run_in_zone_order(capsys):
    from runner.launch.supervisor import launch_context

    spec = RunSpec(run_id="newer", image=IMAGE, command=["x"], backend="gce", zones=["a", "b", "c"],
                   settings={"recovery": "capacity-ranked"})  # written by a newer runner
    assert launch_context(spec, 2, "gs://b", previous_zone="b").zones == ("a", "b", "c")
    assert "does not know" in capsys.readouterr().err
