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

A takeover that replays a lost VM's insert (GCE backend, Compute stand-in, GCS emulator): see
``test_a_takeover_whose_replayed_insert_names_a_vm_that_is_gone_creates_again``.
"""

from __future__ import annotations

import threading
import time

import pytest

from entrypoint.record import AttemptSettings, RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from runner.launch.backends.base import LABEL_RUN_ID
from runner.naming import label_value
from runner.ops import runs
from runner.ops.runs import delete_run
from tests.chaos.harness import GCE_IMAGE, RaceCompute, cycles, gce_supervisor
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


# ---- a takeover that replays the insert of a VM that is gone ----------------------------------

def _run_vms(fake, run_id: str) -> list:
    return [i for i in fake.instances() if i.labels.get(LABEL_RUN_ID) == label_value(run_id)]


def test_a_takeover_whose_replayed_insert_names_a_vm_that_is_gone_creates_again(gce):
    """Found in review: a create that failed with a non-``BackendError`` after GCE accepted its
    insert (here: the follow-up ``instances.get`` was refused; a creator killed there is the
    same) rightly keeps its claim; when that VM is then preempted while booting, the
    next supervisor takes the claim over in the same round, GCE replays the first (successful)
    insert operation for the same request id, and reading the VM it names gives 404: a raw
    ``NotFound``, not a ``BackendError``, so the claim was neither released nor marked: every
    pass for GCE's whole request-id window (an hour) failed the same way and the run sat in
    PROVISIONING with no VM. A replayed create whose VM is gone made nothing that exists: the
    create says so (a ``BackendError``), the claim is released, and the next round creates."""
    from runner.launch.submit import submit

    ctx, fake = gce
    run_id = "replayed-gone"
    submit(ctx, run_id, ["python3", "-m", "examples.trainer"], image=GCE_IMAGE, restart=False)
    a = gce_supervisor(ctx, 0, "sup-a")
    # A's insert is accepted; then its create fails with an error that is not a BackendError
    # (as a creator killed there does not answer at all): it must keep its claim.
    fake.fail_next(403, rpc="instances.get", reason="forbidden")
    a.reconcile(run_id)
    wait_for(lambda: len(_run_vms(fake, run_id)) == 1, 30, "A's VM to exist")
    claim = RunRecord(ctx.store, run_id).read_claim(1)
    assert claim is not None and claim.status == "creating", claim  # kept: the insert may have landed
    vm = _run_vms(fake, run_id)[0]
    fake.preempt(vm.zone.rsplit("/", 1)[-1], vm.name)  # preempted while booting (terminationAction DELETE)
    wait_for(lambda: not [i for i in _run_vms(fake, run_id) if i.status not in ("TERMINATED",)], 30,
             "the preempted VM to be gone")
    for offset in (200, 400, 600, 800):  # later passes, each past the lease (and any backoff)
        gce_supervisor(ctx, offset, f"sup-{offset}").reconcile(run_id)
        if [i for i in _run_vms(fake, run_id) if i.status not in ("TERMINATED", "STOPPING")]:
            break
    live = [i for i in _run_vms(fake, run_id) if i.status not in ("TERMINATED", "STOPPING")]
    st = RunRecord(ctx.store, run_id).read_state()[0]
    assert len(live) == 1, f"no VM after 4 passes: the run is stuck in {st.state.value}; claim " \
                           f"{RunRecord(ctx.store, run_id).read_claim(1)}"
    assert st.state == State.PROVISIONING, st
