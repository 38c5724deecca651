"""What `runner submit` says when it races another submit, or is stopped by Ctrl-C (issue 17 §8, §9).

§8: two submits of one new run id, started together. Both found no run; one created it. The
other was told "already has a spec.json: submit it with --restart" (wrong: the run is live) or
saw a raw "generation is N, expected 0". With the same command it must join the live run (exit 0
once it ends); with another command it must say that the id is taken by that command (exit 2).

§9: Ctrl-C on an attached submit printed click's "Aborted!" and left the job running without
saying so. It must say that the run goes on, how to follow and stop it, that nothing else
supervises it, and exit 130; the container keeps running.

The CLI runs as a user runs it (subprocesses, the local backend, a store under tmp, the image
RUNNER_TEST_IMAGE). The racing submits start from one line: each imports everything first and
waits for a "go" file, so both look for the run at the same moment (otherwise the import time of
one decides, and the race is rarely run).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos.harness import cycles
from tests.conftest import IMAGE, trainer, wait_for

pytestmark = pytest.mark.docker

_AT_ONCE = r"""
import os, sys, time
import docker, entrypoint.record, runner.cli.main, runner.launch.context, runner.launch.follow, runner.launch.submit
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.argv = ["runner", *sys.argv[3:]]
runner.cli.main.main()
"""

RAW = ("generation", "--restart", "Traceback", "Aborted!")


def _at_once(runner, tmp: Path, *argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``runner ARGV`` for each argv, released together; their results in the same order."""
    go = tmp / "go"
    procs = []
    for n, argv in enumerate(argvs):
        p = subprocess.Popen([sys.executable, "-c", _AT_ONCE, str(tmp / f"ready-{n}"), str(go), *argv],
                             env=runner.env, cwd=runner.store_dir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        runner.procs.append(p)
        procs.append(p)
    wait_for(lambda: all((tmp / f"ready-{n}").exists() for n in range(len(argvs))), 60, "the submits to load")
    go.touch()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _submit_argv(run_id: str, command: list[str], *extra: str) -> list[str]:
    return ["submit", "--run-id", run_id, "--image", IMAGE, *extra, "--", *command]


def test_two_submits_of_one_new_id_with_one_command_both_follow_the_one_run(runner, run_id, tmp_path):
    joined = 0
    for cycle in range(cycles(short=2, long=10)):
        rid = f"{run_id}-{cycle}"
        tmp = tmp_path / f"c{cycle}"
        tmp.mkdir()
        a, b = _at_once(runner, tmp, *[_submit_argv(rid, trainer(10, 5, 0.05))] * 2)
        for out in (a, b):
            assert out.returncode == 0, out.stderr
            for raw in RAW:
                assert raw not in out.stderr + out.stdout, out.stderr
        created = [o for o in (a, b) if f"run {rid} submitted " in o.stderr]
        assert len(created) == 1, (a.stderr, b.stderr)
        other = b if created[0] is a else a
        if f"run {rid} was just submitted by another submit; following it" in other.stderr:
            joined += 1
        else:  # it looked after the run existed: a plain re-submit of a live run
            assert f"run {rid} exists (" in other.stderr and "resuming it" in other.stderr, other.stderr
        st = runner.state(rid)
        assert (st["state"], st["attempt"], st["restarts"]) == ("SUCCEEDED", 1, 0), st
        assert runner.containers(rid) == []
    print(f"{joined} of {cycles(short=2, long=10)} races joined (the rest looked after the run existed)")


def test_two_submits_of_one_new_id_with_two_commands_the_loser_is_told_the_id_is_taken(runner, run_id, tmp_path):
    refused = 0
    for cycle in range(cycles(short=2, long=10)):
        rid = f"{run_id}-{cycle}"
        tmp = tmp_path / f"c{cycle}"
        tmp.mkdir()
        ours, theirs = trainer(10, 5, 0.05), trainer(12, 5, 0.05)
        a, b = _at_once(runner, tmp, _submit_argv(rid, ours, "--detach"), _submit_argv(rid, theirs, "--detach"))
        for out in (a, b):
            for raw in RAW:
                assert raw not in out.stderr + out.stdout, out.stderr
        won = [o for o in (a, b) if o.returncode == 0 and f"run {rid} submitted " in o.stderr]
        assert len(won) == 1, (a.returncode, a.stderr, b.returncode, b.stderr)
        lost = b if won[0] is a else a
        recorded = runner.read_json(rid, "spec.json")["command"]
        assert recorded == (ours if won[0] is a else theirs)
        assert lost.returncode == 2, lost.stderr  # either way the other command is refused (issue 20 §3)
        if "is taken: another submit just submitted" in lost.stderr:
            refused += 1
            assert f"run id {rid} is taken: another submit just submitted it with the command" in lost.stderr, \
                lost.stderr
            assert "choose another --run-id" in lost.stderr, lost.stderr
        else:  # it looked after the run existed: a re-submit of a live run with another command
            assert f"run {rid} is live (" in lost.stderr and "--run-id NEW" in lost.stderr, lost.stderr
        for c in runner.containers(rid):
            c.remove(force=True)
    print(f"{refused} of {cycles(short=2, long=10)} races refused (the rest looked after the run existed)")


def test_ctrl_c_on_an_attached_submit_says_the_run_goes_on_and_exits_130(runner, run_id):
    for cycle in range(cycles(short=1, long=5)):
        rid = f"{run_id}-{cycle}"
        p = runner.popen(*_submit_argv(rid, trainer(100000, 1000, 0.05)))
        try:
            wait_for(lambda: runner.state(rid).get("state") == "RUNNING" and runner.step(rid) > 0, 120,
                     "the job to run and report progress")
            p.send_signal(signal.SIGINT)
            stdout, stderr = p.communicate(timeout=60)
            assert p.returncode == 130, stderr
            for raw in ("Aborted!", "Traceback"):
                assert raw not in stderr + stdout, stderr
            assert f"stopped following {rid}" in stderr and "the run goes on" in stderr, stderr
            assert f"runner ops watch --run-id {rid}" in stderr, stderr
            assert f"runner ops delete --run-id {rid}" in stderr, stderr
            assert "this submit was its only supervisor" in stderr, stderr  # nothing else supervises this store
            assert runner.state(rid)["state"] == "RUNNING"
            (c,) = runner.containers(rid)
            assert c.status == "running"
        finally:
            out = runner("ops", "delete", "--run-id", rid)
        assert out.returncode == 0, out.stderr
        wait_for(lambda: runner.containers(rid) == [], 60, "the run's container to be removed")
