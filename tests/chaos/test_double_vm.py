"""Never two live instances of one run: slow passes racing restarts by other supervisors.

The race (issue 10 §1): a supervisor lists instances at the start of its pass; a slow step on one
run (killing a job that ignores SIGTERM) makes that list seconds old; meanwhile another
supervisor, or an attached ``submit``, restarts a preempted run; the slow pass then reads the
run's fresh state (attempt N+1, RUNNING), does not find attempt N+1 in its old list, declares it
"gone" and starts attempt N+2 beside the live one.

The harness replays it with real Supervisors (three looping passes and one attached follower) on
a real local store, the ``RaceCompute`` stand-in (tests/chaos/harness.py), two hung neighbours
that stall and ignore SIGTERM, and random preemptions of three healthy runs.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from entrypoint.record import AttemptSettings, Heartbeat, RunRecord, State
from entrypoint.store_local import LocalStore
from runner.launch.supervisor import Supervisor, SupervisorSettings
from tests.chaos.harness import RaceCompute, cycles, looping, submit_run, wind_down

HUNG = ["aa-hung-1", "aa-hung-2"]  # sorted first: every pass meets them before the healthy runs
HEALTHY = ["zz-run-1", "zz-run-2", "zz-run-3"]


def _settings(store: LocalStore) -> SupervisorSettings:
    return SupervisorSettings(poll_interval=0.05, store_url=store.url,
                              legacy_attempts=AttemptSettings(stall_window=1.5, heartbeat_interval=0.05, sync_interval=1, grace_period=1.0, shm_size="1g"))


class _Healthy(threading.Thread):
    """The healthy runs' jobs: progress every 50 ms for whichever attempt is current."""

    def __init__(self, recs: list[RunRecord], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.recs, self.stop, self.step = recs, stop, 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.step += 1
            now = time.time()
            for rec in self.recs:
                cur = rec.read_state()
                if cur is not None:
                    rec.write_heartbeat(Heartbeat(time=now, attempt=cur[0].attempt, phase="training",
                                                  progress={"step": self.step}, progress_changed_at=now))
            time.sleep(0.05)


def test_slow_passes_racing_restarts_never_start_a_second_live_instance(tmp_path):
    store = LocalStore(str(tmp_path))
    compute = RaceCompute(store, create_delay=0.02, hung_runs=set(HUNG))
    recs = {r: submit_run(store, r) for r in HUNG + HEALTHY}
    stop = threading.Event()
    sups = [Supervisor(store, compute, _settings(store), actor=f"sup-{i}") for i in range(3)]
    attached = Supervisor(store, compute, _settings(store), actor="submit")
    threads = [looping(stop, s.reconcile_all) for s in sups]
    threads.append(looping(stop, lambda: attached.reconcile(HEALTHY[0])))
    jobs = _Healthy([recs[r] for r in HEALTHY], stop)
    jobs.start()

    target = cycles(short=25, long=300)
    kills = dict.fromkeys(HEALTHY, 0)
    rng = random.Random(10)
    deadline = time.time() + 20 + target * 0.6
    try:
        def hung_restarted() -> bool:  # the slow steps happened: each neighbour was killed once
            return min(recs[r].read_state()[0].attempt for r in HUNG) >= 2

        while (sum(kills.values()) < target or not hung_restarted()) and time.time() < deadline:
            time.sleep(rng.uniform(0.05, 0.4))
            run_id = rng.choice(HEALTHY)
            st = recs[run_id].read_state()[0]
            live = [i for i in compute.alive(run_id) if i.attempt == st.attempt]
            if st.state == State.RUNNING and live:
                compute.preempt(live[0])  # a spot preemption with terminationAction=DELETE
                kills[run_id] += 1
        settle = time.time() + 15
        while time.time() < settle and not all(
                recs[r].read_state()[0].state == State.RUNNING and compute.alive(r) for r in HEALTHY):
            time.sleep(0.1)
    finally:
        wind_down(stop, threads, sups + [attached], join=10, drain=None)
    print(f"chaos double_vm: {len(compute.doubles)} double(s), {sum(kills.values())} preemptions "
          f"(cycles), {len(compute.created)} instances created", file=sys.stderr)
    assert sum(kills.values()) >= min(target, 10), f"the harness preempted too little to judge: {kills}"
    assert compute.doubles == [], f"{len(compute.doubles)} double(s) in {sum(kills.values())} cycles: {compute.doubles[:3]}"
    restarts = {r: recs[r].read_state()[0].restarts for r in HEALTHY}
    assert restarts == kills, f"restarts counted {restarts} for preemptions {kills}: false restarts"
    hung_stalls = [recs[r].read_state()[0].attempt for r in HUNG]
    assert min(hung_stalls) >= 2, f"the hung neighbours never stalled (attempts {hung_stalls}): no slow step happened"
