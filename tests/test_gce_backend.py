"""The GCE backend end to end against the Compute Engine fake and the GCS emulator.

The product's real clients (``google-cloud-compute``, ``google-cloud-storage``) reach the fakes
through config alone (``compute_endpoint``, ``STORAGE_EMULATOR_HOST``). The agent's side of the
record (RUNNING, ...) is written here by hand, as a VM would: no VM really boots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from tests.conftest import ROOT

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64
ZONES = ["us-central1-a", "us-central1-b"]


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    ctx = make_context(cfg)
    # A project whose spot T4 quota was raised: some tests here run 25 GPU runs at once.
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 64)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 512)
    return ctx, compute_fake


def submit(ctx, run_id="exp-1", command=("python3", "-m", "examples.trainer")):
    from runner.launch.submit import submit as do_submit

    return do_submit(ctx, run_id, list(command), image=IMAGE, restart=False)


def vms(fake):
    return {i.name: i for i in fake.instances()}


def agent_reports_running(ctx, run_id: str) -> None:
    rec = RunRecord(ctx.store, run_id)
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone=vms_zone(ctx, st.instance))


def vms_zone(ctx, name):
    return next(i.zone for i in ctx.backend.list() if i.name == name)


def test_submit_pins_the_cos_image_and_creates_one_spot_vm(gce):
    ctx, fake = gce
    submit(ctx)
    spec = RunRecord(ctx.store, "exp-1").read_spec()
    assert spec.vm["vm_image"] == "projects/cos-cloud/global/images/cos-stable-121-18867-90-38"
    assert spec.image == IMAGE
    ctx.supervisor().reconcile("exp-1")
    (vm,) = fake.instances()
    assert vm.name == "runner-exp-1-a1" and vm.zone.endswith("/us-central1-a")
    assert vm.scheduling.provisioning_model == "SPOT"
    assert vm.disks[0].initialize_params.source_image.endswith("cos-stable-121-18867-90-38")
    assert RunRecord(ctx.store, "exp-1").read_state()[0].state == State.PROVISIONING


@pytest.mark.parametrize("seconds", [10, 121 * 86400])
def test_a_max_run_duration_gce_would_refuse_is_refused_at_submit_with_the_fix(
        compute_fake, gcs_store, gcs_emulator, seconds):
    from runner.launch.backends.base import BackendError

    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, max_run_duration=seconds)
    with pytest.raises(BackendError, match="max_run_duration .* between 30 seconds and 120 days"):
        submit(make_context(cfg))
    assert compute_fake.calls("instances.insert") == []


def test_a_stockout_moves_the_vm_to_the_next_zone(gce):
    ctx, fake = gce
    fake.stockout_zones = {"us-central1-a"}
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    (vm,) = fake.instances()
    assert vm.zone.endswith("/us-central1-b")


def test_quota_errors_also_fall_back_to_the_next_zone(gce):
    ctx, fake = gce
    fake.quota_zones = {"us-central1-a"}
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    assert [v.zone.rsplit("/", 1)[-1] for v in fake.instances()] == ["us-central1-b"]


def test_a_run_over_the_projects_gpu_quota_waits_and_says_which_quota(gce):
    ctx, fake = gce
    fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 1)  # a new project's quota
    submit(ctx, run_id="first")
    submit(ctx, run_id="second")
    sup = ctx.supervisor()
    sup.reconcile_all()
    assert [v.name for v in fake.instances()] == ["runner-first-a1"]
    second = RunRecord(ctx.store, "second")
    st = second.read_state()[0]
    assert (st.state, st.reason) == (State.QUEUED, "waiting for 1 × PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1: "
                                                   "1 of 1 in use")  # the queue read the quota: no insert
    assert [r.body["name"] for r in fake.calls("instances.insert")] == ["runner-first-a1"]
    # When the quotas cannot be read (a missing permission), the insert is sent and GCE's own
    # refusal, in every zone, is what the journal says.
    fake.fail_next(403, rpc="regions.get", reason="forbidden")
    sup.reconcile_all()
    notes = [ev["reason"] for _, ev in second.events() if ev["to"] is None]
    assert "QUOTA_EXCEEDED" in notes[-1] and "us-central1-b" in notes[-1]
    assert "Quota 'PREEMPTIBLE_NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1." in notes[-1]


def test_when_every_zone_is_out_of_stock_the_run_waits_and_says_why(gce):
    ctx, fake = gce
    fake.stockout_zones = set(ZONES)
    submit(ctx)
    clock = [1000.0]
    sup = ctx.supervisor()
    sup.now = lambda: clock[0]
    sup.reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    assert rec.read_state()[0].state == State.PROVISIONING and fake.instances() == []
    notes = [ev["reason"] for _, ev in rec.events() if ev["to"] is None]
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in notes[-1] and "us-central1-b" in notes[-1]
    fake.stockout_zones = set()
    sup.reconcile("exp-1")  # still inside the backoff: no new insert
    assert fake.instances() == []
    clock[0] += 5
    sup.reconcile("exp-1")
    assert len(fake.instances()) == 1


def test_a_preempted_vm_is_replaced_by_the_next_attempt(gce):
    ctx, fake = gce
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    agent_reports_running(ctx, "exp-1")
    fake.preempt("us-central1-a", "runner-exp-1-a1")
    sup.reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    st = rec.read_state()[0]
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    preempted = [ev for _, ev in rec.events() if ev["to"] == "PREEMPTED"]
    assert "GCE preemption" in preempted[0]["reason"]
    assert set(vms(fake)) == {"runner-exp-1-a2"}  # DELETE termination: the old VM is gone


def test_a_startup_failure_fails_the_run_and_leaves_no_vm(gce):
    ctx, fake = gce
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    ctx.store.write(rec.name(rec.startup_name(1)), json.dumps(
        {"status": "failed", "phase": "gpu-wait", "reason": "gpu_timeout", "detail": "no nvidia-smi after 300s"}).encode())
    sup.reconcile("exp-1")
    st = rec.read_state()[0]
    assert st.state == State.FAILED and "gpu_timeout" in st.reason
    assert fake.instances() == []


@pytest.mark.parametrize("n", [1, 5, 25])
def test_one_supervisor_pass_costs_one_compute_call_whatever_the_number_of_runs(gce, n):
    ctx, fake = gce
    for i in range(n):
        submit(ctx, run_id=f"r{i}")
    sup = ctx.supervisor()
    sup.reconcile_all()  # creates the VMs
    for i in range(n):
        agent_reports_running(ctx, f"r{i}")
    fake.reset_requests()
    sup.reconcile_all()
    assert [r.rpc for r in fake.requests] == ["instances.aggregatedList"]


def test_transient_429_and_503_are_retried(gce):
    ctx, fake = gce
    fake.error_rate = 0.4
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    assert len(fake.instances()) == 1
    assert fake.calls(ok=False), "the fake injected no error: this test proved nothing"


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
def test_a_403_rate_limit_is_retried_not_read_as_permission_denied(gce, reason):
    ctx, fake = gce
    submit(ctx)
    fake.fail_next(403, times=2, rpc="instances.insert", reason=reason)
    ctx.supervisor().reconcile("exp-1")
    assert [v.name for v in fake.instances()] == ["runner-exp-1-a1"]
    notes = [ev["reason"] for _, ev in RunRecord(ctx.store, "exp-1").events()]
    assert not any("permission" in (n or "") for n in notes), notes
    assert len(fake.calls("instances.insert", ok=False)) == 2


def test_a_project_at_its_api_rate_limit_still_gets_its_vm(gce):
    ctx, fake = gce
    submit(ctx)
    fake.queries_per_second = 1  # every second call within a second: 403 rateLimitExceeded
    ctx.supervisor().reconcile("exp-1")
    assert [v.name for v in fake.instances()] == ["runner-exp-1-a1"]
    assert any(r.status == 403 for r in fake.requests), "no rate limit was hit: this proved nothing"


def test_a_real_permission_error_names_the_role_and_no_rate_limit(gce):
    from runner.launch.backends.gce import _explain
    from google.api_core import exceptions as gexc

    ctx, fake = gce
    submit(ctx)
    fake.fail_next(403, times=1, rpc="instances.insert", reason="forbidden")
    ctx.supervisor().reconcile("exp-1")
    notes = [ev["reason"] for _, ev in RunRecord(ctx.store, "exp-1").events() if ev["to"] is None]
    assert "permission denied" in notes[-1] and "roles/compute.instanceAdmin.v1" in notes[-1]
    limited = gexc.Forbidden("Quota exceeded for quota metric 'Queries'",
                             errors=[{"reason": "rateLimitExceeded", "domain": "usageLimits"}])
    assert "permission" not in _explain(limited, PROJECT)


def test_a_supervisor_pass_survives_a_failing_list_and_the_next_pass_works(gce):
    ctx, fake = gce
    submit(ctx)
    sup = ctx.supervisor()
    fake.fail_next(403, times=1, rpc="instances.aggregatedList", reason="forbidden")
    # The pass says why on stderr and does not raise: each run lists its own instances instead.
    states = sup.reconcile_all()
    assert states["exp-1"].state == State.PROVISIONING
    assert [v.name for v in fake.instances()] == ["runner-exp-1-a1"]
    states = sup.reconcile_all()
    assert states["exp-1"].state == State.PROVISIONING
    assert [v.name for v in fake.instances()] == ["runner-exp-1-a1"]


def test_delete_writes_stop_then_removes_the_vm(gce):
    from runner.ops.runs import delete_run

    ctx, fake = gce
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    out = delete_run(ctx.store, ctx.backend, "exp-1", grace_period=0)
    assert out["state"] == "STOPPED" and out["removed"] == ["runner-exp-1-a1"]
    assert fake.instances() == [] and RunRecord(ctx.store, "exp-1").stop_requested()
    ctx.supervisor().reconcile("exp-1")
    assert fake.instances() == []


def test_a_run_with_a_per_run_data_disk_leaves_no_disk_after_preemption_and_delete(
        compute_fake, gcs_store, gcs_emulator):
    from runner.ops.runs import delete_run

    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, data_disk_gb=200)
    ctx = make_context(cfg)
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    assert sorted(d.name for d in compute_fake.disks()) == ["runner-exp-1-a1", "runner-exp-1-a1-1"]
    agent_reports_running(ctx, "exp-1")
    compute_fake.preempt("us-central1-a", "runner-exp-1-a1")  # DELETE termination
    sup.reconcile("exp-1")
    assert sorted(d.name for d in compute_fake.disks()) == ["runner-exp-1-a2", "runner-exp-1-a2-1"]
    delete_run(ctx.store, ctx.backend, "exp-1", grace_period=0)
    assert compute_fake.instances() == [] and compute_fake.disks() == []


def test_orphans_are_vms_whose_run_is_over_or_unknown(gce):
    from google.cloud import compute_v1

    from runner.ops.runs import orphans

    ctx, fake = gce
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    fake.seed_instance("us-central1-b", compute_v1.Instance(
        name="runner-ghost-a1", labels={"runner": "cos-spot-runner", "run-id": "ghost", "attempt": "1"},
        status="RUNNING"))
    found = orphans(ctx.store, ctx.backend)
    assert [(o["name"], o["why"]) for o in found] == [("runner-ghost-a1", "no run record in this store")]


def test_serial_console_and_provider_events_are_shown(gce):
    from runner.ops.runs import current_instance, run_events

    ctx, fake = gce
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    fake.append_serial("us-central1-a", "runner-exp-1-a1", "runner-phase: gpu-driver\nrunner-phase: image-pull\n")
    inst = current_instance(ctx.store, ctx.backend, "exp-1")
    text, nxt = ctx.backend.console(inst, 0)
    assert "runner-phase: image-pull" in text
    more, _ = ctx.backend.console(inst, nxt)
    assert more == ""
    agent_reports_running(ctx, "exp-1")
    fake.preempt("us-central1-a", "runner-exp-1-a1")
    evs = run_events(ctx.store, ctx.backend, "exp-1")
    kinds = [e["reason"] for e in evs if e["actor"] == "gce"]
    assert any("compute.instances.preempted runner-exp-1-a1" in k for k in kinds)
    assert [e["time"] for e in evs] == sorted(e["time"] for e in evs)


# ---- through the CLI, as a user types it ----

def cli(fake, gcs_emulator, store_url, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_COMPUTE_ENDPOINT": fake.endpoint,
           "STORAGE_EMULATOR_HOST": gcs_emulator, "GOOGLE_CLOUD_PROJECT": "local",
           "RUNNER_STORE": store_url, "RUNNER_BACKEND": "gce", "CLOUDSDK_CONFIG": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli_refuses_a_g2_with_an_extra_gpu_before_any_api_call(compute_fake, gcs_store, gcs_emulator):
    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "x", "--project", PROJECT,
            "--zones", "us-central1-a", "--machine-type", "g2-standard-8", "--gpu", "nvidia-l4",
            "--image", IMAGE, "--detach", "--", "true")
    assert p.returncode == 1 and "drop --gpu" in p.stderr
    assert compute_fake.requests == []


@pytest.mark.parametrize("flags,says", [
    (["--zones", "mars-central1-a"], "unknown zone 'mars-central1-a'"),
    (["--zones", "us-central1-a", "--machine-type", "n1-mega-999"], "offers n1-mega-999"),
    (["--zones", "us-central1-a"], "no GCP project"),
])
def test_cli_bad_gce_input_is_refused_with_the_fix_and_creates_nothing(compute_fake, gcs_store, gcs_emulator, flags, says):
    project = [] if says == "no GCP project" else ["--project", PROJECT]
    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "x", *project, *flags,
            "--image", IMAGE, "--detach", "--", "true")
    assert p.returncode == 1, p.stderr
    assert says in p.stderr
    assert compute_fake.instances() == []
    assert not gcs_store.exists("runs/x/spec.json")


def test_cli_refuses_an_image_not_pinned_to_a_digest(compute_fake, gcs_store, gcs_emulator):
    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "x", "--project", PROJECT,
            "--zones", "us-central1-a", "--image", "us-docker.pkg.dev/p/r/img:latest", "--detach", "--", "true")
    assert p.returncode == 1 and "sha256" in p.stderr


def test_cli_submit_detach_then_status_shows_the_vm(compute_fake, gcs_store, gcs_emulator):
    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "exp-9", "--project", PROJECT,
            "--zones", "us-central1-a", "--no-gpu", "--image", IMAGE, "--detach", "--", "python3", "-c", "print(1)")
    assert p.returncode == 0, p.stderr
    assert [v.name for v in compute_fake.instances()] == ["runner-exp-9-a1"]
    s = cli(compute_fake, gcs_emulator, gcs_store.url, "ops", "status", "--run-id", "exp-9", "--project", PROJECT,
            "--json")
    assert s.returncode == 0, s.stderr
    doc = json.loads(s.stdout)
    assert doc["state"] == "PROVISIONING" and doc["instances"][0]["zone"] == "us-central1-a"
    from runner.ops.cost import load_prices

    shipped = load_prices().machine_price("us-central1", "n1-standard-4")
    assert doc["cost"]["hourly"] == pytest.approx(shipped) and doc["cost"]["so_far"] >= 0
    assert doc["cost"]["as_of"] == load_prices().as_of


def test_with_stop_termination_a_preempted_vm_is_started_again_not_replaced(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, termination_action="STOP")
    ctx = make_context(cfg)
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    agent_reports_running(ctx, "exp-1")
    compute_fake.preempt("us-central1-a", "runner-exp-1-a1")
    assert compute_fake.instance("us-central1-a", "runner-exp-1-a1").status == "TERMINATED"
    compute_fake.reset_requests()
    sup.reconcile("exp-1")
    vm = compute_fake.instance("us-central1-a", "runner-exp-1-a1")
    assert vm.status == "RUNNING" and vm.labels["attempt"] == "2"
    assert {i.key: i.value for i in vm.metadata.items}["runner-attempt"] == "2"
    rpcs = [r.rpc for r in compute_fake.requests]
    assert "instances.insert" not in rpcs and "instances.start" in rpcs
    st = RunRecord(ctx.store, "exp-1").read_state()[0]
    assert (st.state, st.attempt, st.instance) == (State.PROVISIONING, 2, "runner-exp-1-a1")
    sup.reconcile("exp-1")  # the next pass sees attempt 2's VM and leaves it alone
    assert [v.name for v in compute_fake.instances()] == ["runner-exp-1-a1"]


@pytest.mark.parametrize("action", ["STOP", "DELETE"])
def test_a_supervisor_that_looks_during_the_preemption_notice_waits_then_restarts(
        compute_fake, gcs_store, gcs_emulator, action):
    """A real preemption: the agent records PREEMPTED while the VM is still STOPPING.

    Acting then would delete the kept VM (STOP) or put a second VM beside a live one (DELETE).
    The supervisor waits for the power-off: STOP restarts the same VM in place, DELETE inserts
    attempt 2 only once attempt 1's VM is gone.
    """
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, termination_action=action)
    ctx = make_context(cfg)
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    agent_reports_running(ctx, "exp-1")
    compute_fake.time_scale = 0.05  # a 1.5 s notice
    compute_fake.preempt("us-central1-a", "runner-exp-1-a1")
    rec = RunRecord(ctx.store, "exp-1")
    rec.transition(State.PREEMPTED, "agent", expect_attempt=1, reason="SIGTERM from the VM shutdown")
    compute_fake.reset_requests()

    sup.reconcile("exp-1")  # during STOPPING
    assert compute_fake.instance("us-central1-a", "runner-exp-1-a1").status == "STOPPING"
    assert [r.rpc for r in compute_fake.requests if r.method != "GET"] == []

    deadline = time.monotonic() + 10
    while compute_fake.instance("us-central1-a", "runner-exp-1-a1") is not None and \
            compute_fake.instance("us-central1-a", "runner-exp-1-a1").status == "STOPPING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sup.reconcile("exp-1")
    rpcs = [r.rpc for r in compute_fake.requests]
    st = rec.read_state()[0]
    assert (st.state, st.attempt) == (State.PROVISIONING, 2)
    if action == "STOP":
        assert "instances.insert" not in rpcs and "instances.start" in rpcs
        assert [v.name for v in compute_fake.instances()] == ["runner-exp-1-a1"]
        assert compute_fake.instance("us-central1-a", "runner-exp-1-a1").labels["attempt"] == "2"
    else:
        assert "instances.delete" not in rpcs
        assert [v.name for v in compute_fake.instances()] == ["runner-exp-1-a2"]


class AgentGuest:
    """A stand-in VM whose shutdown does what the agent does on SIGTERM: records PREEMPTED."""

    def __init__(self, ctx, run_id: str) -> None:
        self.ctx, self.run_id = ctx, run_id
        self.events: list[tuple[str, str]] = []

    def on_running(self, project, zone, name, instance) -> None:
        self.events.append(("running", name))

    def on_shutdown(self, project, zone, name, notice_seconds) -> None:
        self.events.append(("shutdown", name))
        rec = RunRecord(self.ctx.store, self.run_id)
        st = rec.read_state()[0]
        if st.state == State.RUNNING:
            rec.transition(State.PREEMPTED, "agent", expect_attempt=st.attempt, reason="SIGTERM: VM shutting down")
        time.sleep(notice_seconds / 3)  # the final sync

    def on_power_off(self, project, zone, name) -> None:
        self.events.append(("power_off", name))


def test_stop_mode_preemption_with_a_guest_resumes_on_the_same_vm_whatever_the_pass_timing(
        compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, termination_action="STOP")
    ctx = make_context(cfg)
    guest = AgentGuest(ctx, "exp-1")
    compute_fake.guest = guest
    compute_fake.time_scale = 0.03  # a 0.9 s notice
    submit(ctx)
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    agent_reports_running(ctx, "exp-1")
    compute_fake.preempt("us-central1-a", "runner-exp-1-a1")
    deadline = time.monotonic() + 10
    while RunRecord(ctx.store, "exp-1").read_state()[0].attempt < 2:  # passes every 0.1 s
        assert time.monotonic() < deadline, guest.events
        sup.reconcile("exp-1")
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while guest.events[-1:] != [("running", "runner-exp-1-a1")]:
        assert time.monotonic() < deadline, guest.events
        time.sleep(0.05)
    assert guest.events == [("running", "runner-exp-1-a1"), ("shutdown", "runner-exp-1-a1"),
                            ("power_off", "runner-exp-1-a1"), ("running", "runner-exp-1-a1")]
    assert compute_fake.calls("instances.insert") and len(compute_fake.calls("instances.insert")) == 1
    assert compute_fake.calls("instances.delete") == []
    reasons = [ev["reason"] for _, ev in RunRecord(ctx.store, "exp-1").events() if ev["to"] == "PREEMPTED"]
    assert reasons == ["SIGTERM: VM shutting down"]  # the agent's own reason, once


def test_project_mismatch_with_gcloud_is_warned_about_showing_both(compute_fake, gcs_store, gcs_emulator, tmp_path):
    conf = tmp_path / "gcloud"
    (conf / "configurations").mkdir(parents=True)
    (conf / "active_config").write_text("default")
    (conf / "configurations" / "config_default").write_text("[core]\nproject = someone-elses\n")
    env_cfg = {**os.environ, "CLOUDSDK_CONFIG": str(conf)}
    p = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "list", "--orphans", "--backend", "gce",
                        "--project", PROJECT, "--store", gcs_store.url],
                       env={**env_cfg, "PYTHONPATH": str(ROOT), "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint,
                            "STORAGE_EMULATOR_HOST": gcs_emulator},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"using project '{PROJECT}'" in p.stderr and "'someone-elses'" in p.stderr


def test_logs_show_each_attempts_vm_startup_then_the_job_output(compute_fake, gcs_store, gcs_emulator):
    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "exp-7", "--project", PROJECT,
            "--zones", "us-central1-a", "--no-gpu", "--image", IMAGE, "--detach", "--", "python3", "-c", "print(1)")
    assert p.returncode == 0, p.stderr
    compute_fake.append_serial("us-central1-a", "runner-exp-7-a1",
                               "runner-phase: metadata\nrunner-phase: image-pull\nrunner-phase: container-start\n"
                               "runner-phase: container-running\ncontainer chatter after the start\n")
    gcs_store.write(RunRecord(gcs_store, "exp-7").name(RunRecord.log_name(1)), b"step 1\nstep 2\n")
    out = cli(compute_fake, gcs_emulator, gcs_store.url, "ops", "logs", "--run-id", "exp-7", "--project", PROJECT)
    assert out.returncode == 0, out.stderr
    startup, job = out.stdout.split("===== attempt 1: job output =====\n")
    assert "===== attempt 1: VM startup (serial console of runner-exp-7-a1) =====" in startup
    assert startup.index("runner-phase: image-pull") < startup.index("runner-phase: container-running")
    assert "container chatter" not in out.stdout  # after the start, the job's own log is the source
    assert job == "step 1\nstep 2\n"
    doc = json.loads(cli(compute_fake, gcs_emulator, gcs_store.url, "ops", "logs", "--run-id", "exp-7",
                         "--project", PROJECT, "--json").stdout)
    assert doc[0]["instance"] == "runner-exp-7-a1" and doc[0]["output"] == "step 1\nstep 2\n"
    assert doc[0]["startup"].endswith("runner-phase: container-running\n")


def test_every_ops_command_works_against_the_gce_fakes_with_json(compute_fake, gcs_store, gcs_emulator, tmp_path):
    def ops(*args):
        p = cli(compute_fake, gcs_emulator, gcs_store.url, "ops", *args, "--project", PROJECT)
        return p.returncode, (json.loads(p.stdout) if "--json" in args and p.stdout.strip() else p.stdout), p.stderr

    for run_id in ("exp-a", "exp-b"):
        p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", run_id, "--project", PROJECT,
                "--zones", "us-central1-a", "--no-gpu", "--image", IMAGE, "--detach", "--", "true")
        assert p.returncode == 0, p.stderr
    rec = RunRecord(gcs_store, "exp-a")
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="us-central1-a")
    compute_fake.append_serial("us-central1-a", "runner-exp-a-a1", "runner-phase: container-running\n")
    gcs_store.write(rec.name("results/metrics.json"), b'{"acc": 0.9}')

    code, rows, _ = ops("list", "--json")
    assert code == 0 and {r["run_id"]: r["state"] for r in rows} == {"exp-a": "RUNNING", "exp-b": "PROVISIONING"}
    code, out, _ = ops("serial", "--run-id", "exp-a")
    assert code == 0 and "runner-phase: container-running" in out
    code, doc, _ = ops("serial", "--run-id", "exp-a", "--json")
    assert doc == {"instance": "runner-exp-a-a1", "zone": "us-central1-a", "text": "runner-phase: container-running"}
    code, doc, _ = ops("preempt", "--run-id", "exp-a", "--json")
    assert code == 0 and doc["preempted"] == ["runner-exp-a-a1"]
    code, evs, _ = ops("events", "--run-id", "exp-a", "--json")
    assert any(e["actor"] == "gce" and "preempted" in (e["reason"] or "") for e in evs)
    code, doc, _ = ops("pull", "--run-id", "exp-a", "--dest", str(tmp_path / "pulled"), "--json")
    assert code == 0 and doc["copied"] == ["results/metrics.json"]
    assert (tmp_path / "pulled" / "latest" / "results" / "metrics.json").read_bytes() == b'{"acc": 0.9}'
    code, doc, _ = ops("delete", "--run-id", "exp-b", "--json")
    assert code == 0 and doc == {"run_id": "exp-b", "state": "STOPPED", "removed": ["runner-exp-b-a1"]}
    assert "runner-exp-b-a1" not in vms(compute_fake)
    code, lines, _ = ops("watch", "--run-id", "exp-b", "--json")
    assert code == 1 and lines["state"] == "STOPPED"  # watch ends with its runs; not SUCCEEDED: 1
    code, _, err = ops("status", "--run-id", "nope", "--json")
    assert code == 3 and "no run 'nope'" in err


def test_following_logs_streams_the_vm_startup_then_the_job_output(gce):
    import threading

    from runner.ops.runs import follow_logs

    ctx, fake = gce
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    got: list[tuple[int, str, bytes]] = []
    t = threading.Thread(target=lambda: got.extend(follow_logs(ctx.store, "exp-1", poll=0.1, backend=ctx.backend)))
    t.start()
    fake.append_serial("us-central1-a", "runner-exp-1-a1", "runner-phase: gpu-driver\n")
    time.sleep(0.5)
    fake.append_serial("us-central1-a", "runner-exp-1-a1", "runner-phase: container-running\nlater noise\n")
    time.sleep(0.5)
    rec = RunRecord(ctx.store, "exp-1")
    agent_reports_running(ctx, "exp-1")
    ctx.store.write(rec.name(RunRecord.log_name(1)), b"step 1\n")
    time.sleep(0.5)
    rec.transition(State.SUCCEEDED, "agent", exit_code=0)
    t.join(timeout=20)
    assert not t.is_alive()
    startup = b"".join(c for a, kind, c in got if kind == "startup").decode()
    assert startup == "runner-phase: gpu-driver\nrunner-phase: container-running\n"
    assert [(a, kind) for a, kind, _ in got][-1] == (1, "output")
    assert b"".join(c for a, kind, c in got if kind == "output") == b"step 1\n"
