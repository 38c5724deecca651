"""``ops list`` and one supervisor pass over 1,000 runs, with 20 ms added to every store request.

Issue 22 §3 targets: ``runner ops list`` under 2 s and one supervisor pass under 10 s, over 1,000
runs (most finished, some running, some pending) with 20 ms of latency on each GCS request (the
round trip to real GCS is tens of milliseconds; the emulator on loopback answers in one).

The emulator and the fault proxy (which adds the latency) run in a process of their own, as GCS
runs on machines of its own: the client's CPU is then the product's alone, not shared with the
stand-ins under one interpreter lock. The runs are written straight to the emulator, many at a
time (no latency: populating is not what is measured); what is timed goes through the proxy.

Figures:
1. ``list_runs`` as ``ops list`` calls it (in this process), and the whole ``runner ops list``
   command as a user runs it (a fresh process: interpreter start and imports count), with the
   requests it sent (runs written by this version are listed, not read:
   ``entrypoint.record.listing``).
2. One ``Supervisor.reconcile_all()`` pass over the in-memory compute backend (no VMs to talk
   to: the pass's time is the store's), and where its requests go per run, by the run's state.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlparse

from entrypoint.record import AttemptSettings, Heartbeat, RunRecord, RunSpec, State
from entrypoint.store import Store

N_RUNS = 1000
LATENCY_S = 0.020
LIST_TARGET_S = 2.0
PASS_TARGET_S = 10.0
BUCKET = "bench-scale"
# Of every 20 runs: 17 finished (SUCCEEDED), 2 running with a live VM, 1 pending (never placed).
RUNNING_EVERY, PENDING_EVERY = 10, 20
IMAGE = "us-docker.pkg.dev/bench/runs/trainer@sha256:" + "c" * 64


def kind_of(i: int) -> str:
    """Which kind run number ``i`` is (see the mix above)."""
    if i % PENDING_EVERY == 0:
        return "pending"
    if i % RUNNING_EVERY == 5:
        return "running"
    return "finished"


# ---- the stand-ins, in a process of their own ----------------------------------------------------

def serve(latency: float) -> None:
    """Child process: emulator + proxy; prints ``EMULATOR PROXY`` and serves until stdin closes."""
    from tests.standins.gcs_emulator import run_emulator
    from tests.standins.gcs_fault_proxy import run_fault_proxy

    with run_emulator(BUCKET) as emu, run_fault_proxy(emu) as proxy:
        proxy.latency = latency
        print(emu, proxy.address, flush=True)
        sys.stdin.read()


@contextmanager
def stand_ins(latency: float) -> Iterator[tuple[str, str]]:
    """``(emulator, proxy)`` host:port pairs, served by a child process."""
    child = subprocess.Popen([sys.executable, "-m", "bench.store_scale", "--serve", str(latency)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        emu, proxy = child.stdout.readline().split()
        yield emu, proxy
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def gcs_store(hostport: str, prefix: str) -> Store:
    """The product's own GcsStore and client (``make_client``), pointed at ``hostport``."""
    from entrypoint.store_gcs import GcsStore

    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ.update(STORAGE_EMULATOR_HOST=f"http://{hostport}", GOOGLE_CLOUD_PROJECT="local")
    try:
        return GcsStore(f"gs://{BUCKET}/{prefix}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- populating ----------------------------------------------------------------------------------

def spec(run_id: str) -> RunSpec:
    return RunSpec(run_id=run_id, image=IMAGE, command=["python3", "train.py"], backend="memory",
                   vm={"termination_action": "DELETE"})


def populate(store: Store, n: int, workers: int = 32) -> dict[str, list[str]]:
    """``n`` runs as submits, agents and supervisors leave them, written many at a time; returns
    the run ids by kind. Running runs get their VM later (``place_running``)."""
    ids: dict[str, list[str]] = defaultdict(list)
    for i in range(n):
        ids[kind_of(i)].append(f"run-{i:04d}")

    def one(i: int) -> None:
        rec = RunRecord(store, f"run-{i:04d}")
        rec.write_spec(spec(rec.run_id))
        rec.create_state("user@bench")
        if kind_of(i) != "finished":
            return
        rec.transition(State.PROVISIONING, "supervisor@bench", attempt=1, instance=f"run-{i:04d}-1",
                       zone="memory-a")
        rec.transition(State.RUNNING, "agent", zone="memory-a")
        rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="exited", exit_code=0,
                                      progress={"step": 1000, "total": 1000}, rate=2.0))
        rec.transition(State.SUCCEEDED, "agent", exit_code=0, reason="job exited 0")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return ids


def supervisor(store: Store, backend: Any) -> Any:
    from runner.launch.supervisor import Supervisor, SupervisorSettings

    legacy = AttemptSettings(stall_window=600.0, heartbeat_interval=10.0, sync_interval=10.0,
                             grace_period=5.0, shm_size="1g")
    return Supervisor(store, backend, SupervisorSettings(poll_interval=30.0, store_url=store.url,
                                                         legacy_attempts=legacy), actor="bench")


def place_running(store: Store, backend: Any, run_ids: list[str], workers: int = 16) -> None:
    """Give each of ``run_ids`` its first VM (a supervisor's step) and its agent's RUNNING and
    heartbeat, as a run that is training leaves its record."""
    sup = supervisor(store, backend)

    def one(run_id: str) -> None:
        sup.reconcile(run_id)
        rec = RunRecord(store, run_id)
        rec.transition(State.RUNNING, "agent", expect_attempt=1, zone="memory-a")
        rec.write_heartbeat(Heartbeat(time=time.time(), attempt=1, phase="running",
                                      progress={"step": 10, "total": 1000}, rate=2.0))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, run_ids))


# ---- counting requests ---------------------------------------------------------------------------

def object_of(method: str, url: str, body: bytes | None) -> tuple[str, str | None, str]:
    """``(operation, run id, object)`` of one request; the object with attempt numbers and event
    names folded (``attempts/N/…``, ``events/*``), so requests of one kind count together."""
    u = urlparse(url)
    q = parse_qs(u.query)
    path = unquote(u.path)
    if method == "GET" and path.endswith("/o"):
        op, key = "list", q.get("prefix", [""])[0]
    elif "/upload/" in path:
        op = "write"
        key = q.get("name", [""])[0]
        if not key and body:
            m = re.search(rb'"name":\s*"([^"]+)"', body)
            key = m.group(1).decode() if m else ""
    elif method == "DELETE":
        op, key = "delete", path.split("/o/", 1)[-1]
    elif method == "GET":
        op = "read" if q.get("alt") == ["media"] else "stat"
        key = path.split("/o/", 1)[-1]
    else:
        op, key = method.lower(), path.split("/o/", 1)[-1]
    m = re.search(r"runs/([^/]+)/(.*)$", key)
    if not m:
        return op, None, key.rsplit("/", 1)[-1] or key
    rel = re.sub(r"^events/.+", "events/*", m.group(2))
    rel = re.sub(r"attempts/\d+/", "attempts/N/", rel)
    return op, m.group(1), rel or "(run folder)"


class RequestLog:
    """Every request the store's client sends, classified (a response hook on its session)."""

    def __init__(self, store: Store) -> None:
        self.seen: list[tuple[str, str | None, str]] = []
        session = store._client._http  # type: ignore[attr-defined]
        session.hooks["response"].append(self._hook)

    def _hook(self, resp: Any, *a: Any, **kw: Any) -> None:
        req = resp.request
        body = req.body if isinstance(req.body, bytes) else None
        self.seen.append(object_of(req.method, req.url, body))

    def clear(self) -> None:
        self.seen.clear()


def per_run(seen: list[tuple[str, str | None, str]], kinds: dict[str, str]) -> dict[str, Counter]:
    """Requests per run, averaged by the run's kind: ``{kind: Counter("op object" -> mean)}``."""
    totals: dict[str, Counter] = defaultdict(Counter)
    for op, run_id, obj in seen:
        if run_id is not None:
            totals[kinds[run_id]][f"{op} {obj}"] += 1
    n = Counter(kinds.values())
    return {k: Counter({what: c / n[k] for what, c in sorted(t.items())}) for k, t in totals.items()}


def forget_journaled() -> None:
    """Forget which journal entries this process wrote or saw stored (``ensure_journaled``'s
    memory): the populating wrote them here, a supervisor process would not know them."""
    from entrypoint.record import run

    run._JOURNALED.clear()


def others(seen: list[tuple[str, str | None, str]]) -> Counter:
    """Requests about no one run (listings of the store, its supervisor heartbeat, the client's
    own bucket checks), by what they were."""
    return Counter(f"{op} {obj}" for op, run_id, obj in seen if run_id is None)


def print_breakdown(seen: list[tuple[str, str | None, str]], kinds: dict[str, str], others_too: bool = True) -> None:
    """Where the requests went: per run of each kind, then (``others_too``) those of no one run."""
    for kind, c in per_run(seen, kinds).items():
        print(f"  per {kind} run: " + ", ".join(f"{what} x{v:.2f}" for what, v in c.items()))
    if others_too:
        print("  not of one run: " + ", ".join(f"{what} x{c}" for what, c in others(seen).items()))


# ---- timing ----------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def cli_ops_list(proxy: str, prefix: str) -> float:
    """Wall time of ``runner ops list`` as a user runs it, its store behind ``proxy``."""
    env = {**os.environ, "RUNNER_STORE": f"gs://{BUCKET}/{prefix}", "RUNNER_BACKEND": "local",
           "STORAGE_EMULATOR_HOST": f"http://{proxy}", "GOOGLE_CLOUD_PROJECT": "local"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "list"], capture_output=True, env=env, text=True)
    secs = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"runner ops list failed: {out.stderr}")
    return secs


def verdict(secs: float, target: float) -> str:
    return f"target < {target:.1f} s: {'meets it' if secs < target else 'MISSES it'}"


def main(n: int = N_RUNS, latency: float = LATENCY_S) -> None:
    from runner.ops.runs import list_runs
    from tests.standins.memory_backend import MemoryBackend

    prefix = f"scale-{os.getpid()}"
    with stand_ins(latency) as (emu, proxy):
        direct = gcs_store(emu, prefix)
        backend = MemoryBackend(notice_seconds=0)
        secs, ids = timed(lambda: populate(direct, n))
        secs2, _ = timed(lambda: place_running(direct, backend, ids["running"]))
        kinds = {r: k for k, rs in ids.items() for r in rs}
        print(f"(populate {secs:.1f} s, place {secs2:.1f} s)")
        print(f"populated {n} runs ({len(ids['finished'])} finished, {len(ids['running'])} running, "
              f"{len(ids['pending'])} pending) in {secs + secs2:.1f} s, straight to the emulator")

        slow = gcs_store(proxy, prefix)
        log = RequestLog(slow)
        secs, rows = timed(lambda: list_runs(slow))
        assert len(rows) == n, len(rows)
        print(f"list_runs over {n} runs, +{latency * 1000:.0f} ms per request: {secs:.2f} s, "
              f"{len(log.seen)} requests ({len(log.seen) / n:.2f} per run); {verdict(secs, LIST_TARGET_S)}")
        print_breakdown(log.seen, kinds)
        secs = cli_ops_list(proxy, prefix)
        print(f"runner ops list (a fresh process) over {n} runs, +{latency * 1000:.0f} ms per request, "
              f"no supervisor has passed (each live run's own supervisor is looked up): {secs:.2f} s; "
              f"{verdict(secs, LIST_TARGET_S)}")

        log.clear()
        forget_journaled()  # as a fresh supervisor process (a hosted pass) starts
        sup = supervisor(slow, backend)
        secs, states = timed(sup.reconcile_all)
        assert len(states) == n, len(states)
        other = [s for s in log.seen if s[1] is None]
        print(f"one supervisor pass (reconcile_all, memory backend) over {n} runs, +{latency * 1000:.0f} ms "
              f"per request: {secs:.2f} s, {len(log.seen)} requests ({len(log.seen) / n:.2f} per run, "
              f"{len(other)} not of one run); {verdict(secs, PASS_TARGET_S)}")
        print_breakdown(log.seen, kinds)
        secs = cli_ops_list(proxy, prefix)
        print(f"runner ops list (a fresh process) over {n} runs, +{latency * 1000:.0f} ms per request, "
              f"a supervisor passed just now: {secs:.2f} s; {verdict(secs, LIST_TARGET_S)}")
        log.clear()
        secs, _ = timed(sup.reconcile_all)
        print(f"the next pass (same process): {secs:.2f} s, {len(log.seen)} requests "
              f"({len(log.seen) / n:.2f} per run)")
        print_breakdown(log.seen, kinds, others_too=False)
        sup.drain(30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(float(sys.argv[2]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else N_RUNS)
