"""Chaos: the supervisor's clock 5 minutes off the VM's (issue 17 §4).

The agent stamps its heartbeat with the VM's clock; the supervisor used to subtract that from its
own. 5 minutes ahead, it judged a healthy run stalled at once; 5 minutes behind, a hung run went
unnoticed; a supervisor pass "from the future" read as alive, "0s ago". Here the real
``runner supervise --once`` runs under ``faketime`` (libfaketime: the process's ``time.time()``
is skewed, nothing else), one pass per process as the hosted supervisor does, against the
Compute fake and the GCS emulator; the test plays the agent, writing with the true clock:

- a healthy run (progress advancing every pass) stays RUNNING on attempt 1;
- a hung run (alive, progress stopped) is judged STALLED, and never before its window has passed
  by the true clock; also when it was already hung before any supervisor looked;
- each at +5 min, at -5 min, and with two supervisors of both clocks taking turns on one store;
- the display says "in the future (clock skew ...)" where it used to say "0s ago", and does not
  count a pass stamped in the future as a live supervisor.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

import pytest

from entrypoint.record import Heartbeat, RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.submit import submit
from tests.chaos.harness import cycles
from tests.conftest import ROOT

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "d" * 64
ZONE = "us-central1-a"
WINDOW = 8  # the run's stall window, in seconds (poll interval 1 s x 8 polls)
SKEWS = {"ahead": ["+5m"], "behind": ["-5m"], "both": ["+5m", "-5m"]}
LONG = os.environ.get("RUNNER_CHAOS", "").lower() == "long"  # `make chaos`, as harness.cycles reads it


def _cases(short: str) -> list[str]:
    """Every clock arrangement under ``make chaos``; under ``make test`` the one that failed."""
    return list(SKEWS) if LONG else [short]
FAKETIME = shutil.which("faketime")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _faketime_works(skew: str, seconds: float) -> None:
    """faketime must skew Python's ``time.time()`` in a subprocess, or this test proves nothing."""
    probe = [FAKETIME, "-f", skew, sys.executable, "-c", "import time; print(time.time())"]
    before = time.time()
    out = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
    got = float(out.stdout.strip()) - before
    assert abs(got - seconds) < 60, f"`faketime -f {skew}` moved time.time() by {got:.0f}s, not {seconds}s"


@pytest.fixture
def skewed(compute_fake, gcs_store, gcs_emulator, tmp_path) -> tuple[Runner, Any]:
    """``run(skew, *args)``: the real CLI, under ``faketime -f skew`` unless ``skew`` is None."""
    if FAKETIME is None:
        pytest.skip("faketime is not installed: `apt-get install faketime` (Debian; "
                    "scripts/setup-test-env.sh installs it)")
    _faketime_works("+5m", 300)
    _faketime_works("-5m", -300)
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": PROJECT,
           "RUNNER_STORE": gcs_store.url, "RUNNER_ZONES": ZONE, "RUNNER_NO_GPU": "true",
           "RUNNER_COMPUTE_ENDPOINT": compute_fake.endpoint, "RUNNER_POLL_INTERVAL": "1",
           "RUNNER_CONFIG": str(tmp_path / "none.toml")}

    def run(skew: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "runner.cli", *args]
        # Two supervisors on one host with different clocks must say so (one clock per host
        # otherwise): the name of the clock their sightings are kept under.
        extra = {} if skew is None else {"RUNNER_CLOCK_ID": f"faketime{skew}"}
        return subprocess.run(cmd if skew is None else [FAKETIME, "-f", skew, *cmd], env={**env, **extra},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    cfg = Config(backend="gce", project=PROJECT, zones=[ZONE], compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, no_gpu=True, poll_interval=1.0, stall_polls=WINDOW)
    submit(make_context(cfg), "skewed", ["python3", "train.py"], image=IMAGE, restart=False)
    return run, gcs_store


def _pass(run: Runner, skew: str) -> None:
    p = run(skew, "supervise", "--once")
    assert p.returncode == 0 and "Traceback" not in p.stderr, f"supervise --once under {skew}: {p.stderr}"


def _started(run: Runner, store: Any, skews: list[str]) -> RunRecord:
    """The first pass creates the VM; its agent (the test, on the true clock) reports RUNNING."""
    _pass(run, skews[0])
    rec = RunRecord(store, "skewed")
    st, _ = rec.read_state()
    assert (st.state, st.attempt) == (State.PROVISIONING, 1), st
    rec.transition(State.RUNNING, "agent", expect_attempt=1, zone=ZONE)
    return rec


def _beat(rec: RunRecord, step: int, changed_at: float) -> None:
    """The agent's heartbeat, on the VM's (true) clock."""
    rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="training", progress={"step": step},
                                  progress_changed_at=changed_at))


def _stalls(rec: RunRecord) -> list[str]:
    return [ev.get("reason") or "" for _, ev in rec.events() if ev.get("to") == "STALLED"]


@pytest.mark.parametrize("clocks", _cases("ahead"))
def test_a_healthy_run_stays_running_whatever_the_supervisors_clock(skewed, clocks):
    run, store = skewed
    skews = SKEWS[clocks]
    rec = _started(run, store, skews)
    for i in range(cycles(short=3, long=20)):
        _beat(rec, step=i, changed_at=time.time())
        _pass(run, skews[i % len(skews)])
        st, _ = rec.read_state()
        assert (st.state, st.attempt) == (State.RUNNING, 1), f"pass {i} under {skews[i % len(skews)]}: {st}"
    assert _stalls(rec) == []


@pytest.mark.parametrize("clocks", _cases("behind"))
def test_a_hung_run_is_stalled_after_its_window_whatever_the_supervisors_clock(skewed, clocks):
    run, store = skewed
    skews = SKEWS[clocks]
    rec = _started(run, store, skews)
    stuck_since = time.time()  # alive (heartbeats go on), but step 7 is the last it will make
    deadline = stuck_since + WINDOW + 120  # on today's main, 5 min behind needs 300 s + the window
    i = 0
    while not _stalls(rec):
        assert time.time() < deadline, f"a run hung for {time.time() - stuck_since:.0f}s was never stalled"
        _beat(rec, step=7, changed_at=stuck_since)
        _pass(run, skews[i % len(skews)])
        i += 1
    # Never early, never overstated: by the end of the pass that stalled it, the window had
    # passed by the true clock, and the idle time it claims had too.
    hung_for = time.time() - stuck_since
    reason = _stalls(rec)[0]
    assert hung_for >= WINDOW, f"stalled after {hung_for:.1f}s: {reason}"
    claimed = re.fullmatch(r"no progress for (\d+)s \(window (\d+)s\)( at progress .*)?", reason)
    assert claimed and int(claimed[2]) == WINDOW, reason
    assert int(claimed[1]) <= hung_for + 1, f"claims {claimed[1]}s without progress after {hung_for:.1f}s"


@pytest.mark.parametrize("clocks", _cases("behind"))
def test_a_run_hung_before_any_supervisor_looked_is_stalled_on_its_agents_word(skewed, clocks):
    run, store = skewed
    skews = SKEWS[clocks]
    rec = _started(run, store, skews)
    # The agent says, on its own clock, that step 7 has not changed for longer than the window.
    _beat(rec, step=7, changed_at=time.time() - WINDOW - 5)
    _pass(run, skews[-1])
    assert _stalls(rec), f"not stalled under {skews[-1]}: {rec.read_state()[0]}"


def test_a_pass_stamped_in_the_future_is_said_as_clock_skew_not_a_live_supervisor(skewed):
    run, store = skewed
    rec = _started(run, store, ["+5m"])  # the last pass is stamped 5 minutes ahead of the true clock
    _beat(rec, step=1, changed_at=time.time())
    listed = run(None, "ops", "list")
    assert listed.returncode == 0, listed.stderr
    assert "in the future (clock skew of" in listed.stdout, listed.stdout
    assert "cannot tell whether anybody is supervising" in listed.stdout, listed.stdout
    # A reader 5 minutes behind the VM: the heartbeat is not "0s ago".
    status = run("-5m", "ops", "status", "--run-id", "skewed")
    assert status.returncode == 0, status.stderr
    beat = [ln for ln in status.stdout.splitlines() if ln.startswith("heartbeat")]
    assert beat and "in the future (clock skew of" in beat[0], status.stdout
