"""The parts of a gang that need no Docker: names, the environment every node gets, how a node
finds rank 0, how rank 0 judges its peers, how the supervisor judges a generation, and what a
gang costs. The whole path runs in tests/test_gang_local.py and tests/test_torch_gang.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from entrypoint import gang
from entrypoint.record import Heartbeat, RunRecord, RunSpec
from runner.config import Config, ConfigError
from runner.launch.backends.base import Attempt, Instance, InstanceStatus
from runner.launch.gang_watch import lost_nodes
from runner.naming import GCE_NAME_MAX, instance_names, node_name, rank_of, resource_name
from tests.conftest import ROOT


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture
def rec(local_store):
    r = RunRecord(local_store, "g-1")
    r.write_spec(RunSpec(run_id="g-1", image="sha256:x", command=["train"], backend="local", nodes=2))
    return r


# ---- names ----

def test_node_names_carry_the_rank_and_never_equal_a_single_instances_name():
    assert node_name("demo-1", 2, 1) == "runner-demo-1-a2-n1"
    assert rank_of("runner-demo-1-a2-n1") == 1 and rank_of(resource_name("demo-1", 2)) is None
    assert instance_names("demo-1", 3, 2) == ["runner-demo-1-a3-n0", "runner-demo-1-a3-n1"]
    assert instance_names("demo-1", 3) == ["runner-demo-1-a3"]
    # An id that looks like a node name is hashed, so two runs' names cannot meet.
    assert node_name("x", 1, 0) not in {resource_name("x-a1-n0", a) for a in range(1, 4)}
    long = node_name("a" * 80, 12, 63)
    assert len(long) <= GCE_NAME_MAX and long.endswith("-a12-n63") and rank_of(long) == 63
    with pytest.raises(ValueError):
        node_name("x", 1, -1)


# ---- what every node is told ----

def test_every_node_gets_its_rank_the_gang_and_torchruns_own_options():
    env = gang.node_env("big-1", 3, 1, 2, "runner-big-1-a3-n0")
    assert env == {
        "RUNNER_NODE_RANK": "1", "RUNNER_NNODES": "2", "RUNNER_MASTER_ADDR": "runner-big-1-a3-n0",
        "RUNNER_MASTER_PORT": "29500", "RUNNER_RDZV_ID": "big-1-a3",
        "MASTER_ADDR": "runner-big-1-a3-n0", "MASTER_PORT": "29500", "NODE_RANK": "1",
        "PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "runner-big-1-a3-n0",
        "PET_MASTER_PORT": "29500", "PET_RDZV_ID": "big-1-a3",
    }
    assert "WORLD_SIZE" not in env  # torchrun's to set: processes, not nodes
    with pytest.raises(ValueError):
        gang.node_env("big-1", 3, 2, 2, "x")
    with pytest.raises(SystemExit, match="outside a gang"):
        gang.Node.from_env({"RUNNER_NODE_RANK": "2", "RUNNER_NNODES": "2"})
    assert gang.Node.from_env({}) == gang.Node(0, 1) and not gang.Node().in_gang


def test_a_local_gang_dry_run_shows_its_private_network_and_every_node(tmp_path):
    p = subprocess.run([sys.executable, "-m", "runner.cli", "submit", "--run-id", "big-1", "--nodes", "2",
                        "--store", str(tmp_path / "store"), "--image", "img", "--dry-run", "--", "torchrun", "-m", "t"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    net, n0, n1 = p.stdout.splitlines()
    assert net.startswith("docker network create --internal ") and net.endswith(" runner-big-1-a1")
    for rank, line in ((0, n0), (1, n1)):
        assert f"--name runner-big-1-a1-n{rank} --network runner-big-1-a1 " in line
        assert f"-e PET_NODE_RANK={rank} " in line and "-e PET_MASTER_ADDR=runner-big-1-a1-n0 " in line
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("nodes, ok", [(1, True), (2, True), (64, True), (0, False), (65, False)])
def test_the_gang_size_is_checked_like_any_setting(nodes, ok):
    if ok:
        assert Config(nodes=nodes).nodes == nodes
    else:
        with pytest.raises(ConfigError, match="nodes = .* must be between 1 and 64"):
            Config(nodes=nodes)


def test_an_old_spec_without_nodes_reads_as_one_node():
    doc = RunSpec(run_id="r", image="i", command=["c"], backend="local").__dict__.copy()
    doc.pop("nodes")
    assert RunSpec.from_dict(doc).nodes == 1


# ---- how a node finds rank 0 ----

def test_a_node_takes_rank_0s_address_from_the_env_or_else_from_the_create_claim(rec):
    clock = Clock()
    assert gang.master_addr(rec, 1, {"RUNNER_MASTER_ADDR": "n0"}, 5, clock.sleep, clock.now) == "n0"
    assert gang.master_addr(rec, 1, {}, 5, clock.sleep, clock.now) is None  # no claim: gives up in time
    claim = rec.claim_create(1, "supervisor")
    rec.claims.mark_created(claim, [{"name": "runner-g-1-a1-n0", "zone": "z", "rank": 0, "address": "10.0.0.7"},
                                    {"name": "runner-g-1-a1-n1", "zone": "z", "rank": 1, "address": "10.0.0.8"}])
    assert gang.master_addr(rec, 1, {}, 5, clock.sleep, clock.now) == "10.0.0.7"
    assert gang.master_addr(rec, 2, {}, 5, clock.sleep, clock.now) is None  # another attempt's claim


# ---- how rank 0 judges its peers when its job failed ----

def beat(rec, rank, attempt, phase, at, exit_code=None):
    rec.write_node_heartbeat(rank, Heartbeat(time=at, attempt=attempt, phase=phase, exit_code=exit_code))


@pytest.mark.parametrize("phase, age, exit_code, lost, failed", [
    (gang.TERMINATING, 0, None, "node 1 received SIGTERM", None),
    ("running", 60, None, "node 1 sent no heartbeat for 60s", None),
    (gang.EXITED, 0, 3, None, "node 1's job exited with code 3"),
    (gang.EXITED, 0, 0, None, None),
    ("running", 0, None, None, None),
])
def test_rank_0_tells_a_lost_peer_from_a_failed_one(rec, phase, age, exit_code, lost, failed):
    clock = Clock()
    beat(rec, 1, 4, phase, clock.t - age, exit_code)
    v = gang.judge_peers(rec, gang.Node(0, 2), 4, stale_after=20, wait=3, sleep=clock.sleep, now=clock.now)
    assert (v.lost or "").startswith(lost or "") and bool(v.lost) == bool(lost), v
    assert v.failed == failed, v


def test_a_peer_that_never_reported_in_this_attempt_was_lost(rec):
    clock = Clock()
    beat(rec, 1, 3, "running", clock.t)  # the attempt before's
    v = gang.judge_peers(rec, gang.Node(0, 2), 4, stale_after=20, wait=1, sleep=clock.sleep, now=clock.now)
    assert v.lost and "never reported in attempt 4" in v.lost


def test_news_of_a_peer_that_arrives_while_rank_0_looks_counts(rec):
    clock = Clock()
    beat(rec, 1, 4, "running", clock.t)

    def sleep(s: float) -> None:  # node 1's agent writes its SIGTERM a moment later
        clock.sleep(s)
        beat(rec, 1, 4, gang.TERMINATING, clock.t)

    v = gang.judge_peers(rec, gang.Node(0, 2), 4, stale_after=20, wait=3, sleep=sleep, now=clock.now)
    assert v.lost and "SIGTERM" in v.lost


# ---- how the supervisor judges a generation ----

def inst(rank, status=InstanceStatus.RUNNING, exit_code=None, attempt=4):
    return Instance(name=node_name("g-1", attempt, rank), run_label="g-1", attempt=attempt, status=status,
                    exit_code=exit_code, rank=rank)


def test_any_node_gone_ends_the_generation_but_a_node_that_ended_on_its_own_does_not(rec):
    ok = Attempt(4, (inst(0), inst(1)))
    assert lost_nodes(rec, 2, ok) == []
    assert lost_nodes(rec, 2, Attempt(4, (inst(0),))) == ["node 1 gone"]
    assert lost_nodes(rec, 2, Attempt(4, (inst(1),))) == ["node 0 gone"]
    ended = Attempt(4, (inst(0), inst(1, InstanceStatus.TERMINATED, 0)))
    assert lost_nodes(rec, 2, ended) == ["node 1 exited with 0"]  # no word from its agent: lost
    beat(rec, 1, 4, gang.EXITED, 1000.0, 0)
    assert lost_nodes(rec, 2, ended) == []  # its agent said its job ended: rank 0 decides
    assert lost_nodes(rec, 2, Attempt(4, (inst(0),))) == []  # likewise once its VM deleted itself (GCE)
    assert lost_nodes(rec, 2, Attempt(4, (inst(1),))) == ["node 0 gone"]  # never for rank 0
    going = Attempt(4, (inst(0), inst(1, InstanceStatus.STOPPING)))
    assert lost_nodes(rec, 2, going) == [] and going.going_away  # in its notice: the supervisor waits


def test_a_gang_costs_n_vms(local_store, tmp_path):
    from runner.ops.cost import load_prices

    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"as_of": "2026-01-02", "currency": "USD", "source": "test",
                                "regions": {"us-central1": {"machine": {"g2-standard-8": 2.0}}}}))
    prices = load_prices(str(path))
    one = RunSpec(run_id="r", image="i", command=["c"], backend="gce", machine_type="g2-standard-8")
    four = RunSpec(run_id="r", image="i", command=["c"], backend="gce", machine_type="g2-standard-8", nodes=4)
    assert prices.hourly(one, "us-central1") == (2.0, None)
    assert prices.hourly(four, "us-central1") == (8.0, None)


# ---- sharded checkpoints ----

def put(store, name, data=b"x"):
    store.write("runs/g-1/checkpoints/" + name, data)


def test_a_step_is_committed_only_once_every_shard_is_stored_and_old_steps_go(local_store):
    from entrypoint.shards import commit

    prefix = "runs/g-1/checkpoints/"
    put(local_store, "shards/step-000000000004/rank-00000-of-00002")
    assert commit(local_store, prefix) == []  # rank 1's shard is not there yet
    put(local_store, "shards/step-000000000004/rank-00001-of-00002")
    put(local_store, "shards/step-000000000008/rank-00000-of-00002")
    assert commit(local_store, prefix) == [4]
    assert commit(local_store, prefix) == []  # once
    for step in (8, 12):
        put(local_store, f"shards/step-{step:012d}/rank-00001-of-00002")
        put(local_store, f"shards/step-{step:012d}/rank-00000-of-00002")
    put(local_store, "shards/step-000000000016/rank-00000-of-00002")
    assert commit(local_store, prefix) == [8, 12]
    left = sorted(n[len(prefix):] for n in local_store.list(prefix))
    # The newest two committed steps are kept (a node may still be restoring the older), older go;
    # the newer step still waiting for a shard stays.
    assert left == ["shards/step-000000000008/COMMITTED", "shards/step-000000000008/rank-00000-of-00002",
                    "shards/step-000000000008/rank-00001-of-00002", "shards/step-000000000012/COMMITTED",
                    "shards/step-000000000012/rank-00000-of-00002", "shards/step-000000000012/rank-00001-of-00002",
                    "shards/step-000000000016/rank-00000-of-00002"], left
    # Shards that disagree on the world size never make a step.
    put(local_store, "shards/step-000000000020/rank-00000-of-00002")
    put(local_store, "shards/step-000000000020/rank-00001-of-00003")
    assert commit(local_store, prefix) == []


def test_a_rank_resumes_from_the_newest_committed_step_only(tmp_path, monkeypatch):
    from entrypoint.job import ShardedCheckpoint

    monkeypatch.delenv("RUNNER_RESUME_FROM", raising=False)
    write = lambda o, f: f.write(json.dumps(o).encode())  # noqa: E731
    read = lambda p: json.loads(open(p).read())  # noqa: E731
    r1 = ShardedCheckpoint(1, 2, str(tmp_path), keep=2)
    assert r1.load(read) is None
    for step in (4, 8, 12):
        r1.save(step, {"step": step}, write)
    assert not (tmp_path / "shards/step-000000000004/rank-00001-of-00002").exists()  # keep=2
    assert r1.load(read) is None  # nothing committed yet
    (tmp_path / "shards/step-000000000008/COMMITTED").write_text("{}")
    assert r1.load(read) == (8, {"step": 8})  # 12 is newer but not committed
    (tmp_path / "shards/step-000000000012/COMMITTED").write_text("{}")
    assert r1.load(read) == (12, {"step": 12})
    with pytest.raises(FileNotFoundError, match="world of another size than 3"):
        ShardedCheckpoint(2, 3, str(tmp_path)).load(read)
