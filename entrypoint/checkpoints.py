"""Checkpoint restore and background sync between a local directory and the store.

The rule that makes resumes safe: the public name (``checkpoints/last.pt``) only ever changes
to a complete object whose CRC32C matches the snapshot that was read (``Store.publish_file``: on
GCS an upload under a private ``.partial/`` name, checked, then copied over the public name; in
a local directory a temp file, checked, then renamed). A killed upload leaves at most a stray
partial; the public object is always the previous complete one. Restore reads only public names
and checks every byte it downloads.

Sync never blocks the job: it runs in its own thread and reads a snapshot (a hard link taken at
scan time), so the job may keep writing ``last.pt.tmp`` and renaming it over ``last.pt``.
A file the job is still writing in place changes under the snapshot; its CRC then differs from
the one computed before upload, the upload is refused, and the next pass tries again.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from entrypoint.prestaged import empty_prestaged, adopt, prestaged_path
from entrypoint.store import SLICE_BYTES, ObjectInfo, Store, StoreError, crc32c_of_file, is_download_temp

log = logging.getLogger("entrypoint.checkpoints")

SNAPSHOT_DIR = ".runner-snapshots"
PARTIAL = ".partial/"
# Names a job uses while writing; never uploaded (the finished file is renamed into place).
_IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", "~", ".swp")


def _is_syncable(rel: str) -> bool:
    """Whether ``rel`` is a finished file of the job's: not hidden, not a name it writes under,
    and not a download of ours in flight (``last.pt.part-1a2b3c4d``, left by a restore that died:
    published, it would be restored as a checkpoint of its own next time)."""
    parts = rel.split("/")
    return (not any(p.startswith(".") for p in parts) and not rel.endswith(_IN_PROGRESS_SUFFIXES)
            and not is_download_temp(rel))


@dataclass
class SyncStats:
    uploads: int = 0
    bytes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_upload_at: float | None = None
    # When the job wrote the newest file published so far (its mtime): work done after this
    # moment is lost if the VM goes now, which is what the cost of a preemption is made of.
    newest_written_at: float | None = None
    pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "uploads": self.uploads,
            "bytes": self.bytes,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_upload_at": self.last_upload_at,
            "newest_written_at": self.newest_written_at,
        }


class DirectorySync:
    """Mirror of one local directory under one store prefix (upload direction)."""

    def __init__(self, store: Store, local_dir: str, prefix: str, tag: str = "") -> None:
        self.store = store
        self.local_dir = local_dir
        self.prefix = prefix
        self.tag = tag or uuid.uuid4().hex[:8]
        self.stats = SyncStats()
        self._uploaded: dict[str, tuple[int, int, int]] = {}  # rel -> (ino, size, mtime_ns)
        self.published: dict[str, tuple[int, str]] = {}  # rel -> (size, CRC32C) as stored: the stamp's files
        self._lock = threading.Lock()  # one pass at a time (background vs final sync)
        # ``entrypoint.mirror``: which files a pass may take (the mirror: only what the primary
        # has), and what to do after a pass that published everything (write the tier's stamp).
        self.eligible: Callable[[str, tuple[int, int, int]], bool] | None = None
        self.after_pass: Callable[[bool], None] | None = None
        # The CRC32C of a file as this sync last published it, by signature: a second tier's
        # sync reads it (``known_crc``) instead of reading the same bytes again.
        self.crc_by_sig: dict[str, tuple[tuple[int, int, int], str]] = {}
        self.known_crc: Callable[[str, tuple[int, int, int]], str | None] | None = None

    def adopt(self, stored: dict[str, tuple[int, str]]) -> int:
        """Count files the store already holds (rel -> size, CRC32C, as a resume from the kept
        disk found them in both stamps) as uploaded, if the local file is still that size: the
        first pass then does not send them again. Returns how many were adopted."""
        n = 0
        with self._lock:
            for rel, (size, crc) in stored.items():
                try:
                    st = os.stat(os.path.join(self.local_dir, *rel.split("/")))
                except OSError:
                    continue
                if st.st_size != size:
                    continue
                sig = (st.st_ino, st.st_size, st.st_mtime_ns)
                self._uploaded[rel] = sig
                self.published[rel] = (size, crc)
                self.crc_by_sig[rel] = (sig, crc)
                n += 1
        return n

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        found: dict[str, tuple[int, int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.local_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, self.local_dir).replace(os.sep, "/")
                if not _is_syncable(rel):
                    continue
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                found[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def sync_once(self, modified_before: float | None = None) -> bool:
        """Upload every new or changed file; returns True if all of them made it.

        ``modified_before``: skip files changed at or after this time (a job killed mid-write
        may have left them torn); the previous good copy in the store stays.
        """
        with self._lock:
            ok = True
            changed = False
            for rel, sig in sorted(self._scan().items()):
                if self._uploaded.get(rel) == sig:
                    continue
                if self.eligible is not None and not self.eligible(rel, sig):
                    ok = False  # not there yet: the next pass takes it
                    continue
                if modified_before is not None and sig[2] >= modified_before * 1e9:
                    log.warning("not publishing %s: written after the job was killed, maybe torn", rel)
                    continue
                try:
                    crc = self._upload(rel, sig)
                    self.crc_by_sig[rel] = (sig, crc)
                    self._uploaded[rel] = sig
                    changed = True
                    self.stats.newest_written_at = max(self.stats.newest_written_at or 0.0, sig[2] / 1e9)
                except (OSError, StoreError) as e:
                    ok = False
                    self.stats.failures += 1
                    self.stats.last_error = f"{rel}: {e}"
                    log.warning("checkpoint upload of %s failed (will retry): %s", rel, e)
            if self.after_pass is not None and (changed or ok):
                self.after_pass(ok)
            return ok

    def _upload(self, rel: str, sig: tuple[int, int, int] | None = None) -> str:
        """Publish ``rel`` from a snapshot of it; returns the CRC32C published."""
        src = os.path.join(self.local_dir, rel)
        snap_dir = os.path.join(self.local_dir, SNAPSHOT_DIR)
        os.makedirs(snap_dir, exist_ok=True)
        snap = os.path.join(snap_dir, uuid.uuid4().hex)
        try:
            try:
                os.link(src, snap)  # cheap, and immune to the job renaming a new file over src
            except OSError:
                shutil.copy(src, snap)  # with its mode, as the link would have
            crc = self._known_crc(rel, sig, snap) or crc32c_of_file(snap)
            # The mode goes with the bytes (an executable result stays executable after a pull).
            mode = os.stat(snap).st_mode
            info = self.store.publish_file(self.prefix + rel, snap, crc, f"{self.prefix}{PARTIAL}{rel}.{self.tag}",
                                           mode=mode)
            self.published[rel] = (info.size, crc)
            self.stats.uploads += 1
            self.stats.bytes += info.size
            self.stats.last_upload_at = time.time()
            return crc
        finally:
            try:
                os.unlink(snap)
            except FileNotFoundError:
                pass

    def _known_crc(self, rel: str, sig: tuple[int, int, int] | None, snap: str) -> str | None:
        """``known_crc``'s answer for the file, if the snapshot is the very file it was given for
        (same inode, size and mtime: a hard link of it, not a file renamed over it since the scan).
        A file rewritten in place keeps its inode but not its mtime; and a wrong CRC would only be
        refused by the store (it checks the bytes it got against it), never published."""
        if self.known_crc is None or sig is None:
            return None
        st = os.stat(snap)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != sig:
            return None
        return self.known_crc(rel, sig)


# ioprio_set(2): not wrapped by Python's os module. Syscall numbers per architecture.
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314, "ppc64le": 273, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread only
_IOPRIO_CLASS_BE, _IOPRIO_CLASS_SHIFT = 2, 13


def lower_thread_priority() -> list[str]:
    """Give the calling thread the lowest CPU and I/O priority the kernel offers a normal user.

    Training first (docs/architecture.md#properties-that-must-hold): when the job keeps every core busy, the uploader should only
    get what the job leaves. On Linux nice values and I/O priorities belong to threads, so this
    touches the sync thread alone, not the agent's final sync or its heartbeats. CPU: nice 19
    (CFS weight 15 against the job's 1024), not SCHED_IDLE, which could starve uploads for as
    long as the job computes. I/O: best-effort level 7, the lowest that is never starved
    (the idle class would wait behind a job that streams its dataset). Returns what could not
    be set (containers may forbid it); the sync works either way.
    """
    failed = []
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (OSError, AttributeError) as e:
        failed.append(f"nice: {e}")
    nr = _IOPRIO_SET.get(os.uname().machine)
    if nr is None:
        return failed + [f"ionice: unknown syscall number on {os.uname().machine}"]
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        value = (_IOPRIO_CLASS_BE << _IOPRIO_CLASS_SHIFT) | 7
        if libc.syscall(nr, _IOPRIO_WHO_PROCESS, tid, value) != 0:
            failed.append(f"ionice: {os.strerror(ctypes.get_errno())}")
    except OSError as e:
        failed.append(f"ionice: {e}")
    return failed


class CommittingSync(DirectorySync):
    """Rank 0's checkpoint sync: each upload pass is followed by ``entrypoint.shards.commit``, which
    marks the sharded steps whose every shard is stored (a job without shards costs one listing)."""

    def sync_once(self, modified_before: float | None = None) -> bool:
        ok = super().sync_once(modified_before)
        from entrypoint.shards import commit

        try:
            for step in commit(self.store, self.prefix):
                log.info("checkpoint step %d committed: every rank's shard is stored", step)
        except (StoreError, OSError) as e:
            log.warning("committing sharded checkpoints failed (next pass tries again): %s", e)
            return False
        return ok


class BackgroundSync:
    """Runs ``DirectorySync.sync_once`` every ``interval`` seconds in a daemon thread.

    The thread runs at the lowest CPU and I/O priority (``lower_thread_priority``): uploads
    slow down when the machine is busy, training does not.
    """

    def __init__(self, sync: DirectorySync, interval: float) -> None:
        self.sync = sync
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for problem in lower_thread_priority():
            log.info("checkpoint sync keeps its normal priority (%s)", problem)
        while not self._stop.wait(self.interval):
            self.sync.sync_once()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)


# A disk (or the user's share of it) that is full: ENOSPC, or EDQUOT under a quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceForRestore(Exception):
    """The checkpoints do not fit on this machine's disk: the message says which file, how big,
    where, how much is free, and what to change."""

    def __init__(self, name: str, size: int | None, total: int | None, local_dir: str, err: OSError) -> None:
        free = _free_bytes(local_dir)
        sizes = "size unknown" if size is None else f"{size} bytes"
        if total is not None and total != size:
            sizes += f"; {total} bytes of checkpoints in all"
        free_text = "" if free is None else f", {free} bytes free there"
        said = "" if err.errno == errno.ENOSPC else f" ({err.strerror or err})"
        super().__init__(
            f"restore of {name} ({sizes}) failed: no space left on device in {local_dir}{free_text}"
            f"{said}; give the VM a bigger disk (boot_disk_gb), or a data disk (data_disk_gb) with "
            "checkpoint_dir under its data_mount, or save smaller checkpoints (local backend: free "
            "space on the host); then `runner submit --restart` resumes from the same checkpoint, "
            "which is untouched in the store"
        )
        self.name = name
        self.size = size
        self.local_dir = local_dir


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _no_space_error(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT behind ``e``, if any (a store may wrap the OS error in its own)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _NO_SPACE:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


# Objects read at once (and slices of one large object at once): the transfer manager's default
# worker count, enough to fill a VM's NIC at the ~200 MiB/s one GCS connection gives (a
# third-party figure: docs/research/recovery-timeline.md section 5).
DEFAULT_STREAMS = 8
# From this size on, an object is read as parallel ranged slices instead of one stream.
LARGE_OBJECT = SLICE_BYTES


@dataclass(frozen=True)
class Restored:
    """What a restore put in place: the run record's ``checkpoint_restored`` mark says it."""

    names: list[str]  # object names, sorted
    bytes: int
    seconds: float
    streams: int  # the most reads it had in flight at once
    prestaged: int  # files adopted from the prestaged directory instead of downloaded

    def detail(self) -> dict[str, object]:
        return {"files": len(self.names), "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "streams": self.streams, "prestaged": self.prestaged}


def restore(store: Store, prefix: str, local_dir: str, *, prestaged_dir: str | None = None,
            streams: int = DEFAULT_STREAMS, large_object: int = LARGE_OBJECT,
            slice_bytes: int = SLICE_BYTES) -> list[str]:
    """``restore_checkpoints``, returning only the names restored (for callers that need no more)."""
    return restore_checkpoints(store, prefix, local_dir, prestaged_dir=prestaged_dir, streams=streams,
                               large_object=large_object, slice_bytes=slice_bytes).names


def restore_checkpoints(store: Store, prefix: str, local_dir: str, *, prestaged_dir: str | None = None,
                        streams: int = DEFAULT_STREAMS, large_object: int = LARGE_OBJECT,
                        slice_bytes: int = SLICE_BYTES) -> Restored:
    """Put every public checkpoint object into ``local_dir``, each CRC32C-verified.

    Fast, because it sits between a replacement VM's boot and the job's first step: a file in
    ``prestaged_dir`` that is exactly the object (size and CRC32C) is adopted without a download;
    the rest are read ``streams`` at a time, and each object of ``large_object`` bytes or more
    as ``streams`` concurrent slices of ``slice_bytes`` (one after another, so ``streams`` bounds
    the connections in flight). Safe, as before: every file lands by a rename after its CRC32C
    matched the object's, so a torn or wrong file never becomes what the job loads; an error
    propagates, because resuming from a wrong checkpoint is worse than not starting.

    A full disk raises ``NoSpaceForRestore`` (what the agent records as the run's failure), and
    the temp files of the failed downloads are gone by then (``Store.download_file``). Reads in
    parallel can run out of space only because of each other's temp files, so the objects
    refused for space are tried again one at a time, in name order: the one named is one that
    does not fit beside those already restored.
    """
    started = time.monotonic()
    os.makedirs(local_dir, exist_ok=True)
    infos = [i for i in store.list_info(prefix)
             if not i.name[len(prefix):].startswith(PARTIAL) and _is_syncable(i.name[len(prefix):])]
    streams = max(1, streams)

    def dest_of(info: ObjectInfo) -> str:
        return os.path.join(local_dir, *info.name[len(prefix):].split("/"))

    adopted: set[str] = set()
    if prestaged_dir and os.path.isdir(prestaged_dir):
        candidates = [i for i in infos if os.path.isfile(prestaged_path(prestaged_dir, i.name[len(prefix):]))]
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="restore-prestaged") as pool:
            found = pool.map(lambda i: adopt(prestaged_dir, i.name[len(prefix):], i, dest_of(i)), candidates)
            adopted = {i.name for i, ok in zip(candidates, found) if ok}
        empty_prestaged(prestaged_dir)  # what was adopted is in place; the rest is downloaded

    todo = [i for i in infos if i.name not in adopted]
    refused: list[ObjectInfo] = []  # out of space while other downloads held some

    def fetch(info: ObjectInfo, sliced: bool) -> None:
        dest = dest_of(info)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # verifies CRC32C; lands via temp file + rename
        store.download_file(info.name, dest, streams=streams if sliced else 1, slice_bytes=slice_bytes)

    def attempt(info: ObjectInfo, sliced: bool) -> None:
        try:
            fetch(info, sliced)
        except (OSError, StoreError) as e:
            if _no_space_error(e) is None:
                raise
            refused.append(info)

    for info in (i for i in todo if i.size >= large_object):
        attempt(info, sliced=True)
    small = [i for i in todo if i.size < large_object]
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="restore") as pool:
        futures = [pool.submit(attempt, i, False) for i in small]
        for done in futures:
            error = done.exception()
            if error is not None:
                for f in futures:
                    f.cancel()  # those not started yet: the restore fails anyway
                raise error

    for info in sorted(refused, key=lambda i: i.name):
        try:
            fetch(info, sliced=info.size >= large_object)
        except (OSError, StoreError) as e:
            full = _no_space_error(e)
            if full is None:
                raise
            total = sum(i.size for i in infos)
            raise NoSpaceForRestore(info.name[len(prefix):], info.size, total, local_dir, full) from e

    return Restored(names=sorted(i.name for i in infos), bytes=sum(i.size for i in infos),
                    seconds=time.monotonic() - started,
                    streams=streams if len(small) < len(todo) else min(streams, len(small)),
                    prestaged=len(adopted))
