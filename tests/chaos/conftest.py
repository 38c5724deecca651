"""Every test under tests/chaos/ is a chaos scenario: marked ``chaos`` so ``-m chaos`` selects them."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def gce(compute_fake, gcs_store, gcs_emulator):  # type: ignore[no-untyped-def]
    """(context, Compute stand-in) of a GCE store: see ``harness.GCE_PROJECT``."""
    from runner.config import Config
    from runner.launch.context import make_context
    from tests.chaos.harness import GCE_PROJECT, GCE_ZONES

    cfg = Config(backend="gce", project=GCE_PROJECT, zones=list(GCE_ZONES), compute_endpoint=compute_fake.endpoint,
                 store=gcs_store.url, machine_type="n1-standard-4", no_gpu=True, poll_interval=1.0,
                 stall_polls=600)
    compute_fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 512)
    return make_context(cfg), compute_fake
