"""The resume order between checkpoint tiers, and the mirror's lag (entrypoint.tiers, .mirror, .resume).

Real parts: the stores are real local directories (``LocalStore``), the syncs are the agent's own
``DirectorySync`` passes over real files; what is asserted is which bytes end up in the job's
directory and what the stamps and lag figures say.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entrypoint import tiers
from entrypoint.checkpoints import DirectorySync, _is_syncable
from entrypoint.mirror import MirrorSync, Stamper
from entrypoint.resume import resume
from entrypoint.store import StoreError
from entrypoint.store_local import LocalStore

PREFIX = "runs/r/checkpoints/"


def store_at(path: Path) -> LocalStore:
    path.mkdir(parents=True, exist_ok=True)
    return LocalStore(str(path))


class Steps:
    """A job's reported steps by time, as ``ProgressTracker.step_at`` answers: set by the test."""

    def __init__(self) -> None:
        self.step: float | None = None

    def __call__(self, t: float) -> float | None:
        return self.step


def write(path: Path, data: bytes, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def synced_vm(tmp_path: Path, name: str) -> tuple[Path, LocalStore, DirectorySync, Stamper, Steps]:
    """A VM's checkpoint directory, its primary store, and a stamping sync between them."""
    local = tmp_path / name / "ckpt"
    local.mkdir(parents=True)
    store = store_at(tmp_path / name / "primary")
    sync = DirectorySync(store, str(local), PREFIX, "t")
    steps = Steps()
    stamper = Stamper(sync, steps, attempt=1, local_dir=str(local))
    return local, store, sync, stamper, steps


def checkpoint_state(local: Path, step: int, mtime: float, steps: Steps) -> None:
    write(local / "last.pt", f"weights at step {step}".encode() * 100, mtime)
    steps.step = step


def test_local_wins_when_it_is_the_newest_and_nothing_is_downloaded(tmp_path: Path) -> None:
    local, primary, sync, _, steps = synced_vm(tmp_path, "vm")
    mirror = store_at(tmp_path / "mirror")
    checkpoint_state(local, 10, 1_000.0, steps)
    assert sync.sync_once()
    # STOP mode: step 20 was written and synced to the local stamp, but only after the primary
    # copy had stopped at step 10 (stand-in: the primary is rolled back to its step-10 objects).
    checkpoint_state(local, 20, 2_000.0, steps)
    assert sync.sync_once()
    primary.write(PREFIX + "last.pt", b"weights at step 10" * 100)
    primary.write(tiers.store_stamp_name(PREFIX), tiers.Stamp(
        files={"last.pt": {"size": 1800, "crc32c": primary.stat(PREFIX + "last.pt").crc32c}},  # type: ignore[union-attr]
        written_at=1_000.0, step=10).to_json())
    before = (local / "last.pt").read_bytes()

    got = resume(str(local), primary, PREFIX, mirror)

    assert (got.tier, got.step) == (tiers.LOCAL, 20)
    assert got.skipped[tiers.PRIMARY] == "older than local"
    assert (local / "last.pt").read_bytes() == before == b"weights at step 20" * 100


def test_a_torn_local_file_is_skipped_for_the_primary(tmp_path: Path) -> None:
    local, primary, sync, _, steps = synced_vm(tmp_path, "vm")
    checkpoint_state(local, 30, 3_000.0, steps)
    assert sync.sync_once()
    with open(local / "last.pt", "r+b") as f:  # the VM died while the job rewrote it in place
        f.write(b"XXXX")

    got = resume(str(local), primary, PREFIX, None)

    assert (got.tier, got.step) == (tiers.PRIMARY, 30)
    assert "torn" in got.skipped[tiers.LOCAL]
    assert (local / "last.pt").read_bytes() == b"weights at step 30" * 100


def test_on_a_fresh_vm_the_primary_wins_over_an_older_mirror(tmp_path: Path) -> None:
    local, primary, sync, stamper, steps = synced_vm(tmp_path, "old-vm")
    mirror = store_at(tmp_path / "mirror")
    mirroring = MirrorSync(sync, stamper, mirror, steps, attempt=1)
    checkpoint_state(local, 10, 1_000.0, steps)
    assert sync.sync_once() and mirroring.sync_once()
    checkpoint_state(local, 20, 2_000.0, steps)
    assert sync.sync_once()  # the mirror lags at step 10
    assert mirroring.lag()["lag_steps"] == 10 and mirroring.lag()["lag_seconds"] == 1_000.0

    fresh = tmp_path / "new-vm"
    got = resume(str(fresh), primary, PREFIX, mirror)

    assert (got.tier, got.step) == (tiers.PRIMARY, 20)
    assert got.skipped[tiers.MIRROR] == "older than primary"
    assert (fresh / "last.pt").read_bytes() == b"weights at step 20" * 100
    assert got.restored.names == [PREFIX + "last.pt"]


class Unreachable(LocalStore):
    """A primary whose reads fail as a bucket in an outage does (``StoreError``)."""

    def list(self, prefix: str) -> list[str]:
        raise StoreError(f"{self.url}: cannot reach GCS (503 backendError); check the network and retry")


def test_an_unreachable_primary_resumes_from_the_mirror_at_its_step(tmp_path: Path) -> None:
    local, primary, sync, stamper, steps = synced_vm(tmp_path, "old-vm")
    mirror = store_at(tmp_path / "mirror")
    mirroring = MirrorSync(sync, stamper, mirror, steps, attempt=1)
    checkpoint_state(local, 40, 4_000.0, steps)
    assert sync.sync_once() and mirroring.sync_once()
    assert mirroring.lag()["lag_steps"] == 0 and mirroring.lag()["lag_seconds"] == 0.0

    fresh = tmp_path / "new-vm"
    got = resume(str(fresh), Unreachable(primary.root), PREFIX, mirror)

    assert (got.tier, got.step) == (tiers.MIRROR, 40)
    assert got.skipped[tiers.PRIMARY].startswith("unreachable")
    assert (fresh / "last.pt").read_bytes() == b"weights at step 40" * 100


def test_without_a_mirror_an_unreachable_primary_fails_the_restore(tmp_path: Path) -> None:
    """Starting from step 0 over stored work that is only out of reach would lose it."""
    local, primary, sync, _, steps = synced_vm(tmp_path, "old-vm")
    checkpoint_state(local, 40, 4_000.0, steps)
    assert sync.sync_once()
    with pytest.raises(StoreError):
        resume(str(tmp_path / "new-vm"), Unreachable(primary.root), PREFIX, None)


def test_a_stamp_that_does_not_match_its_objects_is_skipped(tmp_path: Path) -> None:
    """A pass that died after replacing one file of a set and before its stamp: the set is mixed."""
    local, primary, sync, stamper, steps = synced_vm(tmp_path, "old-vm")
    mirror = store_at(tmp_path / "mirror")
    mirroring = MirrorSync(sync, stamper, mirror, steps, attempt=1)
    checkpoint_state(local, 50, 5_000.0, steps)
    assert sync.sync_once() and mirroring.sync_once()
    primary.write(PREFIX + "last.pt", b"half of a newer pass")

    got = resume(str(tmp_path / "new-vm"), primary, PREFIX, mirror)

    assert (got.tier, got.step) == (tiers.MIRROR, 50)
    assert "differs from its stamp" in got.skipped[tiers.PRIMARY]


def test_the_same_checkpoint_everywhere_is_taken_from_the_nearest_tier(tmp_path: Path) -> None:
    local, primary, sync, stamper, steps = synced_vm(tmp_path, "vm")
    mirror = store_at(tmp_path / "mirror")
    mirroring = MirrorSync(sync, stamper, mirror, steps, attempt=1)
    checkpoint_state(local, 60, 6_000.0, steps)
    assert sync.sync_once() and mirroring.sync_once()
    found = tiers.gather(str(local), [(tiers.PRIMARY, primary, PREFIX), (tiers.MIRROR, mirror, PREFIX)],
                         _is_syncable)
    choice = tiers.choose(found)
    assert choice.chosen is not None and choice.chosen.tier == tiers.LOCAL
    assert choice.skipped == {tiers.PRIMARY: "same checkpoint as local", tiers.MIRROR: "same checkpoint as local"}


def test_an_unstamped_primary_is_still_restored(tmp_path: Path) -> None:
    """Checkpoints stored before tiers existed (no stamp) resume as they always did."""
    primary = store_at(tmp_path / "primary")
    primary.write(PREFIX + "last.pt", b"old run")
    got = resume(str(tmp_path / "vm"), primary, PREFIX, store_at(tmp_path / "mirror"))
    assert (got.tier, got.step) == (tiers.PRIMARY, None)
    assert (tmp_path / "vm" / "last.pt").read_bytes() == b"old run"


def test_the_mirror_only_takes_what_the_primary_has(tmp_path: Path) -> None:
    """A file written after the primary's pass waits for the next primary pass (mirror after primary)."""
    local, primary, sync, stamper, steps = synced_vm(tmp_path, "vm")
    mirror = store_at(tmp_path / "mirror")
    mirroring = MirrorSync(sync, stamper, mirror, steps, attempt=1)
    checkpoint_state(local, 70, 7_000.0, steps)
    assert sync.sync_once()
    checkpoint_state(local, 80, 8_000.0, steps)  # not yet in the primary
    assert not mirroring.sync_once()
    assert mirror.read(PREFIX + "last.pt") is None
    assert sync.sync_once() and mirroring.sync_once()
    assert mirror.read(PREFIX + "last.pt").data == b"weights at step 80" * 100  # type: ignore[union-attr]
    assert mirroring.lag()["step"] == 80


def test_a_garbled_stamp_reads_as_none() -> None:
    for junk in (b"", b"{", b'{"files": 3, "written_at": 1}', b'{"files": {"a": {"size": "1", "crc32c": "x"}}, '
                 b'"written_at": 1}', b'{"files": {}, "written_at": "soon"}'):
        assert tiers.Stamp.from_json(junk) is None


def test_a_resume_from_the_kept_disk_does_not_upload_what_the_store_has(tmp_path: Path) -> None:
    local, primary, sync, _, steps = synced_vm(tmp_path, "vm")
    checkpoint_state(local, 90, 9_000.0, steps)
    assert sync.sync_once()
    write(local / "newer.pt", b"written after the primary's last pass", 9_500.0)
    sync.eligible = lambda rel, sig: rel != "newer.pt"  # the primary never got it
    assert not sync.sync_once()
    sync.eligible = None
    # (newer.pt is in no stamp: the kept disk's stamped copy is last.pt alone)

    got = resume(str(local), primary, PREFIX, None)
    assert got.tier == tiers.LOCAL and got.in_primary == {
        "last.pt": (len(b"weights at step 90" * 100), primary.stat(PREFIX + "last.pt").crc32c)}  # type: ignore[union-attr]

    next_attempt = DirectorySync(primary, str(local), PREFIX, "a2")
    assert next_attempt.adopt(got.in_primary) == 1
    assert next_attempt.sync_once()
    assert next_attempt.stats.uploads == 1  # newer.pt only: last.pt is not sent again
    assert primary.read(PREFIX + "newer.pt") is not None
    checkpoint_state(local, 100, 10_000.0, steps)
    assert next_attempt.sync_once() and next_attempt.stats.uploads == 2  # a new checkpoint still goes
