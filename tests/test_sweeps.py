"""Sweeps (issue 22 §2): a grid or list of parameters becomes N runs with derived ids, one pinned
image and one sweep document; ``ops list --sweep`` summarises them, ``ops delete --sweep`` stops
them all. The whole path through the real CLI is ``test_sweep_cli_*`` at the end (Docker: the
local backend pins the image through the engine).

The library tests run the real submit code and record on a real local store, with the memory
backend stand-in (tests/standins/memory_backend.py) as the compute side: no Docker, no server.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, State
from entrypoint.record.sweeps import read_sweep
from entrypoint.store_local import LocalStore
from runner.config import load_config
from runner.launch.backends.base import LaunchContext
from runner.launch.context import Context
from runner.launch.submit import SubmitRefused
from runner.launch.sweep import default_sweep_id, member_ids, submit_sweep
from runner.launch.sweep_file import (
    MAX_SWEEP_RUNS, SweepFileError, check_command, plan_of, read_sweep_file, render, sweep_env,
)
from runner.naming import resource_name, validate_run_id
from runner.ops.sweeps import delete_sweep, sweep_status
from tests.standins.memory_backend import MemoryBackend

TEMPLATE = ["python", "train.py", "--lr", "{lr}", "--depth={depth}"]
GRID = {"grid": {"lr": [0.1, 0.01], "depth": [2, 4]}, "metric": {"name": "loss", "goal": "minimize"}}


class _RebuiltTag(MemoryBackend):
    """A tag that moves: every pin answers a new digest, as a tag rebuilt between two lookups
    would. A sweep that pinned per member would give its members different images."""

    def __init__(self) -> None:
        super().__init__(notice_seconds=0)
        self._digests = (f"img@sha256:{i:064x}" for i in itertools.count(1))

    def pin_image(self, image: str) -> str:
        return next(self._digests)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    (tmp_path / "store").mkdir()
    return LocalStore(str(tmp_path / "store"))


def _ctx(store: LocalStore, backend: MemoryBackend | None = None) -> Context:
    cfg = load_config(cli={"store": store.url, "backend": "local"}, cwd=store.root, env={})
    return Context(cfg, store, backend or _RebuiltTag())


# ---- the sweep file ----

def test_a_grid_is_the_cartesian_product_in_the_order_written():
    plan = plan_of(GRID)
    assert plan.points == [{"lr": 0.1, "depth": 2}, {"lr": 0.1, "depth": 4},
                           {"lr": 0.01, "depth": 2}, {"lr": 0.01, "depth": 4}]
    assert plan.metric == {"name": "loss", "goal": "minimize"}


def test_list_points_come_first_then_the_grid():
    plan = plan_of({"list": [{"lr": 0.3, "depth": 8}], "grid": {"lr": [0.1], "depth": [2, 4]}})
    assert plan.points == [{"lr": 0.3, "depth": 8}, {"lr": 0.1, "depth": 2}, {"lr": 0.1, "depth": 4}]


def test_yaml_toml_and_json_files_read_alike(tmp_path):
    (tmp_path / "s.yaml").write_text("grid:\n  lr: [0.1, 0.01]\n  depth: [2, 4]\nmetric: {name: loss, goal: minimize}\n")
    (tmp_path / "s.toml").write_text('metric = {name = "loss", goal = "minimize"}\n[grid]\nlr = [0.1, 0.01]\ndepth = [2, 4]\n')
    (tmp_path / "s.json").write_text(json.dumps(GRID))
    plans = [read_sweep_file(str(tmp_path / f"s.{ext}")) for ext in ("yaml", "toml", "json")]
    assert all(p.points == plans[0].points and p.metric == plans[0].metric for p in plans)
    assert len(plans[0].points) == 4


def test_a_key_written_twice_in_yaml_is_refused_not_silently_dropped(tmp_path):
    # PyYAML keeps the later key (https://github.com/yaml/pyyaml/issues/165): a whole axis would vanish.
    f = tmp_path / "dup.yaml"
    f.write_text("grid:\n  lr: [0.1, 0.01]\n  lr: [1]\n")
    with pytest.raises(SweepFileError, match="written twice"):
        read_sweep_file(str(f))


def test_a_sweep_beyond_the_cap_is_refused_before_it_is_expanded():
    huge = {"grid": {"a": list(range(1000)), "b": list(range(1000)), "c": list(range(1000))}}  # 1e9 points
    started = time.monotonic()
    with pytest.raises(SweepFileError, match=f"1,000,000,000 runs is more than a sweep may hold \\({MAX_SWEEP_RUNS:,}\\)"):
        plan_of(huge)
    assert time.monotonic() - started < 1  # counted, not expanded
    assert len(plan_of({"grid": {"a": list(range(100)), "b": list(range(100))}}).points) == MAX_SWEEP_RUNS


@pytest.mark.parametrize("doc, why", [
    ({"grid": {"lr": []}}, "no values"),
    ({"grid": {"lr": [[1, 2]]}}, "strings or numbers"),
    ({"grid": {"2lr": [1]}}, "must be a name"),
    ({"grid": {True: [1]}}, "quote it"),  # YAML's `on:` read as a boolean (https://github.com/yaml/pyyaml/issues/52)
    ({"gird": {"lr": [1]}}, "unknown key"),
    ({}, "no runs"),
    ({"grid": {"lr": [1]}, "metric": {"name": "loss", "goal": "lowest"}}, "minimize or maximize"),
])
def test_a_bad_sweep_file_is_refused_with_what_to_fix(doc, why):
    with pytest.raises(SweepFileError, match=why):
        plan_of(doc)


def test_parameters_reach_the_argv_as_placeholders_and_the_env_as_sweep_names():
    params = {"lr": 0.01, "depth": 4, "amp": True, "name": "a b"}
    argv = render(TEMPLATE + ["{name}", '{"k": 1}', "{{lr}}", "{amp}"], params)
    assert argv == ["python", "train.py", "--lr", "0.01", "--depth=4", "a b", '{"k": 1}', "{lr}", "true"]
    assert sweep_env(params) == {"SWEEP_LR": "0.01", "SWEEP_DEPTH": "4", "SWEEP_AMP": "true", "SWEEP_NAME": "a b"}


def test_a_placeholder_that_no_parameter_sets_is_refused_and_an_unused_parameter_is_fine():
    plan = plan_of({"grid": {"lr": [0.1], "seed": [1, 2]}})
    check_command(["train", "--lr", "{lr}"], plan)  # seed unused: it still reaches SWEEP_SEED
    with pytest.raises(SweepFileError, match=r"\{depth\}.*its parameters: lr, seed"):
        check_command(["train", "--depth", "{depth}"], plan)
    mixed = plan_of({"list": [{"lr": 0.1, "depth": 2}, {"lr": 0.2}]})
    with pytest.raises(SweepFileError, match=r"\{depth\}, which point 1 of"):
        check_command(["train", "{depth}"], mixed)


# ---- ids ----

def test_member_ids_are_zero_padded_in_order_and_keep_instance_names_readable():
    ids = member_ids("lr-sweep-3f2a", 12)
    assert ids[:2] == ["lr-sweep-3f2a-000", "lr-sweep-3f2a-001"] and ids[-1] == "lr-sweep-3f2a-011"
    assert ids == sorted(ids)
    assert member_ids("s", 10_000)[-1] == "s-9999"
    sid = default_sweep_id("/x/My Very_Long Learning-Rate Sweep File.yaml")
    assert len(sid) <= 29 and sid[0].isalpha()
    for rid in member_ids(sid, MAX_SWEEP_RUNS)[-1:] + member_ids(sid, 4):
        validate_run_id(rid)
        name = resource_name(rid, 12)  # no hash: the name shows the run (GCE's 63-character limit kept)
        assert name == f"runner-{rid}-a12" and len(name) <= 63
    assert default_sweep_id("sweep.yaml") != default_sweep_id("sweep.yaml")  # a new sweep each time


# ---- submitting ----

def test_a_sweep_submits_every_point_with_one_pinned_image_and_its_document(store):
    plan = plan_of(GRID)
    result = submit_sweep(_ctx(store), "lr1", plan, TEMPLATE, "trainer:dev", env={"TOKEN": "x", "SWEEP_LR": "no"},
                          max_concurrent=2, priority=5)
    assert result.created == ["lr1-000", "lr1-001", "lr1-002", "lr1-003"] and not result.failed
    specs = [RunRecord(store, rid).read_spec() for rid in result.created]
    assert {s.image for s in specs} == {result.image} and result.image.startswith("img@sha256:")
    assert [s.command for s in specs] == [render(TEMPLATE, p) for p in plan.points]
    assert specs[3].command == ["python", "train.py", "--lr", "0.01", "--depth=4"]
    assert specs[3].env == {"TOKEN": "x", "SWEEP_LR": "0.01", "SWEEP_DEPTH": "4"}  # the parameter wins
    assert {(s.sweep, s.max_concurrent, s.priority) for s in specs} == {("lr1", 2, 5)}
    assert all(RunRecord(store, rid).read_state()[0].state == State.PENDING for rid in result.created)
    doc, _ = read_sweep(store, "lr1")
    assert doc.run_ids == result.created and doc.submitted == result.created
    assert [r["params"] for r in doc.runs] == plan.points
    assert doc.command == TEMPLATE and doc.image == result.image and doc.metric == plan.metric
    assert doc.created_at <= time.time()


class _FailingWrites(LocalStore):
    """A store whose writes of the named objects fail (a network error part-way through a sweep)."""

    def __init__(self, root: str, failing: set[str]) -> None:
        super().__init__(root)
        self.failing = failing

    def write(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        if name in self.failing:
            raise OSError(f"injected: the write of {name} failed")
        return super().write(name, data, if_generation_match)


def test_a_sweep_cut_short_says_which_runs_exist_and_a_rerun_creates_only_the_missing(store):
    plan = plan_of(GRID)
    broken = _FailingWrites(store.root, {"runs/lr1-002/spec.json"})
    first = submit_sweep(_ctx(broken), "lr1", plan, TEMPLATE, "trainer:dev")
    assert first.created == ["lr1-000", "lr1-001", "lr1-003"]
    assert list(first.failed) == ["lr1-002"] and "injected" in first.failed["lr1-002"]
    doc, _ = read_sweep(store, "lr1")
    assert doc.run_ids == member_ids("lr1", 4) and doc.submitted == ["lr1-000", "lr1-001", "lr1-003"]
    before = {rid: (store.read(f"runs/{rid}/spec.json").data, store.read(f"runs/{rid}/state.json").generation)
              for rid in first.created}

    again = submit_sweep(_ctx(store), "lr1", plan, TEMPLATE, "other:dev")  # a rerun keeps the sweep's image
    assert again.created == ["lr1-002"] and again.existing == first.created and not again.failed
    assert {rid: (store.read(f"runs/{rid}/spec.json").data, store.read(f"runs/{rid}/state.json").generation)
            for rid in first.created} == before  # untouched
    assert RunRecord(store, "lr1-002").read_spec().image == first.image
    assert read_sweep(store, "lr1")[0].submitted == member_ids("lr1", 4)
    third = submit_sweep(_ctx(store), "lr1", plan, TEMPLATE, None)
    assert third.created == [] and third.existing == member_ids("lr1", 4)


def test_a_rerun_with_another_command_or_file_is_refused_and_writes_nothing(store):
    submit_sweep(_ctx(store), "lr1", plan_of(GRID), TEMPLATE, "trainer:dev")
    listing = sorted(store.list(""))
    with pytest.raises(SubmitRefused, match="exists with the command"):
        submit_sweep(_ctx(store), "lr1", plan_of(GRID), TEMPLATE + ["--amp"], "trainer:dev")
    with pytest.raises(SubmitRefused, match="exists with other parameters"):
        submit_sweep(_ctx(store), "lr1", plan_of({"grid": {"lr": [0.5], "depth": [2]}}), TEMPLATE, "trainer:dev")
    assert sorted(store.list("")) == listing


def test_a_member_id_taken_by_another_run_is_reported_and_left_alone(store):
    from runner.launch.submit import submit

    submit(_ctx(store), "lr1-001", ["mine"], image="x", restart=False)
    result = submit_sweep(_ctx(store), "lr1", plan_of(GRID), TEMPLATE, "trainer:dev")
    assert "lr1-001" in result.failed and "not part of sweep lr1" in result.failed["lr1-001"]
    assert RunRecord(store, "lr1-001").read_spec().command == ["mine"]
    assert result.created == ["lr1-000", "lr1-002", "lr1-003"]


def test_a_sweep_on_gcs_writes_its_members_from_the_pool_each_create_only(gcs_store):
    """The bounded pool against the GCS emulator (the real client, shared by the workers): every
    member is created once, and the document's compare-and-swap lands."""
    cfg = load_config(cli={"store": gcs_store.url, "backend": "gce", "project": "p", "zones": "us-central1-a"},
                      cwd="/", env={})
    plan = plan_of({"grid": {"a": [1, 2, 3, 4], "b": ["x", "y", "z"]}})
    result = submit_sweep(Context(cfg, gcs_store, _RebuiltTag()), "g", plan, ["t", "{a}", "{b}"], "img", workers=8)
    assert result.created == member_ids("g", 12) and not result.failed
    assert [RunRecord(gcs_store, rid).read_spec().command for rid in result.created] == \
        [["t", str(p["a"]), p["b"]] for p in plan.points]
    assert all(len(list(RunRecord(gcs_store, rid).events())) == 1 for rid in result.created)
    assert read_sweep(gcs_store, "g")[0].submitted == result.created


# ---- ops list --sweep / ops delete --sweep ----

def _finish(store: LocalStore, run_id: str, state: State, summary: dict | None) -> None:
    """What a member's agent leaves: the state it reached and, when its job wrote one, results/summary.json."""
    rec = RunRecord(store, run_id)
    rec.transition(State.PROVISIONING, "test", attempt=1)
    rec.transition(State.RUNNING, "test")
    if state != State.RUNNING:
        rec.transition(state, "test", exit_code=0 if state == State.SUCCEEDED else 1)
    if summary is not None:
        store.write(f"runs/{run_id}/results/summary.json", json.dumps(summary).encode())


def test_ops_list_sweep_counts_each_state_and_names_the_best_metric(store):
    plan = plan_of({"grid": {"lr": [0.1, 0.01, 0.001, 0.0001, 0.5]}, "metric": {"name": "loss", "goal": "minimize"}})
    submit_sweep(_ctx(store), "s", plan, ["train", "{lr}"], "trainer:dev")
    _finish(store, "s-000", State.SUCCEEDED, {"loss": 0.40})
    _finish(store, "s-001", State.SUCCEEDED, {"loss": 0.12, "acc": 0.9})
    _finish(store, "s-002", State.FAILED, {"loss": float("nan")})  # not a finite number: not ranked
    _finish(store, "s-003", State.RUNNING, None)
    out = sweep_status(store, "s")
    assert [r["state"] for r in out["runs"]] == ["SUCCEEDED", "SUCCEEDED", "FAILED", "RUNNING", "PENDING"]
    assert [r["metric"] for r in out["runs"]] == [0.40, 0.12, None, None, None]
    assert out["runs"][1]["params"] == {"lr": 0.01}
    s = out["summary"]
    assert s["counts"] == {"queued": 1, "running": 1, "done": 2, "failed": 1, "stopped": 0,
                           "not_submitted": 0, "damaged": 0}
    assert s["best"] == {"run_id": "s-001", "name": "loss", "goal": "minimize", "value": 0.12,
                         "params": {"lr": 0.01}, "state": "SUCCEEDED"}
    assert all("cost" in r for r in out["runs"]) and s["cost"]["currency"] == "USD"


def test_a_maximized_metric_picks_the_highest_and_queued_covers_states_it_does_not_know(store):
    from runner.ops.sweeps import category, summarize

    rows = [{"run_id": "a", "state": "SUCCEEDED", "metric": 0.7, "params": {}},
            {"run_id": "b", "state": "SUCCEEDED", "metric": 0.9, "params": {}},
            {"run_id": "c", "state": "QUEUED", "metric": None, "params": {}},
            {"run_id": "d", "state": "PENDING", "metric": None, "params": {}}]
    s = summarize(rows, {"name": "acc", "goal": "maximize"})
    assert s["best"]["run_id"] == "b" and s["counts"]["queued"] == 2
    assert category({"state": "SOMETHING_NEWER"}) == "queued"


def test_ops_delete_sweep_stops_every_member_and_removes_their_instances(store):
    backend = MemoryBackend(notice_seconds=0)
    ctx = _ctx(store, backend)
    plan = plan_of({"grid": {"lr": [1, 2, 3, 4, 5]}})
    submit_sweep(ctx, "s", plan, ["train", "{lr}"], "trainer:dev")
    _finish(store, "s-004", State.SUCCEEDED, None)
    for rid in ("s-000", "s-001"):  # two members hold instances (as the supervisor would have made)
        spec = RunRecord(store, rid).read_spec()
        backend.create(backend.plan(spec, LaunchContext(attempt=1, store_url=store.url,
                                                        settings=spec.attempt_settings())))
    assert len(backend.list()) == 2
    out = delete_sweep(store, backend, "s", grace_for=lambda rid: 0)
    assert out["stopped"] == 4 and out["already_ended"] == 1 and not out["errors"]
    assert sorted(out["removed"]) == sorted([resource_name("s-000", 1), resource_name("s-001", 1)])
    assert backend.list() == []
    states = {rid: RunRecord(store, rid).read_state()[0].state for rid in member_ids("s", 5)}
    assert states == {"s-000": State.STOPPED, "s-001": State.STOPPED, "s-002": State.STOPPED,
                      "s-003": State.STOPPED, "s-004": State.SUCCEEDED}
    assert all(RunRecord(store, rid).stop_requested() for rid in member_ids("s", 5))  # none restarts
    summary = sweep_status(store, "s")["summary"]["counts"]
    assert summary["stopped"] == 4 and summary["done"] == 1


def test_an_unknown_sweep_is_not_found(store):
    from runner.ops.runs import RunNotFound

    with pytest.raises(RunNotFound, match="no sweep 'nope'"):
        sweep_status(store, "nope")
    with pytest.raises(RunNotFound):
        delete_sweep(store, MemoryBackend(), "nope", grace_for=lambda rid: 0)


# ---- the whole path, as a user runs it ----

@pytest.mark.docker
def test_sweep_cli_submits_four_runs_sharing_one_image_and_ops_see_and_stop_them(runner, tmp_path):
    """`runner sweep` in a subprocess, local backend (the engine pins the image), no supervisor:
    four PENDING runs with one image id, their sweep document; then `ops list --sweep` and
    `ops delete --sweep`, also as processes."""
    from tests.conftest import IMAGE

    sweep_file = tmp_path / "lr.yaml"
    sweep_file.write_text("grid:\n  lr: [0.1, 0.01]\n  depth: [2, 4]\nmetric: {name: loss, goal: minimize}\n")
    argv = ["sweep", str(sweep_file), "--max-concurrent", "2", "--priority", "3", "--image", IMAGE,
            "--sweep-id", "lr", "--json", "--", "python3", "-m", "examples.trainer", "--steps", "{depth}"]
    p = runner(*argv)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    ids = ["lr-000", "lr-001", "lr-002", "lr-003"]
    assert out["created"] == ids and out["runs"] == ids and out["failed"] == {}
    specs = [runner.read_json(rid, "spec.json") for rid in ids]
    image_id = runner.docker.images.get(IMAGE).id
    assert {s["image"] for s in specs} == {image_id}  # pinned once, to the engine's id of the tag
    assert [s["command"][-1] for s in specs] == ["2", "4", "2", "4"]
    assert [s["env"] for s in specs][1] == {"SWEEP_LR": "0.1", "SWEEP_DEPTH": "4"}
    assert {(s["sweep"], s["max_concurrent"], s["priority"]) for s in specs} == {("lr", 2, 3)}
    assert all(runner.state(rid)["state"] == "PENDING" for rid in ids)
    assert all(runner.containers(rid) == [] for rid in ids)  # nothing started: the queue's job
    doc = json.loads((runner.store_dir / "sweeps" / "lr.json").read_text())
    assert [r["run_id"] for r in doc["runs"]] == ids and doc["submitted"] == ids
    assert doc["image"] == image_id and doc["command"][-1] == "{depth}"
    assert [r["params"] for r in doc["runs"]][2] == {"lr": 0.01, "depth": 2}

    again = runner(*argv)  # the same sweep id again: nothing new, nothing touched
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["existing"] == ids and json.loads(again.stdout)["created"] == []

    (runner.run_dir("lr-002") / "results").mkdir()
    (runner.run_dir("lr-002") / "results" / "summary.json").write_text('{"loss": 0.25}')
    listed = runner("ops", "list", "--sweep", "lr")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1].startswith(
        "sweep lr: 4 runs: 4 queued, 0 running, 0 done, 0 failed, 0 stopped; cost ")
    assert listed.stdout.splitlines()[-1].endswith("; best loss 0.25 (lowest): lr-002")
    assert "depth=2 lr=0.01" in listed.stdout

    stopped = runner("ops", "delete", "--sweep", "lr")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("sweep lr: stopped 4 run(s)")
    summary = json.loads(runner("ops", "list", "--sweep", "lr", "--json").stdout)["summary"]
    assert summary["counts"]["stopped"] == 4
    assert all((runner.run_dir(rid) / ".stop").exists() for rid in ids)


def test_sweep_cli_refuses_a_placeholder_the_file_does_not_set_before_writing_anything(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "s.yaml").write_text("grid: {lr: [0.1]}\n")
    (tmp_path / "store").mkdir()
    p = subprocess.run([sys.executable, "-m", "runner.cli", "sweep", "s.yaml", "--store", f"file://{tmp_path}/store",
                        "--", "train", "--depth", "{depth}"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    assert p.returncode == 2
    assert "runner: the command uses {depth}, which s.yaml does not set (its parameters: lr)" in p.stderr
    assert list((tmp_path / "store").iterdir()) == []


@pytest.mark.parametrize("args, said", [
    (["ops", "delete"], "give the run to stop with --run-id ID, or a whole sweep with --sweep ID"),
    (["ops", "delete", "--run-id", "a", "--sweep", "s"], "give the run to stop with --run-id ID, or a whole sweep"),
    (["ops", "delete", "--sweep", "s", "--purge", "--yes"], "--purge removes one run's record"),
    (["ops", "list", "--sweep", "s", "--orphans"], "--sweep and --orphans are two different lists"),
])
def test_ops_sweep_options_refuse_what_does_not_go_together(tmp_path, args, said):
    from click.testing import CliRunner

    from runner.cli.main import main

    (tmp_path / "store").mkdir()
    out = CliRunner().invoke(main, [*args, "--store", f"file://{tmp_path}/store"])
    assert out.exit_code == 2 and said in out.output


def test_the_sweep_document_keeps_fields_a_newer_runner_wrote(store):
    """A rerun rewrites the document (``submitted``): what a newer version added must survive it."""
    submit_sweep(_ctx(store), "lr1", plan_of(GRID), TEMPLATE, "trainer:dev")
    doc = json.loads(store.read("sweeps/lr1.json").data)
    doc["submitted"] = doc["submitted"][:1]
    doc["budget_usd"] = 12.5  # a field this version does not know
    store.write("sweeps/lr1.json", json.dumps(doc).encode())
    submit_sweep(_ctx(store), "lr1", plan_of(GRID), TEMPLATE, None)
    after = json.loads(store.read("sweeps/lr1.json").data)
    assert after["budget_usd"] == 12.5 and after["submitted"] == member_ids("lr1", 4)
