"""``ops list`` over many runs on GCS: what it asks the store (listings, not a read per run), and,
for runs it must read, how many requests it keeps in flight (issue 22 §3, "hundreds of runs in
one store").

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
from runner.ops.runs import LIST_WORKERS, list_runs, run_row
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


def _as_older_versions_wrote(store, run_ids) -> None:  # type: ignore[no-untyped-def]
    """Rewrite each run's state and heartbeat with the same bytes by a plain ``write``, as
    versions before ``write_listed`` left them: a listing does not carry their content."""
    for run_id in run_ids:
        rec = RunRecord(store, run_id)
        for rel in (rec.STATE, rec.HEARTBEAT):
            blob = store.read(rec.name(rel))
            if blob is not None:
                store.write(rec.name(rel), blob.data)


def _listings_and_reads(proxy, reads_of: str = ""):  # type: ignore[no-untyped-def]
    """The object listings among the requests ``proxy`` saw, and the reads, by run (of objects
    whose name matches ``reads_of``, a regex over the URL-encoded name: any, by default)."""
    sent = object_requests(proxy.stats.seen)
    listings = [r for r in sent if re.match(r"GET /storage/v1/b/[^/]+/o\?", r)]
    per_run: dict[str, list[str]] = {}
    for r in sent:
        if r in listings or not re.search(reads_of, r):
            continue
        m = re.search(r"/o/[^?]*runs%2F([^%]+)%2F([^?]+)\?alt=media", r)
        assert m, f"not a read of one run's object: {r}"
        per_run.setdefault(m.group(1), []).append(m.group(2))
    return listings, per_run


def test_list_runs_reads_every_runs_state_and_heartbeat_from_one_listing(faulty_gcs_store, fault_proxy):
    kinds = _populate(faulty_gcs_store, 30)
    expected = [run_row(faulty_gcs_store, r) for r in sorted(kinds)]  # each run read, as before
    fault_proxy.stats.seen.clear()

    rows = list_runs(faulty_gcs_store)

    listings, reads = _listings_and_reads(fault_proxy)
    # One request for the 30 runs (a page holds 1,000 objects): before, 2 reads per run, 60 in all.
    assert len(listings) == 1 and reads == {}
    assert [strip_ages(r) for r in rows] == [strip_ages(r) for r in expected]
    assert {r["run_id"]: r["state"] for r in rows} == {
        r: {"pending": "PENDING", "running": "RUNNING", "finished": "SUCCEEDED"}[k] for r, k in kinds.items()}


def test_runs_written_by_older_versions_are_read_as_before_and_show_the_same(faulty_gcs_store, fault_proxy):
    kinds = _populate(faulty_gcs_store, 12)
    older = sorted(kinds)[::3]
    _as_older_versions_wrote(faulty_gcs_store, older)
    expected = [run_row(faulty_gcs_store, r) for r in sorted(kinds)]
    fault_proxy.stats.seen.clear()

    rows = list_runs(faulty_gcs_store)

    listings, reads = _listings_and_reads(fault_proxy)
    assert len(listings) == 1
    # Only the older runs are read: state and heartbeat (a pending one has no heartbeat: 404).
    assert reads == {r: ["state.json", "heartbeat.json"] for r in older}
    assert [strip_ages(r) for r in rows] == [strip_ages(r) for r in expected]


def test_a_torn_state_in_the_listing_is_a_damaged_row_not_a_failed_listing(faulty_gcs_store):
    kinds = _populate(faulty_gcs_store, 4)
    torn = sorted(kinds)[1]
    faulty_gcs_store.write_listed(RunRecord(faulty_gcs_store, torn).name("state.json"), b'{"state": "RUNN')

    rows = {r["run_id"]: r for r in list_runs(faulty_gcs_store)}

    assert set(rows) == set(kinds)
    assert "state.json" in rows[torn]["error"] and "state" not in rows[torn]
    assert all("error" not in r for k, r in rows.items() if k != torn)


def strip_ages(row: dict) -> dict:  # type: ignore[type-arg]
    """A row without what moves with the clock between two reads."""
    return {k: v for k, v in row.items() if not k.endswith("_age_s")}


def test_list_runs_keeps_its_workers_in_flight_on_connections_it_reuses(faulty_gcs_store, fault_proxy):
    kinds = _populate(faulty_gcs_store, 2 * LIST_WORKERS)
    _as_older_versions_wrote(faulty_gcs_store, kinds)  # so that list_runs must read them
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



def test_with_no_supervisor_only_live_runs_with_a_supervisor_of_their_own_are_read(faulty_gcs_store, fault_proxy):
    from runner.launch.supervisor_heartbeat import SupervisorPass, unwatched, write_pass

    kinds = _populate(faulty_gcs_store, 40)
    live = [r for r, k in kinds.items() if k != "finished"]
    now = time.time()
    attached = live[:2]  # an attached submit follows each of these two (the first alive, the second long gone)
    for run_id, ago in zip(attached, (1.0, 3600.0)):
        write_pass(faulty_gcs_store, SupervisorPass(actor="submit@laptop", where="host laptop",
                                                    started_at=now - ago - 0.2, finished_at=now - ago, every=60.0,
                                                    runs_seen=1, run_id=run_id))
    fault_proxy.stats.seen.clear()

    overall, ids = unwatched(faulty_gcs_store, live)

    assert not overall.alive and ids == live[1:]  # nobody supervises the store; the first run has its own
    listings, reads = _listings_and_reads(fault_proxy, reads_of=r"runs%2F[^%]+%2Fsupervisor%2Fheartbeat\.json")
    # The store's heartbeat, one listing of the runs' own, and a read of each that exists: a read
    # per live run (100 of 1,000 at 20-50 ms) added seconds to `ops list` with nobody supervising.
    assert len(listings) == 1 and sorted(reads) == sorted(attached)
