"""``--data gs://…`` on GCE, whole: gcp/startup.sh on the simulated COS VM mounts the staging
folder, the agent in the workload image stages the prefix from the GCS emulator, the job reads it
read-only; and a prefix with nothing in it fails the run at once."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from entrypoint.record import State
from entrypoint.store_gcs import GcsStore
from runner.launch import staged_data
from tests.standins.gcs_fixture import BUCKET
from tests.test_startup_script import apis, compute, explain, harness, pinned_image  # noqa: F401 - fixtures

pytestmark = pytest.mark.docker

JOB = ["sh", "-c", "cat /data/x; echo; cat /data/sub/big.bin | wc -c; "
       "if touch /data/y 2>/dev/null; then echo WROTE-INTO-DATA; exit 3; fi; echo read-only-ok"]


def _spec_and_metadata(source: str) -> tuple[dict[str, Any], dict[str, str]]:
    data = [{"source": source, "mount": "/data"}]

    class Spec:  # what GceBackend.plan reads: the spec's data and its paths
        checkpoint_dir, results_dir = "/var/lib/runner/checkpoints", "/var/lib/runner/results"

    Spec.data = data  # type: ignore[attr-defined]
    return {"data": data}, staged_data.metadata_items(Spec)


def test_a_gs_prefix_is_staged_on_the_vm_and_read_only_for_the_job(harness, gcs_emulator: str) -> None:  # type: ignore[no-untyped-def]
    source = f"gs://{BUCKET}/datasets/{uuid.uuid4().hex[:8]}"
    src = GcsStore(source)
    payload = uuid.uuid4().hex
    src.write("x", payload.encode())
    src.write("sub/big.bin", os.urandom(40 << 20))  # over 32 MiB: sliced ranged reads
    spec, attrs = _spec_and_metadata(source)
    assert attrs == {"runner-data-mounts": "/data"}
    sc = harness.run("data", JOB, spec=spec, attributes=attrs)
    assert sc.boot.exit_code == 0, explain(sc)
    assert payload in sc.job_stdout and str(40 << 20) in sc.job_stdout, sc.job_stdout
    assert "read-only-ok" in sc.job_stdout and "WROTE-INTO-DATA" not in sc.job_stdout
    argv = " ".join(sc.docker_run_argv())
    assert f"{sc.vm.state_dir}/staged/0:/data:ro" in argv
    state, _ = sc.record.read_state()
    assert state.state == State.SUCCEEDED, state
    hb = sc.record.read_heartbeat()
    assert hb is not None and hb.data is not None
    assert hb.data["copied_files"] == 2 and hb.data["bytes_done"] == (40 << 20) + 32

    # The same VM stopped and started again (terminationAction=STOP) for the next attempt: its
    # stateful partition kept the staged copy, so nothing is copied; a changed object is.
    src.write("x", b"changed")
    rec = sc.record
    rec.reopen("test", "next attempt on the kept disk")
    rec.transition(State.PROVISIONING, "test", attempt=2)
    sc.metadata.attributes["runner-attempt"] = "2"
    sc.vm.power_cycle()
    with sc.metadata:
        reboot = sc.vm.boot(harness.vm_env(sc.metadata))
        assert reboot.exit_code == 0, reboot.stdout + reboot.stderr
        job = harness.docker.containers.get(sc.vm.container_name)
        assert job.wait(timeout=60)["StatusCode"] == 0, job.logs().decode()
    assert "changed" in job.logs(stdout=True, stderr=False).decode()
    state, _ = rec.read_state()
    assert (state.state, state.attempt) == (State.SUCCEEDED, 2), state
    hb = rec.read_heartbeat()
    assert hb is not None and hb.data is not None
    assert (hb.data["copied_files"], hb.data["kept_files"], hb.data["copied_bytes"]) == (1, 1, len(b"changed")), hb.data


def test_an_empty_prefix_fails_the_run_before_the_job_starts(harness, gcs_emulator: str) -> None:  # type: ignore[no-untyped-def]
    source = f"gs://{BUCKET}/datasets/nothing-{uuid.uuid4().hex[:8]}"
    spec, attrs = _spec_and_metadata(source)
    sc = harness.run("data-empty", ["sh", "-c", "echo JOB-RAN"], spec=spec, attributes=attrs)
    assert sc.boot.exit_code == 0, explain(sc)
    state, _ = sc.record.read_state()
    assert state.state == State.FAILED and f"data source {source} holds no files" in (state.reason or ""), state
    assert "JOB-RAN" not in sc.job_stdout
