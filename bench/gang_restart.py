"""Gang restart time on the local backend: one node of a 2-node gang removed hard (a spot VM with
terminationAction=DELETE vanishing) → every node of the next generation running its job, against
the same measure for a single-node run, in one run on this machine.

"Running its job" is each node's first heartbeat of the new attempt (rank 0's ``heartbeat.json``,
node 1's ``nodes/1/heartbeat.json``): the agent has restored the checkpoint and started the job.
A gang's restart also has to take down the surviving node (its SIGTERM, its final sync) and create
its private network, so it is expected to cost more than a single node's; the ratio says how much.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")


def _beat(store: Path, run_id: str, rel: str) -> int:
    try:
        return json.loads((store / "runs" / run_id / rel).read_text()).get("attempt", 0)
    except (OSError, ValueError):
        return 0


def _wait(fn, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not fn():
        if time.time() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.02)


def _measure(nodes: int, poll: float, trials: int) -> list[float]:
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_STORE": f"file://{tmp}",
               "RUNNER_POLL_INTERVAL": str(poll), "RUNNER_STALL_POLLS": "100000",
               "RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_GRACE_PERIOD": "5", "RUNNER_MAX_RESTARTS": "100"}
        cli = [sys.executable, "-m", "runner.cli"]
        run_id = f"bench-gang{nodes}-{os.getpid()}"
        subprocess.run(cli + ["submit", "--run-id", run_id, "--nodes", str(nodes), "--image", IMAGE, "--detach",
                              "--", "python3", "-m", "examples.trainer", "--steps", "100000"],
                       env=env, check=True, capture_output=True)
        sup = subprocess.Popen(cli + ["supervise", "--run-id", run_id], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        beats = ["heartbeat.json"] + [f"nodes/{r}/heartbeat.json" for r in range(1, nodes)]
        took = []
        try:
            for attempt in range(1, trials + 1):
                _wait(lambda: all(_beat(store, run_id, b) == attempt for b in beats))
                time.sleep(1.0)
                victim = [c for c in client.containers.list(filters={"label": [f"run-id={run_id}"]})
                          if c.labels.get("attempt") == str(attempt) and c.labels.get("rank") == str(nodes - 1)]
                victim[0].remove(force=True)
                gone = time.time()
                _wait(lambda: all(_beat(store, run_id, b) == attempt + 1 for b in beats))
                took.append(time.time() - gone)
        finally:
            sup.kill()
            subprocess.run(cli + ["ops", "delete", "--run-id", run_id, "--grace-period", "0"],
                           env=env, capture_output=True)
            sup.wait()
    return took


def main(poll: float = 1.0, trials: int = 3) -> float:
    single = _measure(1, poll, trials)
    gang = _measure(2, poll, trials)
    s, g = statistics.median(single), statistics.median(gang)
    print(f"restart, node lost -> every node of the next generation running (poll {poll:.1f} s, {trials} trials):")
    print(f"  single node: {', '.join(f'{x:.2f}' for x in single)} s (median {s:.2f})")
    print(f"  2-node gang: {', '.join(f'{x:.2f}' for x in gang)} s (median {g:.2f})")
    print(f"  gang/single = {g / s:.2f}x")
    return g
