"""The create backoff of one run, kept in the run record (``runs/ID/supervisor/backoff.json``).

Why in the store and not in the supervisor's memory: the hosted supervisor is one process per
pass (``supervise --once`` every minute), and several supervisors may share a store. Kept in
memory, a fresh process would forget that every zone just refused and hammer the API each pass;
kept here, one-shot passes back off exactly like a long-running loop. Writes are last-writer-wins:
the value is advice on when to try next, not a lock (creation itself is guarded by the claim).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from entrypoint.store import Store

MAX_DELAY = 300.0


def _name(run_id: str) -> str:
    return f"runs/{run_id}/supervisor/backoff.json"


@dataclass
class CreateBackoff:
    """``until``: no create is tried before this time; ``delay``: the last wait (doubles)."""

    store: Store
    run_id: str
    until: float = 0.0
    delay: float = 0.0
    stored: bool = False

    @classmethod
    def read(cls, store: Store, run_id: str) -> "CreateBackoff":
        blob = store.read(_name(run_id))
        if blob is None:
            return cls(store, run_id)
        try:
            raw = json.loads(blob.data)
            return cls(store, run_id, float(raw["until"]), float(raw["delay"]), True)
        except (ValueError, KeyError, TypeError):
            return cls(store, run_id, stored=True)  # damaged: no backoff, and clear() removes it

    def blocks(self, now: float) -> bool:
        return now < self.until

    def push(self, now: float, poll_interval: float) -> float:
        """Back off once more (double the delay, at least one poll, at most 5 min); returns it."""
        self.delay = min(MAX_DELAY, max(poll_interval, self.delay * 2))
        self.until = now + self.delay
        self.store.write(_name(self.run_id), json.dumps({"until": self.until, "delay": self.delay}).encode())
        self.stored = True
        return self.delay

    def clear(self) -> None:
        """A create succeeded: the next failure starts from one poll again."""
        if self.stored:
            self.store.delete(_name(self.run_id))
            self.stored = False
