"""Issue 19, item 5: list filters and partial aggregated lists, against a fake as strict as GCE.

- Several filter expressions must each be in parentheses ("To filter on multiple expressions,
  provide each separate expression within parentheses", the compute v1 ``filter`` reference,
  https://cloud.google.com/compute/docs/reference/rest/v1/targetPools/aggregatedList); the fake
  refuses ``a = x AND b = y`` with GCE's 400 "Invalid list filter expression." (tests/standins/
  compute/filters.py), so the per-run listing the supervisor makes must be parenthesised.
- ``aggregatedList`` is sent with ``returnPartialSuccess=true`` ("To prevent failure, Google
  recommends that you set the returnPartialSuccess parameter to true",
  https://cloud.google.com/compute/docs/reference/rest/beta/instances/aggregatedList); a zone it
  could not read comes back in ``unreachables`` and as an ``UNREACHABLE`` scope warning, and a
  partial listing is never taken for a complete one (a VM there is not a missing VM).
"""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "c" * 64


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a", "us-central1-b"],
                 compute_endpoint=compute_fake.endpoint, store=gcs_store.url, no_gpu=True,
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 512)
    return make_context(cfg), compute_fake


def submit(ctx, run_id: str) -> None:
    from runner.launch.submit import submit as do_submit

    do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def test_one_runs_listing_is_a_parenthesised_filter_the_strict_fake_accepts(gce) -> None:
    ctx, fake = gce
    submit(ctx, "exp-1")
    submit(ctx, "exp-2")
    ctx.supervisor().reconcile_all()
    fake.reset_requests()
    (inst,) = ctx.backend.list("exp-1")
    assert inst.name == "runner-exp-1-a1"
    (req,) = fake.calls("instances.aggregatedList")
    assert req.status == 200
    assert req.query["filter"] == '(labels.runner = "cos-spot-runner") (labels.run-id = "exp-1")'
    assert req.query["returnPartialSuccess"] == "true"


def test_a_partial_listing_names_the_unreachable_zone_and_is_not_taken_as_complete(gce) -> None:
    ctx, fake = gce
    submit(ctx, "exp-1")
    ctx.supervisor().reconcile("exp-1")
    (vm,) = fake.instances()
    zone = vm.zone.rsplit("/", 1)[-1]
    fake.unreachable_zones = {zone}
    from runner.launch.backends.gce import IncompleteListing

    with pytest.raises(IncompleteListing) as err:
        ctx.backend.list()
    assert err.value.unreachable == [f"zones/{zone}"] and err.value.instances == []
    assert zone in str(err.value)


def test_a_supervisor_never_replaces_a_vm_it_cannot_see_in_an_unreachable_zone(gce) -> None:
    ctx, fake = gce
    submit(ctx, "exp-1")
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    st = rec.read_state()[0]
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="us-central1-a")
    fake.unreachable_zones = {"us-central1-a"}
    for _ in range(3):
        sup.reconcile_all()
    assert [v.name for v in fake.instances()] == ["runner-exp-1-a1"]  # no second VM
    st = rec.read_state()[0]
    assert (st.state, st.attempt) == (State.RUNNING, 1)
    fake.unreachable_zones = set()
    sup.reconcile_all()
    assert rec.read_state()[0].state == State.RUNNING
