"""The queue's rules (runner/launch/admission.py), on their own: order, backfill, holding against
starvation, sweep caps, a run that can never fit, and pools shared between metric names."""

from __future__ import annotations

from runner.launch.admission import Pool, Quotas, Waiting, decide

GPU = "r1/GPUS"
NOW = 10_000.0


def quotas(limit: float, used: float = 0.0) -> Quotas:
    return Quotas({GPU: Pool(GPU, limit, used)})


def run(run_id: str, gpus: float = 1, *, since: float = NOW - 10, priority: int = 0,
        sweep: str | None = None, cap: int | None = None) -> Waiting:
    return Waiting(run_id, priority, since, ({GPU: gpus},), sweep, cap)


def admitted(decisions) -> list[str]:
    return sorted(r for r, d in decisions.items() if d.admitted)


def test_priority_first_then_first_come_and_the_rest_wait_with_place_and_reason():
    d = decide([run("late", since=NOW - 1), run("early", since=NOW - 9), run("urgent", since=NOW, priority=5)],
               quotas(2), {}, NOW)
    assert admitted(d) == ["early", "urgent"]
    assert (d["late"].position, d["late"].reason) == (1, "waiting for 1 × GPUS in r1: 2 of 2 in use")


def test_a_large_run_that_does_not_fit_lets_small_ones_behind_it_start():
    d = decide([run("big", 4, since=NOW - 20), run("small", 1, since=NOW - 10)], quotas(4, used=2), {}, NOW)
    assert admitted(d) == ["small"] and d["big"].position == 1 and not d["big"].holds


def test_after_hold_after_a_waiting_run_holds_what_frees_up_so_it_cannot_starve():
    d = decide([run("big", 4, since=NOW - 3600), run("small", 1, since=NOW - 10)], quotas(4, used=2), {}, NOW,
               hold_after=1800)
    assert admitted(d) == [] and d["big"].holds
    assert d["small"].position == 2  # behind the holder: the two free GPUs are kept for it


def test_a_sweep_never_holds_more_vms_than_its_cap():
    ws = [run(f"s-{i}", since=NOW - 10 + i, sweep="s", cap=2) for i in range(4)] + [run("other", since=NOW)]
    d = decide(ws, quotas(8), {"s": 1}, NOW)
    assert admitted(d) == ["other", "s-0"]
    assert d["s-1"].reason == "sweep s: 2 of --max-concurrent 2 runs hold VMs"


def test_a_run_larger_than_a_whole_quota_is_told_it_can_never_begin_and_holds_nothing():
    d = decide([run("huge", 16, since=NOW - 7200), run("small")], quotas(8), {}, NOW, hold_after=1800)
    assert d["huge"].never and d["huge"].too_small == ((GPU, 16.0, 8.0),)
    assert "one attempt needs 16 × GPUS (r1) but the limit is 8" in d["huge"].reason
    assert admitted(d) == ["small"]  # it would otherwise hold the quota for ever


def test_unread_quotas_let_every_run_begin_within_its_sweep_cap():
    d = decide([run("a"), run("b", sweep="s", cap=0)], None, {}, NOW)
    assert admitted(d) == ["a"] and not d["b"].admitted


def test_a_spot_metric_without_preemptible_quota_shares_the_standard_pool():
    shared = Pool("r1/CPUS", 8, 0)
    q = Quotas({"r1/CPUS": shared, "r1/PREEMPTIBLE_CPUS": shared})
    d = decide([Waiting("spot", 0, 1.0, ({"r1/PREEMPTIBLE_CPUS": 6},)),
                Waiting("std", 0, 2.0, ({"r1/CPUS": 4},))], q, {}, NOW)
    assert admitted(d) == ["spot"] and d["std"].reason == "waiting for 4 × CPUS in r1: 6 of 8 in use"


def test_a_run_with_two_regions_begins_in_the_second_when_the_first_is_full():
    q = Quotas({"r1/GPUS": Pool("r1/GPUS", 1, 1), "r2/GPUS": Pool("r2/GPUS", 1, 0)})
    d = decide([Waiting("a", 0, 1.0, ({"r1/GPUS": 1}, {"r2/GPUS": 1})),
                Waiting("b", 0, 2.0, ({"r1/GPUS": 1}, {"r2/GPUS": 1}))], q, {}, NOW)
    assert admitted(d) == ["a"] and d["b"].position == 1
