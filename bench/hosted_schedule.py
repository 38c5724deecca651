"""The hosted supervisor (one pass per Cloud Scheduler tick) against the Compute fake and the GCS
emulator (loopback only), in simulated schedule time with real passes.

1. Detection-to-restart: a preemption at a random moment of the minute; the schedule ticks every
   60 s and each tick starts a *fresh* supervisor (as ``supervise --once`` in a new execution),
   a few seconds of container start later. The restart time is the start of the first pass that
   sees the preempted VM plus that pass's measured wall time. Target: worst <= period + one pass.
   The loop mode (passes every poll_interval inside each execution) is simulated the same way.
2. Compute API calls per one-shot pass at 1, 10 and 100 runs (target: constant, one list).
3. One-shot pass wall time at 100 runs.
4. Detection with and without the preempted VM's own request (gcp/shutdown.sh POSTs the job's
   ``:run`` at once), modelled: real supervisor passes and the real notice wait
   (runner/launch/notice_wait.py) on the in-memory backend and a local store, in modelled time
   (tests/standins/memory_backend.py: STOPPING for GCE's 30 s notice, then gone). A preemption at
   a random moment of the minute; "seen" is when the first pass starts after it, "replaced" when
   the next attempt is begun. Without the request, only the scheduled executions pass (each
   ``STARTUP_S`` after its tick; one that lands in the notice waits it out too, as the hosted job
   now does); with it, an execution also starts ``VM_REQUEST_S`` + ``STARTUP_S`` after the
   preemption. Pass wall times are not added (item 3 measures them).
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
# The shutdown script's metadata reads, token and POST before Cloud Run has the request, assumed:
# loopback metadata calls and one HTTPS call (not measured here).
VM_REQUEST_S = 1.0


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


def vm_request_detection(asked: bool, waits: bool = True, trials: int = 40, seed: int = 1
                         ) -> tuple[list[float], list[float]]:
    """Modelled seconds from a preemption to (the first pass that sees it, the next attempt begun),
    per trial; ``asked``: the preempted VM asks for a pass at once; ``waits``: a pass that finds
    the notice waits it out (False: as before, it leaves it to the next tick). See the module
    docstring, 4."""
    import tempfile

    from entrypoint.store_local import LocalStore
    from runner.launch.notice_wait import DEFAULT_WAIT_S, wait_out_notices
    from tests.standins.supervised_runs import SupervisedRuns

    rng = random.Random(seed)
    seen, replaced = [], []
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as d:
            w = SupervisedRuns(LocalStore(d))
            rec, _sup = w.running()
            start = w.clock()
            preempt_at = start + PERIOD_S + rng.uniform(0, PERIOD_S)
            ticks = [start + k * PERIOD_S + STARTUP_S for k in range(1, 6)]
            starts = sorted([t for t in ticks if t >= preempt_at]
                            + ([preempt_at + VM_REQUEST_S + STARTUP_S] if asked else []))
            w.clock.advance(preempt_at - w.clock())
            w.backend.begin_preemption("runner-exp-1-a1")
            w.agent_preempted(rec)  # the agent's SIGTERM handler, in the notice
            seen.append(starts[0] - preempt_at)
            for t in starts:
                if w.clock() < t:
                    w.clock.advance(t - w.clock())
                sup = w.supervisor()  # a fresh execution
                states = sup.reconcile_all()
                if waits:
                    wait_out_notices(sup, states, DEFAULT_WAIT_S, sleep=w.clock.advance, clock=w.clock)
                if w.state(rec).attempt == 2:
                    replaced.append(w.clock() - preempt_at)
                    break
            w.settle()
    return seen, replaced


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
        (_, rep_before), (seen0, rep0), (seen1, rep1) = (
            vm_request_detection(False, waits=False), vm_request_detection(False), vm_request_detection(True))

        def stats(xs: list[float]) -> str:
            return f"mean {sum(xs) / len(xs):.1f} s, worst {max(xs):.1f} s"

        print(f"[once] preemption -> first pass (modelled, {len(seen0)} trials): scheduled only {stats(seen0)}; "
              f"with the VM's request {stats(seen1)}; ratio of means = {sum(seen0) / sum(seen1):.1f}")
        print(f"[once] preemption -> next attempt begun (modelled; GCE's 30 s notice is the floor): before "
              f"(a pass in the notice leaves it to the next tick) {stats(rep_before)}; scheduled passes that wait "
              f"the notice out {stats(rep0)}; plus the VM's request {stats(rep1)}; ratio before/with request "
              f"= {sum(rep_before) / sum(rep1):.2f}")
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
