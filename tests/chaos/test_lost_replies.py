"""Chaos: a run supervised through a GCS that loses the replies of writes it applied.

Every request of the supervisors, the "agent" and the notifier goes through the fault proxy
(tests/standins/gcs_fault_proxy.py) in front of the GCS emulator, which applies a write and then drops
its reply for a share of writes (``CHAOS_DROP_RATE``, 0.3 by default: the rate of the field
report in issue 10 §3). Two supervisors with webhooks drive the run through two preemptions to
SUCCEEDED on an in-memory compute backend; the agent's transitions are written by hand as an
agent in a VM would. The run must end with:

- every transition in the journal exactly once (stored, not only shown from state.json);
- every transition posted to the webhook exactly once;
- each attempt's instance created in the pass that provisioned it (a lost reply on the create
  claim used to leave it uncreated for 60 s and then count a bogus restart);
- as many restarts counted as preemptions happened.

Short form (in ``make test``): one run. Long form (``make chaos``): 5 runs, or
``RUNNER_CHAOS_CYCLES=N``; each run a new seed from ``CHAOS_SEED``, printing expected vs found.
``CHAOS_ACTIONS=drop_reply,applied_503,429,503`` mixes in the other faults.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import pytest

from entrypoint.record import RunRecord, RunSpec, State
from runner.ops.notify import TransitionNotifier
from runner.launch.supervisor import Supervisor
from tests.chaos.harness import cycles
from tests.standins.gcs_fixture import store_through
from tests.standins.memory_backend import MemoryBackend
from tests.test_notify import Receiver, fast_sender, settings

RUNS = cycles(short=1, long=5)
DROP_RATE = float(os.environ.get("CHAOS_DROP_RATE", "0.3"))
SEED = int(os.environ.get("CHAOS_SEED", "1"))
# Which faults share the rate: drop_reply, applied_503 (both apply the write), 429, 503.
ACTIONS = tuple(os.environ.get("CHAOS_ACTIONS", "drop_reply").split(","))

EXPECTED = [
    ("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "PREEMPTED"),
    ("PREEMPTED", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "PREEMPTED"),
    ("PREEMPTED", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED"),
]


@pytest.fixture
def receiver():
    from tests.standins.json_http_server import serve

    r = Receiver()
    with serve(r, "webhook") as url:
        r.url = f"{url}/hooks/chaos"
        yield r
        r.release.set()


def _agent(rec: RunRecord, new: State, **changes: Any) -> None:
    st, _ = rec.read_state()
    rec.transition(new, "agent", expect_attempt=st.attempt, **changes)


def _stored_transitions(rec: RunRecord) -> list[tuple[str | None, str]]:
    """Transitions as stored in events/ (what a webhook or `ops events` reads), in time order."""
    import json

    docs = [json.loads(rec.store.read(n).data) for n in sorted(rec.store.list(rec.name(rec.EVENTS)))]
    return [(d["from"], d["to"]) for d in docs if d["to"] and d["from"] != d["to"]]


@pytest.mark.parametrize("run", range(RUNS))
def test_a_run_through_lost_replies_is_journaled_and_announced_exactly_once(
    run: int, fault_proxy, receiver
) -> None:
    seed = SEED + run
    fault_proxy.random_writes(rate=DROP_RATE, seed=seed, actions=ACTIONS)
    store = store_through(fault_proxy, f"chaos-lost-replies-{seed}")
    backend = MemoryBackend(notice_seconds=0)
    rec = RunRecord(store, "chaos-1")
    rec.write_spec(RunSpec(run_id="chaos-1", image="img@sha256:" + "a" * 64, command=["true"],
                           backend="memory", max_restarts=5))
    rec.create_state("submit")
    sups = [Supervisor(store, backend, settings(store),
                       notifier=TransitionNotifier(lambda: receiver.url, sender_factory=fast_sender))
            for _ in range(2)]

    def passes() -> None:
        for s in sups:
            s.reconcile(rec.run_id)

    for attempt in (1, 2, 3):
        passes()  # PENDING/PREEMPTED → PROVISIONING, and the instance is created
        st = rec.read_state()[0]
        assert (st.state, st.attempt) == (State.PROVISIONING, attempt)
        live = [i for i in backend.list(rec.run_id) if i.attempt == attempt]
        assert len(live) == 1, f"attempt {attempt}: {len(live)} instances after its pass (seed {seed})"
        _agent(rec, State.RUNNING, zone="us-central1-a")
        passes()
        if attempt < 3:
            backend.preempt(live[0])
    _agent(rec, State.SUCCEEDED, exit_code=0)
    passes()
    passes()  # a second pass: the journal repair and the webhook of the last transition
    for s in sups:
        assert s.notifier is not None and s.notifier.sender is not None
        assert s.notifier.sender.flush(20), "webhook deliveries did not finish"

    st = rec.read_state()[0]
    journal = _stored_transitions(rec)
    posted = receiver.transitions(by_time=True)
    stats = fault_proxy.stats
    want = Counter([(None, "PENDING")] + EXPECTED)
    print(f"\nlost replies (seed {seed}, fault rate {DROP_RATE}): faults {stats.by_action} "
          f"in {stats.writes} writes; journal: {sum(want.values())} expected, "
          f"{sum((want & Counter(journal)).values())} found, {sum((Counter(journal) - want).values())} "
          f"extra; webhook: {len(EXPECTED)} expected, {sum((Counter(EXPECTED) & Counter(posted)).values())} "
          f"posted, {sum((Counter(posted) - Counter(EXPECTED)).values())} extra; restarts counted "
          f"{st.restarts} (2 preemptions); final state {st.state.value}", file=sys.stderr)
    lost = stats.by_action.get("drop_reply", 0) + stats.by_action.get("applied_503", 0)
    assert lost > 0 or "drop_reply" not in ACTIONS, "no reply was lost: this run proved nothing"
    assert (st.state, st.attempt, st.restarts) == (State.SUCCEEDED, 3, 2)
    assert journal == [(None, "PENDING")] + EXPECTED
    assert [(ev["from"], ev["to"]) for _, ev in rec.events() if ev["to"]] == journal
    assert posted == EXPECTED  # every transition after the supervisors started, once each
    assert len(backend.list(rec.run_id)) == 0 or all(i.attempt == 3 for i in backend.list(rec.run_id))


def test_submit_through_lost_replies_on_spec_state_claim_and_event_creates_one_vm(
    fault_proxy, compute_fake
) -> None:
    """The user's view, with real CLI processes: `runner submit --detach` on GCE while GCS loses
    the reply of each of its record writes once. It used to exit 1 on spec.json and leave the
    run id wedged; a lost claim reply left the VM uncreated."""
    from tests.standins.gcs_fault_proxy import FaultRule
    from tests.test_gce_backend import IMAGE, PROJECT, cli

    for what in ("spec.json", "state.json", "create.json", "/events/"):
        fault_proxy.add(FaultRule(action="drop_reply", match=what, times=1))
    store = store_through(fault_proxy, "chaos-submit")
    emulator = f"http://{fault_proxy.address}"  # every request of the CLI goes through the proxy
    p = cli(compute_fake, emulator, store.url, "submit", "--run-id", "exp-1", "--project", PROJECT,
            "--zones", "us-central1-a", "--no-gpu", "--image", IMAGE, "--detach", "--", "true")
    assert p.returncode == 0, p.stderr
    assert fault_proxy.stats.by_action.get("drop_reply", 0) >= 4, fault_proxy.stats.matched
    assert [v.name for v in compute_fake.instances()] == ["runner-exp-1-a1"]
    listed = cli(compute_fake, emulator, store.url, "ops", "list", "--project", PROJECT, "--json")
    assert listed.returncode == 0, listed.stderr
    assert "exp-1" in listed.stdout
    rec = RunRecord(store, "exp-1")
    assert _stored_transitions(rec) == [(None, "PENDING"), ("PENDING", "PROVISIONING")]
    assert rec.read_state()[0].restarts == 0
