"""How a job tells the agent how far it got.

Two ways, use either (and a third for a job that cannot be changed: ``entrypoint.progress_pattern``):
- print a line ``RUNNER_PROGRESS step=120 total=1000 loss=0.25`` on stdout or stderr
  (``key=value`` pairs; numbers are parsed, anything else kept as text), or
- write a small JSON object to the file named by ``$RUNNER_PROGRESS_FILE``
  (e.g. ``{"step": 120, "total": 1000}``), replacing it atomically.

The stall watchdog looks at *changes* of this progress, not only at the heartbeat, so a job
that is alive but stuck is still caught.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from entrypoint.markers import PROGRESS_PREFIX as PREFIX

if TYPE_CHECKING:
    from entrypoint.progress_pattern import ProgressPattern


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The key=value pairs of a ``RUNNER_PROGRESS`` line, or None if it is not one."""
    line = line.strip()
    if not line.startswith(PREFIX):
        return None
    out: dict[str, Any] = {}
    for part in line[len(PREFIX):].split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            continue
        out[key] = _number(value)
    return out or None


def _number(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


class ProgressTracker:
    """The latest progress and when it last changed; safe to update from several threads."""

    def __init__(self, progress_file: str | None = None, pattern: "ProgressPattern | None" = None) -> None:
        self.progress_file = progress_file
        self.pattern = pattern  # the run's --progress-regex: steps from the job's own lines
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._changed_at: float | None = None
        self._file_mtime: int | None = None
        self._first_step: tuple[float, float] | None = None  # (step, time) first seen this attempt
        # (time, step) of recent step changes: which step a checkpoint written at a time holds
        # (``step_at``, for the checkpoint tiers' stamps). Bounded: only recent files are asked about.
        self._steps: collections.deque[tuple[float, float]] = collections.deque(maxlen=4096)


    def update(self, values: dict[str, Any]) -> None:
        with self._lock:
            merged = {**self._progress, **values}
            if merged != self._progress:
                self._progress = merged
                self._changed_at = time.time()
                step = merged.get("step")
                if isinstance(step, (int, float)) and self._first_step is None:
                    self._first_step = (step, self._changed_at)
                if isinstance(step, (int, float)) and (not self._steps or self._steps[-1][1] != step):
                    self._steps.append((self._changed_at, step))

    def step_at(self, t: float) -> float | None:
        """The step the job had reached when it wrote a file at ``t``; None if it reported none.

        A job reports a step, then saves it, and the report reaches us through a pipe (and a
        thread that may wait for the GIL), so it is timed a little after the file's mtime: a
        report up to half the job's recent step interval after ``t`` still counts.
        """
        with self._lock:
            times = [at for at, _ in self._steps][-9:]
            gaps = sorted(b - a for a, b in zip(times, times[1:]))
            slack = min(5.0, gaps[len(gaps) // 2] / 2) if gaps else 0.05
            found = None
            for at, step in self._steps:
                if at > t + slack:
                    break
                found = step
            return found

    def feed_line(self, line: str) -> None:
        """A line of the job's output: a ``RUNNER_PROGRESS`` line, else one the run's pattern finds a step in."""
        values = parse_progress_line(line)
        if values is None and self.pattern is not None:
            values = self.pattern.values(line)
        if values:
            self.update(values)

    def poll_file(self) -> None:
        """Pick up the JSON progress file if the job rewrote it."""
        if not self.progress_file:
            return
        try:
            mtime = os.stat(self.progress_file).st_mtime_ns
            if mtime == self._file_mtime:
                return
            with open(self.progress_file) as f:
                values = json.load(f)
            self._file_mtime = mtime
        except (OSError, ValueError):
            return
        if isinstance(values, dict):
            self.update(values)

    def snapshot(self) -> tuple[dict[str, Any], float | None]:
        with self._lock:
            return dict(self._progress), self._changed_at

    def first_step(self) -> tuple[float, float] | None:
        """(step, time) of the first step reported this attempt: where a resumed job picked up."""
        with self._lock:
            return self._first_step

    def rate(self) -> float | None:
        """Steps per second since the first step this attempt saw (None until two distinct steps).

        Measured from this attempt's first report, not from zero: a resumed run did not do the
        steps before its checkpoint here, and counting them would overstate the rate and so
        understate the ETA.
        """
        with self._lock:
            step = self._progress.get("step")
            if self._first_step is None or not isinstance(step, (int, float)) or self._changed_at is None:
                return None
            s0, t0 = self._first_step
            if step <= s0 or self._changed_at <= t0:
                return None
            return (step - s0) / (self._changed_at - t0)
