"""Webhook notifications: runs driven through the real Supervisor, a loopback webhook receiver.

The compute side is the in-memory backend (tests/standins/memory_backend.py: no Docker, no fake
API): what matters here is the run record in a real local store, which both the supervisor and
the agent write. The agent's transitions (RUNNING, SUCCEEDED) are written by hand, as an agent in a VM would.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from entrypoint.record import AttemptSettings, RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from runner.config import Config
from runner.launch.context import Context
from runner.ops.notify import NOTIFIED, TransitionNotifier, WebhookSender, notifier_from_config
from runner.launch.supervisor import Supervisor, SupervisorSettings
from tests.standins.json_http_server import serve
from tests.standins.memory_backend import MemoryBackend

TOKEN = "T0KEN-s3cr3t-9f8e7d"  # the secret part of every webhook URL here


class Receiver:
    """A webhook: records what it is sent; ``mode`` is ok, 500, or hang (answers after release)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        with self.lock:
            self.paths.append(raw_path)
        if self.mode == "hang":
            self.release.wait(30)
            return 500, "{}"
        if self.mode == "500":
            return 500, '{"error": "boom"}'
        with self.lock:
            self.received.append(json.loads(body))
        return 200, "{}"

    def texts(self) -> list[str]:
        return [d["text"] for d in self.received]

    def transitions(self, by_time: bool = False) -> list[tuple[str | None, str]]:
        """In arrival order; ``by_time``: in the journal's order (several supervisors send
        from their own threads, so arrival order across them is not guaranteed)."""
        docs = sorted(self.received, key=lambda d: d["runner"]["time"]) if by_time else self.received
        return [(d["runner"]["from"], d["runner"]["to"]) for d in docs]


@pytest.fixture
def receiver():
    r = Receiver()
    with serve(r, "webhook") as url:
        r.url = f"{url}/hooks/{TOKEN}"
        yield r
        r.release.set()


def fast_sender(url: str) -> WebhookSender:
    return WebhookSender(url, timeout=2.0, backoff=0.01)


def settings(store: LocalStore) -> SupervisorSettings:
    return SupervisorSettings(poll_interval=0.1, store_url=store.url,
                              legacy_attempts=AttemptSettings(stall_window=1000, heartbeat_interval=1, sync_interval=1, grace_period=0, shm_size="1g"))


def supervisor(store, backend, url: str | None = None, notifier: TransitionNotifier | None = None) -> Supervisor:
    if notifier is None and url is not None:
        notifier = TransitionNotifier(lambda: url, sender_factory=fast_sender)
    return Supervisor(store, backend, settings(store), notifier=notifier)


def submit(store: LocalStore, run_id: str = "exp-1", max_restarts: int = 3) -> RunRecord:
    rec = RunRecord(store, run_id)
    rec.write_spec(RunSpec(run_id=run_id, image="img@sha256:" + "a" * 64, command=["true"], backend="memory",
                           max_restarts=max_restarts))
    rec.create_state("submit")
    return rec


def agent(rec: RunRecord, new: State, **changes: Any) -> None:
    st, _ = rec.read_state()
    rec.transition(new, "agent", expect_attempt=st.attempt, **changes)


def drive_with_preemption(rec: RunRecord, backend: MemoryBackend, sups: list[Supervisor]) -> None:
    """PENDING → … → RUNNING, a preemption, attempt 2 RUNNING → SUCCEEDED; every supervisor
    makes a pass after each step."""
    def passes() -> None:
        for s in sups:
            s.reconcile(rec.run_id)

    passes()  # PENDING → PROVISIONING (attempt 1)
    agent(rec, State.RUNNING, zone="us-central1-a")
    passes()
    backend.preempt(backend.list(rec.run_id)[0])
    passes()  # RUNNING → PREEMPTED → PROVISIONING (attempt 2)
    agent(rec, State.RUNNING, zone="us-central1-b")
    agent(rec, State.SUCCEEDED, exit_code=0)  # two agent writes between passes
    passes()


def flush(*sups: Supervisor) -> None:
    for s in sups:
        assert s.notifier is not None and s.notifier.sender is not None
        assert s.notifier.sender.flush(10), "webhook deliveries did not finish"


def journal_transitions(rec: RunRecord) -> list[tuple[str | None, str]]:
    return [(ev["from"], ev["to"]) for _, ev in rec.events() if ev["to"] and ev["from"] != ev["to"]]


def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


EXPECTED = [
    ("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "PREEMPTED"),
    ("PREEMPTED", "PROVISIONING"), ("PROVISIONING", "RUNNING"), ("RUNNING", "SUCCEEDED"),
]


def test_every_transition_of_a_run_reaches_the_webhook_in_order(local_store, receiver):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)  # before the supervisor starts: "submitted" is history, not news
    sup = supervisor(local_store, backend, receiver.url)
    drive_with_preemption(rec, backend, [sup])
    flush(sup)
    assert rec.read_state()[0].state == State.SUCCEEDED
    assert receiver.transitions() == EXPECTED
    assert receiver.transitions() == journal_transitions(rec)[1:]
    texts = receiver.texts()
    assert texts[2].startswith("run exp-1: RUNNING → PREEMPTED (attempt 1, us-central1-a) — instance ")
    assert texts[5] == "run exp-1: RUNNING → SUCCEEDED (attempt 2, us-central1-b)"
    assert all(d["content"] == d["text"] for d in receiver.received)
    assert receiver.received[5]["runner"]["attempt"] == 2 and receiver.received[5]["runner"]["run_id"] == "exp-1"


def test_two_supervisors_deliver_each_transition_once(local_store, receiver):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    a, b = supervisor(local_store, backend, receiver.url), supervisor(local_store, backend, receiver.url)
    drive_with_preemption(rec, backend, [a, b])
    flush(a, b)
    assert receiver.transitions(by_time=True) == EXPECTED
    events = [d["runner"]["event"] for d in receiver.received]
    assert len(set(events)) == len(events)


def test_supervisors_racing_in_threads_still_deliver_each_transition_once(local_store, receiver):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    sups = [supervisor(local_store, backend, receiver.url) for _ in range(3)]
    stop = threading.Event()

    def loop(s: Supervisor) -> None:
        while not stop.is_set():
            s.reconcile("exp-1")

    threads = [threading.Thread(target=loop, args=(s,)) for s in sups]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 20
        while rec.read_state()[0].state != State.PROVISIONING and time.time() < deadline:
            time.sleep(0.01)
        # The agent runs inside its instance: it cannot report RUNNING before the instance
        # exists (writing it earlier made a supervisor rightly see a RUNNING run with no instance).
        while not backend.list("exp-1") and time.time() < deadline:
            time.sleep(0.01)
        agent(rec, State.RUNNING)
        time.sleep(0.2)
        agent(rec, State.SUCCEEDED, exit_code=0)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    flush(*sups)
    assert receiver.transitions(by_time=True) == [("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING"),
                                                  ("RUNNING", "SUCCEEDED")]


def test_a_supervisor_starting_later_does_not_replay_history(local_store, receiver):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    Supervisor(local_store, backend, settings(local_store)).reconcile("exp-1")  # no notifier
    agent(rec, State.RUNNING)
    sup = supervisor(local_store, backend, receiver.url)
    sup.reconcile("exp-1")
    agent(rec, State.SUCCEEDED, exit_code=0)
    sup.reconcile("exp-1")
    flush(sup)
    assert receiver.transitions() == [("RUNNING", "SUCCEEDED")]


def test_a_pass_without_a_state_change_does_not_read_the_journal(local_store, receiver):
    class CountingStore(LocalStore):
        event_lists = 0

        def list(self, prefix: str) -> list[str]:
            if prefix.endswith("/events/"):
                CountingStore.event_lists += 1
            return super().list(prefix)

    store = CountingStore(local_store.root)
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(store)
    sup = supervisor(store, backend, receiver.url)
    sup.reconcile("exp-1")
    agent(rec, State.RUNNING)
    sup.reconcile("exp-1")
    before = CountingStore.event_lists
    for _ in range(5):
        sup.reconcile("exp-1")
    assert CountingStore.event_lists == before
    agent(rec, State.SUCCEEDED, exit_code=0)
    sup.reconcile("exp-1")
    assert CountingStore.event_lists == before + 1
    flush(sup)
    assert receiver.transitions()[-1] == ("RUNNING", "SUCCEEDED")


def test_an_event_written_after_its_state_is_still_announced(local_store, receiver):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    sup = supervisor(local_store, backend, receiver.url)
    sup.reconcile("exp-1")
    # An agent that wrote state.json and has not yet written its event when the pass runs.
    real_event = rec.event
    late: list[tuple] = []
    agent_rec = RunRecord(local_store, "exp-1")
    agent_rec.event = lambda *a, **k: late.append((a, k))  # type: ignore[method-assign]
    agent(agent_rec, State.RUNNING)
    sup.reconcile("exp-1")
    for a, k in late:
        real_event(*a, **k)
    sup.reconcile("exp-1")
    flush(sup)
    assert receiver.transitions() == [("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING")]


@pytest.mark.parametrize("mode", ["500", "hang", "refused"])
def test_a_dead_webhook_neither_slows_the_supervisor_nor_touches_the_run(local_store, receiver, mode, capfd):
    receiver.mode = mode
    url = receiver.url
    if mode == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/hooks/{TOKEN}"
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    # The default 5 s timeout and 3 tries; only the backoff is shortened, to keep the test quick.
    sup = supervisor(local_store, backend, notifier=TransitionNotifier(
        lambda: url, sender_factory=lambda u: WebhookSender(u, backoff=0.01)))
    t0 = time.monotonic()
    drive_with_preemption(rec, backend, [sup])
    elapsed = time.monotonic() - t0
    assert rec.read_state()[0].state == State.SUCCEEDED
    assert elapsed < 2.0, f"supervisor passes took {elapsed:.1f}s with a {mode} webhook"
    receiver.release.set()  # the hung requests now get a 500
    assert sup.notifier.sender.flush(20)
    assert sup.notifier.sender.delivered == 0 and sup.notifier.sender.failed == 6
    err = capfd.readouterr().err
    assert "notification to webhook http://127.0.0.1/… failed" in err
    assert ("ConnectionRefusedError" if mode == "refused" else "HTTP 500 after 3 tries") in err
    assert err.count("failed (") == 1  # said once per streak, not per message
    assert TOKEN not in err
    sup.notifier.close(0)


def test_a_webhook_that_never_answers_is_given_up_on_after_the_timeout(receiver, capfd):
    receiver.mode = "hang"
    sender = WebhookSender(receiver.url, timeout=0.3, tries=2, backoff=0.01)
    t0 = time.monotonic()
    sender.send({"text": "x"})
    assert sender.flush(5)
    assert 0.6 <= time.monotonic() - t0 < 3
    assert sender.failed == 1 and len(receiver.paths) == 2
    err = capfd.readouterr().err
    assert "failed (no answer within 0.3s after 2 tries)" in err and TOKEN not in err
    sender.close(0)


def test_a_full_queue_drops_messages_instead_of_waiting(receiver, capfd):
    receiver.mode = "hang"
    sender = WebhookSender(receiver.url, max_queue=2, backoff=0.01)
    t0 = time.monotonic()
    results = [sender.send({"text": str(i)}) for i in range(10)]
    assert time.monotonic() - t0 < 0.5
    assert results.count(False) >= 7 and sender.dropped == results.count(False)
    assert "webhook http://127.0.0.1/… is not keeping up" in capfd.readouterr().err
    sender.close(0)  # stop taking messages; the queued ones fail fast once released
    receiver.release.set()
    assert sender.flush(10)


class SecretManager:
    """The Secret Manager REST `versions:access` call, for one secret."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value.encode()
        self.status = 200
        self.calls: list[str] = []

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        self.calls.append(f"{method} {raw_path}")
        if self.status != 200:
            return self.status, json.dumps({"error": {"code": self.status, "message": "denied"}})
        if method != "GET" or raw_path != f"/v1/{self.name}/versions/latest:access":
            return 404, json.dumps({"error": {"code": 404, "message": "not found"}})
        crc = int.from_bytes(google_crc32c.Checksum(self.value).digest(), "big")
        return 200, json.dumps({"name": f"{self.name}/versions/3",
                                "payload": {"data": base64.b64encode(self.value).decode(),
                                            "dataCrc32c": str(crc)}})


def test_the_url_comes_from_secret_manager_and_is_never_stored_or_printed(local_store, receiver, tmp_path, capfd):
    sm = SecretManager("projects/test-project/secrets/run-hook", receiver.url + "\n")
    with serve(sm, "secretmanager") as endpoint:
        cfg = Config(store=local_store.url, project="test-project", webhook_secret="run-hook",
                     secretmanager_endpoint=endpoint)
        backend = MemoryBackend(notice_seconds=0)
        rec = submit(local_store)
        sup = Context(cfg, local_store, backend).supervisor()
        assert sm.calls == []  # read on first use, not when the supervisor is made
        drive_with_preemption(rec, backend, [sup])
        flush(sup)
    assert sm.calls == ["GET /v1/projects/test-project/secrets/run-hook/versions/latest:access"]
    assert receiver.transitions() == EXPECTED
    assert all(p == f"/hooks/{TOKEN}" for p in receiver.paths)
    stored = all_bytes(Path(local_store.root))
    assert len(list(Path(local_store.root, "runs", "exp-1", NOTIFIED).iterdir())) == len(EXPECTED)
    assert TOKEN.encode() not in stored and receiver.url.encode() not in stored
    out = capfd.readouterr()
    assert TOKEN not in out.err and TOKEN not in out.out


def test_no_access_to_the_secret_says_which_role_to_grant_and_the_run_goes_on(local_store, receiver, capfd):
    sm = SecretManager("projects/test-project/secrets/run-hook", receiver.url)
    sm.status = 403
    with serve(sm, "secretmanager") as endpoint:
        cfg = Config(store=local_store.url, project="test-project", webhook_secret="run-hook",
                     secretmanager_endpoint=endpoint)
        backend = MemoryBackend(notice_seconds=0)
        rec = submit(local_store)
        sup = Context(cfg, local_store, backend).supervisor()
        drive_with_preemption(rec, backend, [sup])
    assert rec.read_state()[0].state == State.SUCCEEDED
    assert len(sm.calls) == 1  # said once, not retried every pass
    err = capfd.readouterr().err
    assert err.count("webhook notifications are off") == 1
    assert "roles/secretmanager.secretAccessor" in err and "projects/test-project/secrets/run-hook" in err
    assert receiver.received == []
    assert not Path(local_store.root, "runs", "exp-1", NOTIFIED).exists()


def test_the_environment_variable_comes_before_the_secret_and_nothing_means_no_notifier(receiver):
    cfg = Config(project="p", webhook_secret="hook", secretmanager_endpoint="http://127.0.0.1:9")
    n = notifier_from_config(cfg, env={"RUNNER_WEBHOOK_URL": receiver.url})
    assert n is not None and n._url_source() == receiver.url
    assert notifier_from_config(Config(), env={}) is None


def test_a_malformed_url_turns_notifications_off_without_showing_it(local_store, capfd):
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    n = notifier_from_config(Config(), env={"RUNNER_WEBHOOK_URL": f"hooks.example.com/{TOKEN}"})
    sup = supervisor(local_store, backend, notifier=n)
    sup.reconcile("exp-1")
    assert rec.read_state()[0].state == State.PROVISIONING
    err = capfd.readouterr().err
    assert "$RUNNER_WEBHOOK_URL does not hold an http(s) URL" in err and TOKEN not in err


def test_an_event_named_before_one_already_seen_is_still_announced(local_store, receiver):
    """A VM clock running ahead names the agent's event after the supervisor's next one."""
    backend = MemoryBackend(notice_seconds=0)
    rec = submit(local_store)
    sup = supervisor(local_store, backend, receiver.url)
    sup.reconcile("exp-1")
    st, gen = rec.read_state()
    ahead = RunRecord(local_store, "exp-1")
    ahead.event("agent", State.PROVISIONING, State.RUNNING, "job started", attempt=1)  # clock + 2 s:
    (late_name, late_ev), = [(n, e) for n, e in rec.events() if e["to"] == "RUNNING"]
    local_store.delete(late_name)
    local_store.write(late_name.replace(late_name.rsplit("/", 1)[-1].split("-")[0],
                                        f"{late_ev['time'] + 2:017.6f}"), json.dumps(late_ev).encode())
    sup.notifier.observe(rec, st, gen + 100)  # the pass that sees the agent's event first
    rec.event("supervisor", State.RUNNING, State.PREEMPTED, "gone", attempt=1)  # named before it
    sup.notifier.observe(rec, st, gen + 200)
    flush(sup)
    assert receiver.transitions() == [("PENDING", "PROVISIONING"), ("PROVISIONING", "RUNNING"),
                                      ("RUNNING", "PREEMPTED")]
