"""The stall watchdog's sightings (runner/launch/observed.py): one per clock, judged only by that
clock; stale sightings of other clocks dropped; a write that loses a race is not made and raises
nothing; a clock is a host (or the hosted job), not a process, unless ``RUNNER_CLOCK_ID`` says."""

from __future__ import annotations

import json

from entrypoint.record import Heartbeat, RunState, State
from runner.launch.observed import Looked, Observations, clock_id, look

RUN = "exp-1"


def _running(attempt: int = 1) -> RunState:
    return RunState(State.RUNNING, attempt=attempt)


def _raw(store) -> dict:
    blob = store.read(f"runs/{RUN}/supervisor/observed.json")
    return json.loads(blob.data)["sightings"] if blob else {}


def test_each_clock_judges_by_its_own_sighting_only(local_store):
    step5 = Looked("attempt 1: progress {\"step\": 5}")
    Observations.read(local_store, RUN).idle("ahead", "sup-a", step5, now=10_300.0, rewrite_after=15)
    # The other clock, 10 minutes behind, first sees the same progress: its own sighting, not "-600 s".
    assert Observations.read(local_store, RUN).idle("behind", "sup-b", step5, now=9_700.0, rewrite_after=15) == 0
    assert Observations.read(local_store, RUN).idle("ahead", "sup-a", step5, now=10_340.0, rewrite_after=15) == 40
    assert Observations.read(local_store, RUN).idle("behind", "sup-b", step5, now=9_760.0, rewrite_after=15) == 60
    assert set(_raw(local_store)) == {"ahead", "behind"}


def test_a_new_sighting_drops_other_clocks_sightings_of_older_progress(local_store):
    for clock, now in (("a", 100.0), ("b", 200.0)):
        Observations.read(local_store, RUN).idle(clock, clock, Looked("attempt 1: progress 1"), now, 15)
    Observations.read(local_store, RUN).idle("a", "a", Looked("attempt 1: progress 2"), 130.0, 15)
    assert _raw(local_store) == {"a": {"seen": "attempt 1: progress 2", "since": 130.0, "actor": "a"}}


def test_the_agents_own_account_counts_from_the_first_look(local_store):
    hb = Heartbeat(time=1_000.0, attempt=1, phase="training", progress={"step": 7}, progress_changed_at=900.0)
    seen = look(_running(), hb)
    assert seen.already == 100 and not seen.booting
    assert Observations.read(local_store, RUN).idle("c", "c", seen, now=5.0, rewrite_after=15) == 100
    assert Observations.read(local_store, RUN).idle("c", "c", seen, now=25.0, rewrite_after=15) == 120


def test_an_attempt_without_its_own_heartbeat_is_still_booting():
    older = Heartbeat(time=1.0, attempt=1, phase="training", progress={"step": 9}, progress_changed_at=1.0)
    assert look(_running(attempt=2), older).booting
    assert look(RunState(State.PROVISIONING, attempt=2), None) == look(_running(attempt=2), None)


def test_a_write_that_loses_a_race_is_not_made_and_raises_nothing(local_store):
    mine = Observations.read(local_store, RUN)
    Observations.read(local_store, RUN).idle("other", "o", Looked("attempt 1: booting", booting=True), 50.0, 15)
    assert mine.idle("me", "m", Looked("attempt 1: booting", booting=True), 60.0, 15) == 0
    assert set(_raw(local_store)) == {"other"}  # the next pass records it, on fresh state


def test_a_clock_set_back_records_afresh_instead_of_trusting_a_sighting_from_its_future(local_store):
    seen = Looked("attempt 1: progress 3")
    Observations.read(local_store, RUN).idle("c", "c", seen, now=1_000.0, rewrite_after=15)
    assert Observations.read(local_store, RUN).idle("c", "c", seen, now=400.0, rewrite_after=15) == 0
    assert Observations.read(local_store, RUN).idle("c", "c", seen, now=430.0, rewrite_after=15) == 30


def test_a_clock_is_the_host_or_the_hosted_job_unless_named():
    assert clock_id({"RUNNER_CLOCK_ID": "lab-7"}) == "lab-7"
    assert clock_id({"CLOUD_RUN_JOB": "runner-supervisor", "CLOUD_RUN_EXECUTION": "x-1"}) == "cloud-run:runner-supervisor"
    assert clock_id({}).startswith("host:")
