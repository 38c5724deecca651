"""``ops status`` / ``ops events`` of a run with a long history, over GCS latency.

A 600-attempt run (every attempt: begun, claimed, manifest, job started, preempted) is written
by the record (into a local store, then copied object by object into the GCS emulator,
tests/standins/gcs_emulator.py); then ``ops status`` (``run_status`` with
the cost, as the CLI calls it) and ``ops events --limit 20`` (``run_events``) are run through the
fault proxy with 20 ms added to every request, as a round trip to real GCS from a laptop is.
Counted: the store's requests at the HTTP level (object requests; the storage client's own
background bucket checks are shown apart), and wall time.

Targets (issue 17 item 7): <= 10 store requests and < 1 s for ``ops status`` of 600 attempts.
Before: the same runs with their running summary taken out of state.json (as a run written
before it), which ``ops status`` prices by reading the whole history: requests counted without
latency on the 600 attempts, and timed with latency on the 60-attempt run (each request adds
the same 20 ms, so 600 attempts take about ten times that).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable

from entrypoint.record import Role, RunRecord, RunSpec
from entrypoint.store import Store
from entrypoint.stores import open_store

ATTEMPTS = int(os.environ.get("BENCH_HISTORY_ATTEMPTS", "600"))
LATENCY = 0.020
TARGET_REQUESTS = 10
TARGET_S = 1.0
ZONE = "us-central1-a"


def write_history(store: Store, run_id: str, attempts: int) -> None:
    """A run preempted ``attempts`` times, written as the supervisor and the agents write it."""
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:abc", command=["train"], backend="gce",
                           machine_type="n1-standard-4", gpu="nvidia-tesla-t4", zones=[ZONE],
                           max_restarts=attempts + 1))
    rec.create_state("bench")
    for n in range(1, attempts + 1):
        rec.begin_attempt(Role.SUPERVISOR, "supervisor", instances=[f"vm-{n}"])
        rec.claim_create(n, "supervisor")
        t = time.time()
        rec.write_manifest(n, {"attempt": n, "zone": ZONE, "started_at": t, "resumed_from": ["ckpt"],
                               "checkpoint_at": t})
        rec.job_started(Role.AGENT, f"agent-{n}", attempt=n, instance=f"vm-{n}", zone=ZONE)
        if n < attempts:
            rec.preempted(Role.AGENT, f"agent-{n}", reason="preemption notice", expect_attempt=n)


def strip_summary(store: Store, run_id: str) -> None:
    """Make the run look as if written before the running summary existed."""
    rec = RunRecord(store, run_id)
    blob = store.read(rec.name(RunRecord.STATE))
    assert blob is not None
    doc = json.loads(blob.data)
    doc.pop("history", None)
    store.write(rec.name(RunRecord.STATE), json.dumps(doc).encode(), if_generation_match=blob.generation)


def copy_store(src: Store, dst: Store, workers: int = 8) -> int:
    """Every object of ``src`` written into ``dst`` under the same name; how many."""
    from concurrent.futures import ThreadPoolExecutor

    def copy(name: str) -> None:
        blob = src.read(name)
        if blob is not None:
            dst.write(name, blob.data)

    names = src.list("")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(copy, names))
    return len(names)


class _NoCompute:
    """No instances and no provider events: the bench measures the store."""

    def list(self, run_id: str | None = None) -> list[Any]:
        return []

    def provider_events(self, names: list[str], zones: list[str]) -> list[dict[str, Any]]:
        return []


def measure(proxy: Any, call: Callable[[], Any]) -> tuple[int, int, float, Any]:
    """(object requests, background bucket checks, seconds, result) of ``call``."""
    from tests.standins.gcs_fault_proxy import object_requests

    before = len(proxy.stats.seen)
    t = time.perf_counter()
    out = call()
    secs = time.perf_counter() - t
    seen = proxy.stats.seen[before:]
    objects = len(object_requests(seen))
    return objects, len(seen) - objects, secs, out


def main() -> None:
    from runner.ops.cost import _ESTIMATES
    from runner.ops.runs import run_events, run_status
    from tests.standins.gcs_emulator import run_emulator
    from tests.standins.gcs_fault_proxy import run_fault_proxy
    from tests.standins.gcs_fixture import BUCKET, _environ, store_through

    prices = os.path.join(tempfile.mkdtemp(), "prices.json")
    with open(prices, "w") as f:
        json.dump({"as_of": "bench", "currency": "USD", "source": "bench",
                   "regions": {"us-central1": {"machine": {"n1-standard-4": 0.04}, "gpu": {"nvidia-tesla-t4": 0.11}}}}, f)
    with run_emulator(BUCKET) as host, \
            _environ(STORAGE_EMULATOR_HOST=f"http://{host}", GOOGLE_CLOUD_PROJECT="local"), \
            run_fault_proxy(host) as proxy:
        store = store_through(proxy, "bench-history")  # every request through the proxy
        short = max(ATTEMPTS // 10, 1)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            # Written by the record into a local store (seconds), then copied object by object:
            # thousands of transitions one after another through the emulator take many minutes.
            local = open_store(f"file://{d}")
            write_history(local, "long", ATTEMPTS)
            write_history(local, "short", short)
            copied = copy_store(local, store)
        print(f"wrote a {ATTEMPTS}-attempt run and a {short}-attempt one ({copied} objects) "
              f"in {time.perf_counter() - t:.0f} s")

        def status(run_id: str) -> Callable[[], Any]:
            def call() -> Any:
                _ESTIMATES.clear()  # a fresh `runner ops status` process keeps nothing
                return run_status(store, run_id, price_table=prices, with_cost=True)
            return call

        proxy.latency = LATENCY
        n_short, _, _, _ = measure(proxy, status("short"))
        n, bg, secs, s = measure(proxy, status("long"))
        assert s["cost"]["summary"], s["cost"]
        print(f"ops status, {ATTEMPTS} attempts, {LATENCY * 1000:.0f} ms per request: {n} store requests "
              f"(+{bg} background bucket checks by the storage client), {secs:.2f} s; cost {s['cost_text']}")
        print(f"  requests: target/actual = {TARGET_REQUESTS / max(n, 1):.2f}; "
              f"time: target/actual = {TARGET_S / secs:.2f} (>= 1 meets the target); "
              f"{short} attempts: {n_short} requests ({n / max(n_short, 1):.2f}x for {ATTEMPTS // short}x the history)")
        n_ev, bg_ev, secs_ev, evs = measure(proxy, lambda: run_events(store, _NoCompute(), "long", None, 20))  # type: ignore[arg-type]
        assert len(evs) == 20
        print(f"ops events --limit 20, {ATTEMPTS} attempts ({3 * ATTEMPTS} events): {n_ev} store requests "
              f"(+{bg_ev} background), {secs_ev:.2f} s")

        # Before: the same runs without the summary, priced from their whole history.
        strip_summary(store, "long")
        strip_summary(store, "short")
        proxy.latency = 0.0
        n_old, _, _, s_old = measure(proxy, status("long"))
        assert not s_old["cost"]["summary"]
        proxy.latency = LATENCY
        n_old_short, _, secs_short, _ = measure(proxy, status("short"))
        print(f"before (no running summary): ops status, {ATTEMPTS} attempts: {n_old} store requests "
              f"({n_old / max(n, 1):.0f}x); {short} attempts over {LATENCY * 1000:.0f} ms: {n_old_short} requests "
              f"in {secs_short:.2f} s (x{ATTEMPTS // short} attempts: about {secs_short * ATTEMPTS / short:.0f} s)")
        print(f"  same cost from the full read: {s_old['cost_text']} (summary: {s['cost_text']})")
