"""The fake served over HTTP on 127.0.0.1, its clock thread, and the ``compute_fake`` fixture."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import pytest

from tests.standins.compute.service import ComputeFake
from tests.standins.json_http_server import serve
from tests.standins.network_guard import guarded_stand_in


@contextmanager
def run_compute_fake(project: str = "test-project", *, seed: int = 0) -> Iterator[ComputeFake]:
    """Serve a fresh ComputeFake on 127.0.0.1 (free port) for the duration of the block."""
    fake = ComputeFake(project, seed=seed)
    stop = threading.Event()

    def clock() -> None:
        # Time moves without requests too: a notice runs out, and the guest is powered off, even
        # while nobody asks (as on GCE). Requests still tick first, so what they see is current.
        while not stop.wait(0.05):
            with fake.lock:
                try:
                    fake._tick()
                except Exception as e:  # noqa: BLE001 - a bug in the fake: the fixture fails on it
                    fake.internal_errors.append(f"clock: {e!r}")
    ticker = threading.Thread(target=clock, name="compute-fake-clock", daemon=True)
    with serve(fake, "compute-fake") as endpoint:
        fake.endpoint = endpoint
        ticker.start()
        try:
            yield fake
        finally:
            stop.set()
            ticker.join(timeout=5)
            fake.close()


@pytest.fixture
def compute_fake() -> Iterator[ComputeFake]:
    """A fresh fake per test, with external network blocked; fails the test on any escape.

    Use through ``pytest_plugins = ["tests.standins.compute"]`` or ``from tests.standins.compute import
    compute_fake``. Build clients with ``compute_v1.InstancesClient(**compute_fake.client_kwargs())``.
    """
    with guarded_stand_in(run_compute_fake(), "compute fake") as fake:
        yield fake
