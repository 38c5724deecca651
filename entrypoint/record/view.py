"""``RunView``: one typed read of a run, built by ``RunRecord.view`` for every reader.

``ops status/list/watch/events/cost``, the notifier and ``supervise --follow`` used to read the
journal and state each its own way; they now ask for the parts they need, and each part says
what it costs, so request counts stay visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from entrypoint.record.damaged import DamagedRecord
from entrypoint.record.documents import Heartbeat, RunSpec, RunState

ALL_EVENTS = -1  # ``RunRecord.view(events=ALL_EVENTS)``: the whole journal


@dataclass
class RunView:
    run_id: str
    state: RunState
    generation: int  # pass back to a named transition as ``expected=(state, generation)``
    heartbeat: Heartbeat | None = None
    spec: RunSpec | None = None
    stop_requested: bool | None = None  # None: not asked for
    startup: dict[str, Any] | None = None  # the current attempt's startup.json, if asked and there
    # The current attempt's phase marks (``RunRecord.phases``), if asked: None if not asked.
    phases: dict[str, dict[str, Any]] | None = None
    # (object name, event document), oldest first.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Journal entries asked for but unreadable: left out of ``events``, named here for the reader to say.
    damaged: list[DamagedRecord] = field(default_factory=list)

    @property
    def expected(self) -> tuple[RunState, int]:
        return self.state, self.generation

    @property
    def last_event(self) -> dict[str, Any] | None:
        return self.events[-1][1] if self.events else None

    @property
    def attempts(self) -> list[int]:
        """Every attempt the run has had, oldest first."""
        return list(range(1, self.state.attempt + 1))

    @property
    def current_heartbeat(self) -> Heartbeat | None:
        """The heartbeat if it is the current attempt's (the file outlives its attempt)."""
        hb = self.heartbeat
        return hb if hb is not None and hb.attempt == self.state.attempt else None
