"""The hosted supervisor (one pass per Cloud Scheduler tick) against the Compute fake and the GCS
emulator (loopback only), in simulated schedule time with real passes.

1. Detection-to-restart: a preemption at a random moment of the minute; the schedule ticks every
   60 s and each tick starts a *fresh* supervisor (as ``supervise --once`` in a new execution),
   a few seconds of container start later. The restart time is the start of the first pass that
   sees the preempted VM plus that pass's measured wall time. Target: worst <= period + one pass.
   The loop mode (passes every poll_interval inside each execution) is simulated the same way.
2. Compute API calls per one-shot pass at 1, 10 and 100 runs (target: constant, one list).
3. One-shot pass wall time at 100 runs.
Plus the daily cost of each mode from runner/data/cloudrun_prices.json.
"""

from __future__ import annotations

import os
import random
import time

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.cloud.hosted import LOOP_SECONDS, PERIOD_S, cloud_run_prices, daily_cost
from runner.launch.submit import submit
from tests.standins.compute import run_compute_fake
from tests.standins.gcs_emulator import run_emulator

IMAGE = "us-docker.pkg.dev/p/r/img@sha256:" + "c" * 64
STARTUP_S = 5.0  # a Cloud Run job execution's container start, assumed (not measured here)


def _context(fake, prefix: str, poll: float = 3.0):
    cfg = Config(backend="gce", project=fake.project, zones=["us-central1-a"], compute_endpoint=fake.endpoint,
                 store=f"gs://bench/{prefix}", no_gpu=True, poll_interval=poll, stall_polls=100000)
    return make_context(cfg)


def _running(ctx, run_id: str) -> None:
    rec = RunRecord(ctx.store, run_id)
    st, _ = rec.read_state()
    rec.transition(State.RUNNING, "agent", expect_attempt=st.attempt, zone="us-central1-a")


def _pass_times(mode: str, poll: float, horizon: float) -> list[float]:
    """Simulated start times of passes: each tick's execution starts STARTUP_S after the tick."""
    out: list[float] = []
    tick = 0.0
    while tick < horizon:
        t = tick + STARTUP_S
        out.append(t)
        if mode == "loop":
            while t + poll <= tick + LOOP_SECONDS:
                t += poll
                out.append(t)
        tick += PERIOD_S
    return out


def detection_to_restart(fake, mode: str, trials: int = 12, poll: float = 3.0, seed: int = 1) -> tuple[list[float], float]:
    """Simulated seconds from preemption to the restart being issued, per trial; and the worst pass."""
    rng = random.Random(seed)
    out, worst_pass = [], 0.0
    for k in range(trials):
        ctx = _context(fake, f"det-{mode}-{k}", poll)
        submit(ctx, "r", ["true"], image=IMAGE, restart=False)
        ctx.supervisor().reconcile_all()
        _running(ctx, "r")
        preempt_at = PERIOD_S + rng.uniform(0, PERIOD_S)
        passes = [t for t in _pass_times(mode, poll, 4 * PERIOD_S) if t >= preempt_at]
        fake.preempt("us-central1-a", "runner-r-a1")
        for t in passes:
            sup = ctx.supervisor()  # a fresh process per execution (in loop mode, per pass: the same)
            sup.now = lambda t=t: t
            t0 = time.perf_counter()
            sup.reconcile_all()
            took = time.perf_counter() - t0
            worst_pass = max(worst_pass, took)
            if RunRecord(ctx.store, "r").read_state()[0].attempt == 2:
                out.append(t + took - preempt_at)
                break
        for inst in ctx.backend.list():
            ctx.backend.delete(inst)
    return out, worst_pass


def calls_and_time(fake, sizes=(1, 10, 100)) -> tuple[dict[int, int], float]:
    calls, wall = {}, 0.0
    for n in sizes:
        ctx = _context(fake, f"calls{n}")
        for i in range(n):
            submit(ctx, f"r{i}", ["true"], image=IMAGE, restart=False)
        ctx.supervisor().reconcile_all()
        for i in range(n):
            _running(ctx, f"r{i}")
        fake.reset_requests()
        sup = ctx.supervisor()
        t0 = time.perf_counter()
        sup.reconcile_all()
        wall = time.perf_counter() - t0
        calls[n] = len(fake.requests)
        for inst in ctx.backend.list():
            ctx.backend.delete(inst)
    return calls, wall


def main() -> None:
    with run_emulator("bench") as host, run_compute_fake("bench-project") as fake:
        os.environ["STORAGE_EMULATOR_HOST"] = host if host.startswith("http") else f"http://{host}"
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "local")
        for mode in ("once", "loop"):
            lat, worst_pass = detection_to_restart(fake, mode)
            worst = max(lat)
            bound = PERIOD_S + STARTUP_S + worst_pass if mode == "once" else PERIOD_S - LOOP_SECONDS + STARTUP_S + 3.0 + worst_pass
            print(f"[{mode}] preemption -> restart (simulated schedule, real passes): mean {sum(lat) / len(lat):.1f} s, "
                  f"worst {worst:.1f} s over {len(lat)} trials; bound (period/gap + start {STARTUP_S:g} s + one pass "
                  f"{worst_pass:.2f} s) {bound:.1f} s; ratio bound/worst = {bound / worst:.2f} (>= 1 meets it)")
        calls, wall = calls_and_time(fake)
        print("compute API calls per one-shot pass: " + ", ".join(f"{n} runs -> {c}" for n, c in calls.items())
              + f"; ratio 100 runs / 1 run = {calls[100] / calls[1]:.2f} (target 1.00: constant)")
        print(f"one-shot pass wall time at 100 runs: {wall:.2f} s; ratio to the 60 s period = {wall / PERIOD_S:.3f}")
        p = cloud_run_prices()
        once, loop = daily_cost("once", wall, STARTUP_S), daily_cost("loop", wall, STARTUP_S)
        print(f"daily cost (Cloud Run jobs, Tier 1, prices as of {p['as_of']}, before the free tier): "
              f"once ${once:.3f}/day, loop ${loop:.3f}/day; ratio loop/once = {loop / once:.1f}")


if __name__ == "__main__":
    main()
