"""PyTorch jobs through the whole product: real container (workload-torch image), local backend,
real agent, `runner ops preempt`, the supervisor restarting, and the checkpoint restored.

The claim under test is the strongest one a user can ask of a resume: a run preempted several
times ends with the same weights, bit for bit, as one that never stopped (model and optimizer
state compared with ``torch.equal`` inside the container, since the host has no torch).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runner.launch.backends.local import STORE_MOUNT

pytestmark = [pytest.mark.docker, pytest.mark.torch]

TORCH_IMAGE = os.environ.get("RUNNER_TEST_TORCH_IMAGE", "cos-spot-runner/workload-torch:dev")

# Small enough for a 2-core CI machine; the dataset rolls over several epochs, so the data-loader
# position is exercised across epoch boundaries. One thread: the same kernels in both runs.
COMMON = ["--checkpoint-every", "20", "--dataset-size", "384", "--batch-size", "32", "--threads", "1",
          "--seed", "7"]


@pytest.fixture(scope="module")
def torch_image(docker_client: Any) -> str:
    try:
        docker_client.images.get(TORCH_IMAGE)
    except Exception as e:  # noqa: BLE001 - any reason means the same fix
        pytest.fail(f"image {TORCH_IMAGE} unavailable ({e}): build it with `make image-torch`")
    return TORCH_IMAGE


def train(steps: int, *extra: str, torchrun: bool = False) -> list[str]:
    launcher = (["torchrun", "--standalone", "--local-addr", "127.0.0.1", "--nproc-per-node", "2", "-m"] if torchrun
                else ["python3", "-m"])
    return [*launcher, "examples.torch_train", "--steps", str(steps), *COMMON, *extra]


def submit_detached(runner: Any, run_id: str, image: str, command: list[str]) -> None:
    out = runner("submit", "--run-id", run_id, "--image", image, "--detach", "--", *command)
    assert out.returncode == 0, out.stderr


def preempt_at(runner: Any, run_id: str, targets: list[int]) -> None:
    """Preempt attempt i once it has reached targets[i] (by its own heartbeat, not the one the
    previous attempt left behind)."""

    def reached(attempt: int, target: int) -> bool:
        hb = runner.read_json(run_id, "heartbeat.json") or {}
        return (runner.state(run_id).get("state") == "RUNNING" and hb.get("attempt") == attempt
                and int(hb.get("progress", {}).get("step", 0)) >= target)

    for attempt, target in enumerate(targets, start=1):
        runner.wait_for(lambda: reached(attempt, target), timeout=180,
                        desc=f"attempt {attempt} to reach step {target}")
        out = runner("ops", "preempt", "--run-id", run_id)
        assert out.returncode == 0, out.stderr


def torch_equal(runner: Any, image: str, a: str, b: str) -> dict[str, Any]:
    """examples.torch_equal on two stored files, in the torch image (the host has no torch)."""
    runs = f"{STORE_MOUNT}/runs"
    out = runner.docker.containers.run(
        image, ["python3", "-m", "examples.torch_equal", f"{runs}/{a}", f"{runs}/{b}"],
        entrypoint=[], network_mode="none", remove=True, stderr=True,
        volumes={str(runner.store_dir): {"bind": STORE_MOUNT, "mode": "ro"}})
    return json.loads(out.decode().strip().splitlines()[-1])


def log_lines(runner: Any, run_id: str, attempt: int) -> list[str]:
    return (runner.run_dir(run_id) / "logs" / f"{attempt}.log").read_text().splitlines()


def wait_done(runner: Any, sups: list[subprocess.Popen[str]], timeout: float = 300) -> None:
    for s in sups:
        try:
            s.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            s.kill()
            raise


def test_a_run_preempted_three_times_ends_bit_exact_with_an_uninterrupted_run(runner, run_id, torch_image):
    seed = int(os.environ.get("RUNNER_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    steps = 96
    targets = [rng.randint(5, 15), rng.randint(40, 50), rng.randint(70, 80)]
    why = f"(RUNNER_TEST_SEED={seed}, preempt targets {targets})"
    ref, run = f"{run_id}-ref", f"{run_id}-pre"

    submit_detached(runner, ref, torch_image, train(steps))
    # The delay gives the run a real model's pace, so each preemption lands mid-run; it changes
    # no number (the reference runs without it).
    submit_detached(runner, run, torch_image, train(steps, "--step-delay", "0.15"))
    sups = [runner.popen("supervise", "--run-id", r) for r in (ref, run)]
    preempt_at(runner, run, targets)
    wait_done(runner, sups)

    for r, attempts in ((ref, 1), (run, 4)):
        st = runner.state(r)
        assert (st["state"], st["attempt"]) == ("SUCCEEDED", attempts), (r, st, why)
    # Each attempt stopped at a step at or after its target, checkpointed there, and the next
    # attempt resumed at exactly that step.
    starts = runner.read_json(run, "results/summary.json")["starts"]
    stopped_at = [runner.read_json(run, f"attempts/{a}/manifest.json")["last_progress"]["step"]
                  for a in (1, 2, 3)]
    assert starts == [0, *stopped_at], why
    assert all(s >= t for s, t in zip(stopped_at, targets)), why
    assert stopped_at[0] < stopped_at[1] < stopped_at[2] < steps, why

    result = torch_equal(runner, torch_image, f"{ref}/results/final.pt", f"{run}/results/final.pt")
    assert result["equal"], (result["mismatches"][:10], why)
    # model: 8 parameters + 3 BatchNorm buffers; optimizer: step, exp_avg, exp_avg_sq per parameter
    assert result["tensors"] >= 8 + 3 + 3 * 8, result


@pytest.mark.long  # `make chaos`: ~1 min; the bit-exact resume above runs in `make test`
def test_torchrun_ranks_all_hear_sigterm_and_resume_together_from_rank_0s_checkpoint(runner, run_id, torch_image):
    seed = int(os.environ.get("RUNNER_TEST_SEED", random.randrange(1 << 30)))
    target = random.Random(seed).randint(8, 30)
    why = f"(RUNNER_TEST_SEED={seed}, preempt target {target})"
    steps = 60
    ref, run = f"{run_id}-ref", f"{run_id}-pre"

    submit_detached(runner, ref, torch_image, train(steps, torchrun=True))
    submit_detached(runner, run, torch_image, train(steps, "--step-delay", "0.15", torchrun=True))
    sups = [runner.popen("supervise", "--run-id", r) for r in (ref, run)]
    preempt_at(runner, run, [target])
    wait_done(runner, sups)

    st = runner.state(run)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2), (st, why)
    first, second = log_lines(runner, run, 1), log_lines(runner, run, 2)
    stops = {r: [ln for ln in first if ln.startswith(f"torch_train[rank {r}]: stopping at step")] for r in (0, 1)}
    # Both ranks got SIGTERM (torchrun forwards it to workers in their own sessions) and stopped
    # at the same step.
    assert all(len(v) == 1 and "SIGTERM received" in v[0] for v in stops.values()), (stops, why)
    stop_step = {int(v[0].split("stopping at step ")[1].split()[0]) for v in stops.values()}
    assert len(stop_step) == 1, (stops, why)
    (s,) = stop_step
    assert target <= s < steps, why
    resumed = sorted(ln for ln in second if "resuming at step" in ln)
    assert resumed == [f"torch_train[rank {r}]: resuming at step {s} "
                       f"(epoch {s // 12}, batch {s % 12})" for r in (0, 1)], (resumed, why)
    summary = runner.read_json(run, "results/summary.json")
    assert (summary["starts"], summary["world_size"]) == ([0, s], 2)

    # Every rank's RNG state was in rank 0's checkpoint: the result equals the uninterrupted run's.
    assert runner.state(ref)["state"] == "SUCCEEDED"
    result = torch_equal(runner, torch_image, f"{ref}/results/final.pt", f"{run}/results/final.pt")
    assert result["equal"], (result["mismatches"][:10], why)
