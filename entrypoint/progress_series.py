"""An attempt's progress and checkpoint age over time, kept small: what ``runner ops report``
draws as the step against wall time and the checkpoint sync lag (issue 24).

Why in the manifest, and why bounded: the heartbeat holds only the latest step and is
overwritten, so nothing in the record said how an attempt's progress went between its first and
last step, or how old its newest checkpoint got before each upload. The agent samples both at
every heartbeat and writes the series into the attempt's manifest when the attempt ends (no
extra store request). A heartbeat every 5 s for days would be tens of thousands of samples: the
series keeps at most ``MAX_POINTS``, thinning itself by half (every other sample, evenly spread
over the attempt) each time it fills, and always ends with the newest sample. An attempt whose
agent is killed outright (no grace) writes no final manifest, so it has no series; readers fall
back to its first and last steps.
"""

from __future__ import annotations

import math
import threading
from typing import Any

MAX_POINTS = 120


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


class ProgressSeries:
    """Samples of (time, step, newest checkpoint's write time), at most ``max_points`` kept."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max(4, max_points)
        self._kept: list[tuple[float, float | None, float | None]] = []
        self._last: tuple[float, float | None, float | None] | None = None
        self._stride = 1  # keep every stride-th sample
        self._seen = 0
        self._lock = threading.Lock()  # the heartbeat thread samples, the main thread writes the manifest

    def sample(self, t: float, step: Any, checkpoint_at: Any) -> None:
        """One heartbeat's point: its time, the job's step (None if not reported) and the write
        time of the newest checkpoint published (None if none yet)."""
        point = (round(float(t), 1), _finite(step), _finite(checkpoint_at))
        with self._lock:
            self._last = point
            if self._seen % self._stride == 0:
                self._kept.append(point)
                if len(self._kept) >= self.max_points:
                    self._kept = self._kept[::2]
                    self._stride *= 2
            self._seen += 1

    def to_dict(self) -> dict[str, list[float | None]]:
        """``{"t": [...], "step": [...], "checkpoint_at": [...]}``, oldest first, newest last."""
        with self._lock:
            pts = list(self._kept)
            if self._last is not None and (not pts or pts[-1] != self._last):
                pts.append(self._last)
        return {"t": [p[0] for p in pts], "step": [p[1] for p in pts], "checkpoint_at": [p[2] for p in pts]}
