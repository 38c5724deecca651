"""A directory that behaves like a bucket: the local backend's store.

Objects are files under the root. Writes go to a temp file in ``<root>/.tmp`` and are renamed
into place, so a reader never sees a half-written object. Conditional writes hold an ``flock``
on a per-object lock file, which works across processes and across containers that bind-mount
the same directory (they share the host kernel). The generation is the file's ``st_mtime_ns``,
forced to grow strictly on every write.

Nothing is left behind by writers that die (kill -9 in the middle of a 1 GB checkpoint upload):

- A temp file is ``flock``-ed by its writer from creation to commit. The kernel drops the lock
  when the writer dies, so a temp file that can be locked and is unmodified for
  ``TEMP_STALE_AFTER`` belongs to no one and is removed; a live writer's never is, however long
  its upload takes.
- Lock files are removed once idle (unheld, untouched) for ``LOCK_IDLE_AFTER``. Removing one
  cannot break mutual exclusion: a writer that got the lock checks that the file it locked is
  still the one at that path (same inode), and otherwise locks again.

``sweep`` does both; it runs when a store is opened and then at most once per
``TEMP_STALE_AFTER`` from the write path. The ages are for writers of older versions, which
neither lock their temp files nor re-check their lock's inode: an old writer's temp file is
modified while it copies, and a lock file idle that long is not one it is about to take.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from entrypoint.store import (
    MODE_METADATA_KEY,
    SLICE_BYTES,
    Blob,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreError,
    StoreNotFound,
    crc32c_of_file,
    download_temp_name,
    mode_of_text,
    mode_text,
)

log = logging.getLogger(__name__)

_INTERNAL = (".tmp", ".locks")
# How long an unlocked temp file, or an idle lock file, must have been left alone to be removed.
TEMP_STALE_AFTER = 120.0
LOCK_IDLE_AFTER = 600.0


def _remove_if_unheld(path: str) -> int:
    """Remove ``path`` if no process holds an flock on it; returns the bytes freed (-1: kept).

    The lock is taken before unlinking and the inode re-checked, so a file renamed into an
    object (a temp file that just committed) or replaced meanwhile is never touched.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return -1  # gone already, or another user's that we could not remove anyway
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return -1  # its writer is alive
        held = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return -1
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            return -1
        try:
            os.unlink(path)
        except FileNotFoundError:
            return -1
        return held.st_size
    finally:
        os.close(fd)


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy a whole file in the kernel (sendfile), as ``shutil.copyfile`` does."""
    dst.flush()
    offset = 0
    try:
        while True:
            sent = os.sendfile(dst.fileno(), src.fileno(), offset, 1 << 30)
            if sent == 0:
                return
            offset += sent
    except OSError:
        if offset:
            raise
        shutil.copyfileobj(src, dst, 1 << 20)  # a file system without sendfile
        dst.flush()


class LocalStore(Store):
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = "file://" + self.root
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StoreNotFound(
                f"store {self.root} is a file, not a directory: point RUNNER_STORE / --store at "
                "a directory (or move the file away and mkdir it)"
            )
        if not os.path.isdir(self.root):
            raise StoreNotFound(
                f"store directory {self.root} does not exist: create it (mkdir -p {self.root}) "
                "or point RUNNER_STORE / --store at an existing one"
            )
        for d in _INTERNAL:
            try:
                os.makedirs(os.path.join(self.root, d), exist_ok=True)
            except OSError as e:
                if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                    raise
                # A read-only store still serves reads (ops status/list/logs); a write fails
                # later with the filesystem's own error.
        self._next_sweep = 0.0
        self._maybe_sweep()

    # -- clean-up of what dead writers left ------------------------------------------------------

    def sweep(self, temp_min_age: float = TEMP_STALE_AFTER,
              lock_min_age: float = LOCK_IDLE_AFTER) -> dict[str, int]:
        """Remove temp files no live writer holds and lock files no one holds, if unmodified
        for the given seconds. Returns what was removed: temp files, their bytes, lock files."""
        out = {"temp_files": 0, "temp_bytes": 0, "lock_files": 0}
        now = time.time()
        for sub, key, min_age in ((".tmp", "temp_files", temp_min_age), (".locks", "lock_files", lock_min_age)):
            cutoff = now - min_age
            d = os.path.join(self.root, sub)
            try:
                entries = list(os.scandir(d))
            except FileNotFoundError:
                continue
            for e in entries:
                try:
                    if not e.is_file(follow_symlinks=False) or e.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                freed = _remove_if_unheld(e.path)
                if freed >= 0:
                    out[key] += 1
                    if key == "temp_files":
                        out["temp_bytes"] += freed
        return out

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + TEMP_STALE_AFTER
        try:
            done = self.sweep()
        except OSError as e:
            # Clean-up is never worth failing for; a read-only store (read-only commands) cannot
            # be cleaned and says nothing, any other trouble is said.
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                print(f"runner: could not clean {self.root}/.tmp and .locks ({e})", file=sys.stderr)
            return
        if done["temp_files"]:
            print(f"runner: removed {done['temp_files']} temp file(s) ({done['temp_bytes'] >> 20} MiB) "
                  f"left in {self.root}/.tmp by writers that died", file=sys.stderr)

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/") or name.split("/")[0] in _INTERNAL:
            raise StoreError(f"invalid object name {name!r}")
        return os.path.join(self.root, name)

    @contextmanager
    def _temp(self, name: str) -> Iterator[tuple[str, BinaryIO]]:
        """A new temp file under .tmp, flock-ed until the block ends, and gone after it unless
        it was committed (renamed) inside it. OS errors become ``StoreError``."""
        self._maybe_sweep()
        path = os.path.join(self.root, ".tmp", uuid.uuid4().hex)
        try:
            f = open(path, "xb")
        except OSError as e:
            raise StoreError(f"write {name}: cannot create a temp file in {self.root}/.tmp "
                             f"({e.strerror}); check the store directory is writable") from e
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield path, f
        except OSError as e:
            raise StoreError(f"write {name} to the store at {self.root} failed: {e} (is the "
                             "directory writable, with space left?)") from e
        finally:
            try:
                f.close()
            except OSError:
                pass  # a flush that failed again (a full disk): the error above already says so
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # committed

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock = os.path.join(self.root, ".locks", hashlib.sha1(name.encode()).hexdigest())
        while True:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(lock)
                if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # swept while we waited for it: lock the file that is there now
        try:
            os.utime(fd)  # in use: not idle, so not swept
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _generation(path: str) -> int:
        try:
            return os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return 0

    def _commit(self, tmp: str, path: str, if_generation_match: int | None, name: str) -> int:
        """Rename ``tmp`` over ``path`` honouring the precondition; returns the new generation."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with self._locked(name):
            old = self._generation(path)
            if if_generation_match is not None and old != if_generation_match:
                raise PreconditionFailed(
                    f"{name}: generation is {old}, expected {if_generation_match}"
                )
            new = max(time.time_ns(), old + 1)
            os.utime(tmp, ns=(new, new))
            if if_generation_match == 0:
                # Create-only: link() fails if the name exists, even against a writer that
                # ignores our lock.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{name}: already exists") from None
            else:
                os.replace(tmp, path)
            return new

    def read(self, name: str) -> Blob | None:
        try:
            with open(self._path(name), "rb") as f:
                gen = os.fstat(f.fileno()).st_mtime_ns
                return Blob(f.read(), gen)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        path = self._path(name)
        with self._temp(name) as (tmp, f):
            f.write(data)
            f.flush()
            return self._commit(tmp, path, if_generation_match, name)

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                return None
            return ObjectInfo(name, st.st_size, st.st_mtime_ns, crc32c_of_file(path), _recorded_mode(path))
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):
            return
        # Like GCS, a "directory" exists only while objects are under it.
        parent = os.path.dirname(path)
        while parent != self.root:
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        base_dir, _, _ = prefix.rpartition("/")
        start = os.path.join(self.root, base_dir) if base_dir else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in _INTERNAL]
                rel_dir = ""
            for fn in filenames:
                name = f"{rel_dir}/{fn}" if rel_dir else fn
                if name.startswith(prefix):
                    out.append(name)
        return sorted(out)

    def list_prefixes(self, prefix: str) -> list[str]:
        base_dir, _, stem = prefix.rpartition("/")
        d = os.path.join(self.root, base_dir) if base_dir else self.root
        head = f"{base_dir}/" if base_dir else ""
        try:
            entries = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            f"{head}{e}/" for e in entries
            if e.startswith(stem) and os.path.isdir(os.path.join(d, e))
            and not (not base_dir and e in _INTERNAL)
        )

    def upload_file(self, name: str, path: str, crc32c: str | None = None, mode: int | None = None) -> ObjectInfo:
        dst = self._path(name)
        if crc32c is None:
            crc32c = crc32c_of_file(path)  # so a file that changes while we copy is caught
        with open(path, "rb") as src, self._temp(name) as (tmp, f):
            _copy(src, f)
            got = crc32c_of_file(tmp)
            if got != crc32c:
                raise StoreError(f"{name}: CRC32C mismatch after upload (local {crc32c}, stored {got})")
            size = os.path.getsize(tmp)
            recorded = _record_mode(tmp, mode)  # on the temp file: the rename carries it along
            gen = self._commit(tmp, dst, None, name)
        return ObjectInfo(name, size, gen, got, recorded)

    def publish_file(self, name: str, path: str, crc32c: str, partial_name: str,
                     mode: int | None = None) -> ObjectInfo:
        # upload_file is already copy-to-temp, verify, rename: the name never holds a torn
        # object, so the partial-then-copy dance would only copy every byte twice more.
        return self.upload_file(name, path, crc32c=crc32c, mode=mode)

    def download_file(self, name: str, path: str, *, streams: int = 1,
                      slice_bytes: int = SLICE_BYTES) -> ObjectInfo:
        # One plain copy whatever ``streams`` says: a copy between two local files is bound by
        # the disk, which the kernel already reads ahead and writes back in parallel, so ranged
        # reads on several threads would only add seeks.
        src = self._path(name)
        tmp = download_temp_name(path)
        try:
            try:
                f = open(src, "rb")
            except FileNotFoundError:
                raise StoreError(f"{name}: no such object") from None
            with f:
                gen = os.fstat(f.fileno()).st_mtime_ns
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            info = ObjectInfo(name, os.path.getsize(tmp), gen, crc32c_of_file(tmp))
            os.replace(tmp, path)
            return info
        finally:
            # Whatever failed (a full disk, most often), the half-written copy must not stay:
            # it holds the space that was missing, and a later sync would take it for a file.
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass  # renamed into place, or never created

    def copy(self, src: str, dst: str) -> ObjectInfo:
        s = self._path(src)
        if not os.path.isfile(s):
            raise StoreError(f"{src}: no such object")
        return self.upload_file(dst, s, mode=_recorded_mode(s))


# The local twin of GCS custom metadata for a file's mode: a user extended attribute on the stored
# file (the store's own permission bits stay what the store needs; a rename keeps the attribute).
_MODE_XATTR = "user." + MODE_METADATA_KEY


def _record_mode(path: str, mode: int | None) -> int | None:
    """Record ``mode`` on ``path``; returns what was recorded (None on a filesystem without user
    extended attributes: the object is stored all the same, and a download keeps its default mode)."""
    if mode is None:
        return None
    try:
        os.setxattr(path, _MODE_XATTR, mode_text(mode).encode())
    except (OSError, AttributeError) as e:  # ENOTSUP, or a platform without xattrs
        log.warning("%s: cannot record the file mode (%s); it is stored without it", path, e)
        return None
    return mode & 0o777


def _recorded_mode(path: str) -> int | None:
    try:
        return mode_of_text(os.getxattr(path, _MODE_XATTR))
    except (OSError, AttributeError):
        return None  # none recorded, or no xattrs here
