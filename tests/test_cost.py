"""Cost estimates from real run records in a local store, with a controlled clock.

Most tests use a small price table with round prices (n1-standard-4 $1/h, a T4 $0.50/h) given as
the ``price_table`` override, so every expected dollar figure can be worked out by hand.
"""

from __future__ import annotations

import json

import pytest

import entrypoint.record.run as record_mod  # where the record reads its clock
from entrypoint.record import RunRecord, RunSpec, State
from runner.ops.cost import PriceTableError, estimate_run_cost, format_money, load_prices
from runner.naming import region_of

HOUR = 3600.0
T4_BOX = 1.5  # n1-standard-4 (1.0) + one nvidia-tesla-t4 (0.5), in the test table


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def at(self, t: float) -> "Clock":
        self.t = t
        return self


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(record_mod, "utcnow", c)
    return c


@pytest.fixture
def prices(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "as_of": "2026-01-02", "currency": "USD", "source": "test",
        "regions": {
            "us-central1": {"machine": {"n1-standard-4": 1.0, "g2-standard-8": 2.0},
                            "gpu": {"nvidia-tesla-t4": 0.5, "nvidia-l4": 100.0}},
            "europe-west4": {"machine": {"n1-standard-4": 3.0}, "gpu": {"nvidia-tesla-t4": 1.0}},
        },
    }))
    return load_prices(str(path))


def make_run(store, clock, *, machine="n1-standard-4", gpu="nvidia-tesla-t4", backend="gce",
             zones=("us-central1-a",), run_id="r1") -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:abc", command=["train"], backend=backend,
                           machine_type=machine, gpu=gpu, zones=list(zones)))
    clock.at(0)
    rec.create_state("submit")
    return rec


def start_attempt(rec, clock, n, at, *, running_at, zone="us-central1-a", resumed_from=(), **manifest):
    """The supervisor creates attempt n at ``at``; its agent starts the job at ``running_at``."""
    clock.at(at)
    rec.transition(State.PROVISIONING, "supervisor", attempt=n)
    assert rec.claim_create(n, "supervisor")
    clock.at(running_at)
    rec.write_manifest(n, {"attempt": n, "zone": zone, "started_at": running_at,
                           "resumed_from": list(resumed_from), **manifest})
    rec.transition(State.RUNNING, "agent", expect_attempt=n, zone=zone)


def end_attempt(rec, clock, n, at, state, **manifest):
    clock.at(at)
    doc = rec.read_manifest(n)
    doc.update(finished_at=at, **manifest)
    rec.write_manifest(n, doc)
    rec.transition(state, "agent", expect_attempt=n)


def write_log(rec, n, steps):
    lines = [f"loss=1.0\nRUNNER_PROGRESS step={s} total=1000\n" for s in steps]
    rec.store.write(rec.name(RunRecord.log_name(n)), "".join(lines).encode())


def preempted_then_resumed(rec, clock, *, a1=None, a2=None, resumed=("runs/r1/checkpoints/last.pt",)):
    """Attempt 1 runs 100..2500 and is preempted; attempt 2 is created at 2600, runs from 2900,
    restores a checkpoint and succeeds at 6500. Billed: 2500 s + 3900 s."""
    start_attempt(rec, clock, 1, 0, running_at=100)
    end_attempt(rec, clock, 1, 2500, State.PREEMPTED, **(a1 or {}))
    start_attempt(rec, clock, 2, 2600, running_at=2900, resumed_from=resumed, **(a2 or {}))
    end_attempt(rec, clock, 2, 6500, State.SUCCEEDED)


# ---------------------------------------------------------------- billed time and price

def test_a_finished_one_attempt_run_costs_its_hourly_price_times_its_hours(local_store, clock, prices):
    rec = make_run(local_store, clock)
    start_attempt(rec, clock, 1, 1000, running_at=1300)
    end_attempt(rec, clock, 1, 1000 + 2 * HOUR, State.SUCCEEDED)

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["hourly"] == pytest.approx(T4_BOX)
    assert est["billed_seconds"] == pytest.approx(2 * HOUR)
    assert est["so_far"] == pytest.approx(2 * T4_BOX)
    assert est["lost_to_preemptions"] == 0
    assert est["why_unknown"] is None
    assert [(a["attempt"], a["ended"], a["running"]) for a in est["attempts"]] == [(1, "SUCCEEDED", False)]
    assert (est["currency"], est["as_of"]) == ("USD", "2026-01-02")


def test_a_running_run_counts_until_now(local_store, clock, prices):
    rec = make_run(local_store, clock)
    start_attempt(rec, clock, 1, 500, running_at=600)

    est = estimate_run_cost(rec, prices, now=500 + HOUR / 2)

    assert est["so_far"] == pytest.approx(T4_BOX / 2)
    assert est["attempts"][0]["running"] is True
    later = estimate_run_cost(rec, prices, now=500 + HOUR)
    assert later["so_far"] == pytest.approx(T4_BOX)


def test_billing_starts_at_the_create_not_while_every_zone_is_out_of_capacity(local_store, clock, prices):
    rec = make_run(local_store, clock)
    clock.at(0)
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    assert estimate_run_cost(rec, prices, now=HOUR)["so_far"] == 0  # no instance yet: no claim
    clock.at(HOUR)
    rec.claim_create(1, "supervisor")

    assert estimate_run_cost(rec, prices, now=2 * HOUR)["so_far"] == pytest.approx(T4_BOX)


def test_g2_prices_include_their_l4_and_nothing_is_added_for_it(local_store, clock, prices):
    rec = make_run(local_store, clock, machine="g2-standard-8", gpu=None)
    start_attempt(rec, clock, 1, 0, running_at=60)
    end_attempt(rec, clock, 1, HOUR, State.SUCCEEDED)

    assert estimate_run_cost(rec, prices, now=HOUR)["so_far"] == pytest.approx(2.0)


def test_each_attempt_is_priced_in_its_own_region(local_store, clock, prices):
    rec = make_run(local_store, clock, zones=("us-central1-a", "europe-west4-b"))
    start_attempt(rec, clock, 1, 0, running_at=0, zone="us-central1-a")
    end_attempt(rec, clock, 1, HOUR, State.PREEMPTED, checkpoint_at=HOUR)
    start_attempt(rec, clock, 2, HOUR, running_at=HOUR, zone="europe-west4-b")
    end_attempt(rec, clock, 2, 2 * HOUR, State.SUCCEEDED)

    est = estimate_run_cost(rec, prices, now=2 * HOUR)

    assert [a["region"] for a in est["attempts"]] == ["us-central1", "europe-west4"]
    assert est["so_far"] == pytest.approx(1.5 + 4.0)


def test_a_provisioning_attempt_takes_its_zone_from_the_backend_instances(local_store, clock, prices):
    rec = make_run(local_store, clock, zones=("us-central1-a", "europe-west4-b"))
    clock.at(0)
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    rec.claim_create(1, "supervisor")

    unknown = estimate_run_cost(rec, prices, now=HOUR)
    assert unknown["so_far"] is None and "zone unknown" in unknown["why_unknown"]
    known = estimate_run_cost(rec, prices, now=HOUR, instance_zones={1: "europe-west4-b"})
    assert known["so_far"] == pytest.approx(4.0)


# ---------------------------------------------------------------- lost to preemptions

def test_a_preempted_and_resumed_run_loses_the_work_after_its_checkpoint_and_the_reboot(
        local_store, clock, prices):
    rec = make_run(local_store, clock)
    preempted_then_resumed(rec, clock, a1={"checkpoint_at": 2000})

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["billed_seconds"] == pytest.approx(2500 + 3900)
    assert est["so_far"] == pytest.approx(6400 / HOUR * T4_BOX)
    # Redone: 2000..2500 of attempt 1 (500 s); reboot of attempt 2: 2600..2900 (300 s).
    assert est["lost_seconds"] == pytest.approx(800)
    assert est["lost_to_preemptions"] == pytest.approx(800 / HOUR * T4_BOX)
    assert est["lost_to_preemptions"] > 0
    assert est["lost_is_lower_bound"] is False
    a1, a2 = est["attempts"]
    assert (a1["lost_work_seconds"], a1["lost_boot_seconds"]) == (500, 0)
    assert (a2["lost_work_seconds"], a2["lost_boot_seconds"]) == (0, 300)


def test_an_attempt_that_published_no_checkpoint_loses_all_its_work(local_store, clock, prices):
    rec = make_run(local_store, clock)
    preempted_then_resumed(rec, clock, a1={"checkpoint_at": None})

    assert estimate_run_cost(rec, prices, now=1e9)["lost_seconds"] == pytest.approx(2400 + 300)


def test_when_the_next_attempt_restored_nothing_all_the_work_is_redone(local_store, clock, prices):
    rec = make_run(local_store, clock)
    preempted_then_resumed(rec, clock, resumed=())

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["lost_seconds"] == pytest.approx(2400 + 300)
    assert est["attempts"][0]["lost_basis"] == "the next attempt restored no checkpoint"


def test_without_a_checkpoint_time_the_redone_steps_are_timed_at_the_attempts_step_rate(
        local_store, clock, prices):
    rec = make_run(local_store, clock)
    # Attempt 1 went from step 10 to 250 in 2400 s (0.1 step/s); attempt 2 resumed at step 210,
    # so 40 steps (400 s) were done twice.
    preempted_then_resumed(rec, clock)
    write_log(rec, 1, range(10, 251, 10))
    write_log(rec, 2, range(210, 1001, 10))

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["attempts"][0]["lost_work_seconds"] == pytest.approx(400)
    assert est["lost_seconds"] == pytest.approx(400 + 300)
    assert "logs" in est["attempts"][0]["lost_basis"]


def test_progress_recorded_in_the_manifests_wins_over_the_logs(local_store, clock, prices):
    rec = make_run(local_store, clock)
    preempted_then_resumed(
        rec, clock,
        a1={"first_progress": {"step": 0, "time": 500}, "last_progress": {"step": 200, "time": 2500}},
        a2={"first_progress": {"step": 150, "time": 3000}},
    )
    write_log(rec, 1, [1, 2])  # would give a very different rate
    write_log(rec, 2, [2])

    # 0.1 step/s; 50 steps redone: 500 s.
    assert estimate_run_cost(rec, prices, now=1e9)["attempts"][0]["lost_work_seconds"] == pytest.approx(500)


def test_when_the_redone_work_is_unknown_only_the_reboot_counts_and_it_says_so(local_store, clock, prices):
    rec = make_run(local_store, clock)
    preempted_then_resumed(rec, clock)

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["lost_seconds"] == pytest.approx(300)
    assert est["lost_is_lower_bound"] is True
    assert "attempt 1" in est["lost_note"]


def test_a_job_that_errored_and_was_retried_loses_nothing_to_preemptions(local_store, clock, prices):
    rec = make_run(local_store, clock)
    start_attempt(rec, clock, 1, 0, running_at=100)
    end_attempt(rec, clock, 1, 1000, State.ERRORED, checkpoint_at=None)
    start_attempt(rec, clock, 2, 1100, running_at=1400)
    end_attempt(rec, clock, 2, 2000, State.SUCCEEDED)

    est = estimate_run_cost(rec, prices, now=1e9)

    assert est["lost_to_preemptions"] == 0
    assert est["billed_seconds"] == pytest.approx(1000 + 900)


def test_an_attempt_preempted_while_booting_costs_the_next_boot(local_store, clock, prices):
    rec = make_run(local_store, clock)
    clock.at(0)
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    rec.claim_create(1, "supervisor")
    clock.at(200)
    rec.transition(State.PREEMPTED, "supervisor", reason="instance vanished before the job started")
    start_attempt(rec, clock, 2, 300, running_at=450)

    est = estimate_run_cost(rec, prices, now=450 + 100)

    assert est["billed_seconds"] == pytest.approx(200 + 250)
    assert est["lost_seconds"] == pytest.approx(150)


def test_work_lost_before_a_failed_boot_is_judged_by_the_attempt_that_finally_resumed(
        local_store, clock, prices):
    rec = make_run(local_store, clock)
    start_attempt(rec, clock, 1, 0, running_at=100)
    end_attempt(rec, clock, 1, 1000, State.PREEMPTED)
    clock.at(1100)
    rec.transition(State.PROVISIONING, "supervisor", attempt=2)
    rec.claim_create(2, "supervisor")
    clock.at(1200)
    rec.transition(State.PREEMPTED, "supervisor", reason="instance vanished before the job started")
    start_attempt(rec, clock, 3, 1300, running_at=1400, resumed_from=())
    end_attempt(rec, clock, 3, 2000, State.SUCCEEDED)

    est = estimate_run_cost(rec, prices, now=1e9)

    # Attempt 1's 900 s of work, attempt 2 (all boot, 100 s), attempt 3's boot (100 s).
    assert [a["lost_seconds"] for a in est["attempts"]] == pytest.approx([900, 100, 100])
    assert est["lost_is_lower_bound"] is False


# ---------------------------------------------------------------- unknown prices, overrides, local

def test_an_unknown_machine_type_has_no_cost_and_says_which_price_is_missing(local_store, clock, prices):
    rec = make_run(local_store, clock, machine="n1-weird-7")
    start_attempt(rec, clock, 1, 0, running_at=60)

    est = estimate_run_cost(rec, prices, now=HOUR)

    assert est["so_far"] is None and est["hourly"] is None
    assert est["why_unknown"] == "no price for n1-weird-7 in us-central1; add it to price_table"
    assert format_money(est["so_far"]) == "?"


def test_a_missing_gpu_price_makes_the_cost_unknown_not_zero(local_store, clock, prices):
    rec = make_run(local_store, clock, gpu="nvidia-tesla-p4:2", zones=("us-east1-b",))
    start_attempt(rec, clock, 1, 0, running_at=60, zone="us-east1-b")

    est = estimate_run_cost(rec, prices, now=HOUR)

    assert est["so_far"] is None
    assert est["why_unknown"] == "no price for nvidia-tesla-p4 in us-east1; add it to price_table"


def test_the_override_file_wins_and_the_rest_falls_back_to_the_shipped_table(local_store, clock, tmp_path):
    shipped = load_prices(None)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"as_of": "2026-11-01",
                                "regions": {"us-central1": {"machine": {"n1-standard-4": 2.0}}}}))
    mine = load_prices(str(path))
    rec = make_run(local_store, clock)
    start_attempt(rec, clock, 1, 0, running_at=60)
    end_attempt(rec, clock, 1, HOUR, State.SUCCEEDED)

    est = estimate_run_cost(rec, mine, now=HOUR)

    t4 = shipped.gpu_price("us-central1", "nvidia-tesla-t4")
    assert t4 is not None and t4 > 0
    assert est["hourly"] == pytest.approx(2.0 + t4)
    assert est["so_far"] == pytest.approx(2.0 + t4)
    assert est["as_of"] == "2026-11-01"
    assert mine.machine_price("europe-west4", "n1-standard-4") == shipped.machine_price("europe-west4", "n1-standard-4")
    shipped_est = estimate_run_cost(rec, shipped, now=HOUR)
    assert shipped_est["so_far"] != pytest.approx(est["so_far"])


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "not valid JSON"),
    (json.dumps({"regions": {"us-central1": {"machine": {"n1-standard-4": "cheap"}}}}), "n1-standard-4"),
    (json.dumps({"regions": {"us-central1": {"disks": {}}}}), "disks"),
])
def test_a_broken_override_file_is_refused_with_the_reason(tmp_path, content, complaint):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PriceTableError, match=complaint):
        load_prices(str(path))
    with pytest.raises(PriceTableError, match="no-such"):
        load_prices(str(tmp_path / "no-such.json"))


def test_a_local_run_costs_nothing(local_store, clock, prices):
    rec = make_run(local_store, clock, backend="local", machine=None, gpu=None, zones=())
    start_attempt(rec, clock, 1, 0, running_at=5, zone="local")
    end_attempt(rec, clock, 1, HOUR, State.SUCCEEDED)

    est = estimate_run_cost(rec, prices, now=2 * HOUR)

    assert (est["so_far"], est["hourly"], est["lost_to_preemptions"]) == (0, 0, 0)
    assert est["note"] == "local: no cloud charge"
    assert est["why_unknown"] is None
    assert est["billed_seconds"] == pytest.approx(HOUR)


# ---------------------------------------------------------------- the shipped table, helpers

MACHINES = ["n1-standard-4", "n1-standard-8", "n1-standard-16", "e2-standard-2", "e2-standard-4",
            "e2-standard-8", "c2-standard-4", "c2-standard-8", "n2-standard-4", "n2-standard-8",
            *(f"g2-standard-{n}" for n in (4, 8, 12, 16, 24, 48)),
            *(f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)), "a2-ultragpu-1g", "a3-highgpu-8g"]
GPUS = ["nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-v100", "nvidia-tesla-a100", "nvidia-a100-80gb",
        "nvidia-h100-80gb", "nvidia-tesla-p4", "nvidia-tesla-p100"]
REGIONS = ["us-central1", "us-east1", "us-west1", "europe-west4", "asia-southeast1"]


def test_the_shipped_table_is_dated_and_covers_the_common_ml_shapes_in_us_central1():
    t = load_prices(None)
    assert t.as_of == "2026-11-25" and t.currency == "USD"
    assert "approximation" in t.note.lower() and "price_table" in t.note
    assert set(REGIONS) <= set(t.regions)
    for m in MACHINES:
        assert t.machine_price("us-central1", m) > 0, m
    for g in GPUS:
        assert t.gpu_price("us-central1", g) > 0, g
    for r in REGIONS:
        assert t.machine_price(r, "n1-standard-4") and t.gpu_price(r, "nvidia-tesla-t4"), r
    # More GPUs, more money.
    assert t.machine_price("us-central1", "a2-highgpu-8g") > t.machine_price("us-central1", "a2-highgpu-1g")


def test_zone_to_region_and_money_formatting():
    assert region_of("us-central1-a") == "us-central1"
    assert region_of("europe-west4-b") == "europe-west4"
    assert format_money(1.234) == "$1.23"
    assert format_money(0) == "$0.00"
    assert format_money(1234.5) == "$1,234.50"
    assert format_money(0.004) == "$0.004"
    assert format_money(None) == "?"
