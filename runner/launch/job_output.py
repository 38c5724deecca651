"""The job's output as it grows: what each attempt printed since the last look, from the fastest
source that has it.

Two sources hold an attempt's output, and both are prefixes of the same bytes (the agent copies
each line of the job to its stdout and to ``job.log``, and uploads ``job.log`` to the store):

- the store's ``logs/<attempt>.log``, uploaded by the agent every heartbeat (5 s by default) and
  once more before the attempt's final state. It is the only source after an instance is gone.
  On GCE it is the only one at all: the container logs to the VM's ``json-file`` driver
  (gcp/startup.sh), which nothing outside the VM can read, and uploading more often than once a
  second is not possible: GCS allows one write per second to the same object name
  (https://docs.cloud.google.com/storage/docs/request-rate, "a smaller limit for repeated writes
  to the same object name").
- the instance itself (``ComputeBackend.live_output``): the local backend reads the container's
  stdout from Docker as it is written (https://docs.docker.com/reference/cli/docker/container/logs.md),
  so `ops logs --follow` and an attached `submit` show a line within a poll, not a heartbeat.

Whichever of the two is longer is shown from the byte already shown, so switching between them
(the container ends, the store catches up) neither repeats nor skips a byte.
"""

from __future__ import annotations

import time
from typing import Any

from entrypoint.markers import CONTAINER_RUNNING, phase_line
from entrypoint.record import RunRecord
from entrypoint.store import Store
from runner.launch.backends.base import ComputeBackend

STARTUP_DONE = phase_line(CONTAINER_RUNNING)
# How often a follower looks: "within about a second" of a line being printed (issue 20, item 12).
FOLLOW_POLL_S = 0.5


class OutputCursor:
    """What of each attempt's output (and, on GCE, its VM's startup console) was already handed
    out; ``new()`` returns only what came since. Not thread-safe: one follower owns it."""

    def __init__(self, store: Store, run_id: str, backend: ComputeBackend | None = None,
                 startup_console: bool = True) -> None:
        self.store = store
        self.record = RunRecord(store, run_id)
        self.run_id = run_id
        self.backend = backend
        self.startup_console = startup_console
        self.sent: dict[int, int] = {}
        self.console: dict[int, int] = {}  # attempt -> serial offset; -1 once the container started

    def new(self, last_attempt: int, first_attempt: int = 1) -> list[tuple[int, str, bytes]]:
        """``(attempt, kind, bytes)`` for attempts ``first_attempt``..``last_attempt``; kind is
        ``"startup"`` (a VM's serial console before its container starts, GCE only) or
        ``"output"`` (the job's). Each attempt costs a stat (GCS: a billed request) per call:
        a caller that looks often looks at the current attempt only."""
        out: list[tuple[int, str, bytes]] = []
        live = self._live_instances()
        for a in range(max(first_attempt, 1), last_attempt + 1):
            inst = live.get(a)
            stored = self._stored_size(a)
            if self.startup_console and inst is not None and not stored and self.console.get(a, 0) >= 0 \
                    and self.backend is not None and self.backend.has_startup_console:
                text = self._console(a, inst)
                if text:
                    out.append((a, "startup", text.encode()))
            data = self._longest(a, inst, stored)
            done = self.sent.get(a, 0)
            if data is not None and len(data) > done:
                out.append((a, "output", data[done:]))
                self.sent[a] = len(data)
        return out

    def _live_instances(self) -> dict[int, Any]:
        if self.backend is None:
            return {}
        try:
            # Rank 0 only: the attempt's log in the store is rank 0's too.
            return {i.attempt: i for i in self.backend.list(self.run_id) if i.rank == 0}
        except Exception:  # noqa: BLE001 - the store still has the output; try the instance next poll
            return {}

    def _stored_size(self, attempt: int) -> int:
        info = self.store.stat(self.record.name(RunRecord.log_name(attempt)))
        return info.size if info is not None else 0

    def _longest(self, attempt: int, inst: Any, stored: int) -> bytes | None:
        """The longer of the instance's live output and the stored log; reads the stored log only
        when it holds bytes not yet shown (a stat first: GCS reads are whole objects)."""
        live = None
        if inst is not None and self.backend is not None:
            try:
                live = self.backend.live_output(inst)
            except Exception:  # noqa: BLE001 - fall back to the store this poll
                live = None
        if stored > max(self.sent.get(attempt, 0), len(live or b"")):
            blob = self.store.read(self.record.name(RunRecord.log_name(attempt)))
            if blob is not None and len(blob.data) >= len(live or b""):
                return blob.data
        return live

    def _console(self, attempt: int, inst: Any) -> str:
        start = max(self.console.get(attempt, 0), 0)
        try:
            text, nxt = self.backend.console(inst, start)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - try again next poll
            return ""
        if STARTUP_DONE in text:
            text, nxt = text[:text.index(STARTUP_DONE)] + STARTUP_DONE + "\n", -1
        self.console[attempt] = nxt
        return text


class LineSplitter:
    """Bytes in, whole lines out: a prefix or a timestamp belongs at the start of a line, and a
    chunk can end in the middle of one."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines (with their newline) that ``chunk`` finished."""
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        return [ln + b"\n" for ln in lines]

    def flush(self) -> list[bytes]:
        """What is left of an unfinished last line, ended with a newline (the stream is over)."""
        rest, self._partial = self._partial, b""
        return [rest + b"\n"] if rest else []


def last_lines(store: Store, run_id: str, attempt: int, count: int = 10) -> list[str]:
    """The last ``count`` lines the job printed in ``attempt`` (from the store), for a failure's
    final message: what went wrong is usually in its last lines."""
    blob = store.read(RunRecord(store, run_id).name(RunRecord.log_name(attempt))) if attempt > 0 else None
    if blob is None or not blob.data:
        return []
    return blob.data.decode("utf-8", "replace").rstrip("\n").split("\n")[-count:]


def clock_text(t: float | None = None) -> str:
    """A line's arrival time as `ops logs --timestamps` shows it: UTC, to the millisecond."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
