"""Review of issue 18 (prestaged checkpoint): what a warm boot's prestage costs the VM's disk.

On the VM the prestaged directory is a bind mount into the job's container
(gcp/startup.sh start_container: ``-v $STATE_DIR/prestaged:/var/lib/runner/prestaged:ro``), and
the checkpoint directory is in the container's own file system: rename(2) between two mounts is
EXDEV (rename(2): "rename() does not work across different mount points, even if the same
filesystem is mounted on both", quoted in
https://sobrelinux.info/questions/803085/is-mv-atomic-operation-between-two-file-systems), and the mount is read-only besides, so
``entrypoint.prestaged.adopt`` always copies. startup.sh removes the prestaged directory only in
release_when_done, after the container exits: for the whole job the checkpoint is on the boot
disk twice. A checkpoint over a third of the free disk then fails a restore that fits without the
prestage (NoSpaceForRestore: the run ends FAILED), or the job's own next save.

Modelled here with the prestaged copy on another file system (/dev/shm), as
test_restore_parallel does; the local store stands for the bucket.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from entrypoint.checkpoints import restore_checkpoints
from entrypoint.store_local import LocalStore
from tests.test_restore_parallel import PREFIX, other_file_system, prestage, tree


def bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_an_adopted_prestaged_checkpoint_is_not_kept_on_the_disk_twice(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    store = LocalStore(str(tmp_path / "bucket"))
    data = os.urandom(2 << 20)
    store.write(PREFIX + "last.pt", data)
    vm = tmp_path / "vm"
    vm.mkdir()
    staged = prestage(other_file_system(vm), {"last.pt": data})
    try:
        check(store, vm, staged, data)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # /dev/shm: not cleaned by pytest


def check(store: LocalStore, vm: Path, staged: Path, data: bytes) -> None:
    done = restore_checkpoints(store, PREFIX, str(vm / "ckpt"), prestaged_dir=str(staged))
    assert done.prestaged == 1 and tree(vm / "ckpt") == {"last.pt": data}
    # Once restored, nothing needs the prestaged copy: its bytes must be given back to the disk,
    # not held until the job ends.
    assert bytes_under(staged) == 0, (
        f"the prestaged copy ({bytes_under(staged)} bytes) is still on the disk beside the restored "
        "checkpoint: the checkpoint takes twice its size for the whole job")
