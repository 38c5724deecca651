"""Compute backends: where a run's instances live (``local``: Docker here; ``gce``: spot VMs).

``backend_type`` gives a backend's class by the name a spec records, without a client, so code
that only reads a spec (the supervisor's boot window, cost, submit's spec options) asks the
backend what its options mean instead of reading ``spec.vm`` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.launch.backends.base import ComputeBackend


def backend_type(name: str) -> "type[ComputeBackend]":
    """The backend class called ``name`` ("local" or "gce"); imported on first use (the GCE one
    loads the Google client libraries)."""
    if name == "local":
        from runner.launch.backends.local import LocalBackend

        return LocalBackend
    if name == "gce":
        from runner.launch.backends.gce import GceBackend

        return GceBackend
    raise ValueError(f"unknown backend {name!r}: use local or gce")
