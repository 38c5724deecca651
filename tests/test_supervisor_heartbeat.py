"""The supervisor's own heartbeat (who last supervised, where, when) and the state a supervisor
keeps between passes (the create backoff), which must survive one-shot passes.

Real parts: the product's GCE backend against the Compute fake, the store on the GCS emulator.
"""

from __future__ import annotations

import json

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.supervisor_heartbeat import HEARTBEAT, SupervisorPass, judge, read_pass, write_pass

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64
ZONES = ["us-central1-a", "us-central1-b"]


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=list(ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, machine_type="n1-standard-4", no_gpu=True,
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    return make_context(cfg), compute_fake


def _submit(ctx, run_id="exp-1"):
    from runner.launch.submit import submit

    return submit(ctx, run_id, ["python3", "-m", "examples.trainer"], image=IMAGE, restart=False)


def test_a_fresh_one_shot_supervisor_keeps_the_create_backoff_of_the_pass_before(gce):
    ctx, fake = gce
    fake.stockout_zones = set(ZONES)
    _submit(ctx)
    clock = [1000.0]
    first = ctx.supervisor()
    first.now = lambda: clock[0]
    first.reconcile_all()
    assert fake.instances() == []
    fake.stockout_zones = set()
    # The next minute's `supervise --once` is a new process: it must still wait out the backoff.
    second = ctx.supervisor()
    second.now = lambda: clock[0] + 0.5
    second.reconcile_all()
    assert fake.instances() == [], "a one-shot pass ignored the backoff its predecessor set"
    third = ctx.supervisor()
    third.now = lambda: clock[0] + 5
    third.reconcile_all()
    assert len(fake.instances()) == 1
    # A create that worked clears the backoff from the record.
    assert ctx.store.read("runs/exp-1/supervisor/backoff.json") is None


def test_the_backoff_doubles_across_one_shot_passes(gce):
    ctx, fake = gce
    fake.stockout_zones = set(ZONES)
    _submit(ctx)
    t = 1000.0
    delays = []
    for _ in range(3):
        sup = ctx.supervisor()
        sup.now = lambda t=t: t
        sup.reconcile_all()
        raw = json.loads(ctx.store.read("runs/exp-1/supervisor/backoff.json").data)
        delays.append(raw["delay"])
        t = raw["until"] + 0.1
    assert delays == [1.0, 2.0, 4.0]


def test_every_pass_records_who_supervised_where_and_when(gce):
    ctx, _ = gce
    _submit(ctx, "exp-1")
    _submit(ctx, "exp-2")
    sup = ctx.supervisor()
    sup.reconcile_all()
    p = read_pass(ctx.store)
    assert p is not None and p.actor == sup.actor and p.runs_seen == 2 and p.unfinished == 2
    assert p.where.startswith("host ") and p.every == 1.0 and p.error_count == 0
    assert judge(p, now=p.finished_at + 1).alive


def test_a_pass_inside_cloud_run_says_so(gce, monkeypatch):
    ctx, _ = gce
    monkeypatch.setenv("CLOUD_RUN_JOB", "cos-spot-runner-supervisor")
    monkeypatch.setenv("CLOUD_RUN_EXECUTION", "cos-spot-runner-supervisor-abc12")
    sup = ctx.supervisor()
    sup.pass_every = 60.0
    sup.reconcile_all()
    p = read_pass(ctx.store)
    assert p.hosted and "execution cos-spot-runner-supervisor-abc12" in p.where and p.every == 60.0


def test_a_failing_run_is_counted_in_the_heartbeat(gce):
    ctx, _ = gce
    _submit(ctx, "exp-1")
    ctx.store.write("runs/exp-1/spec.json", b"{not json")
    ctx.supervisor().reconcile_all()
    p = read_pass(ctx.store)
    assert p.error_count == 1 and p.errors[0].startswith("exp-1: ")


def test_a_pass_whose_instance_list_fails_is_recorded_with_the_error(gce):
    ctx, fake = gce
    _submit(ctx)
    fake.fail_next(403, times=1, rpc="instances.aggregatedList", reason="forbidden")
    ctx.supervisor().reconcile_all()  # survives it: each run then lists its own instances
    p = read_pass(ctx.store)
    assert p is not None and p.error_count == 1 and "listing instances" in p.errors[0]


def _pass(finished: float, every: float = 3.0, hosted: bool = False) -> SupervisorPass:
    return SupervisorPass(actor="supervisor@laptop.1", where="host laptop (pid 1)", started_at=finished - 0.2,
                          finished_at=finished, every=every, runs_seen=1, hosted=hosted)


def test_a_supervisor_that_stopped_two_intervals_ago_is_called_out_with_the_fix():
    now = 10_000.0
    assert judge(_pass(now - 5.0), now).alive
    dead = judge(_pass(now - 2 * 3.0 - 1.0), now)
    assert not dead.alive and "nobody is supervising" in dead.warning
    assert dead.fix.startswith("runner supervise")


def test_a_hosted_supervisor_is_judged_by_its_schedule_not_the_readers_poll_interval():
    now = 10_000.0
    assert judge(_pass(now - 90, every=60, hosted=True), now).alive
    dead = judge(_pass(now - 125, every=60, hosted=True), now)
    assert not dead.alive and dead.fix.startswith("runner supervise --deploy")


def test_no_heartbeat_at_all_means_nobody_ever_supervised(local_store):
    w = judge(read_pass(local_store))
    assert not w.alive and "ever" in w.text
    write_pass(local_store, _pass(123.0))
    assert read_pass(local_store).actor == "supervisor@laptop.1"
    assert local_store.read(HEARTBEAT) is not None


@pytest.mark.parametrize("bad", [{"finished_at": "yesterday"}, {"every": None}, {"errors": "boom"}])
def test_a_heartbeat_with_fields_of_the_wrong_type_is_unreadable_not_a_crash(local_store, bad):
    """Anyone who can write the bucket (or a future runner) can leave a heartbeat this runner
    cannot judge; ops status/list/watch and submit --detach must still answer."""
    from runner.launch.supervisor_heartbeat import watchfulness

    doc = json.loads(_pass(123.0).to_json()) | bad
    local_store.write(HEARTBEAT, json.dumps(doc).encode())
    assert read_pass(local_store) is None
    w = watchfulness(local_store)
    assert not w.alive and "nobody is supervising" in w.warning


def test_a_restart_the_user_asks_for_is_not_held_back_by_the_backoff_of_an_earlier_attempt(gce):
    """The backoff is advice for retrying *this* attempt's create; kept in the record, it must not
    silently delay a new attempt (a `submit --restart` after the zones refused and the user stopped
    the run), as the old in-memory backoff of a fresh process never did."""
    from runner.ops.runs import delete_run
    from runner.launch.submit import submit

    ctx, fake = gce
    fake.stockout_zones = set(ZONES)
    _submit(ctx)
    t = 1000.0
    for _ in range(4):  # the delay grows to several seconds
        sup = ctx.supervisor()
        sup.now = lambda t=t: t
        sup.reconcile_all()
        last, t = t, json.loads(ctx.store.read("runs/exp-1/supervisor/backoff.json").data)["until"] + 0.1
    delete_run(ctx.store, ctx.backend, "exp-1", grace_period=0)
    fake.stockout_zones = set()
    submit(ctx, "exp-1", [], image=IMAGE, restart=True)
    fresh = ctx.supervisor()
    fresh.now = lambda: last + 1.0  # well inside the last backoff (8 s)
    fresh.reconcile("exp-1")
    assert len(fake.instances()) == 1, "the restart waited out the previous attempt's backoff"


def test_supervisors_racing_on_the_heartbeat_lose_no_run_and_do_not_crash(gce):
    """Two supervisors (a laptop loop and a hosted pass) write the one heartbeat object at once:
    last writer wins, every run still gets exactly one VM, and the heartbeat stays readable."""
    import threading

    ctx, fake = gce
    for i in range(4):
        _submit(ctx, f"exp-{i}")
    errors: list[BaseException] = []

    def passes() -> None:
        sup = ctx.supervisor()
        try:
            for _ in range(3):
                sup.reconcile_all()
        except BaseException as e:  # noqa: BLE001 - the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=passes) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    names = sorted(i.name for i in fake.instances())
    assert names == [f"runner-exp-{i}-a1" for i in range(4)]
    p = read_pass(ctx.store)
    assert p is not None and p.runs_seen == 4 and p.error_count == 0


def test_an_attached_supervisor_failing_for_days_keeps_a_bounded_error_list(gce):
    """`runner submit` (attached) and `supervise --run-id` step one run for days without a
    store-wide pass; their per-run failures must not pile up in memory, nor leak into the next
    pass's heartbeat."""
    ctx, _ = gce
    _submit(ctx, "exp-1")
    ctx.store.write("runs/exp-1/spec.json", b"{not json")
    sup = ctx.supervisor()
    for _ in range(500):
        sup.reconcile("exp-1")
    assert len(sup.pass_errors) <= 20
    sup.reconcile_all()
    assert read_pass(ctx.store).error_count == 1


def test_an_attached_submit_counts_as_supervising_its_own_run_and_only_that_one(gce):
    """`runner submit` (attached) restarts its run after a preemption: `ops status` of that run
    must not say nobody supervises it; another run, which nobody steps, still gets the warning."""
    from runner.launch.follow import follow_run
    from runner.ops.runs import run_status

    ctx, _ = gce
    _submit(ctx, "exp-1")
    _submit(ctx, "exp-2")
    follow_run(ctx.supervisor(), "exp-1", 1.0, lambda s: None, once=True)
    mine = run_status(ctx.store, "exp-1")["supervisor"]
    assert mine["alive"] is True and "exp-1" in mine["text"], mine
    other = run_status(ctx.store, "exp-2")["supervisor"]
    assert other["alive"] is False and "nobody is supervising" in other["warning"]
