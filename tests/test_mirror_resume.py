"""The checkpoint tiers whole: the real agent (``python -m entrypoint``) around the example trainer,
against the GCS emulator through its fault proxy, with a mirror under another prefix.

- The primary's checkpoints become unreachable at restart: the next attempt, on a fresh VM,
  resumes from the mirror at the mirror's step (the trainer says where it started; the journal
  says which tier and step).
- STOP mode: the next attempt runs on the same disk and resumes from it without reading a
  checkpoint byte from the bucket (the proxy counts every request).

How the primary is made unreachable: the proxy answers 400 to every request about the primary's
checkpoint objects (listing, reads, uploads), which the client does not retry. That is what the
agent sees of an outage once the client's own retries gave up; answering 503 instead would make
the client retry for its whole deadline (120 s) before the same thing happens. The run's record
(state, journal, logs) stays reachable, as it must for the run to be supervised at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from entrypoint import tiers
from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.record.phases import CHECKPOINT_RESTORED
from entrypoint.store_gcs import GcsStore
from tests.conftest import ROOT, wait_for
from tests.standins.gcs_fault_proxy import FaultProxy, FaultRule
from tests.standins.gcs_fixture import BUCKET

RUN = "tiers"


def start_agent(proxy: FaultProxy, store_url: str, attempt: int, ckpt: Path, out: Path,
                steps: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_RUN_ID": RUN, "RUNNER_STORE": store_url,
           "RUNNER_ATTEMPT": str(attempt), "RUNNER_CHECKPOINT_DIR": str(ckpt),
           "RUNNER_RESULTS_DIR": str(ckpt.parent / "results"), "RUNNER_SYNC_INTERVAL": "0.3",
           "RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_GRACE_PERIOD": "20",
           "STORAGE_EMULATOR_HOST": f"http://{proxy.address}", "GOOGLE_CLOUD_PROJECT": "local"}
    env.pop("RUNNER_MIRROR", None)
    cmd = [sys.executable, "-m", "entrypoint", "--", sys.executable, "-m", "examples.trainer",
           "--steps", str(steps), "--checkpoint-every", "5", "--step-time", "0.2"]
    with open(out, "wb") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def new_run(primary: GcsStore, mirror_url: str | None) -> RunRecord:
    rec = RunRecord(primary, RUN)
    rec.write_spec(RunSpec(run_id=RUN, image="local", command=[], backend="local", mirror=mirror_url))
    rec.create_state("test")
    rec.transition(State.PROVISIONING, "test", attempt=1)
    return rec


def next_attempt(rec: RunRecord, attempt: int) -> None:
    """What the supervisor does after a lost instance, done by hand here."""
    st, _ = rec.read_state()
    if st.state == State.RUNNING:
        rec.transition(State.PREEMPTED, "test")
    rec.transition(State.PROVISIONING, "test", attempt=attempt)


def stamp_of(store: GcsStore) -> tiers.Stamp | None:
    blob = store.read(tiers.store_stamp_name(RunRecord(store, RUN).name(RunRecord.CHECKPOINTS)))
    return tiers.Stamp.from_json(blob.data) if blob else None


def started_at(log: Path) -> int:
    for line in log.read_text().splitlines():
        if "trainer: starting at step" in line:
            return int(line.split("starting at step ")[1].split()[0])
    raise AssertionError(f"the trainer never started:\n{log.read_text()[-3000:]}")


def resume_note(rec: RunRecord, attempt: int) -> dict[str, Any]:
    notes = [doc for _, doc in rec.events() if doc.get("attempt") == attempt and doc.get("tier")]
    assert len(notes) == 1, notes
    return notes[0]


def test_an_unreachable_primary_resumes_from_the_mirror_at_the_mirrors_step(
        gcs_emulator: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    primary_prefix, mirror_prefix = f"tiers-primary-{tag}", f"tiers-mirror-{tag}"
    primary, mirror = GcsStore(f"gs://{BUCKET}/{primary_prefix}"), GcsStore(f"gs://{BUCKET}/{mirror_prefix}")
    rec = new_run(primary, mirror.url)

    first = start_agent(fault_proxy, primary.url, 1, tmp_path / "vm1" / "ckpt", tmp_path / "a1.log", steps=10_000)
    wait_for(lambda: (s := stamp_of(mirror)) is not None and (s.step or 0) >= 10, 90, "the mirror to hold step 10")
    hb = wait_for(lambda: (h := rec.read_heartbeat()) is not None
                  and h.sync.get("mirror", {}).get("step") is not None and h.sync, 90,
                  "a heartbeat with the mirror's lag")
    assert hb["mirror"]["url"] == mirror.url and hb["mirror"]["lag_steps"] is not None
    os.killpg(first.pid, signal.SIGKILL)  # the VM is gone: nothing more reaches either store
    first.wait()
    mirrored = stamp_of(mirror)
    assert mirrored is not None and mirrored.step is not None

    # The primary's checkpoints are out of reach from here on (the run's record is not).
    # Matched in the request line, where object names are URL-encoded: listings, reads, and the
    # server-side copy that publishes an upload (the unencoded name also appears in the bodies of
    # the run's own notes, which quote the error, and those must go through).
    fault_proxy.add(FaultRule(action="400", match=f"{primary_prefix}%2Fruns%2F{RUN}%2Fcheckpoints", writes_only=False))
    next_attempt(rec, 2)
    second = start_agent(fault_proxy, primary.url, 2, tmp_path / "vm2" / "ckpt", tmp_path / "a2.log",
                         steps=int(mirrored.step) + 2)
    second.wait(timeout=120)

    log = (tmp_path / "a2.log").read_text()
    assert started_at(tmp_path / "a2.log") == mirrored.step, log[-3000:]
    assert "resuming from the mirror" in log and "unreachable" in log
    note = resume_note(rec, 2)
    assert (note["tier"], note["step"]) == (tiers.MIRROR, mirrored.step)
    mark = rec.phases(2)[CHECKPOINT_RESTORED]["detail"]
    assert (mark["tier"], mark["step"]) == (tiers.MIRROR, mirrored.step)
    assert mark["skipped"]["primary"].startswith("unreachable")
    assert fault_proxy.stats.by_action.get("400", 0) > 0  # the fault really was in the path


def test_a_stop_mode_restart_resumes_from_its_own_disk_without_a_download(
        gcs_emulator: str, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    primary = GcsStore(f"gs://{BUCKET}/tiers-stop-{uuid.uuid4().hex[:8]}")
    rec = new_run(primary, None)
    ckpt = tmp_path / "kept-disk" / "ckpt"  # the same directory for both attempts: a STOP/start VM

    first = start_agent(fault_proxy, primary.url, 1, ckpt, tmp_path / "a1.log", steps=10_000)
    wait_for(lambda: (s := stamp_of(primary)) is not None and (s.step or 0) >= 10, 90, "a stamped checkpoint at step 10")
    os.killpg(first.pid, signal.SIGTERM)  # the preemption notice: the trainer saves, the agent syncs
    first.wait(timeout=60)
    assert rec.read_state()[0].state == State.PREEMPTED, (tmp_path / "a1.log").read_text()[-3000:]
    local = tiers.read_local_stamp(str(ckpt))
    assert local is not None and local.step is not None

    next_attempt(rec, 2)
    fault_proxy.stats.seen.clear()
    second = start_agent(fault_proxy, primary.url, 2, ckpt, tmp_path / "a2.log", steps=int(local.step) + 2)
    assert second.wait(timeout=120) == 0, (tmp_path / "a2.log").read_text()[-3000:]

    assert started_at(tmp_path / "a2.log") == local.step
    note = resume_note(rec, 2)
    assert (note["tier"], note["step"]) == (tiers.LOCAL, local.step)
    assert rec.phases(2)[CHECKPOINT_RESTORED]["detail"]["bytes"] == sum(f["size"] for f in local.files.values())
    downloads = [r for r in fault_proxy.stats.seen if r.startswith("GET") and "alt=media" in r
                 and "checkpoints%2Flast.pt" in r]
    assert downloads == []
    assert any("checkpoints" in r for r in fault_proxy.stats.seen)  # the requests were seen at all
    hb = json.loads(json.dumps(rec.read_heartbeat().sync))  # no mirror: no mirror figures
    assert "mirror" not in hb
