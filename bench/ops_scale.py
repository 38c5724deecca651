"""``ops list`` / ``ops status`` with 200 runs in the store.

1. Local store: wall time of ``runner ops list`` and ``runner ops status`` as a user runs them
   (a fresh process each time, so interpreter start and imports count). Target < 1 s.
2. GCS (the emulator on loopback): requests per ``list_runs`` for 20 and 200 runs, counted at
   the HTTP session of the product's own storage client. Target: list calls constant (1).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from urllib.parse import urlparse

from entrypoint.record import Heartbeat, RunRecord, RunSpec, State
from entrypoint.store import Store
from entrypoint.stores import open_store

N_RUNS = 200
TARGET_S = 1.0


def populate(store: Store, n: int) -> None:
    """``n`` runs as a supervisor and agents would leave them: spec, state, events, heartbeat."""
    for i in range(n):
        rec = RunRecord(store, f"run-{i:03d}")
        rec.write_spec(RunSpec(run_id=rec.run_id, image="img@sha256:" + "a" * 64, command=["true"], backend="local"))
        rec.create_state("bench")
        rec.transition(State.PROVISIONING, "bench", attempt=1, instance=f"c-{i}")
        rec.transition(State.RUNNING, "bench")
        rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="running",
                                      progress={"step": i, "total": 1000}, rate=2.0))
        if i % 3 == 0:
            rec.transition(State.SUCCEEDED, "bench", exit_code=0)


def _cli_time(store_url: str, *args: str, repeat: int = 5) -> float:
    env = {**os.environ, "RUNNER_STORE": store_url, "RUNNER_BACKEND": "local"}
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner.cli", "ops", *args], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def local_wall_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        url = f"file://{d}"
        populate(open_store(url), N_RUNS)
        return {
            "ops list": _cli_time(url, "list"),
            "ops list --json": _cli_time(url, "list", "--json"),
            "ops status": _cli_time(url, "status", "--run-id", "run-100"),
        }


def gcs_requests(sizes: tuple[int, ...] = (20, N_RUNS)) -> dict[int, Counter]:
    from tests.standins.gcs_emulator import run_emulator

    from runner.ops.runs import list_runs

    out: dict[int, Counter] = {}
    with run_emulator("bench-ops") as host:
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://{host}"
        for n in sizes:
            store = open_store(f"gs://bench-ops/n{n}")
            populate(store, n)
            seen: Counter = Counter()

            def count(resp, *a, **kw):  # type: ignore[no-untyped-def]
                path = urlparse(resp.request.url).path
                kind = "list" if path.endswith("/o") and resp.request.method == "GET" else "read"
                seen[kind] += 1

            store._client._http.hooks["response"].append(count)  # type: ignore[attr-defined]
            t = time.perf_counter()
            rows = list_runs(store)
            seen["ms"] = int((time.perf_counter() - t) * 1000)
            assert len(rows) == n
            out[n] = seen
    return out


def main() -> None:
    for what, secs in local_wall_times().items():
        print(f"local store, {N_RUNS} runs: runner {what}: median {secs * 1000:.0f} ms "
              f"(target {TARGET_S * 1000:.0f} ms; target/actual = {TARGET_S / secs:.2f}, >= 1 meets it)")
    counts = gcs_requests()
    for n, c in counts.items():
        print(f"GCS emulator, {n} runs: list_runs made {c['list']} list call(s) and {c['read']} object read(s) "
              f"in {c['ms']} ms")
    small, big = counts[min(counts)], counts[max(counts)]
    print(f"list calls {max(counts)} runs / {min(counts)} runs = {big['list'] / max(small['list'], 1):.2f} "
          "(1.00 = constant, the target)")
