"""`ops delete` racing `submit --restart`: the next attempt never runs beside a job in its grace.

Found attacking round 3: with a job that ignores SIGTERM (it uses its whole grace period), a
restart issued while `ops delete` was still waiting for it reopened the run, removed `.stop`,
and a supervisor started attempt 2 beside attempt 1's still-running job (20 of 20 tries).

Two ways in, alternated, with real Supervisors looping on a real local store and the
``RaceCompute`` stand-in, whose jobs here all ignore SIGTERM (a delete blocks for the grace
period, the container stays listed as running, as ``docker stop`` does):
- ``ops delete`` (``delete_run``) in a thread: a restart while it gives the job its grace is
  refused ("being deleted"), and once it is done the restart goes through;
- a plain ``.stop`` (a supervisor stops the run, deleting in the background): the run is STOPPED
  while its job still has its grace; a restart then is allowed, and the next attempt waits until
  the old job is gone (the PENDING path waits like every other start).
"""

from __future__ import annotations

import random
import sys
import threading
import time

import pytest

from entrypoint.record import AttemptSettings, RunRecord, State, StopInProgress
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from runner.ops.runs import delete_run
from tests.chaos.harness import RaceCompute, cycles, looping, submit_run, wind_down
from tests.conftest import wait_for

GRACE = 1.0


def _stopping(compute: RaceCompute, run_id: str) -> bool:
    """A delete of one of the run's instances is in its grace period (the job still runs)."""
    return any(name.startswith(f"runner-{run_id}-") for name in list(compute.stopping))


def _running(compute: RaceCompute, rec: RunRecord, attempt: int) -> bool:
    st = rec.read_state()[0]
    return st.state == State.RUNNING and st.attempt == attempt and any(
        i.attempt == attempt for i in compute.alive(rec.run_id))


def test_a_restart_while_a_run_is_being_deleted_never_runs_beside_the_old_job(tmp_path):
    store = LocalStore(str(tmp_path))
    n = cycles(4, 30)
    runs = [f"dr-{i}" for i in range(n)]
    compute = RaceCompute(store, create_delay=0.01, hung_runs=set(runs))
    settings = SupervisorSettings(poll_interval=0.03, store_url=store.url,
                                  legacy_attempts=AttemptSettings(grace_period=GRACE, stall_window=600))
    sups = [Supervisor(store, compute, settings, actor=f"sup-{i}") for i in range(2)]
    stop = threading.Event()
    threads = [looping(stop, s.reconcile_all, every=0.03) for s in sups]
    rng = random.Random(3)
    refused = allowed_during_grace = 0
    try:
        for i, run_id in enumerate(runs):
            rec = submit_run(store, run_id, max_restarts=1000)
            wait_for(lambda: _running(compute, rec, 1), 30, f"{run_id} attempt 1 to run")
            if i % 2 == 0:  # `runner ops delete`, and a restart during its grace period
                deleter = threading.Thread(target=delete_run, args=(store, compute, run_id, rng.uniform(0.5, 1.5)))
                deleter.start()
                wait_for(lambda: _stopping(compute, run_id), 10, "the delete to be in the job's grace period",
                         every=0.005)
                during = deleter.is_alive(), rec.stop_in_progress(), list(compute.stopping)
                with pytest.raises(StopInProgress, match="being deleted"):
                    rec.reopen("submit", "restart requested by user")
                refused += 1
                assert during[0], during
                deleter.join(30)
                assert store.exists(rec.name(rec.STOP)), "the delete's .stop was removed"
                assert rec.read_state()[0].state == State.STOPPED
            else:  # a plain .stop: the supervisor stops the run, deleting in the background
                rec.request_stop("user")
                wait_for(lambda: rec.read_state()[0].state == State.STOPPED and _stopping(compute, run_id), 10,
                         "STOPPED while the job is still in its grace period", every=0.005)
                allowed_during_grace += 1
            rec.reopen("submit", "restart requested by user")
            wait_for(lambda: _running(compute, rec, rec.read_state()[0].attempt), 30, f"{run_id} to run again")
            rec.request_stop("test")  # done with it (the supervisors end it)
    finally:
        wind_down(stop, threads, sups, join=10)
    print(f"chaos delete_restart: {len(compute.doubles)} double(s) in {n} cycles "
          f"({refused} restarts refused during a delete, {allowed_during_grace} allowed after a stop)",
          file=sys.stderr)
    assert compute.doubles == [], f"{len(compute.doubles)} double(s): {compute.doubles[:3]}"


HUNG_JOB = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('RUNNER_PROGRESS step=1 total=2', flush=True); time.sleep(10**6)")


def _live_containers(runner, run_id: str) -> list[str]:
    return sorted(c.name for c in runner.containers(run_id) if c.status in ("running", "restarting", "paused"))


class _ContainerSampler(threading.Thread):
    """The most containers of one run seen running at once."""

    def __init__(self, runner, run_id: str) -> None:
        super().__init__(daemon=True)
        self.runner, self.run_id, self.most, self.seen = runner, run_id, 0, []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            live = _live_containers(self.runner, self.run_id)
            if len(live) > self.most:
                self.most, self.seen = len(live), live
            time.sleep(0.05)


@pytest.mark.docker
def test_cli_restart_during_ops_delete_is_refused_and_later_runs_alone(runner, run_id):
    """As a user does it: `ops delete` of a job that ignores SIGTERM, `submit --restart` during
    its grace period (refused, says why), then again after it (runs, alone)."""
    from tests.conftest import IMAGE

    fast = {"RUNNER_POLL_INTERVAL": "0.3", "RUNNER_GRACE_PERIOD": "4"}
    runner.popen("supervise", **fast)
    for cycle in range(cycles(1, 5)):
        rid = f"{run_id}-{cycle}"
        p = runner("submit", "--run-id", rid, "--image", IMAGE, "--detach", "--", "python3", "-c", HUNG_JOB, **fast)
        assert p.returncode == 0, p.stderr
        runner.wait_for(lambda: runner.state(rid).get("state") == "RUNNING" and _live_containers(runner, rid),
                        90, f"{rid} to run")
        sampler = _ContainerSampler(runner, rid)
        sampler.start()
        deleting = runner.popen("ops", "delete", "--run-id", rid, **fast)
        runner.wait_for(lambda: (runner.read_json(rid, ".stop") or {}).get("in_progress_until"), 30,
                        "the delete to start")
        early = runner("submit", "--run-id", rid, "--restart", "--detach", **fast)
        assert deleting.poll() is None, "the delete ended before the restart was tried: raise the grace period"
        assert early.returncode != 0 and "being deleted" in early.stderr, (early.returncode, early.stderr)
        assert "Traceback" not in early.stderr
        _, err = deleting.communicate(timeout=60)
        assert deleting.returncode == 0, err
        assert runner.state(rid).get("state") == "STOPPED" and (runner.run_dir(rid) / ".stop").exists()
        again = runner("submit", "--run-id", rid, "--restart", "--detach", **fast)
        assert again.returncode == 0, again.stderr
        runner.wait_for(lambda: runner.state(rid).get("state") == "RUNNING" and runner.state(rid).get("attempt") == 2
                        and _live_containers(runner, rid), 90, f"{rid} attempt 2 to run")
        sampler.halt.set()
        sampler.join()
        assert sampler.most == 1, f"{sampler.seen} ran at once"
        out = runner("ops", "delete", "--run-id", rid, "--grace-period", "0", **fast)
        assert out.returncode == 0, out.stderr
