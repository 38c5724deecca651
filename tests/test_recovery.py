"""Recovery policy (runner/launch/recovery.py) and attempts as sets of instances (backends/base.py).

Pure rules, no server: what replaces a lost attempt, where the next one is tried, and how an
attempt's instances are judged together.
"""

from __future__ import annotations

import pytest

from entrypoint.record import RunSpec
from runner.launch.backends.base import (
    Attempt, AttemptPlan, BackendError, ComputeBackend, Instance, InstanceStatus, LaunchContext, group_attempts,
)
from runner.launch.recovery import STRATEGIES, Recovery, decide, strategy

S = InstanceStatus


def inst(status: InstanceStatus, attempt: int = 1, rank: int = 0, exit_code: int | None = None) -> Instance:
    return Instance(f"runner-r-a{attempt}-{rank}", "r", attempt, status, exit_code=exit_code, rank=rank)


def attempt(*statuses: InstanceStatus) -> Attempt:
    return Attempt(1, tuple(inst(s, rank=i) for i, s in enumerate(statuses)))


@pytest.mark.parametrize("statuses, keeps, step", [
    ((), False, Recovery.CREATE),
    ((S.STOPPING,), True, Recovery.WAIT),
    ((S.STOPPING,), False, Recovery.WAIT),
    ((S.TERMINATED,), True, Recovery.RESTART_IN_PLACE),
    ((S.TERMINATED,), False, Recovery.DELETE_THEN_CREATE),
    ((S.RUNNING,), False, Recovery.DELETE_THEN_WAIT),
    ((S.STARTING,), True, Recovery.DELETE_THEN_WAIT),
    # One node of a gang in its notice holds the whole attempt; one still running too.
    ((S.RUNNING, S.STOPPING), False, Recovery.WAIT),
    ((S.RUNNING, S.TERMINATED), False, Recovery.DELETE_THEN_WAIT),
])
def test_a_lost_attempt_is_replaced_only_once_nothing_of_it_runs(statuses, keeps, step):
    assert decide(attempt(*statuses) if statuses else None, keeps) is step


def test_an_attempt_runs_only_while_every_instance_runs():
    assert attempt(S.RUNNING, S.STARTING).alive
    assert not attempt(S.RUNNING, S.TERMINATED).alive and not attempt(S.RUNNING, S.TERMINATED).ended
    assert attempt(S.TERMINATED, S.TERMINATED).ended
    assert attempt(S.RUNNING, S.STOPPING).going_away


def test_instances_group_into_their_attempts_in_rank_order():
    got = group_attempts([inst(S.RUNNING, 2, 1), inst(S.TERMINATED, 1), inst(S.RUNNING, 2, 0)])
    assert sorted(got) == [1, 2]
    assert got[2].names == ["runner-r-a2-0", "runner-r-a2-1"] and got[2].lead.rank == 0
    assert got[1].status_text() == "terminated"
    assert Attempt(3, (inst(S.TERMINATED, 3, exit_code=137),)).status_text() == "exited with 137"


@pytest.mark.parametrize("name, previous, order", [
    ("in-order", "b", ("a", "b", "c")),
    ("same-zone-first", "b", ("b", "a", "c")),
    ("next-zone-first", "b", ("c", "a", "b")),
    ("next-zone-first", "c", ("a", "b", "c")),
    ("same-zone-first", None, ("a", "b", "c")),
    ("next-zone-first", "elsewhere", ("a", "b", "c")),  # a zone no longer in the spec
])
def test_each_strategy_orders_the_zones_of_the_next_attempt(name, previous, order):
    assert strategy(name).zones(["a", "b", "c"], previous) == order


def test_every_strategy_tries_every_zone_once():
    for s in STRATEGIES.values():
        for prev in (None, "a", "b", "c"):
            assert sorted(s.zones(["a", "b", "c"], prev)) == ["a", "b", "c"]


def test_an_unknown_strategy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="in-order, same-zone-first, next-zone-first"):
        strategy("random")


class _TwoNodes(ComputeBackend[str]):
    """A backend whose attempts have two instances and whose second create can fail."""

    name = "two"

    def __init__(self, fail_rank: int | None) -> None:
        self.fail_rank = fail_rank
        self.live: dict[str, Instance] = {}

    def ranks(self, spec: RunSpec) -> range:
        return range(2)

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> str:
        return f"{spec.run_id}-a{ctx.attempt}-{rank}"

    def create_instance(self, plan: str) -> Instance:
        rank = int(plan.rsplit("-", 1)[1])
        if rank == self.fail_rank:
            raise BackendError("ZONE_RESOURCE_POOL_EXHAUSTED")
        self.live[plan] = Instance(plan, "r", 1, S.RUNNING, rank=rank)
        return self.live[plan]

    def list(self, run_id: str | None = None) -> list[Instance]:
        return list(self.live.values())

    def delete(self, instance: Instance, grace_period: float = 0) -> None:
        self.live.pop(instance.name, None)

    def preempt(self, instance: Instance, grace_period: float) -> None:
        self.delete(instance)


def _plan(backend: _TwoNodes) -> AttemptPlan[str]:
    from entrypoint.record import AttemptSettings

    spec = RunSpec(run_id="r", image="img", command=["x"], backend="two")
    return backend.plan(spec, LaunchContext(attempt=1, store_url="file:///s", settings=AttemptSettings()))


def test_an_attempt_is_created_whole():
    backend = _TwoNodes(fail_rank=None)
    made = backend.create(_plan(backend))
    assert made.names == ["r-a1-0", "r-a1-1"] and made.alive
    assert sorted(backend.attempts("r")[1].names) == ["r-a1-0", "r-a1-1"]


def test_an_attempt_that_cannot_be_created_whole_leaves_nothing():
    backend = _TwoNodes(fail_rank=1)
    with pytest.raises(BackendError):
        backend.create(_plan(backend))
    assert backend.list() == []  # rank 0 was created, then removed: no half attempt bills


def test_a_single_instance_plan_says_so_when_asked_for_its_only_node():
    plan = AttemptPlan("r", 1, ("a", "b"))
    with pytest.raises(ValueError, match="2 instances"):
        plan.only
    assert AttemptPlan("r", 1, ("a",)).only == "a"
