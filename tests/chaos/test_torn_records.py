"""One torn object in one run: every other run reads normally, nothing shows a traceback.

Issue 17 §6: with a truncated ``state.json`` or ``heartbeat.json`` in one run, ``ops list``,
``ops list --json`` and ``ops watch`` crashed for every run, ``ops delete`` crashed before
writing ``.stop``, and the supervisor retried the run every pass for ever. Here one run among
healthy ones has one object damaged in one way (truncated, empty, a JSON list, a field of the
wrong type), and the ops commands run through the real CLI (click's runner, in process; the
compute is the in-memory stand-in, the store a local directory). Each must end with a one-line
error or its output, never a traceback; show the healthy runs as they are; and, where it reads
the damaged object, name it. ``make test`` tries a few objects and damages, ``make chaos`` all.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import pytest
from click.testing import CliRunner, Result

from entrypoint.record import RunRecord, State
from runner.cli.main import main
from tests.chaos.harness import cycles
from tests.standins.supervised_runs import STALL_WINDOW, SupervisedRuns

TORN = "torn-1"
HEALTHY = ("good-1", "good-2")


def _truncated(doc: dict[str, Any], good: bytes) -> bytes:
    return good[: len(good) // 2]


def _empty(doc: dict[str, Any], good: bytes) -> bytes:
    return b""


def _a_list(doc: dict[str, Any], good: bytes) -> bytes:
    return b"[]"


# A field each reader relies on, with a value of the wrong type (as a hand edit or another
# version might leave it).
_WRONG = {"state.json": ("state", 5), "heartbeat.json": ("attempt", "1"), "spec.json": ("command", "python3"),
          "event": ("time", "yesterday"), "manifest": ("attempt", [1])}


def _wrong_type(obj: str) -> Callable[[dict[str, Any], bytes], bytes]:
    key, value = _WRONG[obj]
    return lambda doc, good: json.dumps({**doc, key: value}).encode()


DAMAGES = {"truncated": _truncated, "empty": _empty, "a JSON list": _a_list, "wrong types": None}
OBJECTS = ("state.json", "heartbeat.json", "spec.json", "event", "manifest")
# The short form first (what ``make test`` runs): the objects of the report and one of
# each other kind, each damaged another way; then every other combination.
_FIRST = [("state.json", "truncated"), ("heartbeat.json", "truncated"), ("spec.json", "a JSON list"),
          ("event", "wrong types"), ("manifest", "empty"), ("state.json", "wrong types")]
CASES = _FIRST + [(o, d) for o in OBJECTS for d in DAMAGES if (o, d) not in _FIRST]
CASES = CASES[:cycles(short=len(_FIRST), long=len(CASES))]

# Which commands read which object, and so must name it when it is damaged.
READERS = {
    "state.json": {"list", "list --json", "watch --once", "watch --once --json", "status", "events",
                   "list --orphans"},  # its live instance: not judged an orphan, and why
    "heartbeat.json": {"list", "list --json", "watch --once", "watch --once --json", "status"},
    "spec.json": {"status", "events"},  # status: in its cost's "why unknown"
    "event": {"events"},
    "manifest": {"status"},  # in its cost's "why unknown"
}
# Every command, and whether it lists every run (then the healthy ones must show).
COMMANDS = {
    "list": (["ops", "list"], True),
    "list --json": (["ops", "list", "--json"], True),
    "watch --once": (["ops", "watch", "--once"], True),
    "watch --once --json": (["ops", "watch", "--once", "--json"], True),
    "status": (["ops", "status", "--run-id", TORN], False),
    "status --json": (["ops", "status", "--run-id", TORN, "--json"], False),
    "events": (["ops", "events", "--run-id", TORN], False),
    "events --json": (["ops", "events", "--run-id", TORN, "--json"], False),
    "list --orphans": (["ops", "list", "--orphans"], False),
}


def _object_name(rec: RunRecord, obj: str) -> str:
    return {"state.json": rec.name(rec.STATE), "heartbeat.json": rec.name(rec.HEARTBEAT),
            "spec.json": rec.name(rec.SPEC), "event": rec.event_names()[0],
            "manifest": rec.name(rec.manifest_name(1))}[obj]


def _running(w: SupervisedRuns, run_id: str) -> RunRecord:
    """A run whose first attempt's job runs, with a heartbeat, a manifest and a journal."""
    rec = w.submit(run_id)
    sup = w.supervisor()
    sup.reconcile(run_id)
    w.agent_running(rec)
    w.heartbeat(rec, 5)
    rec.write_manifest(1, {"attempt": 1, "files": {}})
    return rec


def _damage(w: SupervisedRuns, rec: RunRecord, obj: str, damage: str) -> str:
    """Overwrite ``obj`` of ``rec`` with its damaged form; returns the object's name."""
    name = _object_name(rec, obj)
    blob = w.store.read(name)
    assert blob is not None, name
    make = DAMAGES[damage] or _wrong_type(obj)
    w.store.write(name, make(json.loads(blob.data), blob.data))
    return name


@pytest.fixture
def cli(supervised: SupervisedRuns, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """``runner ...`` in process, on the world's store, with its in-memory compute."""
    for key in [k for k in os.environ if k.startswith("RUNNER_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # no runner.toml of the developer's
    monkeypatch.setenv("COLUMNS", "300")  # watch's table: whole run ids and object names
    monkeypatch.setattr("runner.launch.context.make_backend", lambda cfg: supervised.backend)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, [*args, "--store", supervised.store.url, "--backend", "local"])

    return run


def _clean(r: Result, what: str) -> str:
    """The command ended on purpose (exit 0 or 1, no exception escaped) and showed no traceback."""
    out = r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), \
        f"{what}: {type(r.exception).__name__}: {r.exception}\n{out}"
    assert r.exit_code in (0, 1), f"{what}: exit {r.exit_code}\n{out}"
    assert "Traceback" not in out, f"{what}:\n{out}"
    if r.exit_code == 1:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("runner: "), f"{what}: no one-line error\n{out}"
    return out


@pytest.mark.parametrize("obj,damage", CASES)
def test_one_torn_object_is_named_and_every_other_run_reads(supervised, cli, obj, damage) -> None:
    w = supervised
    for r in HEALTHY:
        _running(w, r)
    name = _damage(w, _running(w, TORN), obj, damage)
    # A manifest is free-form: its one reader (the cost estimate) takes a wrong-typed value as
    # unknown, so that damage is read through, not named.
    tolerated = (obj, damage) == ("manifest", "wrong types")
    for what, (args, lists_all) in COMMANDS.items():
        out = _clean(cli(*args), f"{what} with {name} {damage}")
        if lists_all:
            for r in HEALTHY:
                assert r in out, f"{what}: healthy run {r} not shown\n{out}"
            assert TORN in out, f"{what}: the damaged run is not shown at all\n{out}"
        if (what in READERS[obj] or what.removesuffix(" --json") in READERS[obj]) and not tolerated:
            assert name in out, f"{what}: does not name {name} ({damage})\n{out}"
    if obj in ("state.json", "heartbeat.json"):  # the rows ops list reads: an error row, others whole
        rows = {r["run_id"]: r for r in json.loads(cli("ops", "list", "--json").stdout)}
        assert set(rows) == {TORN, *HEALTHY}
        assert name in rows[TORN]["error"] and "state" not in rows[TORN]
        assert all(rows[r]["state"] == State.RUNNING.value and rows[r]["progress"] == {"step": 5}
                   for r in HEALTHY)


@pytest.mark.parametrize("obj", OBJECTS)
def test_delete_of_a_run_with_a_torn_object_writes_stop_and_shows_no_traceback(supervised, cli, obj) -> None:
    w = supervised
    rec = _running(w, TORN)
    _damage(w, rec, obj, "truncated")
    _clean(cli("ops", "delete", "--run-id", TORN), f"delete with {obj} truncated")
    assert rec.stop_requested(), f"delete with {obj} truncated wrote no .stop"


def _damage_events(rec: RunRecord) -> list[dict[str, Any]]:
    """The run's journal entries about its damaged record."""
    return [ev for ev in map(rec.read_event, rec.event_names()) if ev and ev.get("damaged")]


def test_the_supervisor_marks_a_run_it_cannot_read_once_and_keeps_its_job(supervised, cli, capfd) -> None:
    """Said once (a mark, one journal entry), not every pass; past the stall window said once
    more, and the live instance kept (a torn JSON says nothing about the job); the healthy run
    beside it is supervised as before; ``ops list`` shows the mark; a repair clears it."""
    w = supervised
    good = _running(w, HEALTHY[0])
    rec = _running(w, TORN)
    name = _damage(w, rec, "state.json", "truncated")
    sup = w.supervisor()
    for _ in range(3):
        sup.reconcile_all()
    events = _damage_events(rec)
    assert len(events) == 1 and name in events[0]["reason"], events
    said = [ln for ln in capfd.readouterr().err.splitlines() if TORN in ln]
    assert len(said) == 1, said
    live = {n for n, i in w.backend.instances().items() if i.alive}
    assert "runner-torn-1-a1" in live and "runner-good-1-a1" in live

    w.clock.advance(STALL_WINDOW + 1)
    for _ in range(3):
        sup.reconcile_all()
    events = _damage_events(rec)
    assert len(events) == 2 and "past the stall window" in events[1]["reason"], events
    assert "runner-torn-1-a1" in {n for n, i in w.backend.instances().items() if i.alive}
    row = {r["run_id"]: r for r in json.loads(cli("ops", "list", "--json").stdout)}[TORN]
    assert row["supervisor"]["object"] == name and row["supervisor"]["overdue"] is True
    assert row["supervisor"]["live_instances"] == ["runner-torn-1-a1"]

    # A preemption of the healthy run is still handled by the same supervisor.
    w.backend.vanish("runner-good-1-a1")
    sup.reconcile_all()
    assert supervised.state(good).attempt == 2

    # Repaired: supervised again, and the mark is gone.
    w.store.write(name, json.dumps({"state": "RUNNING", "attempt": 1, "instance": "runner-torn-1-a1"}).encode())
    sup.reconcile_all()
    assert w.store.read(rec.name(rec.DAMAGED)) is None


def test_stop_means_stop_for_a_run_whose_record_cannot_be_read(supervised) -> None:
    w = supervised
    rec = _running(w, TORN)
    _damage(w, rec, "state.json", "empty")
    rec.request_stop("user@test")
    w.supervisor().reconcile_all()
    w.settle()
    w.clock.advance(60)  # the job's grace period
    assert not any(i.alive for i in w.backend.instances().values())


def test_an_internal_error_is_one_line_that_says_what_to_report(cli, monkeypatch) -> None:
    """The catch-all is for the bugs no one knows of yet, so the test plants one."""
    def boom(*a: Any, **k: Any) -> Any:
        raise KeyError("state")

    monkeypatch.setattr("runner.ops.runs.list_runs", boom)
    r = cli("ops", "list")
    out = _clean(r, "ops list with a bug")
    assert r.exit_code == 1 and "internal error (KeyError: 'state')" in out and "report" in out
    monkeypatch.setenv("RUNNER_DEBUG", "1")
    r = cli("ops", "list")
    assert "Traceback" in r.stderr and r.exit_code == 1  # the way to see it
