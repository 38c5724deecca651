"""What the supervisor does with a run whose record it cannot read: say so once, mark it, and
keep its job running.

A torn object (``DamagedRecord``: a cut-off ``state.json``, a ``spec.json`` edited by hand) is not
a passing failure that the next pass fixes: it stays until someone repairs it. Retried and
reported on stderr every pass, it was noise no one acted on. Instead, the first pass that meets
it writes the run's mark, ``runs/ID/damaged.json`` (which object, why, since when, which of the
run's instances still run), journals one event, and says it on stderr; later passes only count
it in the pass heartbeat, until what they see changes. ``ops list`` and ``ops status`` show the
mark beside the error.

Why the live instance is kept, even after the run's stall window: a torn JSON says nothing
about the job. The instance may be training and checkpointing as it should, and the agent's
next heartbeat may even replace a torn heartbeat. Deleting it would throw away the work since
its last checkpoint, and with the record unreadable the supervisor could not start a proper
next attempt either (attempt number, budgets and settings are what cannot be read): the run
would be left with no job and no way on. So past the stall window the mark says ``overdue``,
and the supervisor journals and says it once more with the fix: repair the object, or stop the
run with ``runner ops delete``. Stop means stop, readable or not: a run whose ``.stop`` is there
has its instances deleted (with the grace period pinned in its spec when that can be read).
See docs/architecture.md#damaged-records.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from entrypoint.record import DamagedRecord, RunRecord, iso
from entrypoint.store import Store
from runner.launch.backends.base import Instance

if TYPE_CHECKING:
    from runner.launch.supervisor import Supervisor


def read_mark(store: Store, run_id: str) -> dict[str, Any] | None:
    """The run's ``damaged.json``, or None (absent, or itself unreadable: a mark is advice)."""
    return RunRecord(store, run_id).read_advice(RunRecord.DAMAGED)


class DamageWatch:
    """One supervisor's handling of runs with an unreadable record (see the module docstring).

    The run's stall window and grace period come from its spec when that can be read, from the
    supervisor's config when not; deletes go to the supervisor's reaper (never block a pass).
    """

    def __init__(self, store: Store, actor: str, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.actor = actor
        self.now = now
        self._said: dict[str, tuple[Any, ...]] = {}  # run_id -> what this process last said

    def seen(self, sup: "Supervisor", run_id: str, err: DamagedRecord,
             instances: list[Instance] | None) -> str:
        """Handle one pass's ``err`` for ``run_id`` (``instances``: from the pass's listing, or
        None to list them here); returns the line for the pass heartbeat. Never raises: the
        pass goes on with the other runs."""
        def settings(rec: RunRecord) -> tuple[float, float]:
            try:
                s = sup.attempt_settings(rec.read_spec())
            except Exception:  # noqa: BLE001 - the spec may be the damaged object: config's then
                s = sup.settings.legacy_attempts
            return s.stall_window, s.grace_period

        try:
            found = sup.backend.list(run_id) if instances is None else instances
            return self._seen(run_id, err, found, settings, sup.reaper.delete)
        except Exception as e:  # noqa: BLE001 - as the supervisor's own catch-all
            print(f"runner: supervising {run_id} failed this pass ({err}; then {type(e).__name__}: {e}); "
                  "will try again next pass", file=sys.stderr)
            return f"{run_id}: {err}"

    def _seen(self, run_id: str, err: DamagedRecord, instances: list[Instance],
              settings: Callable[[RunRecord], tuple[float, float]],
              delete: Callable[[Instance, float], None]) -> str:
        rec = RunRecord(self.store, run_id)
        live = sorted(i.name for i in instances if i.alive)
        stall_window, grace = settings(rec)
        if live and rec.stop_requested():
            for inst in instances:
                delete(inst, grace if inst.alive else 0)
            return f"{run_id}: {err}; .stop is there: deleting {', '.join(live)}"
        mark = read_mark(self.store, run_id)
        same = mark is not None and mark.get("object") == err.name and mark.get("why") == err.why
        since = float(mark.get("since") or self.now()) if same else self.now()  # type: ignore[union-attr]
        overdue = bool(live) and self.now() - since > stall_window
        key = (err.name, err.why, tuple(live), overdue)
        if self._said.get(run_id) == key:
            return f"{run_id}: {err} (marked)"
        self._said[run_id] = key
        doc = {"object": err.name, "why": err.why, "since": since, "since_iso": iso(since),
               "live_instances": live, "overdue": overdue, "stall_window": stall_window,
               "actor": self.actor, "schema_version": 1}
        if mark is not None and {k: mark.get(k) for k in doc if k != "actor"} == \
                {k: v for k, v in doc.items() if k != "actor"}:
            return f"{run_id}: {err} (marked)"  # another supervisor (or our last life) said it already
        said = self._say(rec, err, live, overdue, since)
        line = f"{run_id}: {said}"
        try:
            self.store.write(rec.name(RunRecord.DAMAGED), json.dumps(doc, indent=1, sort_keys=True).encode())
            rec.event(self.actor, None, None, said, attempt=None, damaged=err.name)
        except Exception as e:  # noqa: BLE001 - a mark is advice; the next change says it again
            self._said.pop(run_id, None)
            print(f"runner: {run_id}: could not mark the damaged record ({type(e).__name__}: {e})",
                  file=sys.stderr)
        return line

    def readable(self, run_id: str) -> None:
        """The run's record reads again (repaired): its mark, if this process made one, goes."""
        if self._said.pop(run_id, None) is not None:
            try:
                self.store.delete(RunRecord(self.store, run_id).name(RunRecord.DAMAGED))
            except Exception as e:  # noqa: BLE001 - a stale mark is shown only beside a new error
                print(f"runner: {run_id}: could not remove damaged.json ({type(e).__name__}: {e})",
                      file=sys.stderr)

    def _say(self, rec: RunRecord, err: DamagedRecord, live: list[str], overdue: bool, since: float) -> str:
        if overdue:
            line = (f"record unreadable for {self.now() - since:.0f}s, past the stall window, while "
                    f"{', '.join(live)} still runs: kept running (a torn object says nothing about the "
                    f"job); repair {err.name}, or stop the run with `runner ops delete --run-id {rec.run_id}`")
        else:
            line = (f"record unreadable ({err}): not supervised until it is repaired"
                    + (f"; {', '.join(live)} keeps running" if live else ""))
        print(f"runner: {rec.run_id}: {line}", file=sys.stderr)
        return line
