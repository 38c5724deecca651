"""Builds the store and the compute backend from config: the one place that does so.

Every command goes through here, so the backend a test points at a fake and the backend a user
points at Google are made by the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from entrypoint.store import Store, open_store
from runner.backends.base import BackendError, ComputeBackend
from runner.config import Config
from runner.supervisor import Supervisor, SupervisorSettings


def make_store(cfg: Config, create_default: bool = False) -> Store:
    """Open the configured store; the default local directory is created on first use."""
    url = cfg.store_url
    if create_default and cfg.store is None and url.startswith("file://"):
        os.makedirs(url[len("file://"):], exist_ok=True)
    return open_store(url)


def make_backend(cfg: Config) -> ComputeBackend:
    if cfg.backend == "local":
        from runner.backends.local import LocalBackend

        return LocalBackend()
    raise BackendError(
        f"backend {cfg.backend!r} is not available in this version; use --backend local"
    )


@dataclass
class Context:
    cfg: Config
    store: Store
    backend: ComputeBackend

    def supervisor(self) -> Supervisor:
        return Supervisor(self.store, self.backend, SupervisorSettings.from_config(self.cfg))


def make_context(cfg: Config, create_default_store: bool = False) -> Context:
    return Context(cfg, make_store(cfg, create_default_store), make_backend(cfg))
