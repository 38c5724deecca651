"""Jobs that hang and ignore SIGTERM must not hold up anyone else's restart (issue 10 §2).

Killing such a job takes its whole grace period (``docker stop`` waits, then SIGKILL). Done
inside the pass, it made every other run wait: a healthy run preempted meanwhile was restarted
only once the hung neighbour's delete had finished. Asserted here as an order of events, not a
time (the latency itself is measured by ``python -m bench hung_neighbours``): the healthy run's
next attempt exists while the hung neighbour is still being stopped.
"""

from __future__ import annotations

import threading
import time

from entrypoint.record import AttemptSettings, Heartbeat, RunRecord, State
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from tests.chaos.harness import RaceCompute, cycles
from tests.chaos.harness import submit_run
from tests.conftest import wait_for

GRACE = 3.0


def _settings(store: LocalStore) -> SupervisorSettings:
    return SupervisorSettings(poll_interval=0.05, store_url=store.url,
                              legacy_attempts=AttemptSettings(stall_window=0.5, heartbeat_interval=0.05, sync_interval=1, grace_period=GRACE, shm_size="1g"))


def test_a_healthy_run_restarts_while_hung_neighbours_are_still_being_stopped(tmp_path):
    store = LocalStore(str(tmp_path))
    compute = RaceCompute(store, hung_runs={"aa-hung-1", "aa-hung-2"})
    recs = {r: submit_run(store, r) for r in ("aa-hung-1", "aa-hung-2", "zz-healthy")}
    sup = Supervisor(store, compute, _settings(store), actor="sup")
    stop = threading.Event()

    def supervise() -> None:
        while not stop.is_set():
            now = time.time()  # the healthy job makes progress; the hung ones never do
            st = recs["zz-healthy"].read_state()[0]
            recs["zz-healthy"].write_heartbeat(Heartbeat(time=now, attempt=st.attempt, phase="training",
                                                         progress={"step": now}, progress_changed_at=now))
            sup.reconcile_all()
            time.sleep(0.05)

    loop = threading.Thread(target=supervise, daemon=True)
    loop.start()
    try:
        for cycle in range(cycles(short=1, long=5)):
            # A neighbour stalls and its delete begins (it takes the whole grace period).
            hung_now = wait_for(lambda: {n for n in compute.stopping if "hung" in n and n.endswith(f"-a{cycle + 1}")},
                                10 + GRACE, "a hung neighbour to be in its grace period", every=0.01)
            healthy = recs["zz-healthy"].read_state()[0]
            live = [i for i in compute.alive("zz-healthy") if i.attempt == healthy.attempt]
            assert healthy.state == State.RUNNING and live, f"the healthy run is not running: {healthy}"
            compute.preempt(live[0])
            wait_for(lambda: any(i.attempt == healthy.attempt + 1 for i in compute.alive("zz-healthy")),
                     3 * GRACE, "the healthy run's next attempt", every=0.01)
            assert hung_now <= compute.stopping, (
                f"the healthy run was restarted only after the delete of {sorted(hung_now)} finished: "
                "the pass waited on a hung neighbour")
            # The neighbours themselves restart only once their old instance is gone.
            wait_for(lambda: all(recs[r].read_state()[0].attempt == cycle + 2 and
                                 recs[r].read_state()[0].state == State.RUNNING for r in ("aa-hung-1", "aa-hung-2")),
                     3 * GRACE, "the hung neighbours' next attempts", every=0.01)
    finally:
        stop.set()
        loop.join(10)
        assert sup.drain(3 * GRACE), "background deletes did not finish"
    assert compute.doubles == [], compute.doubles
    hung_deletes = [g for n, g in compute.deleted if "hung" in n]
    assert hung_deletes and all(g == GRACE for g in hung_deletes), (
        f"hung jobs must get their grace period (final sync), deletes: {compute.deleted}")
