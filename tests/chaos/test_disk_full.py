"""Disk full (issue 17 §5): a full disk is a failure with its own reason, never a preemption.

Before: a restore that hit ENOSPC crashed the agent before its job started, the supervisor took
the attempt for lost and restarted it (three restarts in six seconds, each "preempted or lost");
a final state write refused by a full store crashed the agent with a traceback, and the run was
recorded "preempted or lost" and run again; a failed download left its ``last.pt.part-…`` temp
file behind, which the next sync published as a checkpoint of its own.

The disks here are real: a tmpfs of a few hundred KiB or MiB (mounting needs root, as the test
machines have; elsewhere these tests skip and say why). The agent runs as the real process on a
real local store, and the supervisor is the real one over the in-memory backend, which reports
the agent process's real exit code as its container's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from entrypoint.checkpoints import DirectorySync, restore
from entrypoint.record import OUTCOME_UNRECORDED, RunRecord, State
from entrypoint.store import Store, StoreError
from entrypoint.store_local import LocalStore
from runner.naming import resource_name
from tests.chaos.harness import cycles
from tests.conftest import ROOT
from tests.standins.supervised_runs import SupervisedRuns

KiB, MiB = 1 << 10, 1 << 20
PART = ".part-"


@contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    """A real file system of ``size`` bytes at ``path`` (a tmpfs), gone afterwards."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip() or done.returncode}): a real full "
                    "disk needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def agent_env(store: LocalStore, run_id: str, checkpoint_dir: Path, results_dir: Path) -> dict[str, str]:
    """What the container gives the agent of attempt 1."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_RUN_ID": run_id, "RUNNER_STORE": store.url,
            "RUNNER_ATTEMPT": "1", "RUNNER_CHECKPOINT_DIR": str(checkpoint_dir),
            "RUNNER_RESULTS_DIR": str(results_dir),
            # No heartbeat or background sync while the job runs: writes of theirs that land
            # after the job filled the disk could free a page (a replaced heartbeat.json) and
            # let the final write through. The final ones still run.
            "RUNNER_HEARTBEAT_INTERVAL": "3600", "RUNNER_SYNC_INTERVAL": "3600"}


def run_agent(store: LocalStore, run_id: str, checkpoint_dir: Path, results_dir: Path,
              *command: str) -> subprocess.CompletedProcess[str]:
    """The real agent of attempt 1, as a process (as the container runs it), to its end."""
    return subprocess.run([sys.executable, "-m", "entrypoint", "--", *command],
                          env=agent_env(store, run_id, checkpoint_dir, results_dir),
                          capture_output=True, text=True, timeout=300)


def state_of(rec: RunRecord):  # type: ignore[no-untyped-def]
    cur = rec.read_state()
    assert cur is not None
    return cur[0]


# ---- a restore that does not fit ----

# What the store holds for the run in each cycle: (name under checkpoints/, size). The last one
# never fits the 1 MiB disk; the ones before it do.
LAYOUTS = [
    [("last.pt", 2 * MiB)],
    [("a/step-100.pt", 300 * KiB), ("last.pt", 3 * MiB)],
    [("best.pt", 1536 * KiB)],
]


def test_a_checkpoint_too_big_for_the_disk_fails_the_run_with_its_reason_and_burns_no_restart(
    supervised: SupervisedRuns, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("vm")  # the store is tmp_path: the VM's disk is elsewhere
    for i in range(cycles(1, len(LAYOUTS) * 2)):
        layout = LAYOUTS[i % len(LAYOUTS)]
        run_id = f"big-{i}"
        rec = supervised.submit(run_id, max_restarts=3)
        sup = supervised.supervisor()
        sup.reconcile(run_id)  # attempt 1 is created: PROVISIONING
        for name, size in layout:
            supervised.store.write(rec.name(RunRecord.CHECKPOINTS + name), os.urandom(size))
        with small_disk(tmp_path / f"disk-{i}", 1 * MiB) as disk:
            p = run_agent(supervised.store, run_id, disk / "ckpt", tmp_path / f"results-{i}", "true")
            left = files_under(disk)
            free_after = free_bytes(disk)
        supervised.backend.end(resource_name(run_id, 1), exit_code=p.returncode)
        sup.reconcile(run_id)  # the pass that, before, restarted it as "preempted or lost"

        st = state_of(rec)
        big, size = layout[-1]
        assert st.state == State.FAILED, (st.state, st.reason, p.stderr[-2000:])
        total = sum(s for _, s in layout)
        sizes = f"{size} bytes" + (f"; {total} bytes of checkpoints in all" if total != size else "")
        assert f"restore of {big} ({sizes}) failed: no space left on device in {disk}/ckpt" in st.reason
        assert "boot_disk_gb" in st.reason and "submit --restart" in st.reason
        assert (st.restarts, st.updated_by) == (0, "agent")
        assert supervised.backend.creates() == [resource_name(f"big-{j}", 1) for j in range(i + 1)]
        assert "Traceback" not in p.stderr, p.stderr
        # The failed download's temp file is gone, and so is the space it held.
        assert not [f for f in left if PART in f], left
        assert left == [f"ckpt/{n}" for n, _ in layout[:-1]]
        assert free_after >= 1 * MiB - sum(s for _, s in layout[:-1]) - 64 * KiB
        # `ops logs` shows the reason too.
        assert f"restore of {big}" in (supervised.store.read(rec.name(RunRecord.log_name(1))) or b"x").data.decode()


# ---- an outcome the full store refuses ----

FILL = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
page = b"\\0" * 4096
try:
    while True:
        os.write(fd, page)
except OSError as e:
    print(f"job: filled the store's disk ({e.strerror}); done", flush=True)
"""


def test_an_outcome_the_full_store_refuses_fails_the_run_instead_of_running_it_again(tmp_path: Path) -> None:
    for i in range(cycles(1, 3)):
        with small_disk(tmp_path / f"disk-{i}", 4 * MiB) as disk:
            (disk / "store").mkdir()
            world = SupervisedRuns(LocalStore(str(disk / "store")))
            rec = world.submit("full", max_restarts=3)
            sup = world.supervisor()
            sup.reconcile("full")
            filler = disk / "filler"
            # The job runs to its end (exit 0) and, on its way, fills the disk the store is on.
            p = run_agent(world.store, "full", tmp_path / f"ckpt-{i}", tmp_path / f"results-{i}",
                          sys.executable, "-c", FILL, str(filler))
            assert "filled the store's disk" in p.stdout, p.stdout + p.stderr
            assert p.returncode == OUTCOME_UNRECORDED, p.stderr[-3000:]
            assert "Traceback" not in p.stderr, p.stderr
            assert "ended as SUCCEEDED (job exited 0), but the store could not record it" in p.stderr
            assert "could not record it: write runs/full/state.json to the store at" in p.stderr
            assert "No space left on device" in p.stderr
            assert state_of(rec).state == State.RUNNING  # nothing could be written, indeed

            inst = resource_name("full", 1)
            world.backend.end(inst, exit_code=p.returncode)
            sup.reconcile("full")  # the store is still full: the supervisor cannot write either...
            assert world.backend.creates() == [inst]  # ...and does not restart the run meanwhile
            assert state_of(rec).state == State.RUNNING

            filler.unlink()  # someone frees space in the store
            sup.reconcile("full")
            st = state_of(rec)
            assert st.state == State.FAILED, (st.state, st.reason)
            assert f"exit {OUTCOME_UNRECORDED}" in st.reason and "could not record" in st.reason
            assert st.restarts == 0
            assert world.backend.creates() == [inst]
            world.settle()


def test_a_preemption_the_full_store_refuses_is_still_restarted(tmp_path: Path) -> None:
    """PREEMPTED asks for the next attempt: unrecorded, it is still one (no exit 74)."""
    with small_disk(tmp_path / "disk", 4 * MiB) as disk:
        (disk / "store").mkdir()
        world = SupervisedRuns(LocalStore(str(disk / "store")))
        rec = world.submit("pre", max_restarts=3)
        sup = world.supervisor()
        sup.reconcile("pre")
        filler = disk / "filler"
        job = [sys.executable, "-c", FILL + "import signal; signal.pause()\n", str(filler)]
        agent = subprocess.Popen([sys.executable, "-m", "entrypoint", "--", *job],
                                 env=agent_env(world.store, "pre", tmp_path / "ckpt", tmp_path / "results"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert agent.stdout is not None
            for line in agent.stdout:  # the job says when the disk is full
                if "filled the store's disk" in line:
                    break
            agent.send_signal(signal.SIGTERM)  # the preemption notice
            _, err = agent.communicate(timeout=120)
        finally:
            if agent.poll() is None:
                agent.kill()
        assert agent.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err, err
        assert "ended as PREEMPTED (SIGTERM (preemption notice)), but the store could not record it" in err

        inst = resource_name("pre", 1)
        world.backend.end(inst, exit_code=agent.returncode)
        filler.unlink()
        sup.reconcile("pre")
        st = state_of(rec)
        assert (st.state, st.attempt, st.restarts) == (State.PROVISIONING, 2, 1), (st.state, st.reason)
        assert world.backend.creates() == [inst, resource_name("pre", 2)]
        world.settle()


def test_a_restore_that_does_not_fit_where_nothing_can_be_recorded_is_not_restarted(tmp_path: Path) -> None:
    """The local backend's case: the store and the checkpoint directory share one full disk, so
    the agent can record neither the restore's failure nor anything else."""
    with small_disk(tmp_path / "disk", 4 * MiB) as disk:
        (disk / "store").mkdir()
        world = SupervisedRuns(LocalStore(str(disk / "store")))
        rec = world.submit("shared", max_restarts=3)
        sup = world.supervisor()
        sup.reconcile("shared")  # attempt 1: PROVISIONING
        world.store.write(rec.name(RunRecord.CHECKPOINTS + "last.pt"), os.urandom(1 * MiB))
        filler = disk / "filler"
        subprocess.run([sys.executable, "-c", FILL, str(filler)], check=True, capture_output=True)
        p = run_agent(world.store, "shared", disk / "ckpt", tmp_path / "results", "true")
        assert p.returncode == OUTCOME_UNRECORDED, p.stderr[-3000:]
        assert "Traceback" not in p.stderr, p.stderr
        assert "ended as FAILED (restore of last.pt (1048576 bytes) failed: no space left on device" in p.stderr
        assert not [f for f in files_under(disk) if PART in f]

        inst = resource_name("shared", 1)
        world.backend.end(inst, exit_code=p.returncode)
        sup.reconcile("shared")  # still full: nothing recorded, and nothing restarted
        assert (state_of(rec).state, world.backend.creates()) == (State.PROVISIONING, [inst])
        filler.unlink()
        sup.reconcile("shared")
        st = state_of(rec)
        assert st.state == State.FAILED and "could not record" in st.reason, (st.state, st.reason)
        assert (st.restarts, world.backend.creates()) == (0, [inst])
        world.settle()


# ---- downloads and syncs never leave or publish temp files ----

@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


def test_a_download_that_does_not_fit_leaves_no_temp_file_and_the_target_as_it_was(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("vm")  # the local store is tmp_path
    store.write("ckpt/last.pt", os.urandom(1 * MiB))
    with small_disk(tmp_path / "disk", 256 * KiB) as disk:
        (disk / "last.pt").write_bytes(b"the previous checkpoint")
        before = free_bytes(disk)
        with pytest.raises((OSError, StoreError)) as caught:
            store.download_file("ckpt/last.pt", str(disk / "last.pt"))
        assert "No space left on device" in str(caught.value) or getattr(caught.value, "errno", None) == 28
        assert os.listdir(disk) == ["last.pt"]
        assert (disk / "last.pt").read_bytes() == b"the previous checkpoint"
        assert free_bytes(disk) == before


def test_sync_never_publishes_a_download_temp_file_and_restore_never_fetches_one(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("vm")  # the local store is tmp_path
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "last.pt").write_bytes(b"complete")
    (local / "last.pt.part-1a2b3c4d").write_bytes(b"half a download")  # left by a restore that died
    (local / "shard.part-0001").write_bytes(b"the job's own file")  # not ours: a real file
    assert DirectorySync(store, str(local), "run/checkpoints/").sync_once()
    assert store.list("run/checkpoints/") == ["run/checkpoints/last.pt", "run/checkpoints/shard.part-0001"]

    # A temp file an older version published is not restored either.
    store.write("run/checkpoints/best.pt.part-0badc0de", b"half")
    again = tmp_path / "restored"
    assert sorted(restore(store, "run/checkpoints/", str(again))) == [
        "run/checkpoints/last.pt", "run/checkpoints/shard.part-0001"]
    assert sorted(os.listdir(again)) == ["last.pt", "shard.part-0001"]
