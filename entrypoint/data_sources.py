"""Staged data sources (``runner submit --data SRC:/MOUNT``): what may be asked for, checked once.

Why here, in ``entrypoint``: the same rules are applied at submit (``runner.launch``, before
anything is written) and again by the agent on the spec it reads (a spec is JSON in a bucket;
a hand-edited one must not mount a dataset over ``/proc``). ``entrypoint`` may not import
``runner``, so the rules live on this side.

A source is ``gs://BUCKET[/PREFIX]`` or ``file:///ABSOLUTE/DIR``; the mount is where the job
reads it, read-only. Mount paths are limited to ``[A-Za-z0-9._/-]`` because they travel to the
VM as one space-separated metadata value (``runner-data-mounts``) and into ``docker run -v
HOST:MOUNT:ro``, where a ':' or a space would be ambiguous (no guessing at encodings).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterable

MAX_SOURCES = 16
_MOUNT_RE = re.compile(r"^/[A-Za-z0-9._/-]*$")
# GCS bucket names: 3-63 characters of lowercase letters, digits, '-', '_' and '.'
# (https://cloud.google.com/storage/docs/buckets#naming).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Where a dataset must not go: the system, the kernel's views, and the runner's own directories
# (the agent and its store mount live under /var/lib/runner).
_RESERVED = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root", "/run",
             "/sbin", "/sys", "/usr", "/var/lib/runner", "/var/run")
# Where a dataset may go inside, but must not cover: the agent's own scratch space is in /tmp.
_NOT_OVER = ("/tmp", "/var/tmp")
FORM = "SRC:/MOUNT, e.g. gs://BUCKET/PREFIX:/data or file:///srv/datasets/x:/data"


class DataSourceError(ValueError):
    """A ``--data`` entry that cannot be staged; the message says which one and how to fix it."""


@dataclass(frozen=True)
class DataSource:
    source: str  # gs://BUCKET[/PREFIX] (no trailing '/') or file:///DIR
    mount: str   # absolute, normalised, read-only in the job's container

    @property
    def scheme(self) -> str:
        return self.source.split("://", 1)[0]

    @property
    def bucket(self) -> str:
        """The bucket of a gs:// source ("" for file://)."""
        return self.source[len("gs://"):].split("/", 1)[0] if self.scheme == "gs" else ""

    @property
    def path(self) -> str:
        """The directory of a file:// source ("" for gs://)."""
        return self.source[len("file://"):] if self.scheme == "file" else ""

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "mount": self.mount}

    def __str__(self) -> str:
        return f"{self.source}:{self.mount}"


def parse_data_arg(text: str) -> DataSource:
    """``SRC:/MOUNT`` as given to ``--data`` or in ``data = [...]``; source and mount checked
    on their own (``check_sources`` checks them against each other and the run's paths)."""
    if not isinstance(text, str):
        raise DataSourceError(f"data entry {text!r} is not text: expected {FORM}")
    src, sep, mount = text.rpartition(":")
    if not sep or not src or "://" not in src or not mount.startswith("/"):
        raise DataSourceError(f"data entry {text!r} is not {FORM}")
    return DataSource(_checked_source(src, text), _checked_mount(mount, text))


def _checked_source(src: str, given: str) -> str:
    if src.startswith("gs://"):
        bucket, _, prefix = src[len("gs://"):].partition("/")
        if not _BUCKET_RE.match(bucket):
            raise DataSourceError(f"data entry {given!r}: {bucket!r} is not a bucket name "
                                  "(3-63 of a-z 0-9 . _ -); expected gs://BUCKET/PREFIX")
        prefix = prefix.strip("/")
        parts = prefix.split("/") if prefix else []
        if any(p in ("", ".", "..") for p in parts):
            raise DataSourceError(f"data entry {given!r}: the prefix {prefix!r} has an empty, '.' or '..' "
                                  "part; write the object prefix as it is in the bucket")
        if any(c in prefix for c in "*?[]{}\n\r\0"):
            raise DataSourceError(f"data entry {given!r}: a prefix is copied whole; wildcards "
                                  "are not supported (name the folder that holds the files)")
        return f"gs://{bucket}" + (f"/{prefix}" if prefix else "")
    if src.startswith("file://"):
        path = src[len("file://"):]
        if not path.startswith("/"):
            raise DataSourceError(f"data entry {given!r}: file:// needs an absolute path, "
                                  "e.g. file:///srv/datasets/x (three slashes)")
        if ".." in path.split("/") or ":" in path or "\0" in path or "\n" in path:
            raise DataSourceError(f"data entry {given!r}: the path must not contain '..', ':' or "
                                  "control characters (Docker cannot bind-mount ':' paths)")
        path = posixpath.normpath(path)
        if path == "/":
            raise DataSourceError(f"data entry {given!r}: refusing to stage the whole filesystem; "
                                  "name the dataset's directory")
        return "file://" + path
    raise DataSourceError(f"data entry {given!r}: the source must be gs://BUCKET/PREFIX or "
                          "file:///DIR")


def _checked_mount(mount: str, given: str) -> str:
    if not _MOUNT_RE.match(mount):
        raise DataSourceError(f"data entry {given!r}: the mount {mount!r} must be an absolute path "
                              "of letters, digits and . _ - / only, e.g. /data")
    parts = [p for p in mount.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise DataSourceError(f"data entry {given!r}: the mount {mount!r} must not contain '.' or '..'")
    norm = "/" + "/".join(parts)
    if norm == "/":
        raise DataSourceError(f"data entry {given!r}: cannot mount data over / ; pick a directory "
                              "such as /data")
    for r in _RESERVED:
        if _inside(norm, r) or _inside(r, norm):
            raise DataSourceError(f"data entry {given!r}: {norm} would cover or sit inside {r}, which "
                                  "the system or the runner needs; pick another path, e.g. /data")
    for r in _NOT_OVER:
        if _inside(r, norm):
            raise DataSourceError(f"data entry {given!r}: {norm} would cover {r}, where the runner keeps "
                                  f"its scratch files; mount inside it ({r}/data) or elsewhere (/data)")
    return norm


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def check_sources(sources: Iterable[DataSource], *, checkpoint_dir: str, results_dir: str) -> list[DataSource]:
    """The run's sources, checked together: no more than ``MAX_SOURCES``, no source or mount
    twice, no mount inside another or over the run's checkpoint or results directory (the job
    writes those; a read-only dataset there would stop it saving anything)."""
    out = list(sources)
    if len(out) > MAX_SOURCES:
        raise DataSourceError(f"{len(out)} data sources; at most {MAX_SOURCES}")
    for i, a in enumerate(out):
        for which, d in (("checkpoint_dir", checkpoint_dir), ("results_dir", results_dir)):
            if _inside(a.mount, d) or _inside(d, a.mount):
                raise DataSourceError(f"data {a}: the mount overlaps the run's {which} {d}, which the "
                                      "job writes; mount the data elsewhere, e.g. /data")
        for b in out[:i]:
            if a.source == b.source:
                raise DataSourceError(f"data source {a.source} is given twice; mount it once")
            if _inside(a.mount, b.mount) or _inside(b.mount, a.mount):
                raise DataSourceError(f"data mounts {b.mount} ({b.source}) and {a.mount} ({a.source}) "
                                      "overlap; give each source its own directory")
    return out


def parse_all(entries: Iterable[str], *, checkpoint_dir: str, results_dir: str) -> list[DataSource]:
    return check_sources([parse_data_arg(e) for e in entries],
                         checkpoint_dir=checkpoint_dir, results_dir=results_dir)


def from_spec(data: Any, *, checkpoint_dir: str, results_dir: str) -> list[DataSource]:
    """The spec's ``data`` list (``[{"source", "mount"}]``) checked again by the same rules;
    ``DataSourceError`` for anything else (a spec edited by hand)."""
    if not data:
        return []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise DataSourceError(f"spec.json's data is not a list of {{source, mount}} objects: {data!r}")
    entries = []
    for d in data:
        src, mount = d.get("source"), d.get("mount")
        if not isinstance(src, str) or not isinstance(mount, str):
            raise DataSourceError(f"spec.json's data entry {d!r} needs a source and a mount")
        entries.append(f"{src}:{mount}")
    return parse_all(entries, checkpoint_dir=checkpoint_dir, results_dir=results_dir)
