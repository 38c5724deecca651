"""``ops status`` and ``ops events`` show each attempt's recovery, from phase marks written with
``RunRecord.mark_phase`` into a local store (text and ``--json``).

The CLI runs in-process on that store; its compute backend is a stand-in with no instances, so
these tests need no Docker and no Compute fake: what they check is the store's record and what
``ops`` prints from it.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import entrypoint.record.run as record_mod  # where the record reads its clock
from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.record.phases import (
    CHECKPOINT_RESTORED, DRIVER_READY, FIRST_STEP, IMAGE_READY, NOTICED, REPLACEMENT_REQUESTED,
    STARTUP_SCRIPT, VM_RUNNING,
)
from entrypoint.store_local import LocalStore
from runner.ops.runs import run_events, run_status

# Real times (a few minutes ago), so that "in progress, N so far" and "--since" read naturally.
T0 = float(int(time.time()) - 900)

START_LINE = ("start 2m50s: create 30s · boot 10s · driver 1m00s · pull 1m00s · restore 1s · first step 9s")
RECOVERY_LINE = ("recovery 1m14s: detect 4s · create 32s · boot 9s · driver 0s (warm) · pull 0s (warm) · "
                 "restore 0s (overlapped) · first step 28s")


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(record_mod, "utcnow", c)
    return c


class NoInstances:
    """A compute backend with nothing in it (this test is about the store's record)."""

    has_startup_console = False

    def list(self, run_id: str | None = None) -> list[Any]:
        return []

    def provider_events(self, names: list[str], zones: list[str]) -> list[dict[str, Any]]:
        return []


def new_run(store: LocalStore, clock: Clock, run_id: str = "r1") -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:abc", command=["train"], backend="gce",
                           machine_type="n1-standard-4", gpu="nvidia-tesla-t4", zones=["us-central1-a"]))
    clock.t = T0
    rec.create_state("submit")
    return rec


def first_attempt(rec: RunRecord, clock: Clock) -> None:
    """A cold start at T0: a driver install and a pull of a minute each, a first step at T0+170."""
    t = T0
    rec.mark_phase(1, REPLACEMENT_REQUESTED, "supervisor", at=t)
    clock.t = t
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    rec.mark_phase(1, VM_RUNNING, "supervisor", at=t + 30)
    rec.mark_phase(1, STARTUP_SCRIPT, "startup", at=t + 40)
    rec.mark_phase(1, DRIVER_READY, "startup", at=t + 100, path="cold")
    rec.mark_phase(1, IMAGE_READY, "startup", at=t + 160, path="cold")
    rec.mark_phase(1, CHECKPOINT_RESTORED, "agent", at=t + 161, files=0, bytes=0)
    clock.t = t + 162
    rec.transition(State.RUNNING, "agent", expect_attempt=1, zone="us-central1-a")
    rec.mark_phase(1, FIRST_STEP, "agent", at=t + 170, step=1)


def preempted_at(rec: RunRecord, clock: Clock, t: float) -> None:
    clock.t = t
    rec.transition(State.PREEMPTED, "agent", expect_attempt=1)


def second_attempt(rec: RunRecord, clock: Clock, lost: float, *, upto: str = FIRST_STEP) -> None:
    """Lost at ``lost``, noticed 4 s later, a warm boot whose restore ran beside the (instant) pull."""
    steps = [
        (NOTICED, "supervisor", lost + 4, {"lost_at": lost}),
        (REPLACEMENT_REQUESTED, "supervisor", lost + 5, {}),
        (VM_RUNNING, "supervisor", lost + 36, {}),
        (STARTUP_SCRIPT, "startup", lost + 45, {}),
        (DRIVER_READY, "startup", lost + 45.5, {"path": "warm"}),
        (IMAGE_READY, "startup", lost + 46, {"path": "warm"}),
        (CHECKPOINT_RESTORED, "agent", lost + 45.8, {"files": 1, "bytes": 2048, "streams": 4}),
        (FIRST_STEP, "agent", lost + 74, {"step": 501}),
    ]
    clock.t = lost + 5
    rec.transition(State.PROVISIONING, "supervisor", attempt=2)
    for phase, actor, t, detail in steps:
        rec.mark_phase(2, phase, actor, at=t, **detail)
        if phase == CHECKPOINT_RESTORED:
            clock.t = t + 1
            rec.transition(State.RUNNING, "agent", expect_attempt=2, zone="us-central1-a")
        if phase == upto:
            break


@pytest.fixture
def recovered(local_store, clock) -> RunRecord:
    """r1: a cold start, preempted at T0+400, back at its first step 74 s later (warm)."""
    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    preempted_at(rec, clock, T0 + 400)
    second_attempt(rec, clock, T0 + 400)
    return rec


def ops(store: LocalStore, monkeypatch, *args: str) -> str:
    """``runner ops ARGS`` in-process on ``store``; its stdout (exit 0 asserted)."""
    import runner.cli.cmd_ops as cmd_ops
    from runner.cli.main import main

    ctx = SimpleNamespace(store=store, backend=NoInstances(), cfg=SimpleNamespace(price_table=None))
    monkeypatch.setattr(cmd_ops, "load", lambda *a, **kw: ctx)
    res = CliRunner().invoke(main, ["ops", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout


# ---------------------------------------------------------------- ops status

def test_ops_status_shows_how_the_current_attempt_got_running(recovered, local_store, monkeypatch):
    out = ops(local_store, monkeypatch, "status", "--run-id", "r1")
    assert RECOVERY_LINE in out.splitlines(), out
    assert "start " not in out  # only the current attempt: the older ones are for `ops events`


def test_ops_status_json_carries_the_recovery_numbers(recovered, local_store, monkeypatch):
    s = json.loads(ops(local_store, monkeypatch, "status", "--run-id", "r1", "--json"))
    r = s["recovery"]
    assert r["attempt"] == 2 and r["kind"] == "recovery" and r["complete"] is True
    assert r["total_s"] == 74.0 and r["lost_at"] == T0 + 400 and r["first_step_at"] == T0 + 474
    assert r["segments_s"] == {"detect": 4.0, "create": 32.0, "boot": 9.0, "driver": 0.5, "pull": 0.5,
                               "restore": 0.0, "first_step": 28.0}
    assert r["warm_driver"] is True and r["warm_image"] is True and r["restore_overlapped"] is True
    assert r["restore"] == {"files": 1, "bytes": 2048, "streams": 4}
    assert r["text"] == RECOVERY_LINE


def test_ops_status_of_a_recovery_in_progress_says_so_with_nulls_for_what_is_not_known(
        local_store, clock, monkeypatch):
    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    lost = time.time() - 60
    preempted_at(rec, clock, lost)
    second_attempt(rec, clock, lost, upto=VM_RUNNING)
    s = run_status(local_store, "r1", NoInstances())  # type: ignore[arg-type]
    r = s["recovery"]
    assert r["complete"] is False and r["total_s"] is None
    assert r["segments_s"]["create"] == 32.0 and r["segments_s"]["boot"] is None
    assert r["text"].startswith("recovery (in progress, 1m0") and r["text"].endswith(
        "so far): detect 4s · create 32s · boot ?"), r["text"]
    out = ops(local_store, monkeypatch, "status", "--run-id", "r1")
    assert any(ln.startswith("recovery (in progress") for ln in out.splitlines()), out


def test_ops_status_of_attempt_one_shows_its_start(local_store, clock, monkeypatch):
    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    out = ops(local_store, monkeypatch, "status", "--run-id", "r1")
    assert START_LINE in out.splitlines(), out
    s = json.loads(ops(local_store, monkeypatch, "status", "--run-id", "r1", "--json"))
    assert s["recovery"]["kind"] == "start" and "detect" not in s["recovery"]["segments_s"]
    assert s["recovery"]["warm_driver"] is False and s["recovery"]["driver_path"] == "cold"


def test_a_run_without_phase_marks_shows_no_recovery(local_store, clock, monkeypatch):
    rec = new_run(local_store, clock)
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    s = json.loads(ops(local_store, monkeypatch, "status", "--run-id", "r1", "--json"))
    assert s["recovery"] is None
    out = ops(local_store, monkeypatch, "status", "--run-id", "r1")
    assert not any(ln.startswith(("recovery", "start")) for ln in out.splitlines()), out


class ReadLog(LocalStore):
    """The local store, noting every object read or looked up and every prefix listed."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.touched: list[str] = []

    def read(self, name: str, *a: Any, **kw: Any) -> Any:
        self.touched.append(name)
        return super().read(name, *a, **kw)

    def list(self, prefix: str, *a: Any, **kw: Any) -> Any:
        self.touched.append(prefix)
        return super().list(prefix, *a, **kw)

    def stat(self, name: str, *a: Any, **kw: Any) -> Any:  # what ``exists`` asks, too
        self.touched.append(name)
        return super().stat(name, *a, **kw)


def test_ops_status_reads_the_current_attempts_marks_from_one_listing_and_no_older_attempt(
        recovered, local_store):
    spy = ReadLog(local_store.root)
    s = run_status(spy, "r1", NoInstances())  # type: ignore[arg-type]
    assert s["recovery"]["attempt"] == 2
    assert not [n for n in spy.touched if "attempts/1/" in n], spy.touched
    mine = [n for n in spy.touched if "attempts/2/" in n]
    # One listing of the attempt's folder serves the marks and startup.json (absent: not read).
    assert mine.count("runs/r1/attempts/2/") == 1 and len(mine) == 1 + 8, mine
    assert s["startup_phase"] is None


def test_the_same_listing_finds_startup_json_when_the_vm_wrote_one(recovered, local_store):
    local_store.write(recovered.name(RunRecord.startup_name(2)), json.dumps({"phase": "container-running"}).encode())
    spy = ReadLog(local_store.root)
    s = run_status(spy, "r1", NoInstances())  # type: ignore[arg-type]
    assert s["startup_phase"] == "container-running" and s["recovery"]["complete"] is True
    assert len([n for n in spy.touched if "attempts/2/" in n]) == 1 + 1 + 8


# ---------------------------------------------------------------- ops events

def test_ops_events_shows_one_recovery_line_per_attempt_at_its_first_step(recovered, local_store, monkeypatch):
    out = ops(local_store, monkeypatch, "events", "--run-id", "r1").splitlines()
    start = next(i for i, ln in enumerate(out) if START_LINE in ln)
    recovery = next(i for i, ln in enumerate(out) if RECOVERY_LINE in ln)
    assert "attempt 1" in out[start] and "attempt 2" in out[recovery]
    # In time order: attempt 1's line after its RUNNING and before its preemption; attempt 2's last.
    running1 = next(i for i, ln in enumerate(out) if "-> RUNNING" in ln and "attempt 1" in ln)
    preempted = next(i for i, ln in enumerate(out) if "-> PREEMPTED" in ln)
    assert running1 < start < preempted < recovery == len(out) - 1, out


def test_ops_events_json_carries_each_recoverys_numbers(recovered, local_store, monkeypatch):
    evs = json.loads(ops(local_store, monkeypatch, "events", "--run-id", "r1", "--json"))
    recs = [e for e in evs if "recovery" in e]
    assert [e["attempt"] for e in recs] == [1, 2]
    assert [e["time"] for e in recs] == [T0 + 170, T0 + 474]
    assert recs[0]["recovery"]["total_s"] == 170.0 and recs[0]["recovery"]["kind"] == "start"
    assert recs[1]["recovery"]["segments_s"]["detect"] == 4.0 and recs[1]["reason"] == RECOVERY_LINE
    assert [e["time"] for e in evs] == sorted(e["time"] for e in evs)


def test_ops_events_limit_and_since_count_the_recovery_lines_like_any_event(recovered, local_store, monkeypatch):
    compute: Any = NoInstances()
    newest = run_events(local_store, compute, "r1", limit=1)
    assert [e.get("recovery", {}).get("attempt") for e in newest] == [2]
    since = run_events(local_store, compute, "r1", since=T0 + 300)
    assert [e["attempt"] for e in since if "recovery" in e] == [2]
    every = run_events(local_store, compute, "r1")
    assert len([e for e in every if "recovery" in e]) == 2
    assert run_events(local_store, compute, "r1", limit=len(every)) == every
    # An ISO time between the two (a duration would drift with the suite's run time: T0 is fixed
    # at import): attempt 1 back at T0 + 170, attempt 2 at T0 + 474.
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 300))
    out = ops(local_store, monkeypatch, "events", "--run-id", "r1", "--since", between)
    assert RECOVERY_LINE in out and START_LINE not in out


def test_ops_events_of_an_attempt_lost_before_its_first_step_says_it_never_got_there(
        local_store, clock, monkeypatch):
    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    preempted_at(rec, clock, T0 + 400)
    second_attempt(rec, clock, T0 + 400, upto=CHECKPOINT_RESTORED)
    clock.t = T0 + 460
    rec.transition(State.FAILED, "agent", expect_attempt=2, reason="the job exited 1")
    evs = run_events(local_store, NoInstances(), "r1")  # type: ignore[arg-type]
    (second,) = [e for e in evs if e.get("recovery", {}).get("attempt") == 2]
    assert second["time"] == T0 + 446  # its newest mark: the image ready
    assert second["reason"].startswith("recovery (no first step): detect 4s · create 32s") and \
        second["reason"].endswith("first step ?")


def test_ops_events_with_a_limit_reads_only_the_marks_of_the_attempts_it_shows(recovered, local_store):
    spy = ReadLog(local_store.root)
    shown = run_events(spy, NoInstances(), "r1", limit=2)  # type: ignore[arg-type]
    assert {e["attempt"] for e in shown} == {2}
    assert not [n for n in spy.touched if "attempts/1/" in n], spy.touched
    spy.touched.clear()
    run_events(spy, NoInstances(), "r1")  # type: ignore[arg-type]
    assert "runs/r1/attempts/1/phases/" in spy.touched  # everything: every attempt's marks


# ---------------------------------------------------------------- ops watch

def test_ops_watch_shows_the_recovery_once_the_new_attempts_first_step_is_marked(local_store, clock):
    from runner.ops.watch import recovery_lines, snapshots, watch_json

    rec = new_run(local_store, clock)
    first_attempt(rec, clock)
    frames = snapshots(local_store, ["r1"], 0)
    (row,) = next(frames)
    assert "recovery" not in row  # running when the watch began: not a recovery seen while watching
    preempted_at(rec, clock, T0 + 400)
    second_attempt(rec, clock, T0 + 400, upto=IMAGE_READY)
    (row,) = next(frames)
    assert row["attempt"] == 2 and "recovery" not in row  # no first step yet
    second_attempt_rest(rec)
    rows = next(frames)
    assert rows[0]["recovery"]["text"] == RECOVERY_LINE and rows[0]["recovery"]["total_s"] == 74.0
    assert recovery_lines(rows) == [f"r1 attempt 2: {RECOVERY_LINE}"]
    emitted: list[str] = []
    watch_json(iter([rows]), None, emitted.append)
    assert json.loads(emitted[0])["recovery"]["segments_s"]["detect"] == 4.0


def test_ops_watch_reads_nothing_more_for_runs_whose_attempt_does_not_change(recovered, local_store):
    from runner.ops.watch import snapshots

    spy = ReadLog(local_store.root)
    frames = snapshots(spy, ["r1"], 0)
    for _ in range(3):
        next(frames)
    assert not [n for n in spy.touched if "/attempts/" in n], spy.touched


def second_attempt_rest(rec: RunRecord) -> None:
    """What ``second_attempt(..., upto=IMAGE_READY)`` left out: the restore and the first step."""
    rec.mark_phase(2, CHECKPOINT_RESTORED, "agent", at=T0 + 445.8, files=1, bytes=2048, streams=4)
    rec.mark_phase(2, FIRST_STEP, "agent", at=T0 + 474, step=501)
