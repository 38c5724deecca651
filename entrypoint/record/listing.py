"""Every run's state and heartbeat from listings: ``ops list`` over 1,000 runs in two requests.

``RunRecord`` writes both documents with ``Store.write_listed``, so a GCS object listing
carries their content (custom metadata, in the same upload as the bytes: one generation, never
two versions). One ``matchGlob`` listing of ``runs/*/{state,heartbeat}.json`` then returns them
for a thousand objects a page, where reading them costs a round trip each (2,000 for 1,000
runs). An object the listing cannot carry (written by an older agent, or too large) is read
as before: a store written by older versions is slower to list, never listed wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from entrypoint.record.damaged import parse
from entrypoint.record.documents import Heartbeat, RunState
from entrypoint.record.paths import HEARTBEAT_OF_RANK0, RUNS, RunPaths, run_prefix
from entrypoint.record.view import RunView
from entrypoint.store import Blob, Store

_PATTERN = f"{RUNS}*/{{{RunPaths.STATE.removesuffix('.json')},{HEARTBEAT_OF_RANK0.removesuffix('.json')}}}.json"


@dataclass
class ListedRun:
    """What the listing said of one run: each document's content, or None where the listing
    could not carry it and it must be read; ``has_heartbeat`` False: the run has none yet."""

    run_id: str
    state: Blob | None
    heartbeat: Blob | None
    has_heartbeat: bool

    @property
    def complete(self) -> bool:
        """Whether the listing alone gives the run's view (nothing to read)."""
        return self.state is not None and (self.heartbeat is not None or not self.has_heartbeat)

    def current_state(self) -> tuple[RunState, int] | None:
        """(state, generation) as ``RunRecord.read_state`` gives it, or None where the listing
        could not carry the state (read it). ``DamagedRecord`` if it cannot be parsed."""
        if self.state is None:
            return None
        return parse(run_prefix(self.run_id) + RunPaths.STATE, self.state.data, RunState.from_dict), \
            self.state.generation

    def view(self) -> RunView:
        """The run's view with its heartbeat, as ``RunRecord.view()`` reads it; only when
        ``complete``. ``DamagedRecord`` if a document cannot be parsed, as a read would raise."""
        assert self.state is not None
        prefix = run_prefix(self.run_id)
        st = parse(prefix + RunPaths.STATE, self.state.data, RunState.from_dict)
        hb = (parse(prefix + HEARTBEAT_OF_RANK0, self.heartbeat.data, Heartbeat.from_dict)
              if self.heartbeat is not None else None)
        return RunView(run_id=self.run_id, state=st, generation=self.state.generation, heartbeat=hb)


def listed_runs(store: Store) -> dict[str, ListedRun]:
    """Every run that has a state.json, by run id (a run being submitted, with only its spec,
    has none yet: ``RunRecord.view`` would say None of it too)."""
    found = store.read_listed(RUNS, _PATTERN)
    out: dict[str, ListedRun] = {}
    for name in sorted(found):
        run_id, _, leaf = name[len(RUNS):].partition("/")
        if leaf == RunPaths.STATE:
            out[run_id] = ListedRun(run_id, found[name], None, False)
    for name, blob in found.items():
        run_id, _, leaf = name[len(RUNS):].partition("/")
        if leaf == HEARTBEAT_OF_RANK0 and run_id in out:
            out[run_id].heartbeat, out[run_id].has_heartbeat = blob, True
    return out

