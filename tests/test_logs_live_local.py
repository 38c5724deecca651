"""Logs as they happen on the local backend (issue 20, item 12): a line the job prints is shown by
an attached `submit` and by `ops logs --follow` straight from Docker's log of the container, not
after the agent's next upload to the store.

The heartbeat (the agent's upload interval) is set far beyond the test's length, so the store has
no log while the job runs: a line seen then can only have come from the container itself. The
test waits for the line to appear; it assumes no speed.
"""

from __future__ import annotations

import re
import threading

import pytest

from tests.conftest import IMAGE

pytestmark = pytest.mark.docker

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
# Prints one line, then waits to be stopped: what a trainer looks like between its log lines.
JOB = ["python3", "-c", "import time; print('hello from the job', flush=True); time.sleep(3600)"]
SLOW_UPLOADS = {"RUNNER_HEARTBEAT_INTERVAL": "3600"}


class Lines:
    """A stream read line by line in the background, so the test can wait for a line."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._t.start()

    def has(self, pattern: str) -> bool:
        return any(re.search(pattern, ln) for ln in list(self.lines))


def test_a_local_jobs_line_is_shown_while_it_runs_before_the_store_has_it(runner, run_id):
    sub = runner.popen("submit", "--run-id", run_id, "--image", IMAGE, "--", *JOB, **SLOW_UPLOADS)
    sub_err = Lines(sub.stderr)
    runner.wait_for(lambda: sub_err.has(rf"^{re.escape(run_id)}\[1\] \| hello from the job$"), timeout=120,
                    desc="the attached submit showing the job's line")
    follow = runner.popen("ops", "logs", "--run-id", run_id, "--follow", "--timestamps")
    follow_out = Lines(follow.stdout)
    runner.wait_for(lambda: follow_out.has(rf"^{STAMP} hello from the job$"), timeout=60,
                    desc="ops logs --follow showing the job's line, stamped")
    # Neither came from the store: the agent has not uploaded its log yet.
    assert not (runner.run_dir(run_id) / "logs" / "1.log").exists()
    assert runner("ops", "delete", "--run-id", run_id).returncode == 0
    follow.wait(timeout=60)
    sub.wait(timeout=60)
    assert follow.returncode == 0
    assert sub_err.has(r"-> STOPPED")


def test_a_local_run_followed_quietly_shows_no_output(runner, run_id):
    out = runner("submit", "--quiet", "--run-id", run_id, "--image", IMAGE, "--",
                 "python3", "-c", "print('unseen'); raise SystemExit(4)")
    assert out.returncode == 1, out.stderr
    assert f"{run_id}[1] |" not in out.stderr
    # A failed run still says how it ended, --quiet or not: its last lines and where the rest is.
    assert "    unseen\n" in out.stderr and f"runner ops logs --run-id {run_id}" in out.stderr
