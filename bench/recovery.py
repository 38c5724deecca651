"""``python -m bench recovery``: what a preemption costs, phase by phase, cold against warm.

The whole GCE path, not a formula: the Compute fake (insert -> RUNNING in GCE's time), a
simulated COS VM behind every instance running the real ``gcp/startup.sh`` (guest boot,
``cos-extensions install gpu``, ``docker pull`` by missing layer bytes: the durations in
tests/standins/cos_sim/timings.py, each with its source), the real agent in a real container,
the GCS emulator, a real registry on loopback, and the supervisor's own passes.

Scenario (the issue's): g2-standard-8 + 1 L4, an 8 GB image (the test image's layers scaled up),
attempt 1 in us-central1-a, preempted; zone a then has no capacity, so the replacement goes to
us-central1-b (a restart in place cannot help). ``cold`` boots the public COS image; ``warm``
boots the warm image ``runner images bake`` made for the pinned digest.

Time runs at ``SCALE`` (a 45 s driver install waits 45 x SCALE s). What the stand-ins wait out
is logged (cos_sim ``ledger``, the fake's boot) and counted at its modelled length; everything
else (containers starting, the agent, the job's first step, the supervisor's pass) is counted
as it really took here, unscaled: modelled = measured - waited + modelled waits.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from entrypoint.record import RunRecord, State
from entrypoint.record.timeline import SEGMENT_NAMES, build_recovery
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.submit import submit
from runner.naming import rank_of

SCALE = float(os.environ.get("BENCH_RECOVERY_SCALE", "0.05"))
SAMPLES = int(os.environ.get("BENCH_RECOVERY_SAMPLES", "5"))
IMAGE_GB = 8.0
CHECKPOINT_GB = 2.0
ZONES = ["us-central1-a", "us-central1-b"]
POLL = 1.0  # the supervisor's loop (`runner supervise`, or the hosted pass the VM asks for)
# Which stand-in wait belongs to which segment of the recovery line.
WAIT_SEGMENT = {"insert": "create", "guest_boot": "boot", "gpu_install": "driver", "pull": "pull"}
CHECKPOINT_REAL_MB = 64  # the bytes really stored; the emulator's read waits stand for CHECKPOINT_GB


def _push_image(registry: Any, image: str) -> tuple[str, int]:
    """Push the test image to the loopback registry; its pinned ref and compressed size."""
    import json
    import urllib.request

    from tests.standins.registry import MANIFEST_TYPES

    tag = f"{registry.host}/bench/recovery:b{int(time.time())}"
    subprocess.run(["docker", "tag", image, tag], check=True)
    out = subprocess.run(["docker", "push", tag], check=True, capture_output=True, text=True).stdout
    digest = [w for w in out.split() if w.startswith("sha256:")][-1]
    req = urllib.request.Request(f"http://{registry.host}/v2/bench/recovery/manifests/{digest}",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=10) as r:
        size = sum(int(layer["size"]) for layer in json.load(r)["layers"])
    return f"{registry.host}/bench/recovery@{digest}", size


class World:
    """Every stand-in at once, slowed to GCE's durations."""

    def __init__(self, stack: ExitStack, image: str) -> None:
        from tests.standins.cloud_sim import CosGuest
        from tests.standins.compute import run_compute_fake
        from tests.standins.cos_sim.timings import SimClock
        from tests.standins.gcs_emulator import emulator
        from tests.standins.registry import start_registry

        import docker

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-recovery-")))
        self.registry, proc = start_registry(work / "registry")
        stack.callback(proc.terminate)
        self.ref, real_bytes = _push_image(self.registry, image)
        # GCS reads at 200 MiB/s per connection (tests/standins/gcs_emulator.py), slowed so that
        # the checkpoint's real bytes take the time of CHECKPOINT_GB at SCALE.
        hostport, self.storage = stack.enter_context(emulator(
            "bench", read_mibps_per_stream=200,
            time_scale=SCALE * CHECKPOINT_GB * 1e9 / (CHECKPOINT_REAL_MB << 20)))
        self.gcs = f"http://{hostport}"
        os.environ["STORAGE_EMULATOR_HOST"] = self.gcs
        self.fake = stack.enter_context(run_compute_fake("bench-project"))
        self.clock = SimClock(time_scale=SCALE, image_factor=IMAGE_GB * 1e9 / real_bytes)
        self.fake.time_scale = SCALE
        # Room for a sample's VM still shutting down beside the next one (a new project has 1 L4).
        self.fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_L4_GPUS", 4)
        self.fake.boot_seconds = self.fake.operation_seconds = self.clock.real(self.clock.timings.insert_to_running_s)
        self.guest = CosGuest(work / "vms", gcs_api=self.gcs, compute_api=self.fake.endpoint,
                              docker_client=docker.from_env(), clock=self.clock, halt_seconds=0.1)
        self.guest.follow(self.fake)
        stack.callback(self.guest.close)

    def config(self, prefix: str, **extra: Any) -> Config:
        return Config(backend="gce", project=self.fake.project, zones=ZONES, compute_endpoint=self.fake.endpoint,
                      store=f"gs://bench/{prefix}", machine_type="g2-standard-8", poll_interval=POLL,
                      stall_polls=100000, heartbeat_interval=0.5, sync_interval=0.5, grace_period=8,
                      gpu_timeout=600, termination_action="DELETE", **extra)


def _wait(what: str, ok: Callable[[], Any], timeout: float = 600) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = ok()
        if got:
            return got
        time.sleep(0.1)
    raise TimeoutError(f"bench recovery: {what} within {timeout:.0f} s")


def one_recovery(world: World, scenario: str, n: int, nodes: int = 1) -> dict[str, float | None]:
    """Run one job, preempt it, wait for its first step after the resume; modelled seconds per
    segment of the recovery line (``entrypoint.record.timeline``).

    ``nodes`` > 1: a gang; its last node is the one preempted, and the recovery lasts until rank 0's
    first step of the next generation (the marks are rank 0's). Its nodes boot side by side, so
    only rank 0's VM's waits are corrected to their modelled length."""
    ctx = make_context(world.config(f"{scenario}-{n}-{int(time.time())}", nodes=nodes))
    run_id = f"rec-{scenario.replace(' ', '-')}-{n}"
    world.fake.stockout_zones.clear()
    submit(ctx, run_id, ["python3", "-m", "examples.trainer", "--steps", "100000", "--checkpoint-every", "5",
                         "--step-time", "0.1"], image=world.ref, restart=False)
    sup = ctx.supervisor()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                sup.reconcile_all()
            except Exception as e:  # noqa: BLE001 - a pass that fails is retried, as in `supervise`
                print(f"  (pass failed: {e})")
            stop.wait(POLL)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    rec = RunRecord(ctx.store, run_id)
    try:
        _wait("attempt 1's first step", lambda: "first_step" in rec.phases(1))
        # The checkpoint a 2 GB model leaves: the trainer's own, plus the weights' bytes.
        ctx.store.write(rec.name(RunRecord.CHECKPOINTS) + "weights.bin", os.urandom(CHECKPOINT_REAL_MB << 20))
        listed = ctx.backend.list(run_id)
        assert len(listed) == nodes, listed
        inst = max(listed, key=lambda i: i.rank)  # a gang loses its last node
        world.fake.stockout_zones.add(inst.zone)  # no capacity left where it ran
        before = {k: len(vm.cos.waits()) for k, vm in world.guest.vms.items()}
        world.fake.preempt(inst.zone, inst.name)
        _wait("attempt 2's first step", lambda: "first_step" in rec.phases(2))
        marks = rec.phases(2)
    finally:
        stop.set()
        t.join(timeout=30)
        rec.request_stop("bench", reason="benchmark sample done")
        sup.reconcile_all()
        for i in ctx.backend.list(run_id):
            ctx.backend.delete(i)
        _wait(f"{run_id}'s VMs to be gone", lambda: not ctx.backend.list(run_id), timeout=120)
        world.fake.stockout_zones.clear()
    # (A gang's other nodes wait the same waits at the same time: rank 0's VM stands for them.)
    waits = [w for k, vm in world.guest.vms.items() for w in vm.cos.waits()[before.get(k, 0):]
             if nodes == 1 or rank_of(k[-1]) in (None, 0)]
    waits.append(("insert", world.clock.timings.insert_to_running_s, world.fake.boot_seconds))
    r = build_recovery(2, marks)
    out: dict[str, Any] = dict(r.segments)
    for kind, modelled, real in waits:
        seg = WAIT_SEGMENT.get(kind)
        if seg and out.get(seg) is not None:
            out[seg] = max(0.0, out[seg] + modelled - real)
    if out.get("restore") is not None and "checkpoint_restored" in marks:
        # The emulator's read waits during this restore (parallel ones overlap: their union),
        # counted at their modelled length.
        end = marks["checkpoint_restored"]["time"]
        start = end - float(marks["checkpoint_restored"]["detail"].get("seconds") or 0)
        slept = _union([(max(a, start), min(b, end)) for a, b in world.storage.slept if b > start and a < end])
        out["restore"] = max(0.0, out["restore"] + slept / SCALE - slept)
    out["total"] = sum(v for v in out.values() if v is not None)
    out["driver path"] = marks.get("driver_ready", {}).get("detail", {}).get("path")  # type: ignore[assignment]
    out["image path"] = marks.get("image_ready", {}).get("detail", {}).get("path")  # type: ignore[assignment]
    return out


def _union(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> None:
    image = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    results: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        world = World(stack, image)
        # (name, nodes, what to do first): the warm image serves the gang too (same key).
        scenarios = [("cold", 1, lambda: None), ("gang cold", 2, lambda: None),
                     ("warm", 1, lambda: bake(world)), ("gang warm", 2, lambda: None)]
        for name, nodes, prepare in scenarios:
            prepare()
            results[name] = []
            for i in range(SAMPLES):
                results[name].append(one_recovery(world, name, i, nodes))
                row = results[name][-1]
                print(f"  {name} {i}: {row['total']:.1f} s modelled "
                      f"({', '.join(f'{k} {v:.1f}' for k, v in row.items() if isinstance(v, float) and k != 'total')})",
                      flush=True)
    print(f"recovery: g2-standard-8 + L4, {IMAGE_GB:.0f} GB image, capacity only in the second zone; "
          f"{SAMPLES} sample(s) each, time scale {SCALE} (modelled seconds shown)")
    cols = [*SEGMENT_NAMES, "total"]
    print(f"{'':16}" + "".join(f"{c:>12}" for c in cols))
    for name, rows in results.items():
        for label, q in (("p50", 0.5), ("p95", 0.95)):
            vals = [_pct([r[c] for r in rows if r.get(c) is not None] or [float("nan")], q) for c in cols]
            print(f"{name + ' ' + label:16}" + "".join(f"{v:12.1f}" for v in vals))
        print(f"{'':16}paths: driver {sorted({r['driver path'] for r in rows})}, image {sorted({r['image path'] for r in rows})}")
    cold = statistics.median(r["total"] for r in results["cold"])
    warm = statistics.median(r["total"] for r in results["warm"])
    print(f"recovery: cold/warm p50 = {cold:.0f} s / {warm:.0f} s = {cold / warm:.1f}x "
          f"(target: warm p50 <= 90 s, p95 <= 150 s)")
    for kind, single in (("cold", cold), ("warm", warm)):
        gang = statistics.median(r["total"] for r in results[f"gang {kind}"])
        print(f"recovery: 2-node gang/single, {kind} p50 = {gang:.0f} s / {single:.0f} s = {gang / single:.2f}x")


def bake(world: World) -> None:
    """The warm scenario's image: what ``runner images bake`` makes for the pinned digest."""
    from runner.build.warm_image import bake as bake_image

    t0 = time.monotonic()
    made = bake_image(make_context(world.config("bake")), world.ref)
    print(f"  baked {made.name} in {time.monotonic() - t0:.0f} s here ({made.disk_size_gb} GB disk)")
