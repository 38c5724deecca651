"""Issue 19, item 8: a fault sustained past the retry deadline.

``api_retry`` retries 429/5xx and 403 rate limits; when they last past its deadline,
google-api-core raises ``RetryError`` ("Deadline of 60.0s exceeded while calling target function,
last exception: 504 Deadline Exceeded", https://github.com/googleapis/python-datastore/issues/432;
the retry module, https://googleapis.dev/python/google-api-core/latest/_modules/google/api_core/retry/retry_unary.html),
which derives from ``GoogleAPIError`` only, not from ``GoogleAPICallError``. Wherever the GCE backend handles
API errors it handles that too: the run keeps its state and its journal says what happened, and a
submit says it in one line instead of an internal error. The deadline is shortened here so the
fault (503 on every request, the fake's ``fail_next``) outlasts it within the test.
"""

from __future__ import annotations

import pytest

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.backends.base import BackendError
from runner.launch.context import make_context

PROJECT = "test-project"
IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "f" * 64
DEADLINE = 1.5


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator, monkeypatch):
    monkeypatch.setattr("runner.cloud.gcp_clients.API_RETRY_DEADLINE", DEADLINE)
    cfg = Config(backend="gce", project=PROJECT, zones=["us-central1-a", "us-central1-b"],
                 compute_endpoint=compute_fake.endpoint, store=gcs_store.url, no_gpu=True,
                 poll_interval=1.0, stall_polls=600, gpu_timeout=300)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 64)
    return make_context(cfg), compute_fake


def submit(ctx, run_id: str = "exp-1") -> None:
    from runner.launch.submit import submit as do_submit

    do_submit(ctx, run_id, ["python3", "-c", "pass"], image=IMAGE, restart=False)


def test_a_create_under_sustained_503_keeps_the_run_and_journals_why(gce) -> None:
    ctx, fake = gce
    submit(ctx)
    fake.fail_next(503, times=10_000, rpc="instances.insert")
    sup = ctx.supervisor()
    sup.reconcile("exp-1")
    rec = RunRecord(ctx.store, "exp-1")
    assert rec.read_state()[0].state == State.PROVISIONING
    notes = [ev["reason"] for _, ev in rec.events() if ev["to"] is None]
    assert f"still failing after {DEADLINE:g} s of retries (last answer: 503" in notes[-1]
    assert len(fake.calls("instances.insert", ok=False)) > 1, "the fault was not sustained"
    assert fake.instances() == []


def test_a_submit_under_sustained_503_is_refused_in_one_line(gce) -> None:
    ctx, fake = gce
    fake.fail_next(503, times=10_000, rpc="zones.get")
    with pytest.raises(BackendError, match=r"still failing after 1.5 s of retries \(last answer: 503"):
        submit(ctx)
    assert len(fake.calls("zones.get", ok=False)) > 1


def test_any_command_that_meets_a_sustained_fault_says_it_in_one_line_not_as_an_internal_error(capsys) -> None:
    """The CLI's guard: a RetryError from a path that does not handle it (a build, a hosted
    deploy, an ops command) is said as what it is, with exit 1, never as "internal error"."""
    from google.api_core import exceptions as gexc

    from runner.cli.common import guard

    @guard
    def command() -> None:
        raise gexc.RetryError("Timeout of 120.0s exceeded, last exception: 503 The service is "
                              "currently unavailable.", gexc.ServiceUnavailable("unavailable"))

    with pytest.raises(SystemExit) as exit_:
        command()
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "internal error" not in err and "please report" not in err
    assert "kept failing until its retries ran out (Timeout of 120.0s exceeded, last exception: 503" in err
