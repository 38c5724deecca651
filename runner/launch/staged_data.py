"""``--data`` on the control plane: what each backend can stage, pinned in the spec, and the
local backend's mounts.

The agent does the copying (``entrypoint.staging``) on every backend, so progress, checksums and
failures are one code path; what differs is how the container gets its staging directory and
its read-only views of it:

- local: a folder per run under ``staging_dir`` on this machine (the "kept disk": it survives
  preemptions, so a restart copies only what changed), mounted read-write for the agent at
  ``STAGED_MOUNT`` and each source's folder read-only at its mount path. A ``file://`` source is
  mounted read-only into the container for the agent to copy from.
- GCE: gcp/startup.sh makes the same layout on the data disk (``data_mount``) when the run has
  one, else on the VM's stateful partition, from ``runner-data-mounts`` (space-separated mount
  paths, the sources' order; the sources themselves the agent reads from spec.json).

``gs://`` sources on the local backend are refused at submit: its containers have no network
(the local store is a bind-mounted directory), and giving one the network would also mean
handing it this machine's Google credentials. Copy the data to a directory first and pass
``file://`` (same staging, same checks).
"""

from __future__ import annotations

import os
from typing import Any

from entrypoint.data_sources import DataSource, from_spec, parse_all
from entrypoint.staging import DATA_DIR_ENV, SOURCE_ENV_PREFIX
from runner.launch.backends.base import BackendError, PermanentBackendError

STAGED_MOUNT = "/var/lib/runner/staged"   # in the container: the agent's staging root
SOURCES_MOUNT = "/var/lib/runner/sources"  # in a local container: file:// source i at SOURCES_MOUNT/i
DATA_MOUNTS_KEY = "runner-data-mounts"     # GCE metadata: the mount paths, space-separated


def sources_of(cfg: Any) -> list[DataSource]:
    """The config's ``data`` entries (flags, runner.toml, task file), parsed and checked."""
    return parse_all(cfg.data, checkpoint_dir=cfg.checkpoint_dir, results_dir=cfg.results_dir)


def check_for_backend(backend: str, sources: list[DataSource], store_url: str = "") -> None:
    """Refuse, before anything is written, a source the backend's instances could never read."""
    for ds in sources:
        if backend == "local" and ds.scheme == "gs":
            raise BackendError(
                f"--data {ds}: the local backend cannot stage gs:// data: its containers have no network "
                f"(and no Google credentials). Copy it here first (`gcloud storage cp -r {ds.source} DIR`) "
                f"and pass --data file://DIR:{ds.mount}, or use --backend gce")
        if backend == "local" and ds.scheme == "file" and not os.path.isdir(ds.path):
            # Docker would create a missing bind-mount source as an empty folder (as root), and
            # the run would then fail on an empty source: say it now, before anything is written.
            raise BackendError(f"--data {ds}: {ds.path} is not a directory on this machine; check the path")
        if backend == "local" and store_url.startswith("file://") and \
                os.path.realpath(ds.path) == os.path.realpath(store_url[len("file://"):]):
            raise BackendError(f"--data {ds}: that directory is the run store itself; stage a dataset folder")
        if backend != "local" and ds.scheme == "file":
            raise BackendError(
                f"--data {ds}: a file:// source is on this machine, which a {backend} VM cannot read: "
                f"upload it (`gcloud storage cp -r {ds.path} gs://BUCKET/PREFIX`) and pass "
                f"--data gs://BUCKET/PREFIX:{ds.mount}")


def spec_fields(cfg: Any, run_id: str, store_url: str = "") -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The spec's ``data`` list and what the backend's ``vm`` options gain for it (local: the
    staging root, pinned so every attempt, whichever supervisor starts it, finds the same kept
    copy in ``ROOT/RUN_ID``)."""
    sources = sources_of(cfg)
    check_for_backend(cfg.backend, sources, store_url)
    if not sources:
        return [], {}
    vm: dict[str, Any] = {}
    if cfg.backend == "local":  # the root only: a sweep derives its runs from one spec
        vm["staging_dir"] = os.path.abspath(os.path.expanduser(cfg.staging_dir))
    return [s.to_dict() for s in sources], vm


def local_mounts(spec: Any) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The local container's extra volumes and env for the run's data ({} and {} without)."""
    try:
        sources = from_spec(spec.data, checkpoint_dir=spec.checkpoint_dir, results_dir=spec.results_dir)
    except ValueError as e:
        raise PermanentBackendError(f"spec.json of {spec.run_id}: {e}") from None
    if not sources:
        return {}, {}
    base = (spec.vm or {}).get("staging_dir")
    if not isinstance(base, str) or not base.startswith("/") or ":" in base:
        raise PermanentBackendError(f"spec.json of {spec.run_id} has data but no usable vm.staging_dir ({base!r}): "
                                    "set staging_dir in runner.toml to a directory without ':'")
    root = local_staging_dir(spec)
    volumes = {root: {"bind": STAGED_MOUNT, "mode": "rw"}}
    env = {DATA_DIR_ENV: STAGED_MOUNT}
    for i, ds in enumerate(sources):
        volumes[os.path.join(root, str(i))] = {"bind": ds.mount, "mode": "ro"}
        if ds.scheme == "file":
            volumes[ds.path] = {"bind": f"{SOURCES_MOUNT}/{i}", "mode": "ro"}
            env[f"{SOURCE_ENV_PREFIX}{i}"] = f"file://{SOURCES_MOUNT}/{i}"
    return volumes, env


def local_staging_dir(spec: Any) -> str:
    """Where the local backend keeps a run's staged data on this machine (``ROOT/RUN_ID``)."""
    return os.path.join(spec.vm["staging_dir"], spec.run_id)


def metadata_items(spec: Any) -> dict[str, str]:
    """GCE: the startup script's one scalar for data (absent without data)."""
    sources = from_spec(spec.data, checkpoint_dir=spec.checkpoint_dir, results_dir=spec.results_dir)
    return {DATA_MOUNTS_KEY: " ".join(s.mount for s in sources)} if sources else {}


def progress_text(d: dict[str, Any]) -> str:
    """The ``data`` line of ``runner ops status``: how far staging got, and what it copied."""
    def mb(n: Any) -> str:
        return f"{(n or 0) / 1e6:.1f} MB"

    text = (f"{d.get('phase', '?')}: {d.get('files_done', 0)}/{d.get('files_total', 0)} files, "
            f"{mb(d.get('bytes_done'))} of {mb(d.get('bytes_total'))}")
    extra = [f"copied {d.get('copied_files', 0)} ({mb(d.get('copied_bytes'))})",
             f"kept {d.get('kept_files', 0)}"]
    if d.get("deleted_files"):
        extra.append(f"deleted {d['deleted_files']}")
    if d.get("seconds"):
        extra.append(f"{d['seconds']:.1f} s")
    return f"{text} ({', '.join(extra)})"
