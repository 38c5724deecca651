"""An attempt's phase marks read as one recovery: where the seconds between "lost" and "training
again" went (``Recovery``), and the one line ``ops`` shows for it (``format_recovery``).

Pure: it takes what ``RunRecord.phases(n)`` returned and reads nothing itself, so ``ops``, the
notifier and a benchmark sum the same timeline the same way.

The marks come from different clocks (the supervisor's, the VM's, the container's), and some
work runs beside other work (the checkpoint restore may overlap the driver install and the
pull). So each segment is measured on the critical path: from the latest mark seen so far to
its own end mark, clamped at 0. With every mark present the segments then add up to the total;
a segment that had to be clamped is named in ``clamped`` rather than shown as negative time.
A missing mark makes the segments it bounds unknown (``None``, shown as ``?``), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from entrypoint.record.phases import (
    CHECKPOINT_RESTORED, DRIVER_READY, FIRST_STEP, IMAGE_READY, NOTICED, REPLACEMENT_REQUESTED,
    STARTUP_SCRIPT, VM_RUNNING, WARM_DRIVER, WARM_IMAGE,
)

# The segments of a recovery, in order: (name, the mark it starts at, the mark it ends at).
# "detect" starts at the moment the previous attempt was lost, which ``noticed`` carries in its
# detail (``lost_at``) rather than as a mark of its own. "create" starts at ``noticed``, or, for
# a start (attempt 1) or a record without that mark, at the request itself.
LOST = "lost"
SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("detect", LOST, NOTICED),
    ("create", NOTICED, VM_RUNNING),
    ("boot", VM_RUNNING, STARTUP_SCRIPT),
    ("driver", STARTUP_SCRIPT, DRIVER_READY),
    ("pull", DRIVER_READY, IMAGE_READY),
    ("restore", IMAGE_READY, CHECKPOINT_RESTORED),
    ("first_step", CHECKPOINT_RESTORED, FIRST_STEP),
)
SEGMENT_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SEGMENTS)
# The boundaries in the order they happen on the critical path (the running latest mark). The
# request is not one: the create runs from the notice, and the request only starts a start's.
_BOUNDARIES: tuple[str, ...] = (LOST, NOTICED, VM_RUNNING, STARTUP_SCRIPT, DRIVER_READY, IMAGE_READY,
                                CHECKPOINT_RESTORED, FIRST_STEP)


@dataclass(frozen=True)
class Recovery:
    """One attempt's way in: from the previous attempt lost (a recovery) or from the request for
    the first VM (a start, attempt 1) to the job's first step.

    Segment values are seconds on the critical path, ``None`` where a bounding mark is missing.
    ``driver_path`` / ``image_path`` say how the boot got there: ``"warm"`` (already on the boot
    image), ``"cold"`` (installed, pulled) or ``"none"`` (no GPU driver needed); ``None`` if not
    said.
    """

    attempt: int
    origin: float | None  # when the clock starts: lost_at, else noticed, else the request
    lost_at: float | None
    first_step_at: float | None
    segments: tuple[tuple[str, float | None], ...]
    driver_path: str | None = None
    image_path: str | None = None
    # The restore finished before the image was ready: it ran beside the pull, off the critical path.
    restore_overlapped: bool = False
    clamped: tuple[str, ...] = ()  # segments whose end mark came before their start (clock skew)
    restore_detail: dict[str, Any] = field(default_factory=dict)
    last_mark_at: float | None = None  # the newest mark's time: where an unfinished one sorts
    begun: tuple[str, ...] = ()  # the segments whose start is known (in progress: how far it got)
    # Of "create": from the notice to the request (a supervisor waiting out STOPPING, a claim, a
    # full zone); the rest is the API making the VM. None unless both are marked.
    queued: float | None = None

    @property
    def is_start(self) -> bool:
        """Attempt 1: nothing was lost before it, so there is nothing to detect."""
        return self.attempt == 1

    @property
    def complete(self) -> bool:
        return self.first_step_at is not None

    @property
    def total(self) -> float | None:
        """Seconds from ``origin`` to the first step; None until both are known."""
        if self.origin is None or self.first_step_at is None:
            return None
        return max(0.0, self.first_step_at - self.origin)

    def so_far(self, now: float) -> float | None:
        """Seconds since ``origin`` (for one still in progress)."""
        return None if self.origin is None else max(0.0, now - self.origin)

    def segment(self, name: str) -> float | None:
        return dict(self.segments).get(name)

    @property
    def at(self) -> float | None:
        """Where this recovery sorts among events: its first step, else its newest mark."""
        return self.first_step_at if self.first_step_at is not None else self.last_mark_at

    def to_dict(self) -> dict[str, Any]:
        """The numbers for ``--json``: seconds as floats, ``null`` where unknown."""
        return {
            "attempt": self.attempt,
            "kind": "start" if self.is_start else "recovery",
            "complete": self.complete,
            "total_s": _rounded(self.total),
            "lost_at": self.lost_at,
            "first_step_at": self.first_step_at,
            "segments_s": {name: _rounded(v) for name, v in self.segments},
            "queued_s": _rounded(self.queued),
            "driver_path": self.driver_path,
            "image_path": self.image_path,
            "warm_driver": self.driver_path == "warm",
            "warm_image": self.image_path == "warm",
            "restore_overlapped": self.restore_overlapped,
            "clamped": list(self.clamped),
            "restore": dict(self.restore_detail),
        }


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _number(v: Any) -> float | None:
    """A mark's time as a float; anything else (a torn or foreign mark) reads as missing."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _path(mark: dict[str, Any] | None, warm_flag: str) -> str | None:
    """``detail.path`` of a mark ("warm" | "cold" | "none"); a bare warm flag also says warm."""
    if not mark:
        return None
    detail = mark.get("detail") if isinstance(mark.get("detail"), dict) else {}
    path = detail.get("path")
    if isinstance(path, str):
        return path
    return "warm" if detail.get(warm_flag) is True else None


def build_recovery(attempt: int, phases: dict[str, dict[str, Any]]) -> Recovery:
    """The ``Recovery`` of ``attempt`` from its phase marks (``RunRecord.phases(attempt)``)."""
    times: dict[str, float] = {}
    for name, mark in phases.items():
        t = _number(mark.get("time")) if isinstance(mark, dict) else None
        if t is not None:
            times[name] = t
    noticed = phases.get(NOTICED) if isinstance(phases.get(NOTICED), dict) else None
    noticed_detail = noticed.get("detail") if noticed and isinstance(noticed.get("detail"), dict) else {}
    lost_at = _number(noticed_detail.get("lost_at")) if attempt > 1 else None
    if lost_at is not None:
        times[LOST] = lost_at
    # A start (or a record without the notice) creates from its request: the create's own time.
    notice, request = times.get(NOTICED), times.get(REPLACEMENT_REQUESTED)
    create_from = notice if notice is not None else request

    segments: list[tuple[str, float | None]] = []
    clamped: list[str] = []
    begun: list[str] = []
    for name, start, end in SEGMENTS:
        if name == "detect" and attempt == 1:
            continue  # nothing was lost before a start
        begin = create_from if name == "create" else times.get(start)
        if begin is not None:
            begun.append(name)
        if begin is None or end not in times:
            segments.append((name, None))
            continue
        # On the critical path: from the latest boundary reached before this end, not only from
        # this segment's own start (the restore may finish before the image is pulled).
        latest = max([begin] + [times[b] for b in _BOUNDARIES[:_BOUNDARIES.index(end)] if b in times])
        raw = times[end] - latest
        if raw < 0 and name != "restore":  # a restore that ended early overlapped; anything else is skew
            clamped.append(name)
        segments.append((name, max(0.0, raw)))

    restored, image = times.get(CHECKPOINT_RESTORED), times.get(IMAGE_READY)
    restore_mark = phases.get(CHECKPOINT_RESTORED)
    restore_detail = restore_mark.get("detail") if isinstance(restore_mark, dict) else None
    origin = lost_at if lost_at is not None else create_from
    return Recovery(
        attempt=attempt, origin=origin, lost_at=lost_at, first_step_at=times.get(FIRST_STEP),
        segments=tuple(segments),
        driver_path=_path(phases.get(DRIVER_READY), WARM_DRIVER),
        image_path=_path(phases.get(IMAGE_READY), WARM_IMAGE),
        restore_overlapped=restored is not None and image is not None and restored < image,
        clamped=tuple(clamped),
        restore_detail=dict(restore_detail) if isinstance(restore_detail, dict) else {},
        last_mark_at=max(times.values()) if times else None,
        begun=tuple(begun),
        queued=max(0.0, request - notice) if notice is not None and request is not None else None,
    )


def duration(seconds: float | None) -> str:
    """A short human duration: 45s, 12m, 3h05m, 2d04h (``-`` for none).

    Lives with the record so that a reader on either side (``runner ops``, the timeline line)
    says durations the same way; ``runner.ops.runs`` uses it from here.
    """
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_TAGS = {"warm": " (warm)", "none": " (no GPU)"}


def format_recovery(r: Recovery, now: float | None = None, job_running: bool = False) -> str:
    """One line for people, e.g.
    ``recovery 1m12s: detect 4s · create 31s · boot 9s · driver 0s (warm) · pull 0s (warm) · restore 9s · first step 28s``.

    A start (attempt 1) says ``start`` and has no detect. One without a first step yet is
    ``in progress`` when ``now`` is given (the caller knows the attempt is the live one), with the
    segments up to the newest known one and a ``?`` after it; otherwise it never reached a first
    step, and every segment shows, unknown ones as ``?``.

    ``job_running``: the attempt's job runs (its state is RUNNING) and the checkpoint is restored,
    but no step is marked: a job that reports no progress (optional) never gets one, so the line
    ends at the job's start rather than counting its whole run time as "in progress".
    """
    if job_running and not r.complete and "first_step" in r.begun:  # begun: the restore is marked
        upto = [(n, v) for n, v in r.segments if n != "first_step"]
        known = [v for _n, v in upto]
        head = "start" if r.is_start else "recovery"
        total = f" {duration(sum(known))}" if all(v is not None for v in known) else ""
        return f"{head}{total} to the job's start (no step reported yet): " + " · ".join(
            f"{n} {'?' if v is None else duration(v)}" for n, v in upto)
    label = "start" if r.is_start else "recovery"
    segments = list(r.segments)
    if not r.complete and now is not None:
        # In progress: it stands in the last segment whose start is marked; later ones have not begun.
        reached = [i for i, (name, _) in enumerate(segments) if name in r.begun]
        segments = segments[:(reached[-1] if reached else 0) + 1]
    parts = []
    for name, value in segments:
        text = f"{name.replace('_', ' ')} {'?' if value is None else duration(value)}"
        if value is not None:
            if name == "driver":
                text += _TAGS.get(r.driver_path or "", "")
            elif name == "pull":
                text += _TAGS.get(r.image_path or "", "")
            elif name == "restore" and r.restore_overlapped:
                text += " (overlapped)"
            if name in r.clamped:
                text += " (clock skew)"
        parts.append(text)
    if r.complete:
        head = f"{label} {duration(r.total)}" if r.total is not None else f"{label} ?"
    elif now is not None:
        so_far = r.so_far(now)
        head = f"{label} (in progress, {duration(so_far)} so far)" if so_far is not None else f"{label} (in progress)"
    else:
        head = f"{label} (no first step)"
    return f"{head}: {' · '.join(parts)}" if parts else head

