"""Progress parsing and the per-attempt rate that ETAs are computed from."""

from __future__ import annotations

import pytest

from entrypoint import progress as progress_mod
from entrypoint.progress import ProgressTracker, parse_progress_line


def test_progress_line_parses_numbers_and_keeps_text() -> None:
    assert parse_progress_line("RUNNER_PROGRESS step=12 total=100 loss=0.5 tag=warmup") == {
        "step": 12, "total": 100, "loss": 0.5, "tag": "warmup"}
    assert parse_progress_line("step=12") is None


def test_rate_counts_from_the_first_step_this_attempt_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "time", lambda: clock[0])
    t = ProgressTracker()
    assert t.rate() is None
    t.update({"step": 500, "total": 1000})  # resumed at 500: the first 500 were not done here
    assert t.rate() is None
    clock[0] += 10
    t.update({"step": 520})
    assert t.rate() == pytest.approx(2.0)
    clock[0] += 30  # no new progress: the rate is of the work done, not diluted by the wait
    assert t.rate() == pytest.approx(2.0)
