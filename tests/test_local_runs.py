"""Runs on the local backend through the CLI: failures, retries, re-submits, stop, supervisors.

Real Docker, the real workload image; every assertion is on the store or on the containers.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import IMAGE, trainer

pytestmark = pytest.mark.docker


def submit(runner, run_id, *cmd, extra=(), **env):
    return runner("submit", "--run-id", run_id, "--image", IMAGE, *extra, "--", *cmd, **env)


def test_a_job_that_exits_nonzero_fails_with_its_exit_code_and_is_not_restarted(runner, run_id):
    out = submit(runner, run_id, *trainer(20, 5, 0.01, "--fail-at", "7"))
    assert out.returncode == 1, out.stderr
    st = runner.state(run_id)
    assert (st["state"], st["exit_code"], st["attempt"]) == ("FAILED", 3, 1)
    assert "exited with code 3" in out.stdout
    assert runner.containers(run_id) == []


def test_retry_on_failure_runs_the_job_again_up_to_n_times(runner, run_id):
    out = submit(runner, run_id, *trainer(20, 5, 0.01, "--fail-at", "7"), extra=("--retry-on-failure", "1"))
    assert out.returncode == 1, out.stderr
    st = runner.state(run_id)
    assert (st["state"], st["attempt"], st["failures"]) == ("FAILED", 2, 1)
    # The retry resumed from the checkpoint at step 5, not from zero.
    assert "starting at step 5" in (runner.run_dir(run_id) / "logs/2.log").read_text()


def test_resubmitting_a_finished_run_is_refused_unless_restart(runner, run_id):
    assert submit(runner, run_id, *trainer(5, 5, 0.01)).returncode == 0
    again = submit(runner, run_id, *trainer(5, 5, 0.01))
    assert again.returncode == 2
    assert "is SUCCEEDED" in again.stderr and "--restart" in again.stderr
    restarted = submit(runner, run_id, *trainer(5, 5, 0.01), extra=("--restart",))
    assert restarted.returncode == 0, restarted.stderr
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2)


def test_resubmitting_a_detached_unfinished_run_resumes_it(runner, run_id):
    out = submit(runner, run_id, *trainer(60, 5, 0.1), extra=("--detach",))
    assert out.returncode == 0, out.stderr
    # Wait for what the resume needs, a checkpoint in the store, not for a step count: how far
    # the sync lags behind the job depends on the machine's load.
    runner.wait_for(lambda: _synced_step(runner, run_id) >= 5, desc="a checkpoint synced to the store")
    for c in runner.containers(run_id):
        c.kill()  # the "VM" vanishes with nobody supervising
    runner.wait_for(lambda: not [c for c in runner.containers(run_id) if c.status == "running"],
                    desc="the killed container to stop")
    synced = _synced_step(runner, run_id)  # nothing syncs any more: the resume must start here
    assert runner.state(run_id).get("state") != "SUCCEEDED", "the job ended before the kill: give it more steps"
    out = submit(runner, run_id)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2)
    starts = runner.read_json(run_id, "results/summary.json")["starts"]
    assert starts == [0, synced] and synced >= 5


def _synced_step(runner, run_id) -> int:
    """The step of the checkpoint in the store (0 before the first sync)."""
    from examples.trainer import decode_checkpoint

    try:
        return decode_checkpoint((runner.run_dir(run_id) / "checkpoints/last.pt").read_bytes())["step"]
    except FileNotFoundError:
        return 0


def test_delete_while_restarting_is_never_resurrected(runner, run_id):
    assert submit(runner, run_id, *trainer(200, 5, 0.1), extra=("--detach",)).returncode == 0
    sup = runner.popen("supervise", "--run-id", run_id)
    runner.wait_for(lambda: runner.step(run_id) >= 3, desc="progress")
    runner("ops", "preempt", "--run-id", run_id, "--grace-period", "0")
    runner.wait_for(lambda: runner.state(run_id).get("state") in ("PREEMPTED", "PROVISIONING"),
                    desc="the supervisor to notice")
    out = runner("ops", "delete", "--run-id", run_id)
    assert out.returncode == 0, out.stderr
    sup.wait(timeout=30)
    time.sleep(1.5)  # several more supervisor passes' worth
    assert runner("supervise", "--once").returncode == 0
    st = runner.state(run_id)
    assert st["state"] == "STOPPED"
    assert runner.containers(run_id) == []
    again = submit(runner, run_id)
    assert again.returncode == 2 and "stopped" in again.stderr.lower() or "STOPPED" in again.stderr


def test_two_supervisors_never_run_two_containers_for_one_run(runner, run_id):
    assert submit(runner, run_id, *trainer(60, 5, 0.1), extra=("--detach",)).returncode == 0
    sups = [runner.popen("supervise", "--run-id", run_id, "--poll-interval", "0.2") for _ in range(2)]
    most, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            running = [c for c in runner.containers(run_id) if c.status == "running"]
            most[0] = max(most[0], len(running))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for attempt, point in ((1, 10), (2, 25)):
            runner.wait_for(lambda: runner.state(run_id).get("attempt") == attempt
                            and runner.step(run_id) >= point, desc=f"step {point}")
            runner("ops", "preempt", "--run-id", run_id)
        for s in sups:
            s.wait(timeout=120)
    finally:
        stop.set()
        sampler.join()
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 3)
    assert most[0] == 1
    provisioned = [ev for ev in _events(runner, run_id) if ev["to"] == "PROVISIONING"]
    assert len(provisioned) == 3  # one per attempt: no double restart


def _events(runner, run_id):
    import json

    d = runner.run_dir(run_id) / "events"
    return [json.loads(p.read_text()) for p in sorted(d.iterdir())]


def test_a_stalled_job_is_killed_and_restarted(runner, run_id):
    # A job that reports progress once and then hangs: alive, heartbeating, going nowhere.
    hang = ["python3", "-c", "import time; print('RUNNER_PROGRESS step=1', flush=True); time.sleep(600)"]
    sub = runner.popen("submit", "--run-id", run_id, "--image", IMAGE, "--max-restarts", "1", "--", *hang,
                       RUNNER_STALL_POLLS="6", RUNNER_POLL_INTERVAL="0.5", RUNNER_GPU_TIMEOUT="3")
    sub.wait(timeout=90)
    st = runner.state(run_id)
    assert st["state"] == "FAILED" and st["attempt"] == 2, st
    assert "max_restarts" in st["reason"]
    stalled = [ev for ev in _events(runner, run_id) if ev["to"] == "STALLED"]
    assert len(stalled) == 2
    assert runner.containers(run_id) == []


def _preempt_and_finish(runner, run_id, sup):
    runner.wait_for(lambda: runner.step(run_id) >= 8, desc="progress")
    assert runner("ops", "preempt", "--run-id", run_id).returncode == 0
    follow = runner.popen("ops", "logs", "--run-id", run_id, "--follow")
    sup.wait(timeout=60)
    runner.followed = follow.communicate(timeout=30)[0]


def test_status_list_and_logs_show_a_finished_run_across_attempts(runner, run_id):
    import json

    from tests.standins.json_http_server import serve
    from tests.test_notify import Receiver

    hook = Receiver()
    with serve(hook, "webhook") as hook_url:
        # The job waits at step 8 for the notice: however slow the machine, the preemption lands.
        assert submit(runner, run_id, *trainer(30, 5, 0.05, "--hold-at", "8"),
                      extra=("--detach",)).returncode == 0
        sup = runner.popen("supervise", "--run-id", run_id, RUNNER_WEBHOOK_URL=f"{hook_url}/hooks/T0KEN")
        _preempt_and_finish(runner, run_id, sup)
    # The supervisor posted the transitions it saw, once each, the agent's included.
    posted = [(m["runner"]["from"], m["runner"]["to"]) for m in hook.received]
    assert ("RUNNING", "PREEMPTED") in posted and ("RUNNING", "SUCCEEDED") in posted
    assert len(posted) == len(set((m["runner"]["event"]) for m in hook.received))
    assert all(m["text"] == m["content"] and run_id in m["text"] for m in hook.received)
    assert not any(b"T0KEN" in p.read_bytes() for p in runner.run_dir(run_id).rglob("*") if p.is_file())

    # Each attempt's manifest says how far it got and when it last saved: what the cost of the
    # preemption is computed from.
    m1 = runner.read_json(run_id, "attempts/1/manifest.json")
    m2 = runner.read_json(run_id, "attempts/2/manifest.json")
    assert m1["last_progress"]["step"] >= 8 and m1["checkpoint_at"] <= m1["finished_at"]
    assert m2["first_progress"]["step"] > 0 and m2["last_progress"]["step"] == 30
    followed = runner.followed

    status = json.loads(runner("ops", "status", "--run-id", run_id, "--json").stdout)
    assert (status["state"], status["attempt"], status["progress"]["step"]) == ("SUCCEEDED", 2, 30)
    assert status["last_event"]["to"] == "SUCCEEDED" and status["instances"] == []
    human = runner("ops", "status", "--run-id", run_id).stdout
    assert "SUCCEEDED" in human and "step=30 total=30" in human

    cost = status["cost"]
    assert cost["so_far"] == 0 and cost["note"] == "local: no cloud charge"
    assert cost["lost_seconds"] > 0 and cost["billed_seconds"] > cost["lost_seconds"]
    assert cost["attempts"][0]["lost_basis"] == "time since its last checkpoint"

    (row,) = [r for r in json.loads(runner("ops", "list", "--json").stdout) if r["run_id"] == run_id]
    assert row["state"] == "SUCCEEDED"
    assert run_id in runner("ops", "list").stdout

    logs = runner("ops", "logs", "--run-id", run_id).stdout
    first, second = "===== attempt 1: job output =====", "===== attempt 2: job output ====="
    assert logs.index(first) < logs.index(second)
    assert "trainer: done at step 30" in logs.split(second)[1]
    assert "trainer: done at step 30" not in logs.split(second)[0]
    assert second in followed and "trainer: done at step 30" in followed
    only2 = runner("ops", "logs", "--run-id", run_id, "--attempt", "2").stdout
    assert first not in only2 and "trainer: done at step 30" in only2
    assert runner("ops", "logs", "--run-id", run_id, "--attempt", "7").returncode == 3


# --- permanent failures are not preemptions (issue 10 §4) ------------------------------------


@pytest.mark.parametrize("retries", ["0", "2"])
def test_a_command_that_does_not_exist_fails_at_once_with_the_error_stored(runner, run_id, retries):
    out = submit(runner, run_id, "no-such-command-h7", "--flag", extra=("--retry-on-failure", retries))
    assert out.returncode == 1, out.stderr
    st = runner.state(run_id)
    # Failed on the first attempt: not restarted as "preempted or lost", not retried either
    # (no retry can make a missing program appear).
    assert (st["state"], st["attempt"], st["restarts"], st["exit_code"]) == ("FAILED", 1, 0, 127), st
    assert "no-such-command-h7" in st["reason"]
    assert runner.read_json(run_id, "attempts/1/manifest.json")["exit_code"] == 127
    logs = runner("ops", "logs", "--run-id", run_id)
    assert logs.returncode == 0, logs.stderr
    assert "no output stored" not in logs.stdout
    assert "cannot start 'no-such-command-h7'" in logs.stdout and "No such file" in logs.stdout
    assert runner.containers(run_id) == []


def test_a_command_that_is_not_executable_fails_at_once_with_126(runner, run_id):
    out = submit(runner, run_id, "/etc/hostname")
    assert out.returncode == 1, out.stderr
    st = runner.state(run_id)
    assert (st["state"], st["attempt"], st["restarts"], st["exit_code"]) == ("FAILED", 1, 0, 126), st
    assert "Permission denied" in (runner.run_dir(run_id) / "logs/1.log").read_text()


def test_a_pinned_image_missing_from_docker_fails_the_run_with_the_fix(runner, run_id):
    """The image pinned at submit was removed since: no pass can create the container."""
    from entrypoint.record import RunRecord, RunSpec
    from entrypoint.store_local import LocalStore

    gone = "sha256:" + "0" * 63 + "1"  # pinned by id, and no such image in the engine
    rec = RunRecord(LocalStore(str(runner.store_dir)), run_id)
    rec.write_spec(RunSpec(run_id=run_id, image=gone, command=["true"], backend="local"))
    rec.create_state("test")
    for _ in range(3):
        p = runner("supervise", "--run-id", run_id, "--once", timeout=60)
        assert p.returncode == 0, p.stderr
    st = runner.state(run_id)
    assert st["state"] == "FAILED", st
    assert gone[:19] in st["reason"] and "--image" in st["reason"], st["reason"]
    assert runner.containers(run_id) == []
