"""Two stores never control each other's instances, even when they reuse a run id.

Run ids are unique within one store only: two buckets in one GCE project, or two store
directories on one Docker host, may both hold a run ``twin``. Every instance carries its store's
label (``runner-store``); listing, deleting, supervising and orphan-hunting keep to their own.
"""

from __future__ import annotations

import re
import uuid

import pytest

from entrypoint.record import RunRecord, State
from runner.launch.backends.base import LABEL_STORE
from runner.config import Config
from runner.launch.context import make_context
from runner.naming import LABEL_VALUE_RE, store_label
from tests.conftest import Runner, trainer

IMAGE = "us-docker.pkg.dev/test-project/runs/trainer@sha256:" + "b" * 64


def test_store_label_is_a_valid_label_and_one_per_store(tmp_path):
    a = store_label("gs://bucket-a")
    assert LABEL_VALUE_RE.fullmatch(a) and re.fullmatch(r"s[0-9a-f]{16}", a)
    assert store_label("gs://bucket-a/") == a
    assert store_label("gs://bucket-b") != a
    assert store_label("gs://bucket-a/team") != a
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    assert store_label(f"file://{tmp_path}/d") == store_label(f"file://{tmp_path}/link/")


@pytest.fixture
def two_gce_stores(compute_fake, gcs_emulator):
    # Room for both stores' VMs: the quota is the project's, whichever store's run asks.
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 8)

    def ctx(name: str):
        cfg = Config(backend="gce", project="test-project", zones=["us-central1-a"],
                     compute_endpoint=compute_fake.endpoint,
                     store=f"gs://test-bucket/{name}-{uuid.uuid4().hex[:8]}",
                     machine_type="n1-standard-4", gpu="nvidia-tesla-t4",
                     poll_interval=1.0, stall_polls=600, gpu_timeout=300)
        return make_context(cfg)

    return ctx("a"), ctx("b"), compute_fake


def _submit(ctx, run_id: str) -> None:
    from runner.launch.submit import submit

    submit(ctx, run_id, ["python3", "-m", "examples.trainer"], image=IMAGE, restart=False)


def test_gce_a_second_bucket_reusing_a_run_id_never_touches_the_first_ones_vm(two_gce_stores):
    from runner.ops.runs import delete_run, orphans

    a, b, fake = two_gce_stores
    _submit(a, "twin")
    a.supervisor().reconcile("twin")
    (vm,) = fake.instances()
    assert vm.labels[LABEL_STORE] == store_label(a.cfg.store_url)

    _submit(b, "twin")
    b.supervisor().reconcile("twin")
    assert [i.name for i in fake.instances()] == [vm.name]  # not adopted, not doubled
    journal = [ev.get("reason", "") for _, ev in RunRecord(b.store, "twin").events()]
    assert any("belongs to a run of another store" in r for r in journal), journal
    assert b.backend.list("twin") == [] and orphans(b.store, b.backend) == []

    out = delete_run(b.store, b.backend, "twin", grace_period=0)
    assert out["removed"] == [] and out["state"] == "STOPPED"
    b.supervisor().reconcile_all()
    assert [i.name for i in fake.instances()] == [vm.name]
    assert RunRecord(a.store, "twin").read_state()[0].state == State.PROVISIONING
    assert [i.name for i in a.backend.list("twin")] == [vm.name]


@pytest.mark.docker
def test_local_a_second_store_reusing_a_run_id_cannot_stop_the_first_ones_job(tmp_path, docker_client, run_id):
    image = __import__("os").environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    stores = [tmp_path / "a", tmp_path / "b"]
    for s in stores:
        s.mkdir()
    a, b = (Runner(s, docker_client) for s in stores)
    try:
        r = a("submit", "--run-id", run_id, "--image", image, "--detach", "--", *trainer(2000, 50, 0.05))
        assert r.returncode == 0, r.stderr
        a.wait_for(lambda: a.state(run_id).get("state") == "RUNNING", 60, "run of store a RUNNING")
        (theirs,) = a.containers(run_id)

        r = b("submit", "--run-id", run_id, "--image", image, "--detach", "--", *trainer(5, 1, 0.01))
        assert r.returncode == 0, r.stderr
        r = b("supervise", "--run-id", run_id, "--once")
        r = b("ops", "delete", "--run-id", run_id, "--json")
        assert r.returncode == 0, r.stderr
        assert '"removed": []' in r.stdout

        theirs.reload()
        assert theirs.status == "running" and theirs.labels[LABEL_STORE] == store_label(f"file://{stores[0]}")
        assert a.state(run_id)["state"] == "RUNNING"
        assert b.state(run_id)["state"] == "STOPPED"
    finally:
        a.cleanup()
        b.cleanup()
