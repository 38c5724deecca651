"""An attempt's phase marks read as one recovery (``entrypoint.record.timeline``): pure, no store.

The marks are written the way ``RunRecord.phases(n)`` returns them; times are plain seconds.
"""

from __future__ import annotations

from typing import Any

from pytest import approx

from entrypoint.record.phases import (
    CHECKPOINT_RESTORED, DRIVER_READY, FIRST_STEP, IMAGE_READY, NOTICED, REPLACEMENT_REQUESTED,
    STARTUP_SCRIPT, VM_RUNNING, WARM_DRIVER,
)
from entrypoint.record.timeline import SEGMENT_NAMES, build_recovery, duration, format_recovery


def mark(phase: str, t: float, **detail: Any) -> dict[str, Any]:
    return {"phase": phase, "attempt": 2, "time": t, "actor": "test", "detail": detail}


def marks(**times: float | tuple[float, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``marks(vm_running=30.0, driver_ready=(40.0, {"path": "warm"}))``"""
    out = {}
    for phase, v in times.items():
        t, detail = v if isinstance(v, tuple) else (v, {})
        out[phase] = mark(phase, t, **detail)
    return out


def warm_recovery() -> dict[str, dict[str, Any]]:
    """Lost at 100, noticed 4 s later, a warm boot, a first step 72 s after the loss."""
    return marks(noticed=(104.0, {"lost_at": 100.0}), replacement_requested=105.0, vm_running=135.0,
                 startup_script=144.0, driver_ready=(144.4, {"path": "warm"}),
                 image_ready=(144.8, {"path": "warm"}), checkpoint_restored=(153.8, {"files": 2, "bytes": 10}),
                 first_step=172.0)


def test_a_complete_warm_recovery_is_one_line_whose_segments_add_up_to_the_total():
    r = build_recovery(2, warm_recovery())
    assert r.complete and r.total == 72.0 and r.lost_at == 100.0
    segs = dict(r.segments)
    assert list(segs) == list(SEGMENT_NAMES)
    assert segs["detect"] == 4.0 and segs["create"] == 31.0 and segs["boot"] == 9.0
    assert segs["driver"] == approx(0.4) and segs["pull"] == approx(0.4)
    assert segs["restore"] == approx(9.0) and segs["first_step"] == approx(18.2)
    assert sum(segs.values()) == approx(r.total)
    assert (r.driver_path, r.image_path) == ("warm", "warm")
    assert format_recovery(r) == ("recovery 1m12s: detect 4s · create 31s · boot 9s · driver 0s (warm) · "
                                  "pull 0s (warm) · restore 9s · first step 18s")


def test_the_json_numbers_are_floats_with_nulls_for_the_unknown_and_the_warm_flags():
    d = build_recovery(2, warm_recovery()).to_dict()
    assert d["kind"] == "recovery" and d["complete"] is True and d["total_s"] == 72.0
    assert d["segments_s"]["create"] == 31.0 and isinstance(d["segments_s"]["boot"], float)
    assert d["warm_driver"] is True and d["warm_image"] is True
    assert d["restore"] == {"files": 2, "bytes": 10}
    assert d["queued_s"] == 1.0  # of the create's 31 s, the request came 1 s after the notice
    partial = warm_recovery()
    del partial[STARTUP_SCRIPT]
    d = build_recovery(2, partial).to_dict()
    assert d["segments_s"]["boot"] is None and d["segments_s"]["driver"] is None
    assert d["total_s"] == 72.0  # the ends are known: the total still is


def test_a_cold_boot_shows_its_driver_install_and_pull_without_a_warm_tag():
    m = warm_recovery()
    m[DRIVER_READY] = mark(DRIVER_READY, 144.0 + 150, path="cold")
    m[IMAGE_READY] = mark(IMAGE_READY, 144.0 + 150 + 60, path="cold")
    m[CHECKPOINT_RESTORED] = mark(CHECKPOINT_RESTORED, 144.0 + 210 + 9)
    m[FIRST_STEP] = mark(FIRST_STEP, 144.0 + 210 + 9 + 18)
    line = format_recovery(build_recovery(2, m))
    assert "driver 2m30s · pull 1m00s · restore 9s" in line and "warm" not in line


def test_a_bare_warm_flag_in_the_detail_also_says_warm():
    m = warm_recovery()
    m[DRIVER_READY] = mark(DRIVER_READY, 144.4, **{WARM_DRIVER: True})
    assert build_recovery(2, m).driver_path == "warm"


def test_a_restore_that_finished_before_the_pull_costs_nothing_and_says_it_overlapped():
    m = warm_recovery()
    m[IMAGE_READY] = mark(IMAGE_READY, 200.0, path="cold")  # a long pull ...
    m[CHECKPOINT_RESTORED] = mark(CHECKPOINT_RESTORED, 160.0)  # ... with the restore beside it
    m[FIRST_STEP] = mark(FIRST_STEP, 210.0)
    r = build_recovery(2, m)
    assert r.segment("restore") == 0.0 and r.restore_overlapped
    assert r.segment("first_step") == 10.0  # from the pull's end, not the restore's: no double count
    assert sum(v for _, v in r.segments if v is not None) == r.total == 110.0
    assert "restore 0s (overlapped)" in format_recovery(r)
    assert r.clamped == ()  # an overlap is not clock skew


def test_marks_from_a_vm_clock_behind_the_supervisors_clamp_at_zero_and_say_so():
    m = warm_recovery()
    m[STARTUP_SCRIPT] = mark(STARTUP_SCRIPT, 130.0)  # VM clock: 5 s before the supervisor saw it running
    r = build_recovery(2, m)
    assert r.segment("boot") == 0.0 and r.clamped == ("boot",)
    assert r.segment("driver") == approx(9.4)  # from the latest mark seen (VM running), never negative
    assert all(v is not None and v >= 0 for _, v in r.segments)
    assert "boot 0s (clock skew)" in format_recovery(r)
    skewed = warm_recovery()
    skewed[NOTICED] = mark(NOTICED, 104.0, lost_at=110.0)  # lost "after" it was noticed
    s = build_recovery(2, skewed)
    assert s.segment("detect") == 0.0 and "detect" in s.clamped and s.total == 62.0


def test_a_recovery_in_progress_shows_what_is_known_up_to_the_first_unknown():
    m = marks(noticed=(104.0, {"lost_at": 100.0}), replacement_requested=105.0, vm_running=135.0)
    r = build_recovery(2, m)
    assert not r.complete and r.total is None and r.at == 135.0
    assert format_recovery(r, now=145.0) == "recovery (in progress, 45s so far): detect 4s · create 31s · boot ?"
    # The same marks on an attempt that never got further (it was lost too): every segment shows.
    assert format_recovery(r) == ("recovery (no first step): detect 4s · create 31s · boot ? · driver ? · "
                                  "pull ? · restore ? · first step ?")


def test_missing_or_torn_marks_make_segments_unknown_never_an_error():
    m = warm_recovery()
    del m[VM_RUNNING]
    m[DRIVER_READY] = {"phase": DRIVER_READY, "time": "soon", "detail": "?"}  # not ours to trust
    r = build_recovery(2, m)
    assert r.segment("create") is None and r.segment("boot") is None
    assert r.segment("driver") is None and r.segment("pull") is None and r.driver_path is None
    assert r.complete and r.total == 72.0
    assert "create ? · boot ? · driver ? · pull ?" in format_recovery(r)
    assert build_recovery(3, {}).to_dict()["total_s"] is None


def test_a_lost_attempt_without_its_notice_has_an_unknown_detection_and_creates_from_the_request():
    m = warm_recovery()
    del m[NOTICED]
    r = build_recovery(2, m)
    assert r.segment("detect") is None and r.segment("create") == 30.0
    assert r.lost_at is None and r.total == 67.0  # from the request: the best start known
    assert format_recovery(r).startswith("recovery 1m07s: detect ? · create 30s")


def test_attempt_one_is_a_start_timed_from_its_request_with_nothing_to_detect():
    m = warm_recovery()
    del m[NOTICED]
    r = build_recovery(1, m)
    assert r.is_start and "detect" not in dict(r.segments)
    assert r.segment("create") == 30.0 and r.total == 67.0
    assert r.to_dict()["kind"] == "start"
    assert format_recovery(r).startswith("start 1m07s: create 30s · boot 9s")
    noticed_anyway = build_recovery(1, {**m, NOTICED: mark(NOTICED, 104.0, lost_at=1.0)})
    assert noticed_anyway.lost_at is None and "detect" not in dict(noticed_anyway.segments)


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (None, 0.4, 4, 72, 599, 600, 3900, 90000)] == [
        "-", "0s", "4s", "1m12s", "9m59s", "10m", "1h05m", "1d01h"]


def test_every_phase_but_the_request_bounds_a_segment():
    from entrypoint.record.phases import ORDER
    from entrypoint.record.timeline import SEGMENTS

    ends = {end for _, _, end in SEGMENTS}
    assert set(ORDER) - ends == {REPLACEMENT_REQUESTED}


def test_a_recovery_in_progress_with_a_mark_missing_in_the_middle_still_shows_what_came_after():
    m = marks(noticed=(104.0, {"lost_at": 100.0}), vm_running=135.0, driver_ready=(150.0, {"path": "cold"}))
    assert format_recovery(build_recovery(2, m), now=160.0) == (
        "recovery (in progress, 1m00s so far): detect 4s · create 31s · boot ? · driver ? · pull ?")


def test_a_warm_driver_on_a_skewed_clock_says_both():
    m = warm_recovery()
    m[DRIVER_READY] = mark(DRIVER_READY, 143.0, path="warm")  # before the startup script, by its clock
    assert "driver 0s (warm) (clock skew)" in format_recovery(build_recovery(2, m))
