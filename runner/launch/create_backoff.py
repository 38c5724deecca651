"""The create backoff of one run, kept in the run record (``runs/ID/supervisor/backoff.json``).

Why in the store and not in the supervisor's memory: the hosted supervisor is one process per
pass (``supervise --once`` every minute), and several supervisors may share a store. Kept in
memory, a fresh process would forget that every zone just refused and hammer the API each pass;
kept here, one-shot passes back off exactly like a long-running loop. Writes are last-writer-wins:
the value is advice on when to try next, not a lock (creation itself is guarded by the claim).

The advice is for retrying the create of one *attempt*: a new attempt (a ``submit --restart`` the
user asked for, a restart after a preemption) starts afresh, as it did when the backoff lived in
a process's memory, instead of silently waiting out an old attempt's delay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from entrypoint.record import RunPaths, run_prefix
from entrypoint.store import Store

MAX_DELAY = 300.0


def _name(run_id: str) -> str:
    return run_prefix(run_id) + RunPaths.SUPERVISOR_BACKOFF


@dataclass
class CreateBackoff:
    """``until``: no create of ``attempt`` is tried before this time; ``delay``: the last wait (doubles);
    ``since``: when the first create of ``attempt`` that made nothing failed (what a
    ``spot-then-standard`` run measures its ``fallback_after`` from: runner.launch.backends.gce_provisioning)."""

    store: Store
    run_id: str
    until: float = 0.0
    delay: float = 0.0
    stored: bool = False
    attempt: int | None = None
    since: float | None = None

    @classmethod
    def read(cls, store: Store, run_id: str) -> "CreateBackoff":
        blob = store.read(_name(run_id))
        if blob is None:
            return cls(store, run_id)
        try:
            raw = json.loads(blob.data)
            attempt, since = raw.get("attempt"), raw.get("since")
            return cls(store, run_id, float(raw["until"]), float(raw["delay"]), True,
                       None if attempt is None else int(attempt), None if since is None else float(since))
        except (ValueError, KeyError, TypeError):
            return cls(store, run_id, stored=True)  # damaged: no backoff, and clear() removes it

    def blocks(self, now: float, attempt: int) -> bool:
        return now < self.until and self.attempt in (attempt, None)

    def push(self, now: float, poll_interval: float, attempt: int) -> float:
        """Back off once more (double the delay, at least one poll, at most 5 min); returns it.
        A failure of another attempt than the stored one starts again from one poll."""
        same = self.attempt == attempt
        previous = self.delay if same else 0.0
        self.delay = min(MAX_DELAY, max(poll_interval, previous * 2))
        # A backoff written before ``since`` existed counts from now: late, never early.
        self.since = self.since if same and self.since is not None else now
        self.until, self.attempt = now + self.delay, attempt
        self.store.write(_name(self.run_id), json.dumps({"until": self.until, "delay": self.delay,
                                                         "attempt": attempt, "since": self.since}).encode())
        self.stored = True
        return self.delay

    def failing_since(self, attempt: int) -> float | None:
        """When ``attempt``'s creates started failing (None: its last create did not fail)."""
        return self.since if self.stored and self.attempt == attempt else None

    def clear(self) -> None:
        """A create succeeded: the next failure starts from one poll again."""
        if self.stored:
            self.store.delete(_name(self.run_id))
            self.stored = False
