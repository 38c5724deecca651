"""Pytest fixtures for the GCS backend against the strict in-process emulator.

Loaded from tests/conftest.py through ``pytest_plugins = ["tests.standins.gcs_fixture"]``.
"""

from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import pytest

from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_emulator import run_emulator

if TYPE_CHECKING:
    from google.cloud import storage

    from tests.standins.gcs_fault_proxy import FaultProxy

BUCKET = "test-bucket"
DENIED_BUCKET = "denied-bucket"


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration, then restore exactly what was there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """One emulator per session (it starts in milliseconds, but tests share a bucket anyway).

    Yields its base URL and points google-cloud-storage at it through ``STORAGE_EMULATOR_HOST``,
    which also makes ``GcsStore`` use anonymous credentials: nothing can reach real GCS.
    ``denied-bucket`` answers 403 to everything, for permission-error tests.
    """
    with run_emulator(BUCKET, deny=[DENIED_BUCKET]) as hostport:
        url = f"http://{hostport}"
        with _environ(STORAGE_EMULATOR_HOST=url, GOOGLE_CLOUD_PROJECT="local"):
            yield url


@pytest.fixture
def gcs_store(gcs_emulator: str, request: pytest.FixtureRequest) -> GcsStore:
    """A GcsStore under a prefix of its own, so tests sharing the bucket cannot see each other."""
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return GcsStore(f"gs://{BUCKET}/{test}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def fault_proxy(gcs_emulator: str) -> Iterator["FaultProxy"]:
    """A fault-injecting proxy in front of the session's emulator (no rules: it only forwards)."""
    from tests.standins.gcs_fault_proxy import run_fault_proxy

    with run_fault_proxy(gcs_emulator.split("//", 1)[1], seed=int(os.environ.get("FAULT_SEED", "7"))) as proxy:
        yield proxy


def client_through(proxy: "FaultProxy") -> "storage.Client":
    """The product's storage client (``make_client``: anonymous, its connection pool sized) with
    every request, uploads included, going through ``proxy``."""
    from entrypoint.store_gcs import make_client

    with _environ(STORAGE_EMULATOR_HOST=f"http://{proxy.address}", GOOGLE_CLOUD_PROJECT="local"):
        return make_client()


def store_through(proxy: "FaultProxy", prefix: str) -> GcsStore:
    """A GcsStore whose every request goes through ``proxy`` (the real client, its own retries)."""
    return GcsStore(f"gs://{BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}", client=client_through(proxy))


@pytest.fixture
def faulty_gcs_store(fault_proxy: "FaultProxy", request: pytest.FixtureRequest) -> GcsStore:
    """A GcsStore under its own prefix, through ``fault_proxy``: add rules to lose its replies."""
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return store_through(fault_proxy, test)
