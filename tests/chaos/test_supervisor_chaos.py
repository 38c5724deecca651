"""The whole thing under a hostile operator: real ``runner supervise`` processes, real containers.

Three supervisors over four runs (two healthy trainers, two jobs that hang and ignore SIGTERM)
and one attached follower per healthy run,
while the harness preempts healthy containers hard (``docker rm -f``, a spot VM with
terminationAction=DELETE) and kill -9s supervisors, starting fresh ones. Outcomes asserted:
never two running containers of one run (sampled every 0.1 s), every healthy run SUCCEEDED with
its exact step count, and no restart that the harness did not cause.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.chaos.harness import cycles
from tests.conftest import IMAGE, trainer

pytestmark = pytest.mark.docker

HUNG_JOB = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('RUNNER_PROGRESS step=1 total=2', flush=True); time.sleep(10**6)")
STEPS = 60
FAST = {"RUNNER_POLL_INTERVAL": "0.3", "RUNNER_STALL_POLLS": "20", "RUNNER_GPU_TIMEOUT": "6",
        "RUNNER_GRACE_PERIOD": "5", "RUNNER_MAX_RESTARTS": "1000"}


class _Sampler(threading.Thread):
    """The most containers of each run seen running at once (one Docker list call per sample)."""

    def __init__(self, docker: Any, run_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.docker, self.run_ids, self.most = docker, set(run_ids), Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            now = Counter(c.labels.get("run-id-full") for c in self.docker.containers.list(
                filters={"label": "runner=cos-spot-runner", "status": "running"}, ignore_removed=True))
            for r in self.run_ids:
                self.most[r] = max(self.most[r], now[r])
            time.sleep(0.1)


def test_three_supervisors_kill_9s_hung_jobs_and_preemptions_never_double_a_run(runner, run_id):
    healthy = [f"{run_id}-ok{i}" for i in (1, 2)]
    hung = [f"{run_id}-hung{i}" for i in (1, 2)]
    for r in healthy:
        assert runner("submit", "--run-id", r, "--image", IMAGE, "--detach", "--", *trainer(STEPS, 5, 0.1),
                      **FAST).returncode == 0
    for r in hung:
        assert runner("submit", "--run-id", r, "--image", IMAGE, "--detach", "--", "python3", "-c", HUNG_JOB,
                      **FAST).returncode == 0
    sups = [runner.popen("supervise", **FAST) for _ in range(3)]
    # An attached actor per healthy run (as `runner submit` without --detach is): it restarts its
    # run while the all-runs supervisors may be busy with the hung neighbours.
    for r in healthy:
        runner.popen("supervise", "--run-id", r, **FAST)
    sampler = _Sampler(runner.docker, healthy + hung)
    sampler.start()
    rng = random.Random(10)
    kills, sup_kills = Counter(), 0
    per_run = cycles(short=2, long=6)
    try:
        deadline = time.time() + 150 + 40 * per_run

        def done() -> bool:  # the healthy runs finished, and each hung job was killed and restarted
            return (all(runner.state(r).get("state") == "SUCCEEDED" for r in healthy)
                    and all(runner.state(r).get("attempt", 0) >= 2 for r in hung))

        last_kill: dict[str, float] = {}
        tick = 0
        while time.time() < deadline and not done():
            time.sleep(rng.uniform(0.2, 0.6))
            tick += 1
            if tick % 6 == 0:  # a supervisor dies without a word, another takes its place
                i = rng.randrange(len(sups))
                sups[i].kill()
                sups[i].wait()
                sups[i] = runner.popen("supervise", **FAST)
                sup_kills += 1
                continue
            for r in healthy:
                st = runner.state(r)
                if (kills[r] >= per_run or st.get("state") != "RUNNING" or time.time() - last_kill.get(r, 0) < 1
                        or not 3 <= runner.step(r) <= STEPS - 10):
                    continue
                live = [c for c in runner.containers(r)
                        if c.status == "running" and c.labels.get("attempt") == str(st.get("attempt"))]
                if live:
                    live[0].remove(force=True)  # a spot preemption with terminationAction=DELETE
                    kills[r] += 1
                    last_kill[r] = time.time()
    finally:
        sampler.halt.set()
        sampler.join()
        hung_attempts = [runner.state(r).get("attempt", 0) for r in hung]
        for r in hung:
            runner("ops", "delete", "--run-id", r, "--grace-period", "0")
    states = {r: runner.state(r) for r in healthy}
    assert all(s.get("state") == "SUCCEEDED" for s in states.values()), states
    assert all(sampler.most[r] <= 1 for r in healthy + hung), f"two running containers of one run: {sampler.most}"
    for r in healthy:
        assert runner.read_json(r, "results/summary.json")["steps"] == STEPS
        assert states[r]["restarts"] <= kills[r], f"{r}: {states[r]['restarts']} restarts for {kills[r]} preemptions"
    assert sum(kills.values()) >= len(healthy) and sup_kills >= 1 and min(hung_attempts) >= 2, \
        f"too little chaos to judge: preemptions {dict(kills)}, supervisor kills {sup_kills}, hung attempts {hung_attempts}"
