"""A create that walks stocked-out zones for longer than the create grace is never judged lost.

The GCE backend, through the real ``google-cloud-compute`` client, against the Compute stand-in
(each zone's insert operation takes ``operation_seconds`` to finish, a stockout arrives as the
operation's error, as GCE reports it) and the GCS emulator for the record. Supervisor B passes
"61 s later" (its clock runs ahead by the offset; the supervisor judges time only through its
``now``) while supervisor A is still walking zones. Before the claim carried a lease, B recorded
the attempt "vanished before the job started" and created attempt 2 beside A's VM.

A second scenario: A stops renewing its claim (as a creator that was killed does) and B takes
the create over in the same round, while A, unaware, goes on: both send the same inserts with
the same request ids, and GCE (the stand-in models ``requestId`` dedupe per zone and method)
answers both with one VM.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from entrypoint.record import RunRecord, State
from runner.launch.supervisor import Supervisor, SupervisorSettings
from runner.launch.backends.base import LABEL_RUN_ID
from runner.naming import label_value
from tests.chaos.harness import GCE_IMAGE, GCE_ZONES, cycles, gce_supervisor
from tests.conftest import wait_for

class _VmSampler(threading.Thread):
    """Counts, many times a second, the run's VMs that exist and are not terminated."""

    def __init__(self, fake, run_id: str) -> None:
        super().__init__(daemon=True)
        self.fake, self.label = fake, label_value(run_id)
        self.most = 0
        self.halt = threading.Event()

    def live(self) -> list:
        return [i for i in self.fake.instances()
                if i.labels.get(LABEL_RUN_ID) == self.label and i.status not in ("TERMINATED", "STOPPING")]

    def run(self) -> None:
        while not self.halt.is_set():
            self.most = max(self.most, len(self.live()))
            time.sleep(0.01)


def _submit(ctx, run_id: str) -> None:
    from runner.launch.submit import submit

    submit(ctx, run_id, ["python3", "-m", "examples.trainer"], image=GCE_IMAGE, restart=False)


def _walk_started(ctx, run_id: str) -> bool:
    """A claimed the create (read raw: the claim's format is what changed)."""
    rec = RunRecord(ctx.store, run_id)
    return ctx.store.exists(rec.name(rec.claim_name(1)))


def test_a_zone_walk_longer_than_the_create_grace_is_never_judged_lost(gce):
    ctx, fake = gce
    fake.stockout_zones = {GCE_ZONES[0]}
    fake.operation_seconds = 1.5  # each zone takes this long to answer: the walk outlives B's look
    rng = random.Random(17)
    for n in range(cycles(1, 4)):
        run_id = f"walk-{n}"
        _submit(ctx, run_id)
        a, b = gce_supervisor(ctx, 0, "sup-a"), gce_supervisor(ctx, rng.uniform(61, 110), "sup-b")
        sampler = _VmSampler(fake, run_id)
        sampler.start()
        walker = threading.Thread(target=a.reconcile, args=(run_id,))
        walker.start()
        wait_for(lambda: _walk_started(ctx, run_id), 30, "A to claim the create")
        st = b.reconcile(run_id)  # "61 s later": A is still walking zones
        walker.join(60)
        b.reconcile(run_id)
        a.drain(30), b.drain(30)
        sampler.halt.set()
        sampler.join()
        st = RunRecord(ctx.store, run_id).read_state()[0]
        assert sampler.most == 1, f"{sampler.most} VMs of {run_id} at once"
        assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 1, 0), st
        assert [i.zone.rsplit("/", 1)[-1] for i in sampler.live()] == [GCE_ZONES[1]]
        claim = RunRecord(ctx.store, run_id).read_claim(1)
        assert claim.status == "created" and claim.actor == "sup-a"


def test_a_create_taken_over_mid_walk_makes_one_vm_with_the_same_request_ids(gce):
    ctx, fake = gce
    fake.stockout_zones = {GCE_ZONES[0]}
    fake.operation_seconds = 1.5
    run_id = "takeover"
    _submit(ctx, run_id)
    a = gce_supervisor(ctx, 0, "sup-a")
    a.lease_renew_every = 3600  # A stops renewing, as a creator that was killed does
    b = gce_supervisor(ctx, 200, "sup-b")  # past A's lease: B takes the create over
    sampler = _VmSampler(fake, run_id)
    sampler.start()
    walker = threading.Thread(target=a.reconcile, args=(run_id,))
    walker.start()
    wait_for(lambda: _walk_started(ctx, run_id), 30, "A to claim the create")
    b.reconcile(run_id)
    walker.join(60)
    for sup in (a, b, a):  # later passes: nothing more is created, whatever each one saw
        sup.reconcile(run_id)
    a.drain(30), b.drain(30)
    sampler.halt.set()
    sampler.join()
    assert sampler.most == 1, f"{sampler.most} VMs at once"
    assert len(sampler.live()) == 1
    inserts = [r for r in fake.requests if r.rpc == "instances.insert" and f"/zones/{GCE_ZONES[1]}/" in r.path]
    ids = {r.query.get("requestId") for r in inserts}
    assert len(ids) == 1, ids  # A's and B's inserts were the same request: GCE made one VM
    st = RunRecord(ctx.store, run_id).read_state()[0]
    assert (st.attempt, st.restarts) == (1, 0), st


def test_the_race_harness_with_creates_longer_than_the_grace_reports_no_double(tmp_path):
    """The race harness (``RaceCompute``: real Supervisors looping on a real local store, its
    double detector) with every create taking longer than the create grace, as a zone walk
    does: the supervisors' clocks run 60x (one real second is a supervised minute; the lease is
    renewed on real time), three supervisors pass over three runs and preempt them at random."""
    from entrypoint.record import AttemptSettings
    from entrypoint.store_local import LocalStore
    from tests.chaos.harness import RaceCompute, looping, submit_run, wind_down

    store = LocalStore(str(tmp_path))
    compute = RaceCompute(store, create_delay=1.3)  # 78 supervised seconds: past the 60 s grace
    t0 = time.time()
    fast = lambda: t0 + (time.time() - t0) * 60  # noqa: E731
    settings = SupervisorSettings(poll_interval=0.05, store_url=store.url,
                                  legacy_attempts=AttemptSettings(stall_window=10**9, grace_period=0))
    runs = [f"zw-{i}" for i in range(3)]
    for run_id in runs:
        submit_run(store, run_id)
    sups = []
    for i in range(3):
        sup = Supervisor(store, compute, settings, actor=f"sup-{i}", now=fast)
        sup.lease_renew_every = 0.1
        sups.append(sup)
    halt = threading.Event()
    threads = [looping(halt, s.reconcile_all) for s in sups]
    rng = random.Random(5)
    target = cycles(4, 30)
    preempted = 0
    deadline = time.time() + 60 + target * 3
    try:
        while preempted < target and time.time() < deadline:
            time.sleep(rng.uniform(0.2, 0.8))
            run_id = rng.choice(runs)
            st = RunRecord(store, run_id).read_state()[0]
            live = [i for i in compute.alive(run_id) if i.attempt == st.attempt]
            if st.state == State.RUNNING and live:
                compute.preempt(live[0])
                preempted += 1
    finally:
        wind_down(halt, threads, sups)
    print(f"chaos zone_walk: {len(compute.doubles)} double(s), {preempted} preemptions, "
          f"{len(compute.created)} instances created", file=sys.stderr)
    assert preempted >= min(target, 3), f"the harness preempted too little to judge: {preempted}"
    assert compute.doubles == [], f"{len(compute.doubles)} double(s): {compute.doubles[:3]}"
    restarts = sum(RunRecord(store, r).read_state()[0].restarts for r in runs)
    assert restarts <= preempted, f"{restarts} restarts for {preempted} preemptions: attempts judged lost"
