"""Gangs on the local backend, as a user runs them: `runner submit --nodes 2`, real containers on a
per-attempt private network, real agents, `runner ops preempt --node 1`, real supervisors.

What must hold (issue 21): every node gets its rank, the gang's size and rank 0's address; any
node lost ends the whole generation and the next one is created whole; at every sample at most
N containers of a run run, all of one attempt; nothing (container, network) is left at the end.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from runner.naming import node_name, resource_name
from tests.chaos.harness import cycles
from tests.conftest import IMAGE, trainer

pytestmark = pytest.mark.docker

# Long enough that rank 0 (which here trains without its peer) cannot finish in the seconds a
# loaded machine takes to notice that node 1 is gone.
STEPS = 150
RACE_STEPS = 30  # plus 15 per preemption a run takes (`make chaos` takes more)
# The job prints what the gang told it, then trains (each node on its own: what is under test is
# the runner's gang, not a collective library; test_torch_gang.py runs torchrun across nodes).
SHOW_ENV = ('echo "gang rank=$RUNNER_NODE_RANK nnodes=$RUNNER_NNODES master=$RUNNER_MASTER_ADDR:$RUNNER_MASTER_PORT '
            'rdzv=$RUNNER_RDZV_ID torchrun=$PET_NODE_RANK/$PET_NNODES@$PET_MASTER_ADDR"; '
            'getent hosts "$RUNNER_MASTER_ADDR" >/dev/null && echo "master resolves"; '
            # A job that takes a moment to end on SIGTERM (a real one writes its last checkpoint):
            # an old generation then lives long enough that a sample would see it beside a new one.
            '"$@" & c=$!; trap "sleep 1.5" TERM; wait $c; wait $c')


class GangSampler(threading.Thread):
    """Per run: the most containers seen running at once, and every sample where running
    containers of one run belonged to more than one attempt (one Docker list call per sample)."""

    def __init__(self, docker: Any, run_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.docker, self.run_ids = docker, set(run_ids)
        self.most: dict[str, int] = defaultdict(int)
        self.mixed: list[tuple[str, list[str]]] = []
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            by_run: dict[str, list[Any]] = defaultdict(list)
            for c in self.docker.containers.list(filters={"label": "runner=cos-spot-runner", "status": "running"},
                                                 ignore_removed=True):
                by_run[c.labels.get("run-id-full", "")].append(c)
            for r in self.run_ids:
                live = by_run.get(r, [])
                self.most[r] = max(self.most[r], len(live))
                if len({c.labels.get("attempt") for c in live}) > 1:
                    self.mixed.append((r, sorted(c.name for c in live)))
            self.samples += 1
            time.sleep(0.05)


def node_step(runner: Any, run_id: str, rank: int, attempt: int) -> int:
    rel = "heartbeat.json" if rank == 0 else f"nodes/{rank}/heartbeat.json"
    hb = runner.read_json(run_id, rel) or {}
    return int(hb.get("progress", {}).get("step", 0)) if hb.get("attempt") == attempt else -1


def test_a_two_node_gang_restarts_whole_when_node_1_is_preempted_and_finishes(runner, run_id):
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--",
                 "sh", "-c", SHOW_ENV, "sh", *trainer(STEPS, 5, 0.1))
    assert out.returncode == 0, out.stderr
    sampler = GangSampler(runner.docker, [run_id])
    sampler.start()
    runner.popen("supervise", "--run-id", run_id)
    try:
        runner.wait_for(lambda: node_step(runner, run_id, 1, 1) >= 8 and node_step(runner, run_id, 0, 1) >= 8,
                        120, "both nodes of attempt 1 to make progress")
        status = json.loads(runner("ops", "status", "--run-id", run_id, "--json").stdout)
        assert [(n["rank"], n["name"], n["status"]) for n in status["nodes"]] == [
            (0, node_name(run_id, 1, 0), "RUNNING"), (1, node_name(run_id, 1, 1), "RUNNING")], status["nodes"]
        out = runner("ops", "preempt", "--run-id", run_id, "--node", "1")
        assert out.returncode == 0 and node_name(run_id, 1, 1) in out.stdout and node_name(run_id, 1, 0) not in out.stdout, \
            (out.stdout, out.stderr)
        runner.wait_for(lambda: runner.state(run_id).get("state") == "SUCCEEDED", 180, "the gang to finish")
    finally:
        sampler.halt.set()
        sampler.join()

    st = runner.state(run_id)
    assert (st["attempt"], st["restarts"]) == (2, 1), st
    assert [i["name"] for i in st["instances"]] == [node_name(run_id, 2, 0), node_name(run_id, 2, 1)], st
    events = runner("ops", "events", "--run-id", run_id, "--json")
    lost = [e for e in json.loads(events.stdout) if e.get("to") == "PREEMPTED"]
    assert len(lost) == 1 and "node 1" in lost[0]["reason"] and "whole gang restarts" in lost[0]["reason"], lost
    # Each node was told its place, and rank 0's name resolves on the gang's network. (Attempt 2's
    # node 1 may find the run finished before its job starts: these nodes train independently,
    # and on a loaded machine rank 0 can resume and end first. A collective job cannot.)
    for attempt, rank in ((1, 0), (1, 1), (2, 0)):
        log = runner.run_dir(run_id) / "logs" / (f"{attempt}.log" if rank == 0 else f"{attempt}.node{rank}.log")
        text = log.read_text()
        master = node_name(run_id, attempt, 0)
        assert (f"gang rank={rank} nnodes=2 master={master}:29500 rdzv={run_id}-a{attempt} "
                f"torchrun={rank}/2@{master}") in text and "master resolves" in text, (attempt, rank, text[:400])
    # Rank 0 published its checkpoint; attempt 2 resumed from it rather than starting over.
    summary = runner.read_json(run_id, "results/summary.json")
    assert summary["steps"] == STEPS and summary["starts"][0] == 0 and summary["starts"][1] > 0, summary
    node_logs = runner("ops", "logs", "--run-id", run_id, "--node", "1", "--attempt", "1")
    assert "gang rank=1" in node_logs.stdout and "gang rank=0" not in node_logs.stdout, node_logs.stdout[:300]

    assert sampler.samples > 20 and sampler.most[run_id] <= 2, (sampler.samples, dict(sampler.most))
    assert not sampler.mixed, f"two generations alive at once: {sampler.mixed[:3]}"
    runner.wait_for(lambda: not runner.containers(run_id) and not runner.networks(run_id), 60,
                    "the gang's containers and networks to be removed")


def test_a_node_that_fails_to_start_removes_the_generation_and_its_network(runner, run_id, docker_client):
    """All or nothing: node 1's create fails (its name is taken by a container of another store),
    so node 0, already made, is removed with the network; nothing of the gang is left."""
    squatter = docker_client.containers.create(IMAGE, ["true"], name=node_name(run_id, 1, 1),
                                               labels={"runner": "cos-spot-runner", "runner-store": "another"})
    try:
        out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--", *trainer(5))
        assert out.returncode == 0, out.stderr
        runner.wait_for(lambda: "belongs to a run of another store" in runner("ops", "events", "--run-id", run_id).stdout,
                        60, "the failed create to be journaled")
        ours = [c for c in runner.containers(run_id) if c.labels.get("runner-store") != "another"]
        assert ours == [] and runner.networks(run_id) == [], ([c.name for c in ours], runner.networks(run_id))
    finally:
        squatter.remove(force=True)


def test_gang_race_several_supervisors_random_node_preemptions_never_two_generations(runner, run_id):
    """The race harness of single-node runs, on gangs: three supervisors (one killed -9 now and
    then), two 2-node gangs, nodes removed at random (a spot preemption with terminationAction=
    DELETE). Never more than 2 running containers of a run, never two attempts of one run alive."""
    fast = {"RUNNER_POLL_INTERVAL": "0.3", "RUNNER_GRACE_PERIOD": "5", "RUNNER_MAX_RESTARTS": "1000"}
    per_run = cycles(short=2, long=6)
    steps = RACE_STEPS + 15 * per_run
    runs = [f"{run_id}-{i}" for i in (1, 2)]
    for r in runs:
        out = runner("submit", "--run-id", r, "--nodes", "2", "--image", IMAGE, "--detach", "--",
                     "sh", "-c", SHOW_ENV, "sh", *trainer(steps, 5, 0.1), **fast)
        assert out.returncode == 0, out.stderr
    sups = [runner.popen("supervise", **fast) for _ in range(3)]
    sampler = GangSampler(runner.docker, runs)
    sampler.start()
    rng = random.Random(21)
    kills: dict[str, int] = defaultdict(int)
    sup_kills, tick = 0, 0
    try:
        deadline = time.time() + 150 + 40 * per_run
        while time.time() < deadline and not all(runner.state(r).get("state") == "SUCCEEDED" for r in runs):
            time.sleep(rng.uniform(0.2, 0.6))
            tick += 1
            if tick % 7 == 0:
                i = rng.randrange(len(sups))
                sups[i].kill()
                sups[i].wait()
                sups[i] = runner.popen("supervise", **fast)
                sup_kills += 1
                continue
            for r in runs:
                st = runner.state(r)
                if kills[r] >= per_run or st.get("state") != "RUNNING" or not 3 <= runner.step(r) <= steps - 10:
                    continue
                live = [c for c in runner.containers(r)
                        if c.status == "running" and c.labels.get("attempt") == str(st.get("attempt"))]
                if len(live) == 2:
                    rng.choice(live).remove(force=True)
                    kills[r] += 1
    finally:
        sampler.halt.set()
        sampler.join()
    states = {r: runner.state(r) for r in runs}
    print(f"\ngang race: max running containers per run {dict(sampler.most)}, samples with two generations "
          f"{len(sampler.mixed)}, over {sampler.samples} samples; node removals {dict(kills)}, "
          f"supervisor kills {sup_kills}, restarts {[s.get('restarts') for s in states.values()]}")
    assert all(s.get("state") == "SUCCEEDED" for s in states.values()), states
    assert all(sampler.most[r] <= 2 for r in runs), dict(sampler.most)
    assert not sampler.mixed, f"two generations alive at once: {sampler.mixed[:3]}"
    assert sum(kills.values()) >= len(runs) and sup_kills >= 1, (dict(kills), sup_kills)
    for r in runs:
        assert runner.read_json(r, "results/summary.json")["steps"] == steps
        assert states[r]["restarts"] <= kills[r], (r, states[r]["restarts"], kills[r])


SHARD_JOB = """
import json, os, sys, time
from entrypoint.job import PreemptionNotice, ShardedCheckpoint, report_progress
rank, world = int(os.environ["RUNNER_NODE_RANK"]), int(os.environ["RUNNER_NNODES"])
notice = PreemptionNotice.install()
ckpt = ShardedCheckpoint(rank, world)
found = ckpt.load(lambda p: json.load(open(p)))
step = found[0] if found else 0
assert found is None or found[1] == {"rank": rank, "step": step}, found
print(f"shard job rank {rank} resuming at {step}", flush=True)
while step < 60 and not notice.requested:
    time.sleep(0.1)
    step += 1
    if step % 4 == 0:
        ckpt.save(step, {"rank": rank, "step": step}, lambda o, f: f.write(json.dumps(o).encode()))
    if rank == 0:
        report_progress(step, 60)
sys.exit(143 if notice.requested else 0)
"""


def test_a_sharded_gang_resumes_every_rank_from_the_newest_step_all_shards_reached(runner, run_id):
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--",
                 "python3", "-c", SHARD_JOB)
    assert out.returncode == 0, out.stderr
    runner.popen("supervise", "--run-id", run_id)
    shards = runner.run_dir(run_id) / "checkpoints" / "shards"
    runner.wait_for(lambda: any(shards.glob("step-*/COMMITTED")) and node_step(runner, run_id, 0, 1) >= 16,
                    120, "a committed step")
    out = runner("ops", "preempt", "--run-id", run_id, "--node", "1")
    assert out.returncode == 0, out.stderr
    runner.wait_for(lambda: runner.state(run_id).get("state") == "SUCCEEDED", 180, "the gang to finish")
    assert runner.state(run_id)["attempt"] == 2
    resumed = [ln for ln in (runner.run_dir(run_id) / "logs" / "2.log").read_text().splitlines()
               if ln.startswith("shard job rank 0 resuming at")]
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert step > 0 and step % 4 == 0, resumed
    # Rank 1 (when it started before rank 0 finished) resumed at the same committed step.
    node1 = runner.run_dir(run_id) / "logs" / "2.node1.log"
    if node1.exists():
        assert f"shard job rank 1 resuming at {step}" in node1.read_text()
    # Every committed step in the store has both shards; at most two older ones are kept.
    committed = sorted(p.parent.name for p in shards.glob("step-*/COMMITTED"))
    assert committed and len(committed) <= 2 + 1, committed
    for name in committed:
        assert sorted(p.name for p in (shards / name).iterdir()) == [
            "COMMITTED", "rank-00000-of-00002", "rank-00001-of-00002"], name


def test_ops_delete_removes_every_node_and_the_network(runner, run_id):
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--", *trainer(100000))
    assert out.returncode == 0, out.stderr
    runner.wait_for(lambda: len([c for c in runner.containers(run_id) if c.status == "running"]) == 2,
                    60, "both nodes to run")
    assert len(runner.networks(run_id)) == 1
    out = runner("ops", "delete", "--run-id", run_id, "--grace-period", "0")
    assert out.returncode == 0, out.stderr
    runner.wait_for(lambda: not runner.containers(run_id) and not runner.networks(run_id), 60,
                    "every node and the network to be removed")
    assert runner.state(run_id)["state"] == "STOPPED"


def test_a_network_left_by_nodes_removed_from_outside_goes_with_the_next_generation(runner, run_id):
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--", *trainer(100000))
    assert out.returncode == 0, out.stderr
    runner.popen("supervise", "--run-id", run_id)
    runner.wait_for(lambda: len([c for c in runner.containers(run_id) if c.status == "running"]) == 2,
                    60, "both nodes to run")
    for c in runner.containers(run_id):  # both VMs vanish at once: no delete of ours runs
        c.remove(force=True)
    runner.wait_for(lambda: runner.state(run_id).get("attempt") == 2 and
                    len([c for c in runner.containers(run_id) if c.status == "running"]) == 2, 90,
                    "the next generation")
    assert [n.name for n in runner.networks(run_id)] == [resource_name(run_id, 2)]


IGNORES_SIGTERM = """
import json, signal, time
from entrypoint.job import Checkpoint, report_progress
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ckpt = Checkpoint("last.json")
saved = ckpt.load(lambda p: json.load(open(p)))
step = saved["step"] if saved else 0
print(f"resuming at {step}", flush=True)
while step < 120:
    time.sleep(0.1)
    step += 1
    if step % 5 == 0:
        ckpt.save({"step": step}, lambda o, f: f.write(json.dumps(o).encode()))
    report_progress(step, 120)
"""


def test_a_gang_whose_jobs_ignore_sigterm_is_killed_whole_before_the_next_generation(runner, run_id):
    """Node 1 preempted while every node's job ignores SIGTERM: node 1 is killed when its grace
    period ends, the survivor too (its own grace period), and only then does the next generation
    start: never two generations running, and the run finishes from its checkpoint."""
    fast = {"RUNNER_GRACE_PERIOD": "3"}
    out = runner("submit", "--run-id", run_id, "--nodes", "2", "--image", IMAGE, "--detach", "--",
                 "python3", "-c", IGNORES_SIGTERM, **fast)
    assert out.returncode == 0, out.stderr
    sampler = GangSampler(runner.docker, [run_id])
    sampler.start()
    runner.popen("supervise", "--run-id", run_id, **fast)
    try:
        runner.wait_for(lambda: node_step(runner, run_id, 0, 1) >= 10, 120, "attempt 1 to make progress")
        out = runner("ops", "preempt", "--run-id", run_id, "--node", "1", **fast)
        assert out.returncode == 0, out.stderr
        runner.wait_for(lambda: runner.state(run_id).get("state") == "SUCCEEDED", 240, "the gang to finish")
    finally:
        sampler.halt.set()
        sampler.join()
    st = runner.state(run_id)
    assert (st["attempt"], st["restarts"]) == (2, 1), st
    assert sampler.most[run_id] <= 2 and not sampler.mixed, (dict(sampler.most), sampler.mixed[:3])
    resumed = [ln for ln in (runner.run_dir(run_id) / "logs" / "2.log").read_text().splitlines()
               if ln.startswith("resuming at")]
    assert resumed and int(resumed[0].split()[-1]) >= 10, resumed
