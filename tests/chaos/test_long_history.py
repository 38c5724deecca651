"""Chaos: a run with a long history (hundreds of preemptions) must stay cheap to look at.

Issue 17 item 7: ``ops status`` read every event, manifest and claim of a run to price it, about
five store requests per attempt (3,000 for a 600-attempt run, a minute on real GCS), and
``ops events`` read the whole journal. Now a running summary rides in state.json, folded in by
each transition's own compare-and-swap, and the journal is read from its end.

What must hold:
- ``ops status`` (state, heartbeat, spec, .stop, startup, the journal's end, supervision, cost)
  makes at most 10 store requests, the same number for a short and a long history; counted at
  the HTTP level, through a proxy in front of the GCS emulator;
- ``ops events --limit 20`` reads 20 entries, not the journal;
- the summary says what the full read says (cost so far, lost to preemptions, billed and lost
  seconds, whether the loss is a lower bound, restarts) after preemptions, stalls, retried
  failures, boots lost before the job started, a failed run resubmitted, and two supervisors
  and an agent racing for every transition;
- a run that predates the summary, or that a writer without it moved on, is still priced (by
  the full read, saying so), and the summary a writer left behind is never trusted again.

Short form (``make test``): 10 vs 60 attempts, and 60 raced attempts. Long form
(``make chaos``): 10 vs 600, and 300 raced attempts.
"""

from __future__ import annotations

import json
import random
import threading
from typing import Any, Callable

import pytest

import entrypoint.record.run as record_mod  # where the record reads its clock
from entrypoint.record import IllegalTransition, PreconditionFailed, Role, RunRecord, RunSpec, State
from runner.ops.cost import estimate_run_cost, load_prices
from runner.ops.runs import run_status
from tests.chaos.harness import cycles
from tests.standins.gcs_fault_proxy import object_requests
from tests.standins.gcs_fixture import store_through

LONG = cycles(short=60, long=600)
RACED = cycles(short=60, long=300)
ZONES = ("us-central1-a", "us-central1-b", "europe-west4-a")  # where attempts ran (their manifests say)
SPEC_ZONES = ZONES[:2]  # one region: an attempt lost before its manifest is priced there


class Clock:
    """A clock the record reads (thread-safe): each reading is a few seconds after the last, so
    billed and lost times are large enough to mean something and differ from attempt to attempt."""

    def __init__(self, seed: int) -> None:
        self.t = 1_700_000_000.0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.t += self._rng.uniform(1, 120)
            return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(seed=17)
    monkeypatch.setattr(record_mod, "utcnow", c)
    return c


@pytest.fixture
def price_table(tmp_path: Any) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({
        "as_of": "2026-12-01", "currency": "USD", "source": "test",
        "regions": {"us-central1": {"machine": {"n1-standard-4": 1.0}, "gpu": {"nvidia-tesla-t4": 0.5}},
                    "europe-west4": {"machine": {"n1-standard-4": 3.0}, "gpu": {"nvidia-tesla-t4": 1.0}}},
    }))
    return str(path)


def submit(store: Any, run_id: str) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="sha256:abc", command=["train"], backend="gce",
                           machine_type="n1-standard-4", gpu="nvidia-tesla-t4", zones=list(SPEC_ZONES),
                           max_restarts=100_000, retry_on_failure=100_000))
    rec.create_state("submit")
    return rec


def race(*writers: Callable[[], Any]) -> list[Any]:
    """Run the writers at once (a barrier lines them up); each one's result or the exception it
    raised. Exactly one of writers based on the same state may win a compare-and-swap."""
    barrier = threading.Barrier(len(writers))
    out: list[Any] = [None] * len(writers)

    def go(i: int, w: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            out[i] = w()
        except (PreconditionFailed, IllegalTransition) as e:
            out[i] = e

    threads = [threading.Thread(target=go, args=(i, w)) for i, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def won(results: list[Any]) -> int:
    return sum(1 for r in results if not isinstance(r, Exception))


def one_attempt(rec: RunRecord, clock: Clock, rng: random.Random, *, raced: bool) -> None:
    """One attempt as the actors write it: begin (two supervisors racing), create claim,
    manifest and job start (unless the VM is lost while booting), then an end: preempted
    (the agent's notice racing the supervisor's stall verdict), stalled, or a retried failure."""
    cur = rec.read_state()
    assert cur is not None
    n = cur[0].attempt + 1
    begins = [lambda a=a: rec.begin_attempt(Role.SUPERVISOR, a, expected=cur, instances=[f"vm-{n}"])
              for a in (("sup-a", "sup-b") if raced else ("sup-a",))]
    assert won(race(*begins)) == 1
    assert rec.claim_create(n, "sup-a")
    zone = rng.choice(ZONES)
    kind = rng.choices(["preempted", "stalled", "errored", "lost-booting"], [5, 2, 2, 1])[0]
    if kind == "lost-booting":
        rec.preempted(Role.SUPERVISOR, "sup-a", reason="instance vanished before the job started")
        return
    started = clock()
    manifest: dict[str, Any] = {"attempt": n, "zone": zone, "started_at": started,
                                "resumed_from": [] if rng.random() < 0.1 else ["checkpoints/last.pt"]}
    rec.write_manifest(n, manifest)
    rec.job_started(Role.AGENT, f"agent-{n}", attempt=n, instance=f"vm-{n}", zone=zone)
    finished = clock()
    how = rng.random()
    if how < 0.7:  # the newest checkpoint's time
        manifest["checkpoint_at"] = rng.uniform(started, finished) if rng.random() < 0.9 else None
    elif how < 0.85:  # step progress only
        manifest["first_progress"] = {"step": 10 * n, "time": started + 1}
        manifest["last_progress"] = {"step": 10 * n + rng.randint(1, 50), "time": finished}
    manifest["finished_at"] = finished
    rec.write_manifest(n, manifest)
    after = rec.read_state()
    if kind == "errored":
        rec.errored(Role.AGENT, f"agent-{n}", attempt=n, reason="job exited 1", exit_code=1)
    elif raced:
        ends = race(lambda: rec.preempted(Role.AGENT, f"agent-{n}", reason="preemption notice", expect_attempt=n),
                    lambda: rec.stalled(Role.SUPERVISOR, "sup-b", reason="no progress", expected=after))
        assert won(ends) == 1
    elif kind == "preempted":
        rec.preempted(Role.AGENT, f"agent-{n}", reason="preemption notice", expect_attempt=n)
    else:
        rec.stalled(Role.SUPERVISOR, "sup-b", reason="no progress", expected=after)


def history(rec: RunRecord, clock: Clock, attempts: int, seed: int, *, raced: bool = False,
            resubmit_every: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(1, attempts + 1):
        one_attempt(rec, clock, rng, raced=raced)
        if resubmit_every and i % resubmit_every == 0:  # restarts exhausted, then `submit --restart`
            rec.failed(Role.SUPERVISOR, "sup-a", reason="restarts exhausted")
            rec.reopen("submit", "resubmitted")
    cur = rec.read_state()
    assert cur is not None
    if cur[0].state.needs_restart:  # a live last attempt, still running
        st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup-a", instances=["vm-last"])
        n = st.attempt
        rec.claim_create(n, "sup-a")
        rec.write_manifest(n, {"attempt": n, "zone": ZONES[0], "started_at": clock(), "resumed_from": []})
        rec.job_started(Role.AGENT, f"agent-{n}", attempt=n, instance="vm-last", zone=ZONES[0])


def assert_same_estimate(summary: dict[str, Any], full: dict[str, Any]) -> None:
    assert summary["summary"] is True, "the estimate was not taken from the running summary"
    for key in ("so_far", "lost_to_preemptions", "billed_seconds", "lost_seconds", "hourly"):
        assert summary[key] == pytest.approx(full[key], rel=1e-9), key
    assert summary["lost_is_lower_bound"] == full["lost_is_lower_bound"]
    # The rows it shows (the last closed attempts and the current one) are the full read's rows.
    by_attempt = {r["attempt"]: r for r in full["attempts"]}
    assert [r["attempt"] for r in summary["attempts"]] == sorted(by_attempt)[-len(summary["attempts"]):]
    for row in summary["attempts"]:
        other = by_attempt[row["attempt"]]
        for key in ("seconds", "cost", "lost_seconds", "lost_cost", "lost_work_seconds"):
            assert row[key] == pytest.approx(other[key], rel=1e-9), (row["attempt"], key)
        assert (row["ended"], row["lost_basis"], row["zone"]) == (other["ended"], other["lost_basis"], other["zone"])


def journal_restarts(rec: RunRecord) -> tuple[int, int]:
    """(lost attempts since the last resubmission, lost attempts ever), from the whole journal."""
    since, ever = 0, 0
    for _, ev in rec.events():
        if ev.get("to") in (State.PREEMPTED.value, State.STALLED.value):
            since, ever = since + 1, ever + 1
        elif ev.get("from") in (State.FAILED.value, State.STOPPED.value, State.SUCCEEDED.value) \
                and ev.get("to") == State.PENDING.value:
            since = 0
    return since, ever


# ---------------------------------------------------------------- correctness

def test_the_summary_prices_a_raced_history_as_the_full_read_does(local_store, clock, price_table):
    rec = submit(local_store, "raced")
    history(rec, clock, RACED, seed=7, raced=True, resubmit_every=25)
    prices = load_prices(price_table)
    now = clock()

    summary = estimate_run_cost(rec, prices, now, use_summary=True)
    full = estimate_run_cost(rec, prices, now)

    assert_same_estimate(summary, full)
    assert full["so_far"] and full["lost_to_preemptions"]  # priced, with preemptions to count
    st = rec.read_state()[0]  # type: ignore[index]
    since, ever = journal_restarts(rec)
    assert st.restarts == since
    assert st.history["lost_attempts"] == ever  # type: ignore[index]
    print(f"\n{RACED} raced attempts: so far {full['so_far']:.2f} (summary {summary['so_far']:.2f}), "
          f"lost {full['lost_to_preemptions']:.2f}, restarts {since} since resubmission, {ever} ever")


def test_a_run_that_predates_the_summary_is_priced_in_full_and_says_so(local_store, clock, price_table):
    rec = submit(local_store, "old")
    history(rec, clock, 8, seed=3)
    blob = local_store.read(rec.name(RunRecord.STATE))
    doc = json.loads(blob.data)
    doc.pop("history")  # as a runner before the summary wrote it
    local_store.write(rec.name(RunRecord.STATE), json.dumps(doc).encode(), if_generation_match=blob.generation)
    prices = load_prices(price_table)
    now = clock()

    est = estimate_run_cost(rec, prices, now, use_summary=True)

    assert est["summary"] is False
    assert "predates" in est["history_note"]
    assert est["so_far"] == pytest.approx(estimate_run_cost(rec, prices, now)["so_far"])


def test_a_summary_left_behind_by_an_older_writer_is_never_trusted_again(local_store, clock, price_table):
    rec = submit(local_store, "mixed")
    history(rec, clock, 5, seed=5)
    # An older agent (pinned in the run's image) preempts the run: it keeps the fields it does
    # not know, the summary among them, but does not fold its event in.
    cur = rec.read_state()
    assert cur is not None
    doc = cur[0].to_dict()
    old = RunRecord(local_store, "mixed")
    event = old._event_for(cur[0], "old-agent", cur[0].state, "preemption notice")
    doc.update(state=State.PREEMPTED.value, last_event=event, updated_at=event["doc"]["time"])
    local_store.write(rec.name(RunRecord.STATE), json.dumps(doc).encode(), if_generation_match=cur[1])
    prices = load_prices(price_table)
    now = clock()

    est = estimate_run_cost(rec, prices, now, use_summary=True)
    assert est["summary"] is False and "without the running summary" in est["history_note"]
    assert est["so_far"] == pytest.approx(estimate_run_cost(rec, prices, now)["so_far"])

    rec.begin_attempt(Role.SUPERVISOR, "sup-a", instances=["vm-next"])  # a writer that knows it
    assert rec.read_state()[0].history is None  # type: ignore[index]
    assert estimate_run_cost(rec, prices, clock(), use_summary=True)["summary"] is False


# ---------------------------------------------------------------- cost in store requests

def _requests(proxy: Any, call: Callable[[], Any]) -> tuple[int, Any]:
    """How many store requests ``call`` made (object requests: see ``object_requests``)."""
    before = len(proxy.stats.seen)
    out = call()
    return len(object_requests(proxy.stats.seen[before:])), out


def _newest(store: Any, run_id: str, limit: int) -> list[Any]:
    rec = RunRecord(store, run_id)
    return rec.newest_events(rec.read_state(), limit)


def copy_run(src: Any, dst: Any, run_id: str) -> None:
    """Every object of the run, written into ``dst`` under the same name (8 at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def copy(name: str) -> None:
        dst.write(name, src.read(name).data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(copy, src.list(RunRecord(src, run_id).prefix)))


def test_ops_status_and_events_cost_the_same_for_a_short_and_a_long_history(fault_proxy, local_store, clock,
                                                                              price_table):
    store = store_through(fault_proxy, "long-history")
    counts: dict[int, tuple[int, int]] = {}
    for attempts in (10, LONG):
        run_id = f"h{attempts}"
        # Written by the record into the local store, then copied into GCS: thousands of
        # transitions one after another through the emulator would take many minutes.
        history(submit(local_store, run_id), clock, attempts, seed=attempts)
        copy_run(local_store, store, run_id)
        status_n, status = _requests(fault_proxy, lambda: run_status(store, run_id, price_table=price_table,
                                                                     with_cost=True))
        events_n, shown = _requests(fault_proxy, lambda: _newest(store, run_id, 20))
        assert status["cost"]["summary"] is True and status["cost"]["so_far"], status["cost"]
        assert status["last_event"] is not None
        assert len(shown) == 20
        counts[attempts] = (status_n, events_n)
        print(f"\n{attempts} attempts: ops status {status_n} store requests, "
              f"ops events --limit 20 {events_n}")
    (short_status, short_events), (long_status, long_events) = counts[10], counts[LONG]
    assert long_status <= 10, f"ops status of {LONG} attempts made {long_status} store requests (target <= 10)"
    assert long_status == short_status, (f"ops status grew with the history: {short_status} requests "
                                         f"for 10 attempts, {long_status} for {LONG}")
    # 20 entries read (the state's own one costs nothing), the state, and a listing or two.
    assert long_events <= 20 + 3 and long_events <= short_events + 2


# ---------------------------------------------------------------- ops events: the newest, from a time

class _NoCompute:
    def list(self, run_id: str | None = None) -> list[Any]:
        return []

    def provider_events(self, names: list[str], zones: list[str]) -> list[dict[str, Any]]:
        return []


def test_ops_events_shows_the_newest_entries_from_a_time_on(local_store, clock):
    from runner.ops.runs import run_events

    rec = submit(local_store, "paged")
    history(rec, clock, 30, seed=11)
    rec.event("sup-a", None, None, "create failed, retrying in 30s: out of capacity")  # a note, newest of all
    every = [ev for _, ev in rec.events()]
    compute: Any = _NoCompute()

    newest = run_events(local_store, compute, "paged", limit=7)
    assert newest == every[-7:]
    assert newest[-1]["reason"].startswith("create failed")
    middle = every[len(every) // 2]["time"]
    assert run_events(local_store, compute, "paged", since=middle) == [e for e in every if e["time"] >= middle]
    assert run_events(local_store, compute, "paged", since=middle, limit=3) == every[-3:]
    assert run_events(local_store, compute, "paged") == every


def test_ops_events_since_takes_a_duration_or_an_iso_time_and_says_how_otherwise():
    from runner.cli.cmd_ops import parse_since

    now = 1_764_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200
    assert parse_since("2026-12-02T21:00:00Z", now) == 1_796_245_200.0
    assert parse_since("2026-12-02T22:00:00+01:00", now) == 1_796_245_200.0
    assert parse_since("2026-12-02 21:00", now) == 1_796_245_200.0
    assert parse_since(None, now) is None
    with pytest.raises(SystemExit) as e:
        parse_since("yesterday", now)
    assert e.value.code == 2


def test_ops_events_help_teaches_limit_and_since():
    from click.testing import CliRunner

    from runner.cli.main import main

    out = CliRunner().invoke(main, ["ops", "events", "--help"]).output
    for words in ("--limit", "newest", "--since", "10m", "ISO", "--all", "runner ops events --run-id exp-1 --since 2h"):
        assert words in out, words


def test_a_damaged_manifest_drops_the_summary_and_never_blocks_the_next_attempt(local_store, clock, price_table):
    rec = submit(local_store, "torn")
    history(rec, clock, 3, seed=2)
    n = rec.read_state()[0].attempt  # type: ignore[index]
    rec.preempted(Role.AGENT, f"agent-{n}", reason="preemption notice", expect_attempt=n)
    local_store.write(rec.name(RunRecord.manifest_name(n)), b'{"attempt": ')  # torn by a dying writer

    st, _ = rec.begin_attempt(Role.SUPERVISOR, "sup-a", instances=["vm-next"])

    assert st.attempt == n + 1 and st.history is None
