"""Builds the store and the compute backend from config: the one place that does so.

Every command goes through here, so the backend a test points at a fake and the backend a user
points at Google are made by the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from entrypoint.store import Store
from entrypoint.stores import open_store
from runner.launch.backends.base import BackendError, ComputeBackend
from runner.config import Config
from runner.launch.supervisor import Supervisor, SupervisorSettings

if TYPE_CHECKING:
    from runner.launch.backends.gce import GceBackend


def make_store(cfg: Config, create_default: bool = False) -> Store:
    """Open the configured store; with ``create_default`` (commands that write, like submit) a
    missing local directory is made on first use.

    The default store's parents are made too (``~/.local/share`` may not exist yet). A store the
    user named gets only its last component: a missing parent is more likely a typo in the path
    than a wish for a new tree, so that one is still refused with the fix.
    """
    url = cfg.store_url
    if create_default and url.startswith("file://"):
        path = os.path.abspath(os.path.expanduser(url[len("file://"):]))
        if cfg.store is None:
            os.makedirs(path, exist_ok=True)
        elif not os.path.exists(path) and os.path.isdir(os.path.dirname(path)):
            try:
                os.mkdir(path)
            except OSError:
                pass  # unwritable parent (or a race): the store's own error below says what to do
    return open_store(url)


def make_backend(cfg: Config) -> ComputeBackend:
    if cfg.backend == "local":
        from runner.launch.backends.local import LocalBackend

        return LocalBackend().bind_store(cfg.store_url)
    from runner.launch.backends.gce import GceBackend
    from runner.cloud.gcp_clients import compute_clients

    return _hosted_aware(GceBackend(compute_clients(cfg.compute_endpoint), require_project(cfg)), cfg)


def make_plan_backend(cfg: Config) -> ComputeBackend:
    """A backend that can only plan (``--dry-run``): no API client, so no credentials needed."""
    if cfg.backend == "local":
        from runner.launch.backends.local import LocalBackend

        return LocalBackend().bind_store(cfg.store_url)  # its Docker client is made on first use
    from runner.launch.backends.gce import GceBackend

    return _hosted_aware(GceBackend(None, require_project(cfg)), cfg)  # type: ignore[arg-type]


def _hosted_aware(backend: "GceBackend", cfg: Config) -> "GceBackend":
    """Bound to the store, and naming the hosted supervisor its VMs ask for a pass when preempted
    (runner.cloud.hosted.supervisor_job_for_vms: "" where none is configured)."""
    from runner.cloud.hosted import supervisor_job_for_vms

    backend.bind_store(cfg.store_url)
    backend.supervisor_job = supervisor_job_for_vms(cfg)
    return backend


def require_project(cfg: Config) -> str:
    """The project, always explicit (docs/architecture.md#projects-and-builds: gcloud's active project may be another one)."""
    active = gcloud_active_project()
    if not cfg.project:
        hint = f" (gcloud's active project is {active!r}; runs never use it implicitly)" if active else ""
        raise BackendError(f"no GCP project: pass --project ID or set project in runner.toml{hint}")
    if active and active != cfg.project:
        import sys

        print(f"runner: warning: using project {cfg.project!r} (from {cfg.source.get('project')}), "
              f"but gcloud's active project is {active!r}", file=sys.stderr)
    return cfg.project


def gcloud_active_project() -> str | None:
    """gcloud's active project from its config files, without running gcloud (it may be absent)."""
    import configparser

    base = os.environ.get("CLOUDSDK_CONFIG") or os.path.expanduser("~/.config/gcloud")
    if os.environ.get("CLOUDSDK_CORE_PROJECT"):
        return os.environ["CLOUDSDK_CORE_PROJECT"]
    try:
        with open(os.path.join(base, "active_config")) as f:
            name = f.read().strip() or "default"
    except OSError:
        name = "default"
    parser = configparser.ConfigParser()
    if not parser.read(os.path.join(base, "configurations", f"config_{name}")):
        return None
    return parser.get("core", "project", fallback=None)


@dataclass
class Context:
    cfg: Config
    store: Store
    backend: ComputeBackend

    def supervisor(self) -> Supervisor:
        from runner.ops.notify import notifier_from_config

        return Supervisor(self.store, self.backend, SupervisorSettings.from_config(self.cfg),
                          notifier=notifier_from_config(self.cfg))


def make_context(cfg: Config, create_default_store: bool = False) -> Context:
    return Context(cfg, make_store(cfg, create_default_store), make_backend(cfg))
