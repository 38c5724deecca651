"""The store interface: a bucket of named objects with conditional writes.

Two implementations share it: ``gs://BUCKET[/PREFIX]`` (google-cloud-storage) and
``file:///DIR`` (a local directory, the default for the local backend). The guarantees below are
what the run record and the checkpoint sync rely on; ``tests/test_store_conformance.py`` checks
them against both.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO


class StoreError(Exception):
    """A store operation failed; the message says what to do about it."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object's generation was not the one expected (HTTP 412)."""


class StoreNotFound(StoreError):
    """The bucket or directory behind the store does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    generation: int
    crc32c: str  # base64 of the big-endian CRC32C, the form GCS reports
    # The file's permission bits as its uploader recorded them (``upload_file(mode=...)``), so a
    # download can restore an executable bit; None when none was recorded. GCS keeps no file
    # modes of its own: it is custom metadata there (https://cloud.google.com/storage/docs/metadata).
    mode: int | None = None


MODE_METADATA_KEY = "runner-mode"  # custom metadata (GCS) / user xattr (local): octal, e.g. "755"


def mode_text(mode: int) -> str:
    """The recorded form of a file mode: its permission bits in octal (no setuid/setgid/sticky:
    a pulled result must not gain privileges)."""
    return format(mode & 0o777, "o")


def mode_of_text(text: str | bytes | None) -> int | None:
    """A recorded mode back, or None for none or one that is not an octal permission set."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        mode = int(text, 8) if text else None
    except ValueError:
        return None
    return mode if mode is not None and 0 <= mode <= 0o777 else None


@dataclass(frozen=True)
class Blob:
    data: bytes
    generation: int


def crc32c_of_bytes(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def crc32c_of_stream(f: BinaryIO, chunk: int = 1 << 20, copy_to: BinaryIO | None = None) -> str:
    """The CRC32C (base64, as GCS gives it) of what is left to read in ``f``; with ``copy_to``,
    the bytes are also written there, in the same pass (a verified copy reads its source once)."""
    import google_crc32c

    c = google_crc32c.Checksum()
    while True:
        buf = f.read(chunk)
        if not buf:
            break
        c.update(buf)
        if copy_to is not None:
            copy_to.write(buf)
    return base64.b64encode(c.digest()).decode()


def crc32c_of_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return crc32c_of_stream(f)


# How big a slice of an object one ranged read fetches in a sliced download: the default of
# google-cloud-storage's transfer manager (``TM_DEFAULT_CHUNK_SIZE``), which GCS serves at full
# speed per connection; smaller slices spend more of each stream on request round trips.
SLICE_BYTES = 32 << 20


# ``download_file`` writes ``{path}.part-XXXXXXXX`` (8 hex digits) and renames it over ``path``.
_DOWNLOAD_TEMP = re.compile(r"\.part-[0-9a-f]{8}$")


def download_temp_name(path: str) -> str:
    """The temp name a download into ``path`` writes before its rename (unique per call)."""
    return f"{path}.part-{uuid.uuid4().hex[:8]}"


def is_download_temp(name: str) -> bool:
    """Whether ``name`` is a ``download_temp_name``: a half-written download, never a real file.

    Why the exact shape and not any ``*.part-*``: a job may well name its own files
    ``shard.part-0001``; only our 8-hex-digit suffix is certainly ours.
    """
    return _DOWNLOAD_TEMP.search(name) is not None


def glob_regex(pattern: str) -> "re.Pattern[str]":
    """The part of GCS's ``matchGlob`` this project uses, as a regex: ``*`` (any characters
    but '/'), ``{a,b}`` (either) and literal characters
    (https://cloud.google.com/storage/docs/json_api/v1/objects/list#list-object-glob)."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "{":
            end = pattern.index("}", i)
            out.append("(?:" + "|".join(re.escape(o) for o in pattern[i + 1:end].split(",")) + ")")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


class Store(ABC):
    """A flat namespace of objects with generations.

    Behaviours every implementation guarantees:
    - ``read``/``stat`` of a missing object return ``None`` (never raise).
    - ``write(..., if_generation_match=0)`` creates only: it raises ``PreconditionFailed`` if the
      object exists. ``if_generation_match=G`` replaces only generation G (compare-and-swap).
    - A conditional write recognises its own success: if it landed but its reply was lost and
      a retry met the precondition it had itself changed, it still returns its generation.
      ``PreconditionFailed`` always means another writer's object is in the way.
    - A reader sees either the old or the new content of an object, never a mix.
    - ``upload_file`` verifies the CRC32C of what was stored against the local file and raises
      ``StoreError`` on mismatch, so a stored object is never silently torn.
    - ``delete`` of a missing object does nothing.
    - ``list`` is recursive under a prefix; ``list_prefixes`` is one delimiter level.
    """

    url: str

    @abstractmethod
    def read(self, name: str) -> Blob | None: ...

    @abstractmethod
    def write(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        """Store ``data``; returns the new generation."""

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """The 'directories' directly below ``prefix`` (each ends in '/')."""

    @abstractmethod
    def upload_file(self, name: str, path: str, crc32c: str | None = None, mode: int | None = None) -> ObjectInfo:
        """Upload a local file; ``crc32c`` (if known) is what the stored object must match.
        ``mode``: the file's permission bits, recorded with the object (``ObjectInfo.mode``)."""

    @abstractmethod
    def download_file(self, name: str, path: str, *, streams: int = 1,
                      slice_bytes: int = SLICE_BYTES) -> ObjectInfo:
        """Download to ``path`` (written via a temp file + rename) and verify its CRC32C.

        The temp file (``download_temp_name(path)``) is removed on any failure, a full disk
        included: what a failed download leaves is ``path`` as it was, nothing beside it.
        ``streams`` > 1 lets a store read an object larger than ``slice_bytes`` as that many
        concurrent ranged reads (GCS: one connection tops out far below what a VM's NIC takes);
        the CRC32C check of the whole file is the same either way. A store for which parallel
        reads buy nothing (a local directory) may ignore it.
        """

    @abstractmethod
    def copy(self, src: str, dst: str) -> ObjectInfo:
        """Server-side copy; ``dst`` is replaced atomically, with ``src``'s recorded mode."""

    def list_from(self, prefix: str, start_offset: str) -> list[str]:
        """``list(prefix)``, only the names from ``start_offset`` (a whole name) on, sorted.

        Why: journal names sort by time, so the newest entries of a long history are a listing
        from a recent offset. GCS skips the rest on its side (``startOffset``: one page, not
        one per thousand entries); this default filters a full listing (a local directory).
        """
        return [n for n in self.list(prefix) if n >= start_offset]

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        """``list(prefix)`` with each object's size, generation and CRC32C, sorted by name.

        Why: restore decides from these which objects to slice, and whether a file prestaged on
        the VM's disk is the object (same size and CRC32C) without downloading it. GCS returns
        them in the listing itself (one request per thousand objects); this default stats each
        name, and skips one deleted between the listing and its stat.
        """
        found = (self.stat(n) for n in self.list(prefix))
        return [info for info in found if info is not None]

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def write_listed(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        """``write``, and let a listing carry ``data`` too (``read_listed``), where the store can.

        Why: a small document that every reader of a large store wants (a run's state and
        heartbeat, for ``ops list`` over 1,000 runs) then costs one listing per thousand objects
        instead of one read each. Same guarantees as ``write``. Default: ``write``.
        """
        return self.write(name, data, if_generation_match)

    # Whether ``read_listed`` answers from a listing (GCS) rather than a read per object (the
    # default): a caller that would otherwise read only some objects asks it only then.
    listing_carries_content = False

    def read_listed(self, prefix: str, pattern: str) -> dict[str, Blob | None]:
        """Every object under ``prefix`` whose name matches ``pattern`` (a GCS ``matchGlob``
        over the whole name: ``*`` within one folder, ``{a,b}`` either): its content and
        generation where the listing carried them (written with ``write_listed``), None where
        the caller must ``read`` it (written otherwise, or too large to carry).

        Default: list, then read each (a local directory: a read is a file open).
        """
        regex = glob_regex(pattern)
        out: dict[str, Blob | None] = {}
        for name in self.list(prefix):
            if regex.fullmatch(name):
                blob = self.read(name)
                if blob is not None:  # deleted since the listing
                    out[name] = blob
        return out

    def publish_file(self, name: str, path: str, crc32c: str, partial_name: str,
                     mode: int | None = None) -> ObjectInfo:
        """Make ``name`` hold exactly ``path``'s bytes, or leave the previous object untouched.

        The default uploads to ``partial_name``, checks the stored CRC32C, then copies it over
        ``name`` server-side, so ``name`` only ever changes to a verified, complete object.
        ``mode`` is recorded as in ``upload_file`` (``copy`` keeps it).
        """
        info = self.upload_file(partial_name, path, crc32c=crc32c, mode=mode)
        if info.crc32c != crc32c:
            raise StoreError(f"{partial_name}: stored CRC32C {info.crc32c} != local {crc32c}")
        self.copy(partial_name, name)
        self.delete(partial_name)
        return info
