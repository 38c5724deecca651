"""Checkpoint tiers and the resume order: local disk, then the primary bucket, then the mirror.

Why tiers: a regional outage of the run's bucket must not stop a run that needs to resume, and a
VM restarted on its own kept disk (GCE terminationAction=STOP) holds a checkpoint at least as new
as any upload, so downloading it again only wastes the restart.

How a copy says what it holds: after every sync pass that published everything it found, the
agent writes a *stamp* beside the copy (``checkpoints/.runner-stamp.json`` in a store, the same
hidden name in the local directory). A stamp lists each file's size and CRC32C, the newest
file's mtime (``written_at``: when the job wrote it, on the job's own clock, the same clock for
every tier since all tiers are copies of the same files) and the step the job had reported when
it wrote it. Hidden names are never synced or restored as checkpoints (``checkpoints._is_syncable``).

The choice (``choose``): every tier that can be read and whose files match its stamp is a
candidate; the newest ``written_at`` wins, ties go to the earlier tier (local > primary > mirror:
the cheapest to restore). A copy whose files do not match its stamp (torn local file, an upload
pass that died half way) is skipped with the reason; a tier that cannot be read (bucket outage,
no permission) is skipped with the error. A primary with checkpoints but no stamp (written
before tiers existed) is a candidate of unknown age, taken only when no stamped copy exists.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from entrypoint.store import Store, StoreError, crc32c_of_file

log = logging.getLogger("entrypoint.tiers")

STAMP = ".runner-stamp.json"
LOCAL, PRIMARY, MIRROR = "local", "primary", "mirror"
ORDER = (LOCAL, PRIMARY, MIRROR)


@dataclass(frozen=True)
class Stamp:
    """What one copy of the checkpoints holds (see the module docstring)."""

    files: dict[str, dict[str, Any]]  # rel -> {"size": int, "crc32c": base64}
    written_at: float  # the newest file's mtime
    step: float | None = None
    attempt: int | None = None

    def to_json(self) -> bytes:
        return json.dumps({"files": self.files, "written_at": self.written_at, "step": self.step,
                           "attempt": self.attempt}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Stamp | None":
        """None for anything that is not a stamp (a torn write, another program's file)."""
        try:
            d = json.loads(data)
            files = d["files"]
            ok = isinstance(files, dict) and all(
                isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("size"), int)
                and isinstance(v.get("crc32c"), str) for k, v in files.items())
            written_at = float(d["written_at"])
            step = d.get("step")
            if not ok or (step is not None and not isinstance(step, (int, float))):
                return None
            attempt = d.get("attempt")
            return cls(files=files, written_at=written_at, step=step,
                       attempt=attempt if isinstance(attempt, int) else None)
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Candidate:
    """A tier's copy as found at restart: ``stamp`` None for an unstamped (legacy) primary."""

    tier: str
    stamp: Stamp | None

    @property
    def step(self) -> float | None:
        return self.stamp.step if self.stamp else None

    @property
    def written_at(self) -> float | None:
        return self.stamp.written_at if self.stamp else None


@dataclass
class Choice:
    """The tier to resume from (None: no checkpoint anywhere) and why the others were not."""

    chosen: Candidate | None
    skipped: dict[str, str] = field(default_factory=dict)  # tier -> reason


def store_stamp_name(prefix: str) -> str:
    return prefix + STAMP


def write_store_stamp(store: Store, prefix: str, stamp: Stamp) -> None:
    store.write(store_stamp_name(prefix), stamp.to_json())


def write_local_stamp(local_dir: str, stamp: Stamp) -> None:
    """Temp file + rename, and no fsync: an fsync here would make the file system commit (and
    write back) the job's pending checkpoint data on our schedule, in the job's way. A stamp the
    power cut lost or left empty only means the local tier is skipped at restart (it reads as no
    stamp, or as an older one that no longer matches the files), never a wrong resume."""
    path = os.path.join(local_dir, STAMP)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(stamp.to_json())
    os.replace(tmp, path)


def read_local_stamp(local_dir: str) -> Stamp | None:
    try:
        with open(os.path.join(local_dir, STAMP), "rb") as f:
            return Stamp.from_json(f.read())
    except OSError:
        return None


def local_candidate(local_dir: str) -> tuple[Candidate | None, str | None]:
    """The kept disk's copy if every file its stamp lists is there with that size and CRC32C.

    Every byte is read once (a local read, GB/s): a file the job was writing in place when the
    VM stopped, or one half-written by a kill, is caught here and the tier is skipped.
    """
    stamp = read_local_stamp(local_dir)
    if stamp is None:
        return None, "no stamp on the local disk (a new VM, or no checkpoint synced yet)"
    for rel, want in sorted(stamp.files.items()):
        path = os.path.join(local_dir, *rel.split("/"))
        try:
            if os.path.getsize(path) != want["size"] or crc32c_of_file(path) != want["crc32c"]:
                return None, f"{rel} on the local disk differs from its stamp (torn or rewritten)"
        except OSError as e:
            return None, f"{rel} on the local disk cannot be read: {e}"
    return Candidate(LOCAL, stamp), None


def store_candidate(tier: str, store: Store, prefix: str,
                    is_checkpoint: Callable[[str], bool]) -> tuple[Candidate | None, str | None]:
    """The store's copy if its stamp matches the listing (size and CRC32C of every file it names).

    Raises ``StoreError``/``OSError`` when the store cannot be read (the caller says so and
    moves on). No stamp but checkpoint objects: an unstamped candidate (written before tiers).
    """
    infos = {i.name[len(prefix):]: i for i in store.list_info(prefix)}
    blob = store.read(store_stamp_name(prefix))
    stamp = Stamp.from_json(blob.data) if blob is not None else None
    if stamp is None:
        if any(is_checkpoint(rel) for rel in infos):
            return Candidate(tier, None), None
        return None, "no checkpoint there"
    for rel, want in sorted(stamp.files.items()):
        info = infos.get(rel)
        if info is None or info.size != want["size"] or info.crc32c != want["crc32c"]:
            return None, f"{rel} there differs from its stamp (a newer pass did not finish)"
    return Candidate(tier, stamp), None


def choose(found: list[tuple[str, Candidate | None, str | None]]) -> Choice:
    """Newest stamped copy wins, ties to the earlier tier; an unstamped copy only if none is stamped.

    ``found``: (tier, candidate or None, why not) for each tier, in ``ORDER``.
    """
    skipped = {tier: why for tier, cand, why in found if cand is None and why}
    cands = [c for _, c, _ in found if c is not None]
    stamped = [c for c in cands if c.stamp is not None]
    if stamped:
        best = max(stamped, key=lambda c: (c.stamp.written_at, -ORDER.index(c.tier)))  # type: ignore[union-attr]
        for c in cands:
            if c is not best:
                skipped[c.tier] = ("older than " + best.tier if c.stamp is not None
                                   and c.stamp.written_at < best.stamp.written_at  # type: ignore[union-attr]
                                   else "same checkpoint as " + best.tier if c.stamp is not None
                                   else "unstamped, and a stamped copy exists")
        return Choice(best, skipped)
    if cands:
        return Choice(cands[0], skipped)
    return Choice(None, skipped)


def gather(local_dir: str | None, tiers: list[tuple[str, Store, str]],
           is_checkpoint: Callable[[str], bool]) -> list[tuple[str, Candidate | None, str | None]]:
    """Look at every tier in ``ORDER``; a store that cannot be read is reported, not raised."""
    found: list[tuple[str, Candidate | None, str | None]] = []
    if local_dir is not None:
        found.append((LOCAL, *local_candidate(local_dir)))
    for tier, store, prefix in tiers:
        try:
            found.append((tier, *store_candidate(tier, store, prefix, is_checkpoint)))
        except (StoreError, OSError) as e:
            log.warning("checkpoint tier %s (%s) cannot be read at restart: %s; trying the next tier",
                        tier, store.url, e)
            found.append((tier, None, f"unreachable: {e}"))
    return found
