"""The queue in the supervisor's passes (runner/launch/queue_pass.py, supervisor ``_admitted``):
runs that do not fit the quota are QUEUED with their place and reason, begin in order as the
quota frees up, and no create is sent that the quota must refuse.

Worlds: the in-memory backend with a GPU quota on the test's clock; and the Compute stand-in,
through the real client library, for the calls a pass makes.
"""

from __future__ import annotations

import json

from entrypoint.record import RunRecord, State
from runner.launch.queue_pass import QUEUE_DOC, read_queue
from tests.standins.memory_backend import Clock  # noqa: F401 - (the world's clock type)


def states(w, *run_ids: str) -> list[str]:
    return [w.state(RunRecord(w.store, r)).state.value for r in run_ids]


def test_runs_over_the_quota_queue_in_order_and_begin_as_it_frees_up(supervised):
    w = supervised
    w.backend.gpu_quota = 2
    recs = [w.submit(f"q-{i}") for i in range(5)]
    sup = w.supervisor()
    sup.reconcile_all()
    ids = [r.run_id for r in recs]
    assert states(w, *ids) == ["PROVISIONING"] * 2 + ["QUEUED"] * 3
    assert w.state(recs[2]).reason == "waiting for 1 × GPUS in memory: 2 of 2 in use"
    queue = read_queue(w.store)
    assert [(r, queue[r]["position"]) for r in ids[2:]] == [("q-2", 1), ("q-3", 2), ("q-4", 3)]
    assert w.backend.quota_refusals == 0 and len(w.backend.creates()) == 2

    reads = w.backend.quota_reads
    sup.reconcile_all()  # nothing freed: nobody begins, nothing is rewritten
    assert states(w, *ids) == ["PROVISIONING"] * 2 + ["QUEUED"] * 3
    assert w.backend.quota_reads == reads + 1  # one quota read per pass, whatever the queue's length

    w.agent_running(recs[0])
    recs[0].transition(State.SUCCEEDED, "agent", expect_attempt=1)
    w.backend.end("runner-q-0-a1", exit_code=0)
    sup.reconcile_all()  # the finished run's VM is removed: its GPU is free at the next read
    w.settle()
    sup.reconcile_all()
    assert states(w, *ids) == ["SUCCEEDED", "PROVISIONING", "PROVISIONING", "QUEUED", "QUEUED"]
    st = w.state(recs[2])
    assert st.attempt == 1 and st.restarts == 0
    assert "first attempt (admitted from the queue after" in w.reasons(recs[2], "PROVISIONING")[-1]
    assert [read_queue(w.store)[r]["position"] for r in ("q-3", "q-4")] == [1, 2]
    assert w.backend.quota_refusals == 0


def test_a_preempted_run_waits_in_the_queue_then_restarts_counting_one_restart(supervised):
    w = supervised
    w.backend.gpu_quota = 1
    rec, sup = w.running()
    other = w.submit("other")
    sup.reconcile_all()
    assert states(w, "other") == ["QUEUED"]
    w.backend.preempt(w.backend.list("exp-1")[0], 0)
    w.backend.finish_notice("runner-exp-1-a1")
    w.agent_preempted(rec)
    sup.reconcile_all()  # exp-1's GPU is free: "other" came first, so it begins; exp-1 queues
    assert states(w, "exp-1", "other") == ["QUEUED", "PROVISIONING"]
    st = w.state(rec)
    assert (st.queued_after, st.restarts, st.attempt) == ("PREEMPTED", 0, 1)
    w.agent_running(other)
    other.transition(State.SUCCEEDED, "agent", expect_attempt=1)
    w.backend.end("runner-other-a1", exit_code=0)
    sup.reconcile_all()
    w.settle()
    sup.reconcile_all()
    st = w.state(rec)
    assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 2, 1)
    assert w.reasons(rec, "PROVISIONING")[-1].startswith("restart after preempted")
    assert w.backend.quota_refusals == 0


def test_a_queued_run_that_is_stopped_ends_stopped_without_a_vm(supervised):
    w = supervised
    w.backend.gpu_quota = 1
    w.running()
    rec = w.submit("waiting")
    sup = w.supervisor()
    sup.reconcile_all()
    assert states(w, "waiting") == ["QUEUED"]
    rec.request_stop("user")
    sup.reconcile_all()
    assert states(w, "waiting") == ["STOPPED"] and "runner-waiting-a1" not in w.backend.instances()
    assert "waiting" not in read_queue(w.store)


def test_a_run_no_quota_can_ever_hold_fails_at_once_with_the_fix(supervised):
    w = supervised
    w.backend.gpu_quota = 4
    rec = w.submit("huge", vm={"gpus": 8})
    w.supervisor().reconcile_all()
    st = w.state(rec)
    assert st.state == State.FAILED and "one attempt needs 8 × GPUS (memory) but the limit is 4" in st.reason
    assert w.backend.creates() == []


def test_a_sweeps_max_concurrent_caps_its_runs_holding_vms(supervised):
    w = supervised
    recs = [w.submit(f"sw-{i}", sweep="sw", max_concurrent=2) for i in range(4)]
    sup = w.supervisor()
    sup.reconcile_all()
    assert states(w, *[r.run_id for r in recs]) == ["PROVISIONING", "PROVISIONING", "QUEUED", "QUEUED"]
    assert w.state(recs[2]).reason == "sweep sw: 2 of --max-concurrent 2 runs hold VMs"
    doc = json.loads(w.store.read(QUEUE_DOC).data)
    assert [r["run_id"] for r in doc["runs"]] == ["sw-2", "sw-3"]


def test_a_higher_priority_run_submitted_later_begins_first(supervised):
    w = supervised
    w.backend.gpu_quota = 1
    w.running()
    w.submit("low")
    w.clock.advance(1)
    w.submit("high", priority=10)
    sup = w.supervisor()
    sup.reconcile_all()
    assert read_queue(w.store)["high"]["position"] == 1 and read_queue(w.store)["low"]["position"] == 2


def test_ops_list_and_status_show_a_queued_runs_place_and_reason(supervised, monkeypatch):
    from tests.test_ops_recovery import ops

    w = supervised
    w.backend.gpu_quota = 1
    w.running()
    w.submit("second")
    w.submit("third")
    w.supervisor().reconcile_all()
    listing = ops(w.store, monkeypatch, "list")
    (line,) = [ln for ln in listing.splitlines() if ln.startswith("third")]
    assert "QUEUED #2" in line and line.endswith("waiting for 1 × GPUS in memory: 1 of 1 in use")
    status = ops(w.store, monkeypatch, "status", "--run-id", "second")
    assert "queue      #1: waiting for 1 × GPUS in memory: 1 of 1 in use" in status.splitlines()
    doc = json.loads(ops(w.store, monkeypatch, "list", "--json"))
    assert {r["run_id"]: (r.get("queue") or {}).get("position") for r in doc} == {"exp-1": None, "second": 1, "third": 2}
