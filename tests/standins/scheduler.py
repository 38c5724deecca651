"""A loopback fake of the Cloud Scheduler API v1 (jobs) that the real ``google-cloud-scheduler``
REST client talks to, and that *delivers* its HTTP targets when a test ticks it.

Modelled from the REST reference (https://cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs,
read 2026-12) and https://cloud.google.com/scheduler/docs/http-target-auth:

- ``create``: ``job.name`` is required and must be ``{parent}/jobs/ID`` with ID of letters, digits,
  ``-`` or ``_`` (at most 500); a taken name is 409 ALREADY_EXISTS. ``schedule`` is required (unix
  cron, 5 fields: only the subset ``*``, ``*/N``, numbers, lists and ranges is parsed);
  ``timeZone`` must be a tz database name (default ``Etc/UTC``); an http target needs an
  ``http://``/``https://`` ``uri``; an ``oauthToken``/``oidcToken`` needs
  ``serviceAccountEmail``, and the service account must belong to the job's project.
  Output-only fields set by the client are refused. ``attemptDeadline`` of an HTTP target must
  be in [15 s, 30 min], ``retryCount`` in 0..5, ``description`` at most 500 characters (the
  ``Job`` reference). The job is ENABLED, with ``userUpdateTime``.
- Locations are Cloud Scheduler's own (``LOCATIONS``), fewer than Cloud Run's: the service came
  to regions one by one (its release notes: europe-west4, me-central1, me-central2 and me-west1
  on 2026-04-17; asia-southeast3 on 2026-09-18; asia-south2, europe-west12 and
  northamerica-northeast2 on 2026-09-24, https://docs.cloud.google.com/scheduler/docs/release-notes),
  and europe-west9, a Cloud Run region, has none (a schedule must live elsewhere:
  github.com/GoogleCloudPlatform/terraform-google-cloud-workflows/pull/37). ``LOCATIONS`` is the
  locations page's Americas rows as read (https://docs.cloud.google.com/scheduler/docs/locations),
  the App Engine regions it long matched (its overview: "available in all regions App Engine
  supports"), and those release-note additions; a region not known to be offered is left out.
  ``projects.locations.list`` answers them (``ListLocationsResponse``, ``pageSize``/``pageToken``).
  A job call in another location answers what Cloud Scheduler answered for one
  (github.com/hashicorp/terraform-provider-google/issues/7001): 403 ``lacks IAM permission
  "cloudscheduler.jobs.create" for the resource "projects/P/locations/L" (or the resource may
  not exist)`` — words that read as a missing role, which is why the product asks for the list
  first.
- ``get``/``delete``/``patch``/``:run``/``:pause``/``:resume`` of a missing job: 404 NOT_FOUND.
  ``patch`` applies ``updateMask`` (every field when absent) and bumps ``userUpdateTime``.
- ``denied`` holds permissions the deploying caller lacks (``cloudscheduler.jobs.create``...): the
  call answers 403 in IAM's words, ``lacks IAM permission "P" for the resource "R"``.
- ``tick()`` is one firing of every ENABLED job (the minute boundary); ``run`` forces one now.
  Delivering an http target POSTs it for real, rewriting known Google hosts to local fakes
  (``route(host_prefix, endpoint)``), with ``Authorization: Bearer fake-oauth:EMAIL`` for an
  ``oauthToken`` (an access token: what Google APIs such as run.googleapis.com accept) or
  ``fake-oidc:EMAIL`` for an ``oidcToken`` (an ID token: what Cloud Run *services* accept, and
  Google APIs refuse). The job's ``status`` (google.rpc.Status) and ``lastAttemptTime`` record
  the answer; a non-2xx answer is a failed attempt.
- ``disabled = True``: the API is not enabled in the project; every call answers 403 "Cloud
  Scheduler API has not been used in project N before or it is disabled. Enable it by visiting
  https://console.developers.google.com/apis/api/cloudscheduler.googleapis.com/overview?project=N ..."
  (the message users report, e.g. github.com/firebase/firebase-functions/issues/691) with an
  ErrorInfo ``SERVICE_DISABLED``.
Not modelled: retries with backoff, ``attemptDeadline`` enforcement, Pub/Sub and App Engine
targets, schedules beyond the parsed cron subset. Unknown paths answer 501.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
import requests
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import scheduler_v1
from google.rpc import code_pb2

from tests.standins.cloudbuild import ApiError, to_json
from tests.standins.network_guard import guarded_stand_in
from tests.standins.gcp_admin import disabled_api_error
from tests.standins.rest import RestFake
from tests.standins.json_http_server import serve

LOCATIONS = frozenset({
    "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1", "us-central1", "us-east1",
    "us-east4", "us-west1", "us-west2", "us-west3", "us-west4",
    "europe-central2", "europe-west1", "europe-west2", "europe-west3", "europe-west4", "europe-west6",
    "europe-west12",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-south2", "asia-southeast1", "asia-southeast2", "asia-southeast3", "australia-southeast1",
    "me-central1", "me-central2", "me-west1",
})
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")
_CRON_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*")
_OUTPUT_ONLY = ("user_update_time", "state", "status", "schedule_time", "last_attempt_time")
_HTTP_CODE = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
              404: code_pb2.NOT_FOUND, 409: code_pb2.ALREADY_EXISTS, 429: code_pb2.RESOURCE_EXHAUSTED,
              500: code_pb2.INTERNAL, 501: code_pb2.UNIMPLEMENTED, 503: code_pb2.UNAVAILABLE}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _copy(msg: Any) -> Any:
    return type(msg).deserialize(type(msg).serialize(msg))


def valid_cron(schedule: str) -> bool:
    fields = schedule.split()
    return len(fields) == 5 and all(_CRON_FIELD.fullmatch(f) for f in fields)


_L = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_J = _L + r"/jobs/(?P<job>[^/:]+)"
_ROUTES = [
    ("GET", r"/v1/projects/(?P<project>[^/]+)/locations", "locations.list"),
    ("POST", _L + r"/jobs", "jobs.create"),
    ("GET", _J, "jobs.get"),
    ("PATCH", _J, "jobs.patch"),
    ("DELETE", _J, "jobs.delete"),
    ("POST", _J + r":run", "jobs.run"),
    ("POST", _J + r":pause", "jobs.pause"),
    ("POST", _J + r":resume", "jobs.resume"),
]


class SchedulerFake(RestFake):
    """State and rules; ``handle`` (tests/standins/rest.py) serves one HTTP request. Thread-safe."""

    NAME = "scheduler fake"
    ROUTES = _ROUTES

    def __init__(self, project: str = "test-project", project_number: int = 123456789012) -> None:
        super().__init__()
        self.project = project
        self.project_number = project_number
        self.endpoint = ""
        self.jobs: dict[str, scheduler_v1.Job] = {}
        self.disabled = False  # the Cloud Scheduler API is not enabled in the project
        self.race_next_create = False  # the next create loses to a concurrent one of the same job (409)
        self.denied: set[str] = set()  # permissions the deploying caller lacks (cloudscheduler.jobs.create...)
        self.deliveries: list[tuple[str, str, int]] = []  # (job name, uri, HTTP status)
        self.locations: set[str] = set(LOCATIONS)  # where this fake offers Cloud Scheduler
        self._routes: dict[str, str] = {}

    def client(self) -> scheduler_v1.CloudSchedulerClient:
        return scheduler_v1.CloudSchedulerClient(transport="rest", credentials=AnonymousCredentials(),
                                                 client_options=ClientOptions(api_endpoint=self.endpoint))

    def route(self, prefix: str, endpoint: str) -> None:
        """Deliver targets whose URI starts with ``prefix`` (``https://run.googleapis.com``) to ``endpoint``."""
        self._routes[prefix] = endpoint

    # ---- firing ----
    def tick(self) -> list[int]:
        """One firing of every ENABLED job, as at a minute boundary; returns the HTTP statuses."""
        with self.lock:
            names = [n for n, j in self.jobs.items() if j.state == scheduler_v1.Job.State.ENABLED]
        return [self._deliver(n) for n in names]

    def _deliver(self, name: str) -> int:
        with self.lock:
            job = _copy(self.jobs[name])
        t = job.http_target
        url = t.uri
        for prefix, endpoint in self._routes.items():
            if url.startswith(prefix):
                url = endpoint + url[len(prefix):]
                break
        else:
            raise AssertionError(f"scheduler fake: no route for {t.uri}; call route() first")
        headers = dict(t.headers)
        if t.oauth_token.service_account_email:
            headers["Authorization"] = f"Bearer fake-oauth:{t.oauth_token.service_account_email}"
        elif t.oidc_token.service_account_email:
            headers["Authorization"] = f"Bearer fake-oidc:{t.oidc_token.service_account_email}"
        method = scheduler_v1.HttpMethod(t.http_method or 1).name
        resp = requests.request(method, url, data=t.body or None, headers=headers, timeout=60)
        with self.lock:
            cur = self.jobs.get(name)
            if cur is not None:
                cur.last_attempt_time = _now()
                code = code_pb2.OK if resp.status_code < 300 else _HTTP_CODE.get(resp.status_code, code_pb2.UNKNOWN)
                cur.status = {"code": code, "message": "" if code == code_pb2.OK else resp.text[:300]}
            self.deliveries.append((name, t.uri, resp.status_code))
        return resp.status_code

    # ---- validation ----
    def _validate(self, job: scheduler_v1.Job, name: str, creating: bool) -> None:
        if creating:
            for f in _OUTPUT_ONLY:
                if f in job and getattr(job, f):
                    raise ApiError(400, f"job.{f} is output only")
        if len(job.description) > 500:
            raise ApiError(400, "job.description must not contain more than 500 characters")
        if "attempt_deadline" in job and not timedelta(seconds=15) <= job.attempt_deadline <= timedelta(minutes=30):
            raise ApiError(400, "attempt_deadline for an HTTP target must be in [15s, 30m]")
        if "retry_config" in job and not 0 <= job.retry_config.retry_count <= 5:
            raise ApiError(400, "retry_config.retry_count must be between 0 and 5")
        if not job.schedule or not valid_cron(job.schedule):
            raise ApiError(400, f"Schedule or time zone is invalid: {job.schedule!r}")
        try:
            ZoneInfo(job.time_zone or "Etc/UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ApiError(400, f"Schedule or time zone is invalid: time zone {job.time_zone!r}") from None
        if "http_target" in job:
            t = job.http_target
            if not re.match(r"https?://", t.uri):
                raise ApiError(400, f"HttpTarget.uri {t.uri!r} must start with http:// or https://")
            for kind in ("oauth_token", "oidc_token"):
                if kind in t:
                    email = getattr(t, kind).service_account_email
                    if not email:
                        raise ApiError(400, f"HttpTarget.{kind}.service_account_email is required")
                    if not (email.endswith(f"@{self.project}.iam.gserviceaccount.com")
                            or email.startswith(f"{self.project_number}-compute@")):
                        raise ApiError(400, f"The service account {email} must belong to project {self.project}")
        else:
            raise ApiError(400, "a job needs a target (httpTarget, pubsubTarget or appEngineHttpTarget)")

    def _name(self, a: dict[str, str], rpc: str = "jobs.get") -> str:
        if a["project"] not in (self.project, str(self.project_number)):
            raise ApiError(403, f"Permission denied on resource project {a['project']}.")
        if a["location"] not in self.locations:
            permission = "cloudscheduler." + rpc.replace("jobs.patch", "jobs.update")
            raise ApiError(403, f"The principal (user or service account) lacks IAM permission \"{permission}\" for "
                                f"the resource \"projects/{a['project']}/locations/{a['location']}\" (or the "
                                "resource may not exist).")
        return f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}" if "job" in a else \
            f"projects/{self.project}/locations/{a['location']}"

    def _get(self, name: str) -> scheduler_v1.Job:
        job = self.jobs.get(name)
        if job is None:
            raise ApiError(404, f"Job not found: {name}")
        return job

    def _locations(self, a: dict[str, str], q: dict[str, str]) -> dict[str, Any]:
        if a["project"] not in (self.project, str(self.project_number)):
            raise ApiError(403, f"Permission denied on resource project {a['project']}.")
        names = sorted(self.locations)
        start = int(q.get("pageToken") or 0)
        size = int(q.get("pageSize") or 0) or 20  # pages, so a client that reads one page is caught
        page = names[start:start + size]
        out: dict[str, Any] = {"locations": [{"name": f"projects/{self.project}/locations/{n}", "locationId": n}
                                             for n in page]}
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def _dispatch(self, rpc: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        if rpc == "locations.list":
            if "cloudscheduler.locations.list" in self.denied:
                raise ApiError(403, "The principal (user or service account) lacks IAM permission "
                                    f"\"cloudscheduler.locations.list\" for the resource \"projects/{a['project']}\" "
                                    "(or the resource may not exist).")
            return self._locations(a, q)
        permission = "cloudscheduler." + rpc.replace("jobs.patch", "jobs.update")
        if permission in self.denied:
            raise ApiError(403, f"The principal (user or service account) lacks IAM permission \"{permission}\" for "
                                f"the resource \"{self._name(a, rpc)}\" (or the resource may not exist).")
        if rpc == "jobs.create":
            parent = self._name(a, rpc)
            job = scheduler_v1.Job.from_json(body or b"{}", ignore_unknown_fields=False)
            m = re.fullmatch(r"(projects/[^/]+/locations/[^/]+)/jobs/([^/]+)", job.name or "")
            if not m or not JOB_ID_RE.fullmatch(m.group(2)):
                raise ApiError(400, f"Job name {job.name!r} must be {parent}/jobs/JOB_ID "
                                    "(letters, numbers, hyphens, underscores; at most 500)")
            if m.group(1).replace(a["project"], self.project) != parent:
                raise ApiError(400, f"Job name {job.name} is not under parent {parent}")
            self._validate(job, job.name, creating=True)
            name = f"{parent}/jobs/{m.group(2)}"
            if self.race_next_create and name not in self.jobs:
                self.race_next_create = False
                self._dispatch(rpc, a, q, body)  # another deployer, with the same plan, lands first
            if name in self.jobs:
                raise ApiError(409, f"Job {name} already exists.")
            job.name = name
            job.time_zone = job.time_zone or "Etc/UTC"
            job.state = scheduler_v1.Job.State.ENABLED
            job.user_update_time = _now()
            self.jobs[name] = job
            return job
        if rpc == "jobs.get":
            return self._get(self._name(a, rpc))
        if rpc == "jobs.delete":
            name = self._name(a, rpc)
            self._get(name)
            del self.jobs[name]
            return {}
        if rpc == "jobs.patch":
            name = self._name(a, rpc)
            cur = self._get(name)
            sent = scheduler_v1.Job.from_json(body or b"{}", ignore_unknown_fields=False)
            mask = [p for p in q.get("updateMask", "").split(",") if p]
            new = _copy(cur)
            fields = mask or ["description", "schedule", "time_zone", "http_target", "retry_config",
                              "attempt_deadline"]
            for path in fields:
                attr = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), path.split(".")[0])
                if attr in _OUTPUT_ONLY or attr == "name":
                    raise ApiError(400, f"updateMask path {path!r} is not updatable")
                setattr(new, attr, getattr(sent, attr))
            self._validate(new, name, creating=False)
            new.user_update_time = _now()
            self.jobs[name] = new
            return new
        if rpc in ("jobs.pause", "jobs.resume"):
            job = self._get(self._name(a, rpc))
            job.state = scheduler_v1.Job.State.PAUSED if rpc == "jobs.pause" else scheduler_v1.Job.State.ENABLED
            return job
        if rpc == "jobs.run":
            name = self._name(a, rpc)
            self._get(name)
            threading.Thread(target=self._deliver, args=(name,), daemon=True).start()
            return self.jobs[name]
        raise ApiError(501, f"scheduler fake: {rpc} is not implemented")

    def answer(self, rpc: str, args: dict[str, str], q: dict[str, str], body: bytes, headers: dict[str, str],
               int_enums: bool) -> str:
        if self.disabled:
            raise disabled_api_error("Cloud Scheduler API", "cloudscheduler.googleapis.com", self.project_number)
        result = self._dispatch(rpc, args, q, body)
        return json.dumps(result) if isinstance(result, dict) else to_json(result, int_enums=int_enums)


@contextmanager
def run_scheduler_fake(project: str = "test-project") -> Iterator[SchedulerFake]:
    fake = SchedulerFake(project)
    with serve(fake, "scheduler-fake") as endpoint:
        fake.endpoint = endpoint
        yield fake


@pytest.fixture
def scheduler_fake() -> Iterator[SchedulerFake]:
    with guarded_stand_in(run_scheduler_fake(), "scheduler fake") as fake:
        yield fake
