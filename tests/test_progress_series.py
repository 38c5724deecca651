"""The agent's bounded progress series (entrypoint/progress_series.py): what an attempt's
manifest carries for ``runner ops report``'s progress and sync-lag charts."""

from __future__ import annotations

from entrypoint.progress_series import ProgressSeries


def test_a_short_attempt_keeps_every_sample_in_order():
    s = ProgressSeries(max_points=10)
    for i in range(5):
        s.sample(100 + i, i * 10, 90 + i if i else None)

    d = s.to_dict()

    assert d == {"t": [100, 101, 102, 103, 104], "step": [0, 10, 20, 30, 40], "checkpoint_at": [None, 91, 92, 93, 94]}


def test_a_long_attempt_stays_bounded_evenly_spread_and_ends_with_the_newest_sample():
    s = ProgressSeries(max_points=120)
    for i in range(100_000):  # five days of 5 s heartbeats
        s.sample(i * 5.0, i, None)

    t = s.to_dict()["t"]

    assert len(t) <= 121 and len(t) >= 60
    assert t[0] == 0 and t[-1] == 99_999 * 5.0 and t == sorted(t)
    gaps = {round(b - a) for a, b in zip(t[:-2], t[1:-1])}
    assert len(gaps) == 1  # every kept sample the same stride apart (the newest may be closer)


def test_what_is_not_a_finite_number_is_kept_as_missing():
    s = ProgressSeries()
    s.sample(1.0, float("nan"), float("inf"))
    s.sample(2.0, "12", True)

    assert s.to_dict() == {"t": [1.0, 2.0], "step": [None, None], "checkpoint_at": [None, None]}
