"""Kill -9 the agent in the middle of checkpoint uploads: the bucket always holds a good checkpoint.

The agent runs for real (``python -m entrypoint``) around the example trainer, which writes a
large ``last.pt`` every step, so sync passes upload back to back and a random kill lands inside
one most of the time. After each kill the test checks what a resume would load, through the
same ``restore`` the agent uses, and that the trainer's own checksum accepts it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


from entrypoint.checkpoints import PARTIAL, restore
from entrypoint.record import RunRecord, RunSpec, State
from examples.trainer import decode_checkpoint
from tests.conftest import ROOT

KILLS = 20


def start_agent(store_url: str, run_id: str, attempt: int, ckpt: Path, padding: int, env: dict) -> subprocess.Popen:
    agent_env = {
        **os.environ, **env,
        "PYTHONPATH": str(ROOT),
        "RUNNER_RUN_ID": run_id,
        "RUNNER_STORE": store_url,
        "RUNNER_ATTEMPT": str(attempt),
        "RUNNER_CHECKPOINT_DIR": str(ckpt),
        "RUNNER_RESULTS_DIR": str(ckpt.parent / "results"),
        "RUNNER_SYNC_INTERVAL": "0.05",
        "RUNNER_HEARTBEAT_INTERVAL": "0.5",
    }
    cmd = [sys.executable, "-m", "entrypoint", "--", sys.executable, "-m", "examples.trainer",
           "--steps", "100000", "--checkpoint-every", "1", "--step-time", "0.02",
           "--checkpoint-bytes", str(padding)]
    return subprocess.Popen(cmd, env=agent_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def next_attempt(rec: RunRecord, attempt: int) -> None:
    """What the supervisor does after a lost instance, done by hand here."""
    st, _ = rec.read_state()
    if st.state in (State.RUNNING, State.PROVISIONING):  # killed before or after it started the job
        rec.transition(State.PREEMPTED, "test")
    rec.transition(State.PROVISIONING, "test", attempt=attempt)


def kill_during_uploads(store, store_url: str, tmp_path: Path, padding: int, env: dict) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run_id = f"kill9-{seed}"
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="local", command=[], backend="local"))
    rec.create_state("test")
    ckpt_name = rec.name("checkpoints/last.pt")
    best_step, torn_seen = 0, 0
    for attempt in range(1, KILLS + 1):
        next_attempt(rec, attempt)
        ckpt = tmp_path / f"vm{attempt}" / "ckpt"  # a fresh "VM" each time: only the bucket survives
        proc = start_agent(store_url, run_id, attempt, ckpt, padding, env)
        if attempt == 1:
            deadline = time.time() + 60
            while store.stat(ckpt_name) is None and time.time() < deadline:
                time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.0))
        # Aim inside an upload: wait until one is under way, then a random offset into it.
        deadline = time.time() + 2
        while not _upload_in_progress(store, rec) and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        partials = [n for n in store.list(rec.name("checkpoints/")) if PARTIAL in n]
        torn_seen += bool(partials) or bool(_local_temp_files(store))
        restored_dir = tmp_path / f"restore{attempt}"
        names = restore(store, rec.name("checkpoints/"), str(restored_dir))
        assert ckpt_name in names, f"no checkpoint in the bucket after kill {attempt} (seed {seed})"
        state = decode_checkpoint((restored_dir / "last.pt").read_bytes())  # raises if torn
        assert state["step"] >= best_step, f"checkpoint went backwards (seed {seed})"
        best_step = state["step"]
        for n in partials:
            store.delete(n)
    assert best_step > 0
    # The kills really did land inside uploads, or this test proves nothing.
    assert torn_seen >= KILLS // 4, f"only {torn_seen}/{KILLS} kills interrupted an upload (seed {seed})"


def _upload_in_progress(store, rec: RunRecord) -> bool:
    root = getattr(store, "root", None)
    if root is not None:
        return any((Path(root) / ".tmp").iterdir())
    return any(PARTIAL in n for n in store.list(rec.name("checkpoints/")))


def _local_temp_files(store) -> list[str]:
    root = getattr(store, "root", None)
    if root is None:
        return []
    tmp = Path(root) / ".tmp"
    found = list(tmp.iterdir())
    for f in found:
        f.unlink()
    return [f.name for f in found]


def test_kill9_during_uploads_never_leaves_a_torn_checkpoint_in_the_local_store(local_store, tmp_path):
    kill_during_uploads(local_store, local_store.url, tmp_path, padding=16 << 20, env={})


def test_kill9_during_uploads_never_leaves_a_torn_checkpoint_in_gcs(gcs_store, gcs_emulator, tmp_path):
    kill_during_uploads(gcs_store, gcs_store.url, tmp_path, padding=4 << 20,
                        env={"STORAGE_EMULATOR_HOST": gcs_emulator, "GOOGLE_CLOUD_PROJECT": "local"})
