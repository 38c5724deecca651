"""Issue 22, part 4: when spot runs dry.

Provisioning models (spot, standard, spot-then-standard, flex-start), the zone order a store's
stockout history advises, and the price of each attempt at its own model. Every product test goes
through the real google-cloud-compute client against the Compute stand-in
(tests/standins/compute), which refuses what Google documents it refuses:

- provisioningModel values: "SPOT: Heavily discounted, no guaranteed runtime. STANDARD: Standard
  provisioning with user controlled runtime, no discounts." and FLEX_START "provisioned using the
  Flex Start provisioning model and has a limited runtime"
  (https://docs.cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.Scheduling.Types.ProvisioningModel).
- Flex-start: "run for up to seven days", for "all accelerator-optimized machine types (except A4X
  and G4) and H4D machine types" (https://cloud.google.com/compute/docs/instances/about-flex-start-vms).
"""

from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from entrypoint.record import RunRecord, State
from runner.config import Config, load_config
from runner.launch.backends.base import BackendError
from runner.launch.context import make_context
from runner.launch.zone_stockouts import NAME as HISTORY, ZoneStockouts, record_stockouts
from runner.ops.cost import estimate_run_cost, load_prices

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "e" * 64
ZONES = ["us-central1-a", "us-central1-b"]


def gce_ctx(fake, store_url, **cfg):
    base = dict(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=fake.endpoint,
                store=store_url, machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 8)
    fake.set_quota("us-central1", "NVIDIA_T4_GPUS", 8)
    fake.set_quota("us-central1", "NVIDIA_L4_GPUS", 8)
    return make_context(Config(**{**base, **cfg}))


def submit(ctx, run_id="exp-1"):
    from runner.launch.submit import submit as do_submit

    return do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def clocked(ctx, start=10_000.0):
    """A supervisor and backend sharing one clock the test moves."""
    clock = [start]
    sup = ctx.supervisor()
    sup.now = lambda: clock[0]
    ctx.backend.clock = lambda: clock[0]
    return sup, clock


def metadata(vm) -> dict[str, str]:
    return {i.key: i.value for i in vm.metadata.items}


def notes(ctx, run_id="exp-1") -> list[str]:
    return [ev["reason"] for _, ev in RunRecord(ctx.store, run_id).events() if ev["to"] is None]


def flex_vm(machine_type: str, seconds: int | None) -> compute_v1.Instance:
    zone = "us-central1-a"
    sched = compute_v1.Scheduling(provisioning_model="FLEX_START", instance_termination_action="DELETE",
                                  on_host_maintenance="TERMINATE", automatic_restart=False)
    if seconds is not None:
        sched.max_run_duration = compute_v1.Duration(seconds=seconds)
    return compute_v1.Instance(name="flex-1", machine_type=f"zones/{zone}/machineTypes/{machine_type}",
                               scheduling=sched)


# ---- the stand-in refuses what Google documents ----

@pytest.mark.parametrize(("machine_type", "seconds", "field"), [
    ("n1-standard-4", 3600, "provisioningModel"),   # not accelerator-optimized
    ("g2-standard-8", None, "maxRunDuration"),       # a flex-start VM has a limited runtime
    ("g2-standard-8", 7 * 86400 + 1, "maxRunDuration.seconds"),  # "up to seven days"
])
def test_the_fake_refuses_a_flex_start_vm_the_docs_do_not_allow(compute_fake, machine_type, seconds, field) -> None:
    client = compute_v1.InstancesClient(**compute_fake.client_kwargs())
    with pytest.raises(gexc.BadRequest) as err:
        client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=flex_vm(machine_type, seconds))
    assert f"resource.scheduling.{field}" in str(err.value)
    assert compute_fake.instances() == []


def test_the_fake_takes_a_documented_flex_start_vm(compute_fake) -> None:
    client = compute_v1.InstancesClient(**compute_fake.client_kwargs())
    op = client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=flex_vm("g2-standard-8", 4 * 3600))
    assert not op.error.errors
    (vm,) = compute_fake.instances()
    assert vm.scheduling.provisioning_model == "FLEX_START" and vm.scheduling.max_run_duration.seconds == 4 * 3600


def test_a_zone_out_of_spot_capacity_still_takes_a_standard_vm(compute_fake) -> None:
    compute_fake.spot_stockout_zones = {"us-central1-a"}
    client = compute_v1.InstancesClient(**compute_fake.client_kwargs())

    def vm(name, model):
        return compute_v1.Instance(name=name, machine_type="zones/us-central1-a/machineTypes/e2-standard-4",
                                   scheduling=compute_v1.Scheduling(provisioning_model=model,
                                                                    on_host_maintenance="TERMINATE",
                                                                    automatic_restart=False))
    spot = client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=vm("s", "SPOT"))
    assert [e.code for e in spot.error.errors] == ["ZONE_RESOURCE_POOL_EXHAUSTED"]
    std = client.insert_unary(project=PROJECT, zone="us-central1-a", instance_resource=vm("d", "STANDARD"))
    assert not std.error.errors
    assert [v.name for v in compute_fake.instances()] == ["d"]


# ---- config: the durations a user writes ----

def test_provisioning_and_durations_are_read_as_a_user_writes_them(tmp_path) -> None:
    cfg = load_config(cli={"provisioning": "spot-then-standard", "fallback_after": "30m",
                           "max_run_duration": "4h"}, cwd=str(tmp_path), env={})
    assert (cfg.provisioning, cfg.fallback_after, cfg.max_run_duration) == ("spot-then-standard", 1800.0, 14400.0)
    from runner.config import ConfigError

    with pytest.raises(ConfigError, match="provisioning"):
        load_config(cli={"provisioning": "cheap"}, cwd=str(tmp_path), env={})


# ---- standard ----

def test_a_standard_run_gets_an_on_demand_vm_without_a_termination_action(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="standard")
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert vm.scheduling.provisioning_model == "STANDARD"
    assert not vm.scheduling.preemptible and not vm.scheduling.instance_termination_action
    assert metadata(vm)["runner-provisioning"] == "STANDARD"
    assert any("STANDARD VM in us-central1-a (provisioning = standard)" in n for n in notes(ctx))


# ---- spot-then-standard: the fallback ----

def test_spot_dry_in_every_zone_past_fallback_after_makes_the_next_create_standard_and_cost_prices_it_on_demand(
        compute_fake, gcs_store, gcs_emulator, tmp_path) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="spot-then-standard", fallback_after=60.0)
    compute_fake.spot_stockout_zones = set(ZONES)
    submit(ctx)
    sup, clock = clocked(ctx)
    sup.reconcile("exp-1")  # the first failed create starts the fallback clock
    assert compute_fake.instances() == []
    clock[0] += 30
    sup.reconcile("exp-1")  # 30 s without a VM: still spot, still refused
    assert compute_fake.instances() == []
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in notes(ctx)[-1]
    spot_inserts = len(compute_fake.calls("instances.insert"))
    assert spot_inserts == 4  # two passes, two zones, all spot
    clock[0] += 40
    sup.reconcile("exp-1")  # 70 s >= fallback_after 60 s: standard
    (vm,) = compute_fake.instances()
    assert vm.scheduling.provisioning_model == "STANDARD" and not vm.scheduling.instance_termination_action
    assert vm.zone.endswith("/us-central1-a")
    assert metadata(vm)["runner-provisioning"] == "STANDARD"
    said = notes(ctx)[-1]
    assert "attempt 1: STANDARD VM in us-central1-a" in said and "no VM for 1m10s (fallback_after 1m)" in said
    rec = RunRecord(ctx.store, "exp-1")
    assert rec.read_state()[0].state == State.PROVISIONING
    # The agent writes what the VM's metadata said into the attempt's manifest (entrypoint/agent.py).
    rec.write_manifest(1, {"run_id": "exp-1", "attempt": 1, "instance": vm.name, "zone": "us-central1-a",
                           "started_at": clock[0], "provisioning": metadata(vm)["runner-provisioning"]})
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"regions": {"us-central1": {
        "standard_machine": {"n1-standard-4": 0.19}, "standard_gpu": {"nvidia-tesla-t4": 0.35}}}}))
    cost = estimate_run_cost(rec, load_prices(str(table)), now=clock[0] + 3600)
    (row,) = cost["attempts"]
    assert row["provisioning"] == "STANDARD" and row["hourly"] == pytest.approx(0.19 + 0.35)
    assert cost["hourly"] == pytest.approx(0.54)
    spot_price = load_prices().hourly(rec.read_spec(), "us-central1")[0]
    assert spot_price is not None and spot_price < 0.54  # the shipped spot price is not what was used


def test_the_fallback_clock_is_the_attempts_own_so_a_new_attempt_tries_spot_again(tmp_path) -> None:
    from entrypoint.stores import open_store
    from runner.launch.backends.gce_provisioning import choose
    from runner.launch.create_backoff import CreateBackoff

    store = open_store(f"file://{tmp_path}")
    backoff = CreateBackoff.read(store, "r")
    backoff.push(900.0, 1.0, attempt=1)   # attempt 1's first failed create
    backoff.push(950.0, 1.0, attempt=1)   # a later one does not move the clock
    assert CreateBackoff.read(store, "r").failing_since(1) == 900.0
    assert CreateBackoff.read(store, "r").failing_since(2) is None  # attempt 2 has not failed yet
    vm = {"provisioning": "spot-then-standard", "fallback_after_s": 60}
    assert choose(vm, None, 1000.0).model == "SPOT"
    assert choose(vm, 990.0, 1000.0).model == "SPOT"
    assert choose(vm, 900.0, 1000.0).model == "STANDARD"
    CreateBackoff.read(store, "r").push(2000.0, 1.0, attempt=2)  # attempt 2's clock starts afresh
    assert CreateBackoff.read(store, "r").failing_since(2) == 2000.0


def test_without_a_standard_price_the_cost_of_a_standard_attempt_is_unknown_not_spot(
        compute_fake, gcs_store, gcs_emulator, tmp_path) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="standard")
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    now = rec.read_state()[0].updated_at + 600
    shipped = estimate_run_cost(rec, load_prices(), now=now)  # the shipped table prices on-demand
    assert shipped["hourly"] == pytest.approx(0.19 + 0.35)
    # A table of one's own in another currency (nothing shipped to fall back on), spot prices only.
    table = tmp_path / "spot-only.json"
    table.write_text(json.dumps({"currency": "EUR", "regions": {"us-central1": {
        "machine": {"n1-standard-4": 0.04}, "gpu": {"nvidia-tesla-t4": 0.11}}}}))
    cost = estimate_run_cost(rec, load_prices(str(table)), now=now)
    assert cost["so_far"] is None and "no standard (on-demand) price for n1-standard-4" in cost["why_unknown"]


# ---- flex-start ----

def test_flex_start_is_refused_at_submit_for_a_machine_type_the_docs_exclude(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="flex-start", max_run_duration=4 * 3600)
    with pytest.raises(BackendError, match="accelerator-optimized .* n1-standard-4 is not one"):
        submit(ctx)
    assert compute_fake.calls("instances.insert") == []


@pytest.mark.parametrize(("seconds", "says"), [(0, "needs --max-run-duration"), (8 * 86400, "at most 7 days")])
def test_flex_start_without_a_documented_run_duration_is_refused_at_submit(
        compute_fake, gcs_store, gcs_emulator, seconds, says) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="flex-start", machine_type="g2-standard-8",
                  gpu=None, max_run_duration=seconds)
    with pytest.raises(BackendError, match=says):
        submit(ctx)
    assert compute_fake.calls("instances.insert") == []


def test_a_flex_start_run_creates_a_flex_start_vm_with_its_run_duration(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, provisioning="flex-start", machine_type="g2-standard-8",
                  gpu=None, max_run_duration=4 * 3600)
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    (vm,) = compute_fake.instances()
    s = vm.scheduling
    assert (s.provisioning_model, s.max_run_duration.seconds, s.instance_termination_action) == (
        "FLEX_START", 4 * 3600, "DELETE")
    assert metadata(vm)["runner-provisioning"] == "FLEX_START"


# ---- zone ranking from the store's stockout history ----

def test_a_zone_that_stocked_out_recently_is_tried_last_and_the_journal_says_why(
        compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url)
    submit(ctx)
    sup, clock = clocked(ctx)
    record_stockouts(ctx.store, ["us-central1-a"], now=clock[0] - 180)
    sup.reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert vm.zone.endswith("/us-central1-b")
    assert len(compute_fake.calls("instances.insert")) == 1  # no refused insert in a
    said = notes(ctx)[-1]
    assert "us-central1-b: no stockout seen in 1 h" in said and "us-central1-a: stocked out 3 min ago" in said


def test_one_runs_stockout_sends_the_next_runs_create_to_the_other_zone_first(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url)
    sup, clock = clocked(ctx)
    compute_fake.capacity_advice_denied = True  # what the store learns, alone
    compute_fake.stockout_zones = {"us-central1-a"}
    submit(ctx, "first")
    sup.reconcile("first")
    assert set(ZoneStockouts.read(ctx.store).zones) == {"us-central1-a"}
    assert ctx.store.read(HISTORY) is not None
    compute_fake.stockout_zones = set()  # a has capacity again, but the store does not know it yet
    before = len(compute_fake.calls("instances.insert"))
    submit(ctx, "second")
    sup.reconcile("second")
    made = {v.name: v.zone.rsplit("/", 1)[-1] for v in compute_fake.instances()}
    assert made == {"runner-first-a1": "us-central1-b", "runner-second-a1": "us-central1-b"}
    assert len(compute_fake.calls("instances.insert")) - before == 1


def test_stockouts_decay_so_an_old_one_no_longer_reorders_the_zones() -> None:
    h = ZoneStockouts()
    h.seen("us-central1-a", now=0.0)
    assert h.ranked(ZONES, now=60.0)[0] == ("us-central1-b", "us-central1-a")
    order, why = h.ranked(ZONES, now=6 * 3600.0)  # weight 1/64 < FORGET_BELOW: clean again
    assert order == tuple(ZONES) and why[0] == "us-central1-a: last stockout 6 h ago"


# ---- the manifest says which model the attempt ran on ----

def test_the_agent_writes_the_vms_provisioning_model_into_the_attempts_manifest(tmp_path) -> None:
    import subprocess
    import sys

    from tests.test_agent_start_failure import agent_env

    env = {**agent_env(tmp_path, sys.executable, "-c", "pass"), "RUNNER_INSTANCE": "vm-1",
           "RUNNER_ZONE": "zone-a", "RUNNER_PROVISIONING": "STANDARD"}  # gcp/startup.sh passes it on
    p = subprocess.run([sys.executable, "-m", "entrypoint", "--", sys.executable, "-c", "pass"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    manifest = json.loads((tmp_path / "store/runs/r/attempts/1/manifest.json").read_text())
    assert (manifest["zone"], manifest["provisioning"]) == ("zone-a", "STANDARD")


def test_a_gang_that_found_no_room_in_a_zone_teaches_the_store_to_try_it_last(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url, nodes=2, machine_type="e2-standard-4", gpu=None, no_gpu=True)
    sup, clock = clocked(ctx)
    compute_fake.capacity_advice_denied = True  # what the store learns, alone
    compute_fake.zone_capacity["us-central1-a"] = 1  # room for one node of two: the bulkInsert is refused
    submit(ctx, "gang")
    sup.reconcile("gang")
    assert {v.zone.rsplit("/", 1)[-1] for v in compute_fake.instances()} == {"us-central1-b"}
    assert set(ZoneStockouts.read(ctx.store).zones) == {"us-central1-a"}
    compute_fake.zone_capacity.clear()  # room again in a; the store does not know it yet
    before = len(compute_fake.calls("instances.bulkInsert"))
    clock[0] += 60
    submit(ctx, "gang-2")
    sup.reconcile("gang-2")
    assert len(compute_fake.calls("instances.bulkInsert")) - before == 1  # straight to b
    assert {v.zone.rsplit("/", 1)[-1] for v in compute_fake.instances()} == {"us-central1-b"}
    assert "us-central1-a: stocked out 1 min ago" in notes(ctx, "gang-2")[-1]


# ---- Compute's capacity advice (advice.capacity, v1) ----

def advice_request(zones, model="SPOT", size=1, machine_type="n1-standard-4") -> compute_v1.CapacityAdviceRequest:
    return compute_v1.CapacityAdviceRequest(
        distribution_policy=compute_v1.CapacityAdviceRequestDistributionPolicy(
            zones=[compute_v1.CapacityAdviceRequestDistributionPolicyZoneConfiguration(zone=f"zones/{z}") for z in zones]),
        instance_flexibility_policy=compute_v1.CapacityAdviceRequestInstanceFlexibilityPolicy(
            instance_selections={"a": compute_v1.CapacityAdviceRequestInstanceFlexibilityPolicyInstanceSelection(
                machine_types=[machine_type])}),
        instance_properties=compute_v1.CapacityAdviceRequestInstanceProperties(
            scheduling=compute_v1.CapacityAdviceRequestInstancePropertiesScheduling(provisioning_model=model)),
        size=size)


def test_the_fakes_capacity_advice_is_one_recommendation_of_a_zone_with_room(compute_fake) -> None:
    client = compute_v1.AdviceClient(**compute_fake.client_kwargs())
    compute_fake.capacity_scores = {"us-central1-a": 0.9, "us-central1-b": 0.4}
    compute_fake.spot_stockout_zones = {"us-central1-a"}
    (rec,) = client.capacity(project=PROJECT, region="us-central1",
                             capacity_advice_request_resource=advice_request(ZONES)).recommendations
    assert [(s.zone, s.instance_count, s.provisioning_model) for s in rec.shards] == [("us-central1-b", 1, "SPOT")]
    assert rec.scores.obtainability == pytest.approx(0.4)
    (std,) = client.capacity(project=PROJECT, region="us-central1",
                             capacity_advice_request_resource=advice_request(ZONES, "STANDARD")).recommendations
    assert [s.zone for s in std.shards] == ["us-central1-a"]  # spot ran out there, standard did not
    compute_fake.stockout_zones = set(ZONES)
    (none,) = client.capacity(project=PROJECT, region="us-central1",
                              capacity_advice_request_resource=advice_request(ZONES)).recommendations
    assert list(none.shards) == [] and none.scores.obtainability == 0.0
    compute_fake.capacity_advice_denied = True
    with pytest.raises(gexc.Forbidden):
        client.capacity(project=PROJECT, region="us-central1", capacity_advice_request_resource=advice_request(ZONES))


def test_capacity_advice_puts_the_recommended_zone_first_and_the_journal_says_so(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url)
    compute_fake.capacity_scores = {"us-central1-a": 0.2, "us-central1-b": 0.9}
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert vm.zone.endswith("/us-central1-b") and len(compute_fake.calls("instances.insert")) == 1
    assert "us-central1-b: no stockout seen in 1 h; capacity advice recommends it (obtainability 0.90)" in notes(ctx)[-1]


def test_a_stockout_this_store_saw_outranks_the_advice(compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url)
    compute_fake.capacity_scores = {"us-central1-a": 0.2, "us-central1-b": 0.9}
    submit(ctx)
    sup, clock = clocked(ctx)
    record_stockouts(ctx.store, ["us-central1-b"], now=clock[0] - 60)
    sup.reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert vm.zone.endswith("/us-central1-a")


def test_a_project_that_may_not_ask_for_advice_still_gets_its_vm_in_the_strategys_order(
        compute_fake, gcs_store, gcs_emulator) -> None:
    ctx = gce_ctx(compute_fake, gcs_store.url)
    compute_fake.capacity_advice_denied = True
    compute_fake.capacity_scores = {"us-central1-b": 0.9}
    submit(ctx)
    ctx.supervisor().reconcile("exp-1")
    (vm,) = compute_fake.instances()
    assert vm.zone.endswith("/us-central1-a")
    assert [c.rpc for c in compute_fake.calls("advice.capacity")] == ["advice.capacity"]


# ---- through the CLI, as a user types it ----

def test_cli_refuses_flex_start_on_an_n1_before_any_api_call(compute_fake, gcs_store, gcs_emulator) -> None:
    from tests.test_gce_backend import cli

    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "x", "--project", PROJECT,
            "--zones", "us-central1-a", "--provisioning", "flex-start", "--max-run-duration", "4h",
            "--image", IMAGE, "--detach", "--", "true")
    assert p.returncode == 1 and "n1-standard-4 is not one" in p.stderr and "g2-standard-8" in p.stderr
    assert compute_fake.requests == []


def test_cli_pins_the_provisioning_and_the_fallback_in_the_spec(compute_fake, gcs_store, gcs_emulator) -> None:
    from tests.test_gce_backend import cli

    p = cli(compute_fake, gcs_emulator, gcs_store.url, "submit", "--run-id", "x", "--project", PROJECT,
            "--zones", "us-central1-a,us-central1-b", "--no-gpu", "--provisioning", "spot-then-standard",
            "--fallback-after", "45m", "--image", IMAGE, "--detach", "--", "true")
    assert p.returncode == 0, p.stderr
    vm = RunRecord(gcs_store, "x").read_spec().vm
    assert (vm["provisioning"], vm["fallback_after_s"]) == ("spot-then-standard", 2700.0)
