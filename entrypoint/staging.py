"""Staged data: copy each ``--data`` source to local disk before the job starts, incrementally.

Why copy at all: a job that reads its dataset straight off a bucket or a network mount spends its
GPU time waiting on the network; on local disk every epoch reads at disk speed. Why before the
job: a job that starts on half a dataset trains on the wrong data without saying so.

Layout (``RUNNER_DATA_DIR``, the staging root the backend gives the agent read-write):

    <root>/<i>/...              source i's files, the same relative names as under its prefix
    <root>/<i>.manifest.json    what was staged there: per file its size, the source's
                                generation and CRC32C, and the local file's size and mtime

The job does not read ``<root>``: the backend bind-mounts ``<root>/<i>`` a second time, read-only,
at the path it asked for (``docker run -v HOST/<i>:/data:ro``; the local backend and
gcp/startup.sh do the same). Why not a remount or ``chmod`` from inside: the agent and its job
run in one container, usually as root, where file modes stop nobody, and a read-only remount
needs CAP_SYS_ADMIN, which the container does not have. A bind mount made by Docker is the one
read-only-ness root inside cannot undo. The staging root itself is the runner's, as its store
mount is; a job that goes looking for it can write there, and the next restart's manifest
check (local size and mtime) then copies the file again.

On a kept disk (a STOP-mode VM, a data disk that survives, the local backend's staging
directory) a restart copies only what changed: a file whose source size, generation and
CRC32C match the manifest and whose local size and mtime are still the staged ones is kept;
files gone from the source (and anything else in the directory) are deleted.

Every copied file is CRC32C-checked against the source before it takes its name (gs://: the
object's own CRC32C, ``Store.download_file``; file://: the bytes read, compared with the bytes
written). A mismatch is read again (``FETCH_TRIES``); one that persists fails the run, as do a
missing prefix (zero objects) and a permission error: the job never starts on an empty or
partial directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from entrypoint.data_sources import DataSource
from entrypoint.store import SLICE_BYTES, StoreError, crc32c_of_file, crc32c_of_stream, download_temp_name

log = logging.getLogger("entrypoint.staging")

DATA_DIR_ENV = "RUNNER_DATA_DIR"
# The local backend mounts file:// source i at another path in the container: this env var
# (``RUNNER_DATA_SOURCE_0``...) names it, as file:///PATH.
SOURCE_ENV_PREFIX = "RUNNER_DATA_SOURCE_"
DEFAULT_STREAMS = 8
LARGE_OBJECT = SLICE_BYTES
FETCH_TRIES = 3
MANIFEST_VERSION = 1


class DataStagingError(Exception):
    """Staging cannot succeed on any attempt (nothing there, no permission, corrupt object):
    the run fails with this message, which says what to fix."""


@dataclass(frozen=True)
class SourceFile:
    rel: str
    size: int
    generation: int
    crc32c: str | None  # None: not known before reading (file://)


class Source(Protocol):
    url: str

    def list(self) -> list[SourceFile]: ...

    def fetch(self, f: SourceFile, dest: str, streams: int) -> SourceFile:
        """Copy ``f`` to ``dest`` (temp file + rename), CRC32C-verified; what was copied."""


@dataclass
class StagingProgress:
    """What the heartbeat and ``runner ops status`` show while data is staged (and after)."""

    sources: int = 0
    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    kept_files: int = 0
    deleted_files: int = 0
    phase: str = "listing"  # listing, copying, done, failed
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


# ---- sources ---------------------------------------------------------------------------------


class GcsSource:
    """A ``gs://BUCKET/PREFIX`` read through the store's client: one listing (size, generation,
    CRC32C per object) and ``GcsStore.download_file`` (sliced ranged reads through the transfer
    manager for large objects, CRC32C checked before the rename)."""

    def __init__(self, url: str, store: Any = None, slice_bytes: int = SLICE_BYTES) -> None:
        from entrypoint.store_gcs import GcsStore

        self.url = url
        self.store = store if store is not None else GcsStore(url)
        self.slice_bytes = slice_bytes

    def list(self) -> list[SourceFile]:
        try:
            infos = self.store.list_info("")
        except StoreError as e:
            raise _permanent(self.url, e) from e
        return [SourceFile(i.name, i.size, i.generation, i.crc32c) for i in infos
                if not i.name.endswith("/")]  # folder placeholders the console makes

    def fetch(self, f: SourceFile, dest: str, streams: int) -> SourceFile:
        got = self.store.download_file(f.rel, dest, streams=streams, slice_bytes=self.slice_bytes)
        return SourceFile(f.rel, got.size, got.generation, got.crc32c)


class DirSource:
    """A ``file:///DIR`` tree: regular files (symlinked files followed), the mtime as generation."""

    def __init__(self, url: str, root: str) -> None:
        self.url = url
        self.root = root

    def list(self) -> list[SourceFile]:
        if not os.path.isdir(self.root):
            raise DataStagingError(f"data source {self.url}: {self.root} is not a directory here; "
                                   "check the path (the local backend reads it on this machine)")
        out: list[SourceFile] = []
        try:
            self._walk(out)
        except PermissionError as e:
            raise DataStagingError(f"data source {self.url}: permission denied reading {e.filename}; "
                                   "make the directory readable by the user that runs the runner") from e
        return out

    def _walk(self, out: list[SourceFile]) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=_raise):
            dirnames.sort()
            for fn in sorted(filenames):
                path = os.path.join(dirpath, fn)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue  # a dangling link, or removed since the walk
                if not os.path.isfile(path):
                    continue
                out.append(SourceFile(os.path.relpath(path, self.root).replace(os.sep, "/"),
                                      st.st_size, st.st_mtime_ns, None))

    def fetch(self, f: SourceFile, dest: str, streams: int) -> SourceFile:
        src = os.path.join(self.root, *f.rel.split("/"))
        tmp = download_temp_name(dest)
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                gen = os.fstat(fin.fileno()).st_mtime_ns
                read = crc32c_of_stream(fin, copy_to=fout)
            written = crc32c_of_file(tmp)
            if written != read:
                raise StoreError(f"{src}: the copy's CRC32C {written} is not the source's {read}")
            size = os.path.getsize(tmp)
            os.replace(tmp, dest)
            return SourceFile(f.rel, size, gen, read)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _raise(e: OSError) -> None:
    raise e


def open_source(ds: DataSource, index: int, env: dict[str, str] | os._Environ[str] = os.environ) -> Source:
    if ds.scheme == "gs":
        return GcsSource(ds.source)
    mounted = env.get(f"{SOURCE_ENV_PREFIX}{index}", "")
    root = mounted[len("file://"):] if mounted.startswith("file://") else ds.path
    return DirSource(ds.source, root)


def _permanent(url: str, e: BaseException) -> BaseException:
    """A listing error that no restart fixes, said with its fix; others pass as they are."""
    from entrypoint.store_gcs import parse_gs_url

    cause = e.__cause__
    name = type(cause).__name__ if cause is not None else ""
    bucket = parse_gs_url(url)[0]
    if name == "Forbidden":
        who = _service_account()
        return DataStagingError(
            f"permission denied reading data source {url}: grant roles/storage.objectViewer on "
            f"gs://{bucket} to the VM's service account {who}: `gcloud storage buckets "
            f"add-iam-policy-binding gs://{bucket} --member=serviceAccount:{who} "
            f"--role=roles/storage.objectViewer`")
    if "does not exist" in str(e) and "bucket" in str(e):
        return DataStagingError(f"data source {url}: bucket gs://{bucket} does not exist; check --data")
    return e


def _service_account() -> str:
    """The VM's service account email (GCE metadata server), or how to find it."""
    sa = os.environ.get("RUNNER_SERVICE_ACCOUNT")
    if sa:
        return sa
    try:
        import requests

        host = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
        r = requests.get(f"http://{host}/computeMetadata/v1/instance/service-accounts/default/email",
                         headers={"Metadata-Flavor": "Google"}, timeout=2)
        if r.ok and "@" in r.text:
            return r.text.strip()
    except Exception:  # noqa: BLE001 - not on GCE, or no metadata server: say how to find it
        pass
    return "SA (runner.toml's service_account, else the project's Compute Engine default)"


# ---- the manifest ----------------------------------------------------------------------------


def manifest_path(root: str, index: int) -> str:
    return os.path.join(root, f"{index}.manifest.json")


def read_manifest(path: str, source_url: str) -> dict[str, dict[str, Any]]:
    """The files recorded as staged from ``source_url``; {} for none, another source's or an
    unreadable manifest (everything is then checked by copying again)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("source") != source_url or not isinstance(doc.get("files"), dict):
        return {}
    return {k: v for k, v in doc["files"].items() if isinstance(v, dict)}


def write_manifest(path: str, source_url: str, files: dict[str, dict[str, Any]], stats: dict[str, int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": MANIFEST_VERSION, "source": source_url, "written_at": time.time(),
                   "last": stats, "files": files}, f, sort_keys=True)
    os.replace(tmp, path)


def _unchanged(entry: dict[str, Any] | None, f: SourceFile, local: str) -> bool:
    if not entry or entry.get("size") != f.size or entry.get("generation") != f.generation:
        return False
    if f.crc32c is not None and entry.get("crc32c") != f.crc32c:
        return False
    try:
        st = os.stat(local)
    except OSError:
        return False
    return st.st_size == entry.get("local_size") and st.st_mtime_ns == entry.get("local_mtime_ns")


def _check_names(url: str, files: list[SourceFile]) -> None:
    """Names that cannot be files under one directory: refused, never half-staged."""
    names = {f.rel for f in files}
    for f in files:
        parts = f.rel.split("/")
        if f.rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise DataStagingError(f"data source {url}: object {f.rel!r} has a name that is not a relative "
                                   "path (empty, '.' or '..' parts); rename it in the source")
        for n in range(1, len(parts)):
            if "/".join(parts[:n]) in names:
                raise DataStagingError(f"data source {url}: {'/'.join(parts[:n])!r} is both a file and a folder "
                                       f"(of {f.rel!r}); a disk cannot hold both: rename one in the source")


# ---- staging ---------------------------------------------------------------------------------


def stage_source(source: Source, dest: str, manifest: str, progress: StagingProgress, *,
                 streams: int = DEFAULT_STREAMS, large_object: int = LARGE_OBJECT) -> dict[str, int]:
    """Make ``dest`` hold exactly ``source``'s files; returns this pass's counts.

    As restore does (``entrypoint.checkpoints.restore_checkpoints``): files of ``large_object``
    bytes or more one after another, each as ``streams`` concurrent ranged reads; the others
    ``streams`` files at a time. Either way ``streams`` bounds the connections in flight."""
    listing = source.list()
    if not listing:
        raise DataStagingError(
            f"data source {source.url} holds no files: check the prefix (`gcloud storage ls "
            f"{source.url}/`); an empty source fails the run rather than give the job an empty directory")
    _check_names(source.url, listing)
    progress.add(files_total=len(listing), bytes_total=sum(f.size for f in listing))
    os.makedirs(dest, exist_ok=True)
    old = read_manifest(manifest, source.url)
    staged: dict[str, dict[str, Any]] = {}
    todo: list[SourceFile] = []
    for f in listing:
        local = os.path.join(dest, *f.rel.split("/"))
        if _unchanged(old.get(f.rel), f, local):
            staged[f.rel] = old[f.rel]
            progress.add(files_done=1, bytes_done=f.size, kept_files=1)
        else:
            todo.append(f)
    deleted = _delete_others(dest, {f.rel for f in listing})
    progress.add(deleted_files=deleted)
    lock = threading.Lock()
    counts = {"copied_files": 0, "copied_bytes": 0, "kept_files": len(staged), "deleted_files": deleted}

    def fetch(f: SourceFile, n: int) -> None:
        local = os.path.join(dest, *f.rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)  # a folder here before, a file in the source now
        got = _fetch_verified(source, f, local, n)
        st = os.stat(local)
        with lock:
            staged[f.rel] = {"size": got.size, "generation": got.generation, "crc32c": got.crc32c,
                             "local_size": st.st_size, "local_mtime_ns": st.st_mtime_ns}
            counts["copied_files"] += 1
            counts["copied_bytes"] += got.size
        progress.add(files_done=1, bytes_done=f.size, copied_files=1, copied_bytes=got.size)

    try:
        for f in (f for f in todo if f.size >= large_object):  # one at a time, each in slices
            fetch(f, streams)
        small = [f for f in todo if f.size < large_object]
        with ThreadPoolExecutor(max_workers=max(1, streams), thread_name_prefix="stage") as pool:
            futures = [pool.submit(fetch, f, 1) for f in small]
            for fut in futures:
                err = fut.exception()
                if err is not None:
                    for other in futures:
                        other.cancel()
                    raise err
    finally:
        # What was copied stays recorded: the next attempt does not copy it again.
        write_manifest(manifest, source.url, staged, counts)
    return counts


def _fetch_verified(source: Source, f: SourceFile, local: str, streams: int) -> SourceFile:
    """``source.fetch`` again on a checksum or transfer error, up to ``FETCH_TRIES`` reads."""
    for attempt in range(1, FETCH_TRIES + 1):
        try:
            return source.fetch(f, local, streams)
        except StoreError as e:
            permanent = _permanent(source.url, e) if source.url.startswith("gs://") else e
            if isinstance(permanent, DataStagingError):
                raise permanent from e
            if attempt == FETCH_TRIES:
                raise DataStagingError(
                    f"data source {source.url}: {f.rel} could not be copied intact in {FETCH_TRIES} "
                    f"reads ({e}); if its CRC32C keeps failing the stored object is damaged: "
                    "upload it again") from e
            log.warning("staging %s/%s: %s; reading it again (%d of %d)", source.url, f.rel, e,
                        attempt + 1, FETCH_TRIES)
    raise AssertionError("unreachable")


def _delete_others(dest: str, keep: set[str]) -> int:
    """Remove every file under ``dest`` that is not in ``keep`` (gone from the source, or a
    temp file of a copy cut short), then empty folders."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            if os.path.relpath(path, dest).replace(os.sep, "/") not in keep:
                os.unlink(path)
                removed += 1
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if os.path.islink(path):
                os.unlink(path)
            else:
                try:
                    os.rmdir(path)
                except OSError:
                    pass  # not empty: it holds kept files
    return removed


def stage_all(sources: list[DataSource], root: str, progress: StagingProgress, *,
              streams: int = DEFAULT_STREAMS,
              opener: Callable[[DataSource, int], Source] = open_source) -> list[dict[str, int]]:
    """Stage every source into ``root/<i>``; ``progress`` is updated as files land."""
    started = time.monotonic()
    progress.sources = len(sources)
    try:
        results = []
        for i, ds in enumerate(sources):
            progress.phase = "copying"
            results.append(stage_source(opener(ds, i), os.path.join(root, str(i)), manifest_path(root, i),
                                        progress, streams=streams))
            log.info("staged %s at %s: %s", ds.source, ds.mount, results[-1])
        progress.phase = "done"
        return results
    except BaseException:
        progress.phase = "failed"
        raise
    finally:
        progress.seconds = round(time.monotonic() - started, 3)


def stage_run_data(spec: Any, progress: StagingProgress, env: dict[str, str] | os._Environ[str] = os.environ,
                   *, streams: int = DEFAULT_STREAMS) -> list[dict[str, int]]:
    """The agent's hook: stage ``spec.data`` (a ``RunSpec``) into ``$RUNNER_DATA_DIR``; nothing
    for a run without data. ``DataStagingError`` when it cannot succeed on any attempt."""
    from entrypoint.data_sources import DataSourceError, from_spec

    try:
        sources = from_spec(getattr(spec, "data", None), checkpoint_dir=spec.checkpoint_dir,
                            results_dir=spec.results_dir)
    except DataSourceError as e:
        raise DataStagingError(str(e)) from e
    if not sources:
        return []
    root = env.get(DATA_DIR_ENV, "")
    if not root or not os.path.isdir(root):
        raise DataStagingError(
            f"the run asks for data ({', '.join(map(str, sources))}) but this container has no staging "
            f"directory ({DATA_DIR_ENV} is {root or 'unset'}): the backend that started it predates "
            "--data; run it with a runner that supports it")
    return stage_all(sources, root, progress, streams=streams,
                     opener=lambda ds, i: open_source(ds, i, env))
