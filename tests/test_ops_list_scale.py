"""``ops list`` over many runs on GCS: what it asks the store, and how many requests it keeps in
flight (issue 22 §3, "hundreds of runs in one store").

Counted at the fault proxy in front of the emulator (tests/standins/gcs_fault_proxy.py), which
sees every request the product's own storage client sends. Nothing here is timed: the timings
are ``python -m bench store_scale``'s; these catch a regression in what produces them (a read
more per run, reads one after another, a connection per request).
"""

from __future__ import annotations

import re
import time

from entrypoint.record import Heartbeat, RunRecord, RunSpec, State
from entrypoint.store_gcs import CONNECTION_POOL_SIZE
from runner.ops.runs import LIST_WORKERS, list_runs
from tests.standins.gcs_fault_proxy import object_requests

IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "d" * 64


def _populate(store, n: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """``n`` runs: most finished, some running, some never placed; returns run id -> its kind."""
    kinds = {}
    for i in range(n):
        rec = RunRecord(store, f"run-{i:03d}")
        rec.write_spec(RunSpec(run_id=rec.run_id, image=IMAGE, command=["true"], backend="local"))
        rec.create_state("user@test")
        kinds[rec.run_id] = "pending" if i % 10 == 0 else "running" if i % 10 == 5 else "finished"
        if kinds[rec.run_id] == "pending":
            continue
        rec.transition(State.PROVISIONING, "sup", attempt=1, instance=f"vm-{i}")
        rec.transition(State.RUNNING, "agent")
        rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="running",
                                      progress={"step": i, "total": 100}, rate=1.0))
        if kinds[rec.run_id] == "finished":
            rec.transition(State.SUCCEEDED, "agent", exit_code=0)
    return kinds


def test_list_runs_lists_once_and_reads_only_state_and_heartbeat_of_each_run(faulty_gcs_store, fault_proxy):
    kinds = _populate(faulty_gcs_store, 30)
    fault_proxy.stats.seen.clear()

    rows = list_runs(faulty_gcs_store)

    assert [r["run_id"] for r in rows] == sorted(kinds)
    assert {r["run_id"]: r["state"] for r in rows} == {
        r: {"pending": "PENDING", "running": "RUNNING", "finished": "SUCCEEDED"}[k] for r, k in kinds.items()}
    sent = object_requests(fault_proxy.stats.seen)
    listings = [r for r in sent if re.match(r"GET /storage/v1/b/[^/]+/o\?", r)]
    reads = [r for r in sent if r not in listings]
    assert len(listings) == 1  # one delimiter listing names every run
    per_run: dict[str, list[str]] = {}
    for r in reads:
        m = re.search(r"/o/[^?]*runs%2F([^%]+)%2F([^?]+)\?alt=media", r)
        assert m, f"not a read of one run's object: {r}"
        per_run.setdefault(m.group(1), []).append(m.group(2))
    # Two reads per run, whatever its state: a third (the spec, the journal) would cost 20-50 ms
    # more per run on GCS, a minute more for 1,000 runs read 32 at a time.
    assert per_run == {r: ["state.json", "heartbeat.json"] for r in kinds}


def test_list_runs_keeps_its_workers_in_flight_on_connections_it_reuses(faulty_gcs_store, fault_proxy):
    _populate(faulty_gcs_store, 2 * LIST_WORKERS)
    # Every request held long enough that the workers' requests overlap, as round trips to GCS
    # (tens of milliseconds) do; reads one after another would never be in flight together.
    fault_proxy.latency = 0.2
    before = fault_proxy.stats.connections
    fault_proxy.stats.max_in_flight = 0

    rows = list_runs(faulty_gcs_store)

    assert len(rows) == 2 * LIST_WORKERS
    # Eight at a time (the code before) would make 1,000 runs over 20 ms at least 5 s.
    assert fault_proxy.stats.max_in_flight >= LIST_WORKERS // 2
    # The client keeps a connection per worker: with requests' default pool (10) every request
    # beyond it opened a connection of its own and threw it away ("Connection pool is full").
    assert LIST_WORKERS <= CONNECTION_POOL_SIZE
    assert fault_proxy.stats.connections - before <= CONNECTION_POOL_SIZE



def test_with_no_supervisor_the_live_runs_own_supervisors_are_looked_up_side_by_side(faulty_gcs_store, fault_proxy):
    from runner.launch.supervisor_heartbeat import unwatched

    kinds = _populate(faulty_gcs_store, 40)
    live = [r for r, k in kinds.items() if k != "finished"]
    fault_proxy.latency = 0.2
    fault_proxy.stats.max_in_flight = 0

    overall, ids = unwatched(faulty_gcs_store, live)

    assert not overall.alive and ids == live  # nobody ever supervised: every live run is unwatched
    # One read per live run (its own supervisor's heartbeat), several at once: read one after
    # another, 100 live runs at 20-50 ms a read would add seconds to every `ops list`.
    assert fault_proxy.stats.max_in_flight >= 4
