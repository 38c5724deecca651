"""Round 3 review: attacks on the "two live instances" fixes (issue 17 items 1 and 2).

A delete that outlives its in-progress marker. ``ops delete`` marks ``.stop`` "in progress" for
its grace period plus a margin, so that a restart meanwhile is refused; the marker must lapse, so
that a delete killed mid-grace does not block restarts for ever. But a delete that was only
*frozen* (Ctrl-Z, a suspended laptop, a GCE delete operation slower than the margin) resumes after
its marker lapsed and the user restarted the run: it then wrote STOPPED over the restarted run,
deleted the new attempt's instance and wrote ``.stop`` again: the user's restart was undone, and
the job they restarted killed without a word. A resumed delete must see that ``.stop`` it wrote
is gone (``reopen`` removes it first) and leave the restarted run alone.

Real Supervisor on a real local store, the ``RaceCompute`` stand-in; the delete's own instance
delete is held on a gate (the frozen ``ops delete``), nothing of ours is mocked.
"""

from __future__ import annotations

import threading

from entrypoint.record import AttemptSettings, RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from runner.ops import runs
from runner.ops.runs import delete_run
from tests.chaos.harness import RaceCompute, cycles
from tests.conftest import wait_for


class _FrozenDelete(RaceCompute):
    """Deletes called from the ``ops delete`` thread wait on ``gate`` (that process is frozen)."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.gate = threading.Event()
        self.held = threading.Event()

    def delete(self, instance, grace_period: float = 0) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "ops-delete" and not self.gate.is_set():
            self.held.set()
            self.gate.wait(60)
        super().delete(instance, grace_period)


def _submit(store: LocalStore, run_id: str) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="img@sha256:" + "a" * 64, command=["train"], backend="race",
                           max_restarts=1000))
    rec.create_state("submit")
    return rec


def _running(compute: RaceCompute, rec: RunRecord, attempt: int) -> bool:
    st = rec.read_state()[0]
    return st.state == State.RUNNING and st.attempt == attempt and any(
        i.attempt == attempt for i in compute.alive(rec.run_id))


def test_a_delete_resumed_after_its_marker_lapsed_does_not_undo_the_users_restart(tmp_path, monkeypatch):
    # The margin is what makes the marker lapse; a short one stands for a delete frozen for long.
    monkeypatch.setattr(runs, "DELETE_MARGIN_S", 0.0)
    store = LocalStore(str(tmp_path))
    for n in range(cycles(1, 5)):
        run_id = f"frozen-delete-{n}"
        compute = _FrozenDelete(store)
        settings = SupervisorSettings(poll_interval=0.03, store_url=store.url,
                                      legacy_attempts=AttemptSettings(grace_period=0.05, stall_window=600))
        sup = Supervisor(store, compute, settings, actor="sup")
        rec = _submit(store, run_id)

        def step(attempt: int) -> bool:
            sup.reconcile(run_id)
            sup.drain(10)
            return _running(compute, rec, attempt)

        wait_for(lambda: step(1), 30, "attempt 1 to run")
        out: dict = {}
        deleter = threading.Thread(target=lambda: out.update(delete_run(store, compute, run_id, 0.05)),
                                   name="ops-delete", daemon=True)
        deleter.start()
        wait_for(compute.held.is_set, 10, "the delete to be deleting attempt 1")
        wait_for(lambda: rec.stop_in_progress() is None, 10, "the delete's marker to lapse")
        # The supervisor ends the run (.stop), the user restarts it, attempt 2 runs.
        wait_for(lambda: (sup.reconcile(run_id), sup.drain(10))
                 and rec.read_state()[0].state == State.STOPPED, 30, "the supervisor to stop the run")
        rec.reopen("submit", "restart requested by user")
        wait_for(lambda: step(2), 30, "attempt 2 to run")
        compute.gate.set()  # the frozen delete resumes
        deleter.join(30)
        assert not deleter.is_alive()
        st = rec.read_state()[0]
        assert (st.state, st.attempt) == (State.RUNNING, 2), f"the resumed delete undid the restart: {st}"
        assert [i.attempt for i in compute.alive(run_id)] == [2], "attempt 2's instance was deleted"
        assert not store.exists(rec.name(rec.STOP)), "the resumed delete wrote .stop over the restarted run"
        assert "restarted" in out.get("error", ""), out
        rec.request_stop("test")
        wait_for(lambda: (sup.reconcile(run_id), sup.drain(10))
                 and rec.read_state()[0].state == State.STOPPED, 30, "cleanup")
