"""A container created but never started is started by the next pass (issue 17 §3).

The local backend creates an attempt in two steps, ``docker create`` then ``docker start``. A
supervisor SIGKILLed between the two left a ``created`` container that nothing started: the run
sat PROVISIONING for its whole boot window (609 s with defaults) and was then counted as a
restart. Here the record and the container are put exactly where such a kill leaves them (the
attempt begun and claimed, the container made by the backend's own first step), then one pass of
another supervisor runs: the container must run, its job start and finish, with no restart spent.

Real Docker and the workload image (RUNNER_TEST_IMAGE); assertions on the store and containers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from entrypoint.record import Role, RunRecord, State
from runner.config import load_config
from runner.launch import submit as submit_mod
from runner.launch.backends.local import UNSTARTED_AFTER, LocalBackend, docker_time
from runner.launch.context import make_context
from runner.naming import resource_name
from tests.chaos.harness import cycles
from tests.conftest import IMAGE, trainer, wait_for

pytestmark = pytest.mark.docker


def _context(store_dir: Path) -> Any:
    cfg = load_config(cli={"store": f"file://{store_dir}", "backend": "local", "poll_interval": 0.5,
                           "heartbeat_interval": 0.5, "sync_interval": 0.5, "grace_period": 5},
                      cwd=str(store_dir), env={})
    return make_context(cfg)


def _killed_between_create_and_start(ctx: Any, run_id: str) -> Any:
    """What a supervisor SIGKILLed after ``docker create`` and before ``docker start`` leaves:
    attempt 1 begun and claimed in the record, its container ``created``. Returns the container."""
    rec = RunRecord(ctx.store, run_id)
    spec = rec.read_spec()
    dead = "supervisor@gone.1"
    rec.begin_attempt(Role.SUPERVISOR, dead, expected=rec.read_state(), reason="first attempt",
                      instances=[resource_name(run_id, 1)])
    assert rec.claim_create(1, dead)
    backend: LocalBackend = ctx.backend
    plan = backend.plan(spec, ctx.supervisor().launch_context(spec, 1))
    return backend.create_container(plan.only)


def test_a_container_left_created_by_a_killed_create_is_started_by_the_next_pass(tmp_path, docker_client):
    for cycle in range(cycles(short=1, long=3)):
        store_dir = tmp_path / f"store-{cycle}"
        store_dir.mkdir()
        ctx = _context(store_dir)
        run_id = f"created-{cycle}-{int(time.time() * 1000) % 100000}"
        try:
            submit_mod.submit(ctx, run_id, trainer(10, 5, 0.05), image=IMAGE, restart=False)
            c = _killed_between_create_and_start(ctx, run_id)
            c.reload()
            assert c.status == "created"
            # A container younger than UNSTARTED_AFTER may be its creator's, about to start:
            # the precondition of the repair is a container that has sat unstarted that long.
            wait_for(lambda: time.time() - docker_time(c.attrs["Created"]) >= UNSTARTED_AFTER,
                     UNSTARTED_AFTER + 30, "the container to have sat created for UNSTARTED_AFTER s")

            sup = ctx.supervisor()
            sup.reconcile(run_id)  # one pass, by a supervisor that did not create it

            rec = RunRecord(ctx.store, run_id)
            wait_for(lambda: rec.read_state()[0].state in (State.RUNNING, State.SUCCEEDED), 90,
                     "the job to start in the container the killed create left")
            c.reload()
            assert c.attrs["State"]["StartedAt"] != "0001-01-01T00:00:00Z", "the container never started"
            st = rec.read_state()[0]
            assert (st.attempt, st.restarts) == (1, 0), st
            assert any("never started" in (ev.get("reason") or "") for _, ev in rec.events()), \
                "the journal does not say the pass started it"

            def finished() -> bool:
                sup.reconcile(run_id)
                return rec.read_state()[0].state.terminal

            wait_for(finished, 120, "the run to finish", every=0.5)
            st = rec.read_state()[0]
            assert (st.state, st.attempt, st.restarts) == (State.SUCCEEDED, 1, 0), st
            assert sup.drain(30)
        finally:
            for left in ctx.backend.list(run_id):
                docker_client.containers.get(left.name).remove(force=True)


def test_a_create_that_finds_its_container_created_starts_it(tmp_path, docker_client):
    """The 409 path: a create retried after its first try died before the start adopts the
    container, and starts it."""
    ctx = _context(tmp_path)
    run_id = f"adopt-{int(time.time() * 1000) % 100000}"
    try:
        submit_mod.submit(ctx, run_id, trainer(10, 5, 0.05), image=IMAGE, restart=False)
        _killed_between_create_and_start(ctx, run_id)
        spec = RunRecord(ctx.store, run_id).read_spec()
        att = ctx.backend.create(ctx.backend.plan(spec, ctx.supervisor().launch_context(spec, 1)))
        assert att.alive
        rec = RunRecord(ctx.store, run_id)
        wait_for(lambda: rec.read_state()[0].state in (State.RUNNING, State.SUCCEEDED), 90,
                 "the job to start in the adopted container")
    finally:
        for left in ctx.backend.list(run_id):
            docker_client.containers.get(left.name).remove(force=True)
