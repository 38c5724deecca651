"""--progress-regex end to end: an unmodified script that prints ``iter N`` gets status, ETA and
the stall watchdog, on the local backend with real Docker and the workload image (the agent in
the image does the matching, so this needs an image built from this tree)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import IMAGE

pytestmark = pytest.mark.docker

# Prints its step the way nanoGPT does ("iter N: loss ...") and never RUNNER_PROGRESS; after six
# steps it hangs: alive, heartbeating, going nowhere.
ITER_THEN_HANG = ["python3", "-c",
                  "import time\n"
                  "for i in range(1, 7):\n"
                  "    print(f'iter {i}: loss {3.0 / i:.4f}, time 1000.00ms', flush=True)\n"
                  "    time.sleep(1)\n"
                  "time.sleep(600)\n"]


def test_a_script_printing_iter_n_shows_progress_and_eta_and_is_killed_when_it_stalls(runner, run_id):
    sub = runner.popen("submit", "--run-id", run_id, "--image", IMAGE, "--max-restarts", "0",
                       "--progress-regex", r"iter (\d+)", "--progress-total", "20", "--", *ITER_THEN_HANG,
                       RUNNER_STALL_POLLS="6", RUNNER_POLL_INTERVAL="0.5", RUNNER_GPU_TIMEOUT="3")
    runner.wait_for(lambda: runner.step(run_id) >= 2, timeout=90, desc="a step read from 'iter N'")
    out = runner("ops", "status", "--run-id", run_id, "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["state"] == "RUNNING" and s["progress"]["total"] == 20 and s["progress"]["step"] >= 2, s
    assert s["eta_s"] is not None and s["eta_s"] > 0, s
    sub.wait(timeout=90)
    st = runner.state(run_id)
    # Stopped at step 6 of 20: the watchdog saw the step stop changing and ended the run.
    assert st["state"] == "FAILED" and "max_restarts" in st["reason"], st
    stalled = [json.loads(p.read_text()) for p in sorted((runner.run_dir(run_id) / "events").iterdir())]
    stalled = [ev for ev in stalled if ev["to"] == "STALLED"]
    assert len(stalled) == 1 and "no progress" in stalled[0]["reason"], stalled
    assert runner.step(run_id) == 6
    assert runner.containers(run_id) == []
