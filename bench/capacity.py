"""The queue under a quota: 50 one-GPU runs, an 8-GPU quota, one zone stocked out (issue 22).

The supervisor's real passes run against the Compute stand-in and the GCS emulator (loopback). A
simulated agent stands in for each VM's job: once a VM exists its run is RUNNING; JOB_S seconds
after the VM was made its run SUCCEEDED and the VM deletes itself (through the API, as
startup.sh does). Printed, each with its target:

- inserts refused for quota (target 0: the queue never sends one the quota must refuse);
- GPU occupancy while runs are queued (target >= 94 %): GPUs held / quota, sampled;
- makespan against the ideal, ceil(50 / 8) waves of JOB_S (target within 5 %);
- Compute calls per pass with 42 runs queued and with 2 queued (target: the same: O(1)).
"""

from __future__ import annotations

import math
import os
import threading
import time

from entrypoint.record import Role, RunRecord, State
from runner.config import Config
from runner.launch.context import make_context
from runner.launch.submit import submit
from tests.standins.compute import run_compute_fake
from tests.standins.gcs_emulator import run_emulator

IMAGE = "us-docker.pkg.dev/p/r/img@sha256:" + "c" * 64
RUNS, QUOTA = 50, 8
JOB_S = float(os.environ.get("BENCH_CAPACITY_JOB_S", "20"))
POLL_S = 0.2
PASS_RPCS = {"instances.list", "instances.aggregatedList", "regions.get", "projects.get", "instances.insert",
             "instances.bulkInsert"}


class Agents:
    """Every VM's job: RUNNING once the VM exists, SUCCEEDED and self-deleted JOB_S after it was made."""

    def __init__(self, ctx, fake) -> None:
        self.ctx, self.fake = ctx, fake
        self.born: dict[str, float] = {}
        self.done: set[str] = set()
        self.samples: list[tuple[float, int, int]] = []  # (time, GPUs held, runs waiting)
        self.stop = threading.Event()

    def loop(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            # The stand-in's own view (no API call: the pass's Compute calls are counted alone).
            vms = [v for v in self.fake.instances() if v.status in ("PROVISIONING", "STAGING", "RUNNING")]
            waiting = sum(1 for r in range(RUNS) if f"c-{r:02d}" not in self.born)
            self.samples.append((now, len(vms), waiting))
            for vm in vms:
                run_id, attempt = vm.name.removeprefix("runner-").rsplit("-a", 1)
                rec = RunRecord(self.ctx.store, run_id)
                zone = vm.zone.rsplit("/", 1)[-1]
                if vm.name not in self.born:
                    self.born[run_id] = self.born[vm.name] = now
                    rec.job_started(Role.AGENT, "agent", attempt=int(attempt), instance=vm.name, zone=zone)
                elif now - self.born[vm.name] >= JOB_S and vm.name not in self.done:
                    self.done.add(vm.name)
                    rec.succeeded(Role.AGENT, "agent", attempt=int(attempt))
                    # startup.sh's self-delete, through the API, not waited on
                    threading.Thread(target=self._delete, args=(zone, vm.name), daemon=True).start()
            self.stop.wait(0.05)

    def _delete(self, zone: str, name: str) -> None:
        self.ctx.backend.c.instances.delete(project=self.fake.project, zone=zone, instance=name)


def main() -> None:
    with run_emulator("bench") as host, run_compute_fake("bench-project") as fake:
        os.environ["STORAGE_EMULATOR_HOST"] = host if host.startswith("http") else f"http://{host}"
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "local")
        fake.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", QUOTA)
        fake.set_quota("us-central1", "PREEMPTIBLE_CPUS", 4 * QUOTA)
        fake.set_project_quota("GPUS_ALL_REGIONS", 64)
        fake.stockout_zones.add("us-central1-a")
        cfg = Config(backend="gce", project=fake.project, zones=["us-central1-a", "us-central1-b"],
                     compute_endpoint=fake.endpoint, store="gs://bench/capacity", machine_type="n1-standard-4",
                     gpu="nvidia-tesla-t4", poll_interval=POLL_S, stall_polls=100000, gpu_timeout=3600)
        ctx = make_context(cfg)
        for i in range(RUNS):
            submit(ctx, f"c-{i:02d}", ["true"], image=IMAGE, restart=False)
        agents = Agents(ctx, fake)
        sup = ctx.supervisor()
        fake.reset_requests()
        t = threading.Thread(target=agents.loop, daemon=True)
        start = time.time()
        t.start()
        per_pass: list[tuple[int, int]] = []
        pass_s: list[float] = []  # (runs queued before the pass, supervisor calls in it)
        try:
            while True:
                queued = sum(1 for r in range(RUNS) if f"c-{r:02d}" not in agents.born)
                before = len(fake.requests)
                t_pass = time.time()
                states = sup.reconcile_all()
                pass_s.append(time.time() - t_pass)
                made = fake.requests[before:]
                if not any(r.rpc in ("instances.insert", "instances.bulkInsert") for r in made):
                    per_pass.append((queued, sum(1 for r in made if r.rpc in PASS_RPCS)))
                if states and all(s.state.terminal for s in states.values()) and len(states) == RUNS:
                    final = {r: s.state for r, s in states.items()}
                    break
                time.sleep(POLL_S)
        finally:
            agents.stop.set()
            t.join()
            sup.drain()
        makespan = time.time() - start
        ops = fake.operations()
    inserts = [r for r in fake.requests if r.rpc == "instances.insert"]
    refused_quota = sum(1 for op in ops if op.operation_type == "insert" and op.error
                        and any(e.code == "QUOTA_EXCEEDED" for e in op.error.errors))
    busy = [held / QUOTA for _, held, waiting in agents.samples if waiting > 0]
    occupancy = sum(busy) / len(busy) if busy else 0.0
    ideal = math.ceil(RUNS / QUOTA) * JOB_S
    many = [c for q, c in per_pass if q >= RUNS - QUOTA - 2]
    few = [c for q, c in per_pass if 0 < q <= 2]
    print(f"passes {len(pass_s)}, mean {sum(pass_s) / len(pass_s):.2f} s, longest {max(pass_s):.2f} s")
    print(f"inserts sent {len(inserts)} for {RUNS} runs (the stocked-out zone is skipped once the store saw it "
          f"or capacity advice says so); refused for quota "
          f"{refused_quota} (target 0)")
    print(f"GPU occupancy while runs were queued: {occupancy:.1%} (target >= 94%)")
    print(f"makespan {makespan:.1f} s; ideal {ideal:.0f} s ({math.ceil(RUNS / QUOTA)} waves of {JOB_S:g} s); "
          f"ratio ideal/actual {ideal / makespan:.3f} (target >= 0.95)")
    if many and few:
        print(f"Compute calls per pass that created nothing: {max(many)} with >= {RUNS - QUOTA - 2} runs queued, {max(few)} with <= 2 "
              f"queued; ratio {max(many) / max(few):.2f} (target 1.00: O(1) in the queued runs)")
    print("states at the end: " + ", ".join(f"{s}: {n}" for s, n in sorted(_count(final.values()).items())))


def _count(states) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states:
        out[s.value] = out.get(s.value, 0) + 1
    return out
