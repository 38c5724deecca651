"""``runner ops watch`` on a real terminal (tmux) and as a JSON stream, and ``ops list`` at scale.

Runs are put in the store as the supervisor and the agent would leave them (RunRecord writes);
``watch`` only reads the store, so no container is needed to check what it shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pytest

from entrypoint.record import Heartbeat, RunRecord, RunSpec, State
from entrypoint.store import Store
from entrypoint.stores import open_store
from tests.conftest import ROOT, wait_for


def make_run(store: Store, run_id: str, step: int | None = None, total: int = 100, rate: float | None = None) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="img@sha256:" + "a" * 64, command=["true"], backend="local"))
    rec.create_state("test")
    rec.transition(State.PROVISIONING, "test", attempt=1, instance=f"runner-{run_id}-a1")
    rec.transition(State.RUNNING, "test")
    if step is not None:
        heartbeat(rec, step, total, rate)
    return rec


def heartbeat(rec: RunRecord, step: int, total: int = 100, rate: float | None = None, attempt: int = 1) -> None:
    rec.write_heartbeat(Heartbeat(time=time.time(), attempt=attempt, phase="running",
                                  progress={"step": step, "total": total}, rate=rate))


def cli_env(store_url: str) -> dict[str, str]:
    return {**os.environ, "RUNNER_STORE": store_url, "RUNNER_BACKEND": "local", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


# ---- in a terminal ----

class Tmux:
    """One tmux server of its own per test (``-L``): a new session takes its environment from the
    server, so a server shared with a test running beside it (xdist) would run this test's
    command with the other test's store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmux = ["tmux", "-L", name]

    def start(self, command: str, env: dict[str, str]) -> None:
        subprocess.run([*self.tmux, "new-session", "-d", "-s", self.name, "-x", "150", "-y", "30", command],
                       env=env, check=True)

    def screen(self, history: bool = False) -> str:
        extra = ["-S", "-2000"] if history else []
        return subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name, *extra],
                              capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def kill(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


@pytest.fixture
def tmux():  # type: ignore[no-untyped-def]
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/setup-test-env.sh installs it)")
    t = Tmux(f"watch-{uuid.uuid4().hex[:8]}")
    yield t
    t.kill()


def test_watch_draws_the_table_and_redraws_it_in_place(tmux: Tmux, store_url: str) -> None:
    store = open_store(store_url)
    alpha = make_run(store, "alpha", step=50, total=100, rate=2.0)
    beta = make_run(store, "beta", step=100, total=100)
    beta.transition(State.SUCCEEDED, "test", exit_code=0)
    tmux.start(f"{sys.executable} -m runner.cli ops watch --interval 0.3; echo WATCH-EXIT=$?; sleep 60",
               cli_env(store_url))
    wait_for(lambda: "alpha" in tmux.screen() and "beta" in tmux.screen(), desc="both runs on screen")
    screen = tmux.screen()
    (alpha_line,) = [ln for ln in screen.splitlines() if "alpha" in ln]
    assert "RUNNING" in alpha_line and "50/100 50%" in alpha_line and "2.00/s" in alpha_line
    assert "25s" in alpha_line  # ETA: 50 steps left at 2 steps/s
    (beta_line,) = [ln for ln in screen.splitlines() if "beta" in ln]
    assert "SUCCEEDED" in beta_line and "100/100 100%" in beta_line

    heartbeat(alpha, 80, 100, rate=2.0)
    alpha.transition(State.PREEMPTED, "test", reason="SIGTERM (preemption notice)")
    wait_for(lambda: "PREEMPTED" in tmux.screen(), desc="the new state on screen")
    after = tmux.screen(history=True)
    # Redrawn in place: one table on the whole terminal history, however many refreshes ran.
    assert after.count("HEARTBEAT") == 1, after
    (alpha_line,) = [ln for ln in after.splitlines() if "alpha" in ln]
    assert "80/100 80%" in alpha_line and "RUNNING" not in alpha_line

    tmux.keys("C-c")
    wait_for(lambda: "WATCH-EXIT=0" in tmux.screen(), desc="watch to end on Ctrl-C with status 0")
    assert "Traceback" not in tmux.screen(history=True)


# ---- for scripts ----

def test_watch_json_prints_a_line_per_change_and_ends_with_the_run(store_url: str) -> None:
    store = open_store(store_url)
    rec = make_run(store, "gamma", step=10, total=40, rate=4.0)
    p = subprocess.Popen([sys.executable, "-m", "runner.cli", "ops", "watch", "--json", "--run-id", "gamma",
                          "--interval", "0.2"], env=cli_env(store_url), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines = _lines_of(p)
    try:
        first = json.loads(lines.get(timeout=60))
        assert (first["state"], first["progress"]["step"], first["eta_s"]) == ("RUNNING", 10, 7.5)
        time.sleep(0.8)  # refreshes that see nothing new: none may print a line
        heartbeat(rec, 10, 40, rate=4.0)  # only the heartbeat time moves: not a change
        time.sleep(0.8)
        heartbeat(rec, 30, 40, rate=4.0)
        # The next line, however long the watcher takes to see step 30 (seconds on a loaded
        # machine); ending the run first would let it see both changes in one refresh.
        second = json.loads(lines.get(timeout=60))
        rec.transition(State.SUCCEEDED, "test", exit_code=0)
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
    rest = [json.loads(ln) for ln in iter(lines.get, None)]
    assert [(ln["state"], ln["progress"]["step"]) for ln in [second, *rest]] == [("RUNNING", 30), ("SUCCEEDED", 30)]


def _lines_of(p: "subprocess.Popen[str]") -> "queue.Queue[str | None]":
    """``p``'s stdout lines as they come, then None at its end, so a test can wait for the next
    line with a timeout instead of sleeping for a guess of how long it takes to come."""
    import queue
    import threading

    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines
    assert p.returncode == 0, err
    assert all(ln["observed_at"].endswith("Z") for ln in lines)


def test_watch_exit_codes_say_what_happened(store_url: str) -> None:
    store = open_store(store_url)
    make_run(store, "bad").transition(State.FAILED, "test", reason="job exited 3", exit_code=3)
    watch = [sys.executable, "-m", "runner.cli", "ops", "watch", "--json", "--interval", "0.2"]
    failed = subprocess.run([*watch, "--run-id", "bad"], env=cli_env(store_url), capture_output=True, text=True,
                            timeout=30)
    assert failed.returncode == 1 and json.loads(failed.stdout)["state"] == "FAILED"
    missing = subprocess.run([*watch, "--run-id", "nope"], env=cli_env(store_url), capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 3 and "no run 'nope'" in missing.stderr
    usage = subprocess.run([*watch, "--interval", "0"], env=cli_env(store_url), capture_output=True, text=True,
                           timeout=30)
    assert usage.returncode == 2


def test_list_and_status_show_utc_and_relative_times(store_url: str) -> None:
    store = open_store(store_url)
    make_run(store, "delta", step=5, total=10, rate=1.0)
    env = cli_env(store_url)
    listing = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "list"], env=env, capture_output=True,
                             text=True, timeout=30).stdout
    (line,) = [ln for ln in listing.splitlines() if ln.startswith("delta")]
    assert "RUNNING" in line and "5/10" in line and "Z (" in line and "s ago)" in line
    doc = json.loads(subprocess.run([sys.executable, "-m", "runner.cli", "ops", "list", "--json"], env=env,
                                    capture_output=True, text=True, timeout=30).stdout)
    assert doc[0]["updated_at"].endswith("Z") and doc[0]["updated_age_s"] >= 0 and doc[0]["eta_s"] == 5.0


# ---- at scale on GCS: one listing whatever the number of runs ----

def test_listing_runs_on_gcs_costs_one_list_call_whatever_the_count(gcs_emulator: str) -> None:
    from runner.ops.runs import list_runs

    counts = {}
    for n in (3, 12):
        store = open_store(f"gs://test-bucket/scale-{uuid.uuid4().hex[:6]}")
        for i in range(n):
            make_run(store, f"r{i:02d}", step=i)
        seen: Counter[str] = Counter()

        def count(resp, *a, **kw):  # type: ignore[no-untyped-def]
            is_list = resp.request.method == "GET" and urlparse(resp.request.url).path.endswith("/o")
            seen["list" if is_list else "other"] += 1

        store._client._http.hooks["response"].append(count)  # type: ignore[attr-defined]
        rows = list_runs(store)
        assert [r["run_id"] for r in rows] == [f"r{i:02d}" for i in range(n)]
        assert [r["progress"]["step"] for r in rows] == list(range(n))
        counts[n] = seen["list"]
    assert counts == {3: 1, 12: 1}


def test_a_broken_price_table_never_breaks_status(store_url: str, tmp_path: Path) -> None:
    make_run(open_store(store_url), "eps", step=1)
    bad = tmp_path / "prices.json"
    bad.write_text("{not json")
    p = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "status", "--run-id", "eps"],
                       env={**cli_env(store_url), "RUNNER_PRICE_TABLE": str(bad)}, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    (line,) = [ln for ln in p.stdout.splitlines() if ln.startswith("cost")]
    assert line.startswith("cost       ?") and str(bad) in line


def test_pull_draws_a_progress_bar_in_a_terminal_and_moves_only_changes(tmux: Tmux, store_url: str,
                                                                         tmp_path: Path) -> None:
    store = open_store(store_url)
    rec = make_run(store, "zeta")
    for i in range(3):
        store.write(rec.name(f"results/part-{i}.bin"), bytes([i]) * 300_000)
    dest = tmp_path / "pulled"
    tmux.start(f"{sys.executable} -m runner.cli ops pull --run-id zeta --dest {dest}; echo PULL-EXIT=$?; sleep 60",
               cli_env(store_url))
    wait_for(lambda: "PULL-EXIT=0" in tmux.screen(), desc="the pull to finish")
    screen = tmux.screen()
    assert "pulling zeta (3 file(s))" in screen and "900.0/900.0 kB" in screen, screen
    assert "zeta: 3 file(s) copied (900000 bytes), 0 unchanged" in screen
    assert (dest / "latest" / "results" / "part-2.bin").read_bytes() == bytes([2]) * 300_000
    store.write(rec.name("results/part-1.bin"), b"changed")
    again = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "pull", "--run-id", "zeta", "--dest",
                            str(dest), "--json"], env=cli_env(store_url), capture_output=True, text=True, timeout=30)
    assert json.loads(again.stdout)["copied"] == ["results/part-1.bin"]
