"""A directory that behaves like a bucket: the local backend's store.

Objects are files under the root. Writes go to a temp file in ``<root>/.tmp`` and are renamed
into place, so a reader never sees a half-written object. Conditional writes hold an ``flock``
on a per-object lock file, which works across processes and across containers that bind-mount
the same directory (they share the host kernel). The generation is the file's ``st_mtime_ns``,
forced to grow strictly on every write.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from entrypoint.store import (
    Blob,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreError,
    StoreNotFound,
    crc32c_of_file,
)

_INTERNAL = (".tmp", ".locks")


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

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/") or name.split("/")[0] in _INTERNAL:
            raise StoreError(f"invalid object name {name!r}")
        return os.path.join(self.root, name)

    def _tmp(self) -> str:
        return os.path.join(self.root, ".tmp", uuid.uuid4().hex)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock = os.path.join(self.root, ".locks", hashlib.sha1(name.encode()).hexdigest())
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
                os.unlink(tmp)
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
                finally:
                    os.unlink(tmp)
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
        tmp = self._tmp()
        with open(tmp, "wb") as f:
            f.write(data)
        return self._commit(tmp, path, if_generation_match, name)

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                return None
            return ObjectInfo(name, st.st_size, st.st_mtime_ns, crc32c_of_file(path))
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

    def upload_file(self, name: str, path: str, crc32c: str | None = None) -> ObjectInfo:
        dst = self._path(name)
        tmp = self._tmp()
        if crc32c is None:
            crc32c = crc32c_of_file(path)  # so a file that changes while we copy is caught
        shutil.copyfile(path, tmp)
        got = crc32c_of_file(tmp)
        if got != crc32c:
            os.unlink(tmp)
            raise StoreError(f"{name}: CRC32C mismatch after upload (local {crc32c}, stored {got})")
        size = os.path.getsize(tmp)
        gen = self._commit(tmp, dst, None, name)
        return ObjectInfo(name, size, gen, got)

    def publish_file(self, name: str, path: str, crc32c: str, partial_name: str) -> ObjectInfo:
        # upload_file is already copy-to-temp, verify, rename: the name never holds a torn
        # object, so the partial-then-copy dance would only copy every byte twice more.
        return self.upload_file(name, path, crc32c=crc32c)

    def download_file(self, name: str, path: str) -> ObjectInfo:
        src = self._path(name)
        tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
        try:
            with open(src, "rb") as f:
                gen = os.fstat(f.fileno()).st_mtime_ns
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
        except FileNotFoundError:
            raise StoreError(f"{name}: no such object") from None
        info = ObjectInfo(name, os.path.getsize(tmp), gen, crc32c_of_file(tmp))
        os.replace(tmp, path)
        return info

    def copy(self, src: str, dst: str) -> ObjectInfo:
        s = self._path(src)
        if not os.path.isfile(s):
            raise StoreError(f"{src}: no such object")
        return self.upload_file(dst, s)
