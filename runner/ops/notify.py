"""Webhook notifications on run state changes, in JSON that Slack and Discord both accept.

The URL is read by the supervisor process only: ``RUNNER_WEBHOOK_URL`` in its environment, else
the Secret Manager secret named by the ``webhook_secret`` config key. It never goes into VM
metadata, the store, the journal, labels or logs; messages name its scheme and host only. A
webhook URL is a credential (whoever holds it can post to the channel).

What is announced: every state transition in a run's events journal (``from != to``), whoever
made it (the supervisor, or the agent in the VM: RUNNING, SUCCEEDED...), whose time is at or
after this supervisor started. Older transitions are never sent, so a supervisor that restarts
does not replay history; the price is that transitions made while no notifying supervisor ran
are not announced (``runner ops status`` shows where a run is).

Exactly once across supervisors: each transition is claimed by creating
``runs/<ID>/notified/<event name>`` (create-only); only the supervisor whose create wins sends.
The claim comes before the send, so a delivery that fails is lost, never repeated (at most once).

Cheap per pass: a run's journal is listed only when its ``state.json`` generation changed since
the previous pass (the supervisor reads the state anyway), and for a short while after, until
the journal shows the state's transition (an event is written just after the state it records).

Never in the run's way: sending happens on a background thread with a bounded queue, a short
timeout and a few retries (429, 5xx, network errors); failures are said on stderr, once per
streak of failures, and nothing here raises into the supervisor.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from entrypoint.record import DamagedRecord, RunPaths, RunRecord, RunState, State, event_id as event_id_of, parse_event_name
from runner.naming import default_actor

WEBHOOK_URL_ENV = "RUNNER_WEBHOOK_URL"
SECRET_MANAGER = "https://secretmanager.googleapis.com"
NOTIFIED = RunPaths.NOTIFIED  # under runs/<ID>/: one create-only claim per announced event
MAX_TEXT = 1900  # Discord rejects content over 2000 characters


class WebhookError(Exception):
    """The webhook URL could not be obtained; the message says what to fix (never the URL)."""


def mask_url(url: str) -> str:
    """What may be shown of a webhook URL: its scheme and host. The path is the secret part."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


def _checked_url(url: str, where: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        # Not even a masked form: a value that is not a URL could be anything.
        raise WebhookError(f"{where} does not hold an http(s) URL")
    return url


# ---- where the URL comes from ----

def secret_version_name(secret: str, project: str | None) -> str:
    """``NAME``, ``projects/P/secrets/NAME`` or ``.../versions/V`` → a full version name."""
    name = secret.strip().strip("/")
    if not name.startswith("projects/"):
        if not project:
            raise WebhookError(f"webhook_secret {secret!r} needs a project: set project, or name the "
                               "secret in full as projects/PROJECT/secrets/NAME")
        name = f"projects/{project}/secrets/{name}"
    if "/versions/" not in name:
        name += "/versions/latest"
    return name


def read_secret_url(secret: str, project: str | None, endpoint: str | None = None,
                    timeout: float = 10.0) -> str:
    """The webhook URL held by a Secret Manager secret (REST ``versions:access``).

    Raises ``WebhookError`` saying what to fix: no credentials, no access (which role to grant
    to whom), no such secret, a payload that fails its CRC32C or is not a URL.
    """
    import requests
    from google.auth.exceptions import DefaultCredentialsError

    from runner.cloud.gcp_rest import ApiError, rest_api

    name = secret_version_name(secret, project)
    try:
        api = rest_api(endpoint, SECRET_MANAGER)
        api.attempts, api.timeout = 2, timeout
        doc = api.get(f"/v1/{name}:access")
    except DefaultCredentialsError as e:
        raise WebhookError(f"no Google credentials to read {name} from Secret Manager ({e}); run "
                           f"`gcloud auth application-default login`, or set {WEBHOOK_URL_ENV}") from None
    except (requests.RequestException, OSError) as e:
        raise WebhookError(f"could not reach Secret Manager at {endpoint or SECRET_MANAGER} to read {name} "
                           f"({type(e).__name__})") from None
    except ApiError as e:
        if e.code == 403:
            who = getattr(api.session.credentials, "service_account_email", None)
            member = f"serviceAccount:{who}" if who and "@" in who else "MEMBER (the supervisor's identity)"
            short = name.split("/versions/")[0]
            raise WebhookError(
                f"permission denied reading {name}: grant roles/secretmanager.secretAccessor on the secret "
                f"to the supervisor's identity, e.g. `gcloud secrets add-iam-policy-binding "
                f"{short.split('/')[-1]} --project {short.split('/')[1]} --member {member} "
                "--role roles/secretmanager.secretAccessor`") from None
        if e.code == 404:
            raise WebhookError(f"{name} not found (no such secret, or no enabled version): "
                               "create it with `gcloud secrets create` and `gcloud secrets versions add`") from None
        raise WebhookError(f"Secret Manager answered HTTP {e.code} for {name}: {e.message}") from None
    try:
        payload = doc["payload"]
        data = base64.b64decode(payload["data"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise WebhookError(f"Secret Manager's answer for {name} has no readable payload") from None
    if payload.get("dataCrc32c") is not None:
        import google_crc32c

        if int(payload["dataCrc32c"]) != int.from_bytes(google_crc32c.Checksum(data).digest(), "big"):
            raise WebhookError(f"the payload of {name} failed its CRC32C check")
    try:
        return _checked_url(data.decode(), f"secret {name}")
    except UnicodeDecodeError:
        raise WebhookError(f"secret {name} does not hold an http(s) URL") from None


def notifier_from_config(cfg: Any, env: Mapping[str, str] | None = None) -> "TransitionNotifier | None":
    """The notifier this supervisor process should use, or None when none is configured.

    The URL is resolved on first use (a ``--dry-run`` never reads the secret), and a failure to
    resolve it is said once on stderr, after which the supervisor runs without notifications.
    """
    env = os.environ if env is None else env
    url = env.get(WEBHOOK_URL_ENV, "").strip()
    if url:
        return TransitionNotifier(lambda: _checked_url(url, f"${WEBHOOK_URL_ENV}"))
    if cfg.webhook_secret:
        return TransitionNotifier(lambda: read_secret_url(cfg.webhook_secret, cfg.project,
                                                          cfg.secretmanager_endpoint))
    return None


# ---- what is sent ----

def transition_payload(run_id: str, event_id: str, ev: Mapping[str, Any], zone: str | None) -> dict[str, Any]:
    """Slack reads ``text``, Discord ``content``; both ignore ``runner`` (for other receivers)."""
    details = ", ".join(x for x in (f"attempt {ev['attempt']}" if ev.get("attempt") else None, zone) if x)
    reason = ev.get("reason")
    text = (f"run {run_id}: {ev.get('from') or 'new'} → {ev['to']}"
            + (f" ({details})" if details else "") + (f" — {reason}" if reason else ""))
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    return {
        "text": text,
        "content": text,
        "runner": {"run_id": run_id, "event": event_id, "from": ev.get("from"), "to": ev["to"],
                   "attempt": ev.get("attempt"), "zone": zone, "reason": reason,
                   "time": ev.get("time"), "actor": ev.get("actor")},
    }


# ---- how it is sent ----

class WebhookSender:
    """Posts JSON documents to one URL from a background thread; ``send`` never blocks.

    At most ``max_queue`` documents wait; more are dropped (and counted). Each document gets
    ``tries`` attempts, ``timeout`` seconds each, with doubling backoff on 429, 5xx and network
    errors; any other answer is final. Failures are said on stderr with the host only.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, tries: int = 3, backoff: float = 1.0,
                 max_queue: int = 100, exit_wait: float = 5.0) -> None:
        self._url = url
        self.shown = mask_url(url)
        self.timeout = timeout
        self.tries = tries
        self.backoff = backoff
        self.max_queue = max_queue
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._busy = False
        self._closed = False
        self._failing = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="webhook-sender", daemon=True)
        self._thread.start()
        # `runner supervise --once` exits right after its pass: give queued messages a moment.
        atexit.register(self.close, exit_wait)

    def send(self, doc: dict[str, Any]) -> bool:
        """Queue ``doc``; False if it was dropped (queue full, or closed)."""
        with self._cv:
            if self._closed or len(self._pending) >= self.max_queue:
                self.dropped += 1
                if self.dropped == 1:
                    _say(f"webhook {self.shown} is not keeping up: notifications are being dropped")
                return False
            self._pending.append(doc)
            self._cv.notify_all()
            return True

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued was delivered or given up on; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop taking documents. Idempotent."""
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        atexit.unregister(self.close)

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                doc = self._pending.popleft()
                self._busy = True
            try:
                self._deliver(doc)
            except Exception as e:  # noqa: BLE001 - the sender thread must outlive any one message
                self._failed(f"{type(e).__name__}")
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _deliver(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        outcome = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            retry, outcome = self._post(body)
            if not outcome:
                self.delivered += 1
                if self._failing:
                    self._failing = False
                    _say(f"webhook {self.shown} is delivering again")
                return
            if not retry:
                break
        self._failed(f"{outcome} after {attempt + 1} tr{'y' if attempt == 0 else 'ies'}")

    def _post(self, body: bytes) -> tuple[bool, str]:
        """(retry?, what went wrong) — an empty description means delivered."""
        req = urllib.request.Request(self._url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "cos-spot-runner"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
                return False, ""
        except urllib.error.HTTPError as e:
            return e.code == 429 or e.code >= 500, f"HTTP {e.code}"
        except urllib.error.URLError as e:
            return True, self._scrub(f"{type(e.reason).__name__}: {e.reason}")
        except (TimeoutError, OSError) as e:
            what = f"no answer within {self.timeout:g}s" if isinstance(e, TimeoutError) else type(e).__name__
            return True, what

    def _scrub(self, text: str) -> str:
        path = urlsplit(self._url).path
        text = text.replace(self._url, self.shown)
        return text.replace(path, "/…") if len(path) > 1 else text

    def _failed(self, why: str) -> None:
        self.failed += 1
        if not self._failing:
            self._failing = True
            _say(f"notification to webhook {self.shown} failed ({why}); runs are unaffected. "
                 "Further failures are not reported until one succeeds")


def _say(msg: str) -> None:
    print(f"runner: {msg}", file=sys.stderr)


# ---- which changes, exactly once ----

@dataclass
class _Cursor:
    generation: int
    # Journal names already looked at, back to ``horizon`` (the newest one's time less the lag
    # window). Not a single "newest seen" mark: events carry their writer's clock, so a VM whose
    # clock runs ahead can name its event after one the supervisor writes a moment later.
    seen: set[str]
    horizon: float
    latest: tuple[str, int] | None  # (to, attempt) of the newest transition seen
    caught_up: bool  # the journal already shows the state's own transition
    # Zones of attempts that reached RUNNING. Only the agent's RUNNING write sets the state's
    # zone, so before it (PROVISIONING, a stall while booting) the zone is the previous attempt's.
    zones: dict[int, str | None]


class TransitionNotifier:
    """Turns a run's journal into webhook messages; ``observe`` is the supervisor's one hook.

    ``url_source`` is called once, on the first ``observe``; if it raises ``WebhookError`` the
    reason is said on stderr and this notifier does nothing from then on.
    """

    def __init__(self, url_source: Callable[[], str], *, since: float | None = None,
                 actor: str | None = None, lag_window: float = 60.0,
                 sender_factory: Callable[[str], WebhookSender] = WebhookSender) -> None:
        self.since = time.time() if since is None else since
        self.actor = actor or default_actor()
        self.lag_window = lag_window
        self._url_source = url_source
        self._sender_factory = sender_factory
        self.sender: WebhookSender | None = None
        self._disabled = False
        self._cursors: dict[str, _Cursor] = {}

    def _ready(self) -> bool:
        """Whether there is a URL to send to; resolves it on the first call only."""
        if self.sender is None and not self._disabled:
            try:
                self.sender = self._sender_factory(self._url_source())
            except WebhookError as e:
                self._disabled = True
                _say(f"webhook notifications are off: {e}")
            except Exception as e:  # noqa: BLE001 - a notifier must never stop supervision
                self._disabled = True
                _say(f"webhook notifications are off: could not get the URL ({type(e).__name__})")
        return self.sender is not None

    def observe(self, rec: RunRecord, state: RunState, generation: int) -> None:
        """Announce the run's new transitions, if its state changed. Never raises, never waits
        on the webhook; costs nothing when the state generation is the one seen last pass."""
        try:
            self._observe(rec, state, generation)
        except Exception as e:  # noqa: BLE001 - see the docstring
            _say(f"notifications for {rec.run_id} skipped this pass ({type(e).__name__}: {e})")

    def _observe(self, rec: RunRecord, st: RunState, gen: int) -> None:
        cur = self._cursors.get(rec.run_id)
        if cur is not None and cur.generation == gen and cur.caught_up:
            return
        if cur is None and st.updated_at < self.since - self.lag_window:
            # Its last change is older than this supervisor: nothing it would announce.
            self._cursors[rec.run_id] = _Cursor(gen, set(), self.since, None, True, {})
            return
        if not self._ready():
            return
        assert self.sender is not None
        seen, horizon, latest = (set(cur.seen), cur.horizon, cur.latest) if cur else (set(), self.since, None)
        zones = dict(cur.zones) if cur else {}
        if st.state == State.RUNNING:
            zones[st.attempt] = st.zone
        for name in rec.event_names():
            event_id = event_id_of(name)
            if name in seen or _name_time(name) < max(horizon, self.since):
                continue  # looked at already, or before our time: not even read
            try:
                ev = rec.read_event(name)
            except DamagedRecord as e:
                # Torn: nothing to announce from it, and it will not mend; the rest still goes out.
                print(f"runner: notify: {e}: not announced", file=sys.stderr)
                seen.add(name)
                continue
            if ev is None:
                continue  # listed, then gone: the journal is append-only, so this is a fluke
            seen.add(name)
            if not ev.get("to") or ev.get("from") == ev["to"]:
                continue  # a note ("create failed, retrying..."), not a transition
            attempt = ev.get("attempt") or 0
            latest = (ev["to"], attempt)
            if ev["to"] == State.RUNNING.value:
                zones.setdefault(attempt, None)
            if attempt in zones and zones[attempt] is None and attempt == st.attempt:
                zones[attempt] = st.zone
            if float(ev.get("time") or 0) < self.since or not self._claim(rec, event_id):
                continue
            self.sender.send(transition_payload(rec.run_id, event_id, ev, zones.get(attempt)))
        # The state's own event lands just after the state: keep looking for it a little while.
        caught_up = (latest == (st.state.value, st.attempt) or st.updated_at < self.since
                     or time.time() - st.updated_at > self.lag_window)
        zones = {a: z for a, z in zones.items() if a >= st.attempt - 1}
        if seen:
            horizon = max(horizon, max(_name_time(n) for n in seen) - self.lag_window)
            seen = {n for n in seen if _name_time(n) >= horizon}
        self._cursors[rec.run_id] = _Cursor(gen, seen, horizon, latest, caught_up, zones)

    def _claim(self, rec: RunRecord, event_id: str) -> bool:
        return rec.claim_notified(event_id, self.actor)  # False: another supervisor announces this one

    def close(self, timeout: float = 5.0) -> None:
        if self.sender is not None:
            self.sender.close(timeout)


def _name_time(name: str) -> float:
    """The timestamp an event's name carries."""
    try:
        return parse_event_name(name).time
    except ValueError:
        return float("inf")  # an unexpected name: read it rather than skip it
