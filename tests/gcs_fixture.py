"""Pytest fixtures for the GCS backend against the strict in-process emulator.

Loaded from tests/conftest.py through ``pytest_plugins = ["tests.gcs_fixture"]``.
"""

from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

from entrypoint.store_gcs import GcsStore
from tests.gcs_emulator import run_emulator

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
