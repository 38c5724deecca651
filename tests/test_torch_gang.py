"""A 2-node PyTorch gang through the whole product: `runner submit --nodes 2`, a plain `torchrun`
on each node (its rendezvous comes from the gang's PET_* environment), gloo across the gang's
private Docker network, node 1 preempted mid-run with `runner ops preempt --node 1`.

The claim under test: the whole gang restarts, every rank resumes from rank 0's last checkpoint,
and the run ends with the same weights, bit for bit (``torch.equal``), as an uninterrupted 2-node
run of the same job.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from tests.test_torch_resume import COMMON, torch_equal, torch_image, wait_done  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker, pytest.mark.torch]


def gang_train(steps: int, *extra: str) -> list[str]:
    # No --nnodes, --node-rank, --master-addr: torchrun reads them from PET_NNODES, PET_NODE_RANK,
    # PET_MASTER_ADDR, PET_MASTER_PORT (the README's "Multi-node" form).
    return ["torchrun", "--nproc-per-node", "1", "-m", "examples.torch_train", "--steps", str(steps), *COMMON, *extra]


def submit_gang(runner: Any, run_id: str, image: str, command: list[str]) -> None:
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", image, "--detach", "--", *command)
    assert out.returncode == 0, out.stderr


def test_a_2_node_torchrun_gang_preempted_on_node_1_restarts_whole_and_ends_bit_exact(runner, run_id, torch_image):
    seed = int(os.environ.get("RUNNER_TEST_SEED", random.randrange(1 << 30)))
    target = random.Random(seed).randint(8, 24)
    why = f"(RUNNER_TEST_SEED={seed}, preempt target {target})"
    steps = 48
    ref, run = f"{run_id}-ref", f"{run_id}-pre"
    submit_gang(runner, ref, torch_image, gang_train(steps))
    submit_gang(runner, run, torch_image, gang_train(steps, "--step-delay", "0.15"))
    sups = [runner.popen("supervise", "--run-id", r) for r in (ref, run)]

    def reached() -> bool:
        hb = runner.read_json(run, "heartbeat.json") or {}
        return (runner.state(run).get("state") == "RUNNING" and hb.get("attempt") == 1
                and int(hb.get("progress", {}).get("step", 0)) >= target)

    runner.wait_for(reached, 240, f"the gang to reach step {target}")
    out = runner("ops", "preempt", "--run-id", run, "--node", "1")
    assert out.returncode == 0, out.stderr
    wait_done(runner, sups, timeout=400)

    st = runner.state(run)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2), (st, why)
    events = json.loads(runner("ops", "events", "--run-id", run, "--json").stdout)
    lost = [e for e in events if e.get("to") == "PREEMPTED"]
    # Rank 0's job failed with its peer (or stopped with it): recorded as the gang's preemption,
    # by rank 0's agent or the supervisor, never as the job's failure.
    assert len(lost) == 1 and "node 1" in lost[0]["reason"], (lost, why)
    assert not [e for e in events if e.get("to") in ("FAILED", "ERRORED")], (events, why)
    summary = runner.read_json(run, "results/summary.json")
    assert summary["world_size"] == 2 and summary["starts"][0] == 0 and len(summary["starts"]) == 2, (summary, why)
    assert target <= summary["starts"][1] < steps, (summary, why)
    second = (runner.run_dir(run) / "logs" / "2.node1.log").read_text()
    assert f"torch_train[rank 1]: resuming at step {summary['starts'][1]}" in second, (second[-800:], why)

    assert runner.state(ref)["state"] == "SUCCEEDED"
    result = torch_equal(runner, torch_image, f"{ref}/results/final.pt", f"{run}/results/final.pt")
    assert result["equal"], (result["mismatches"][:10], why)
    assert result["tensors"] >= 8 + 3 + 3 * 8, result
