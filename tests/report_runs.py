"""Recorded runs for the report tests and the report benchmark, written through the real record
API (``RunRecord`` transitions, manifests, claims, phase marks) with a controlled clock, as the
supervisor and the agent write them. Not a test module: ``test_report*`` and ``bench/report.py``
import it.

The price table is round (n1-standard-4 $1/h spot, $3/h on-demand; a T4 $0.50/h spot, $1/h
on-demand) so every figure can be worked out by hand: one attempt-hour of the run's shape costs
$1.50 spot and $4.00 on-demand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import entrypoint.record.run as record_mod  # where the record reads its clock
from entrypoint.record import Heartbeat, Role, RunRecord, RunSpec, State
from entrypoint.record.phases import (
    CHECKPOINT_RESTORED, DRIVER_READY, FIRST_STEP, IMAGE_READY, NOTICED, REPLACEMENT_REQUESTED, STARTUP_SCRIPT,
    VM_RUNNING,
)

SPOT_HOURLY = 1.5
ON_DEMAND_HOURLY = 4.0
PRICES = {
    "as_of": "2026-01-02", "currency": "USD", "source": "test",
    "regions": {"us-central1": {"machine": {"n1-standard-4": 1.0}, "gpu": {"nvidia-tesla-t4": 0.5},
                                "standard_machine": {"n1-standard-4": 3.0}, "standard_gpu": {"nvidia-tesla-t4": 1.0}},
                "europe-west4": {"machine": {"n1-standard-4": 1.0}, "gpu": {"nvidia-tesla-t4": 0.5},
                                 "standard_machine": {"n1-standard-4": 3.0}, "standard_gpu": {"nvidia-tesla-t4": 1.0}}},
}


def write_prices(folder: Path) -> str:
    path = folder / "prices.json"
    path.write_text(json.dumps(PRICES))
    return str(path)


class Clock:
    """The record's clock (``entrypoint.record.run.utcnow``), set by the test."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def at(self, t: float) -> "Clock":
        self.t = t
        return self


def install_clock(monkeypatch: Any, t: float = 0.0) -> Clock:
    c = Clock(t)
    monkeypatch.setattr(record_mod, "utcnow", c)
    return c


def new_run(store: Any, clock: Clock, run_id: str, at: float = 0.0,
            zones: tuple[str, ...] = ("us-central1-a", "europe-west4-b")) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:abc", command=["train"], backend="gce",
                           machine_type="n1-standard-4", gpu="nvidia-tesla-t4", zones=list(zones)))
    clock.at(at)
    rec.create_state("submit")
    return rec


def attempt(rec: RunRecord, clock: Clock, n: int, *, created: float, running: float, zone: str,
            first: tuple[float, int], last: tuple[float, int], end: float, ended: State | None,
            checkpoint_at: float | None, lost_at: float | None = None, total: int = 1000,
            resumed: bool = True, series: dict[str, list[Any]] | None = None) -> None:
    """Attempt ``n``: the supervisor notices the previous one lost (``lost_at``) and creates this
    one at ``created``; its VM boots and the agent starts the job at ``running``, reports steps
    from ``first`` to ``last`` ((time, step)) and the attempt ends at ``end`` as ``ended``
    (None: still running). Phase marks as the supervisor, startup script and agent write them."""
    sup, agent = "supervisor", f"agent:vm-{n}"
    if lost_at is not None:
        clock.at(lost_at + 4)
        rec.mark_phase(n, NOTICED, sup, lost_at=lost_at)
    clock.at(created)
    rec.begin_attempt(Role.SUPERVISOR, sup, reason="create")
    rec.mark_phase(n, REPLACEMENT_REQUESTED, sup)
    assert rec.claim_create(n, sup)
    boot = (running - created) / 6
    for i, phase in enumerate((VM_RUNNING, STARTUP_SCRIPT, DRIVER_READY, IMAGE_READY, CHECKPOINT_RESTORED), 1):
        rec.mark_phase(n, phase, sup if phase == VM_RUNNING else agent, at=created + i * boot)
    clock.at(running)
    manifest: dict[str, Any] = {"attempt": n, "zone": zone, "instance": f"vm-{n}", "started_at": running,
                                "resumed_from": ["runs/x/checkpoints/last.pt"] if resumed and n > 1 else []}
    rec.write_manifest(n, manifest)
    rec.job_started(Role.AGENT, agent, attempt=n, instance=f"vm-{n}", zone=zone)
    rec.mark_phase(n, FIRST_STEP, agent, at=first[0], step=first[1])
    clock.at(last[0])

    rec.write_heartbeat(Heartbeat(time=last[0], attempt=n, phase="running",
                                  progress={"step": last[1], "total": total}, progress_changed_at=last[0],
                                  sync={"newest_written_at": checkpoint_at}, rate=None))
    if ended is None:
        return
    clock.at(end)
    manifest.update(finished_at=end, exit_code=0 if ended == State.SUCCEEDED else 143,
                    first_progress={"step": first[1], "time": first[0]},
                    last_progress={"step": last[1], "time": last[0]}, checkpoint_at=checkpoint_at,
                    **({"series": series} if series is not None else {}))
    rec.write_manifest(n, manifest)
    role = Role.AGENT
    if ended == State.PREEMPTED:
        rec.preempted(role, agent, reason="SIGTERM (preemption notice)", expect_attempt=n, exit_code=143)
    elif ended == State.SUCCEEDED:
        rec.succeeded(role, agent, attempt=n)
    elif ended == State.FAILED:
        rec.failed(role, agent, reason="job exited 3: CUDA out of memory", expect_attempt=n, exit_code=3)


def preempted_twice(store: Any, clock: Clock, run_id: str = "twice", final: State | None = State.SUCCEEDED) -> RecordedRun:
    """Three attempts, one hour of steps each way (times in seconds from 0):

    1. us-central1-a, created 100, running 400, steps 0 at 460 .. 300 at 3400 (a step every
       9.8 s), checkpoint at 3000, preempted at 3600;
    2. europe-west4-b, noticed at 3604, created 3700, running 3940, steps 250 at 4000 .. 600 at
       7500 (0.1 step/s), checkpoint 7200, preempted 7800;
    3. us-central1-a, created 7900, running 8200, steps 560 at 8300 .. 1000 at 12700 (0.1/s),
       ends at 12800 as ``final`` (None: still running, the clock left at 12700).
    """
    rec = new_run(store, clock, run_id)
    attempt(rec, clock, 1, created=100, running=400, zone="us-central1-a", first=(460, 0), last=(3400, 300),
            end=3600, ended=State.PREEMPTED, checkpoint_at=3000)
    attempt(rec, clock, 2, created=3700, running=3940, zone="europe-west4-b", first=(4000, 250), last=(7500, 600),
            end=7800, ended=State.PREEMPTED, checkpoint_at=7200, lost_at=3600)
    attempt(rec, clock, 3, created=7900, running=8200, zone="us-central1-a", first=(8300, 560), last=(12700, 1000),
            end=12800, ended=final, checkpoint_at=12600, lost_at=7800)
    return RecordedRun(rec, clock)


class RecordedRun:
    def __init__(self, rec: RunRecord, clock: Clock) -> None:
        self.rec = rec
        self.clock = clock


def agent_series(running: float, first: tuple[float, int], last: tuple[float, int], points: int,
                 checkpoint_every: float) -> dict[str, list[Any]]:
    """A series as the agent keeps it (entrypoint/progress_series.py): ``points`` samples from the
    job's start to its last step, steps rising evenly from ``first``, a checkpoint every
    ``checkpoint_every`` seconds of the job."""
    out: dict[str, list[Any]] = {"t": [], "step": [], "checkpoint_at": []}
    for i in range(points):
        t = running + (last[0] - running) * (i + 1) / points
        rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
        out["t"].append(round(t, 1))
        out["step"].append(None if t < first[0] else round(first[1] + (t - first[0]) * rate))
        k = (t - running) // checkpoint_every
        out["checkpoint_at"].append(running + k * checkpoint_every if k >= 1 else None)
    return out


def many_attempts(store: Any, clock: Clock, run_id: str, n: int, series_points: int = 0,
                  on_attempt: Callable[[int], None] | None = None) -> RunRecord:
    """A run preempted ``n - 1`` times (the benchmark's 500 attempts), each attempt 1,000 s;
    with ``series_points``, each attempt's manifest carries the agent's series of that many."""
    rec = new_run(store, clock, run_id)
    step = 0
    for i in range(1, n + 1):
        base = 100 + (i - 1) * 1000.0
        zone = ("us-central1-a", "europe-west4-b")[i % 2]
        attempt(rec, clock, i, created=base, running=base + 120, zone=zone, first=(base + 150, step),
                last=(base + 900, step + 75), end=base + 950,
                ended=State.PREEMPTED if i < n else State.SUCCEEDED, checkpoint_at=base + 800,
                lost_at=base - 50 if i > 1 else None, total=75 * n,
                series=agent_series(base + 120, (base + 150, step), (base + 900, step + 75), series_points, 100)
                if series_points else None)
        step += 65
        if on_attempt:
            on_attempt(i)
    return rec
