"""A loopback fake of the Cloud Run Admin API v2 (jobs, executions, operations, job IAM) that the
real ``google-cloud-run`` REST client talks to::

    client = run_v2.JobsClient(transport="rest", credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=fake.endpoint))

Bodies are the library's own types (``run_v2.Job``, ``run_v2.Execution``,
``google.longrunning.Operation`` with Any-packed metadata/response, ``iam_policy`` protos),
serialized as the service does (camelCase JSON, int enums when the client asks for them).

Modelled from the REST reference (https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.jobs,
read 2026-12): paths ``/v2/projects/P/locations/L/jobs[/J][:run|:getIamPolicy|:setIamPolicy]`` and
``/v2/projects/P/locations/L/operations/O``; ``create`` needs ``jobId`` (a DNS label:
``[a-z]([-a-z0-9]{0,61}[a-z0-9])?``), answers 409 ALREADY_EXISTS for a taken name and returns a
long-running Operation (metadata and response: the Job), not done until it is polled once;
``get``/``patch``/``delete``/``run`` of a missing job answer 404 NOT_FOUND; ``patch`` with a stale
``etag`` answers 409 ABORTED; every accepted ``patch`` bumps ``generation`` and ``etag`` even when
nothing changed (so a product that redeploys blindly is caught); output-only fields sent by the
client are refused (400). Defaults the server fills in when absent: ``maxRetries`` 3, ``timeout``
600s, ``taskCount``/``parallelism`` 1, ``resources.limits`` cpu 1000m memory 512Mi
(https://cloud.google.com/run/docs/configuring/jobs/...). Env var names must be unique and not
reserved by the job contract (``CLOUD_RUN_JOB``, ``CLOUD_RUN_EXECUTION``, ``CLOUD_RUN_TASK_*``);
a container needs an image; ``timeout`` at most 168 h; ``maxRetries`` 0..10.

IAM, modelled where a product can get it wrong: ``denied`` holds permissions the (anonymous)
deploying caller lacks (``run.jobs.create``, ``iam.serviceAccounts.actAs``...): the call answers
403 PERMISSION_DENIED naming the permission, as Cloud Run does. A request carrying
``Authorization: Bearer fake-oauth:EMAIL`` (what ``tests/standins/scheduler.py`` sends for an
``oauthToken``) acts as that service account: ``:run`` needs ``roles/run.invoker`` (or developer,
admin) for it on the job's policy or in ``project_roles``. A Bearer token that is not an OAuth
access token (``fake-oidc:...``, an OIDC ID token) is rejected with 401, as Google APIs do.
``tokens`` maps opaque access tokens (what a VM's metadata server hands out for its service
account, ``instance/service-accounts/default/token``) to that account: such a caller is judged
like any other, by its own roles, so a VM account without ``run.invoker`` on the job gets 403. A
Bearer token the fake does not know is refused with 401 UNAUTHENTICATED, as Google APIs refuse an
invalid or expired token ("401 Request had invalid authentication credentials", as reported in
https://github.com/googleapis/python-api-core/issues/223). A created Execution's ``creator``
is the caller's email, as the service fills that output-only field
(https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.jobs.executions).

``:run`` creates an Execution named ``{job}/executions/{job}-{5 chars}`` and hands it to
``executor(job, execution, env) -> exit code`` on a thread (tests run the container for real);
the Execution records ``succeededCount``/``failedCount`` and ``completionTime`` when it returns.
``disabled = True`` is the API not enabled in the project: every call answers 403
PERMISSION_DENIED "Cloud Run Admin API has not been used in project N before or it is disabled.
Enable it by visiting https://console.developers.google.com/apis/api/run.googleapis.com/overview?project=N
then retry." with an ErrorInfo ``SERVICE_DISABLED`` naming the service (the shape Google APIs
answer, as tests/standins/gcp_admin.py models it).

Not modelled: revisions of templates, task retries, VPC, volumes, Binary Authorization,
``validateOnly``; listing executions. Unknown paths answer 501.
"""

from __future__ import annotations

import itertools
import random
import re
import string
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Optional

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import json_format

from tests.standins.cloudbuild import ApiError, to_json
from tests.standins.network_guard import guarded_stand_in
from tests.standins.gcp_admin import disabled_api_error
from tests.standins.rest import RestFake
from tests.standins.json_http_server import serve

# Cloud Run's regions, tier 1 and tier 2, as its locations page lists them
# (https://cloud.google.com/run/docs/locations, read 2026-12). Cloud Scheduler offers fewer
# (tests/standins/scheduler.py LOCATIONS): europe-west9, for one, is here and not there.
REGIONS = {
    "asia-east1", "asia-northeast1", "asia-northeast2", "europe-north1", "europe-southwest1", "europe-west1",
    "europe-west4", "europe-west8", "europe-west9", "me-west1", "us-central1", "us-east1", "us-east4", "us-east5",
    "us-south1", "us-west1",
    "africa-south1", "asia-east2", "asia-northeast3", "asia-southeast1", "asia-southeast2", "asia-south1",
    "asia-south2", "australia-southeast1", "australia-southeast2", "europe-central2", "europe-west10",
    "europe-west12", "europe-west2", "europe-west3", "europe-west6", "me-central1", "me-central2",
    "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1", "southamerica-west1", "us-west2",
    "us-west3", "us-west4",
}
JOB_ID_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = {"CLOUD_RUN_JOB", "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT",
                "CLOUD_RUN_TASK_COUNT", "PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"}
INVOKER_ROLES = {"roles/run.invoker", "roles/run.developer", "roles/run.admin", "roles/owner", "roles/editor"}
_OUTPUT_ONLY = ("uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
                "last_modifier", "observed_generation", "terminal_condition", "execution_count",
                "latest_created_execution", "reconciling", "etag")
Executor = Callable[[run_v2.Job, run_v2.Execution, dict[str, str]], int]


_L = r"/v2/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_J = _L + r"/jobs/(?P<job>[^/:]+)"
_ROUTES = [
    ("POST", _L + r"/jobs", "jobs.create"),
    ("GET", _J, "jobs.get"),
    ("PATCH", _J, "jobs.patch"),
    ("DELETE", _J, "jobs.delete"),
    ("POST", _J + r":run", "jobs.run"),
    ("GET", _J + r":getIamPolicy", "jobs.getIamPolicy"),
    ("POST", _J + r":setIamPolicy", "jobs.setIamPolicy"),
    ("GET", r"/v2/(?P<name>projects/[^/]+/locations/[^/]+/operations/[^/:]+)", "operations.get"),
]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _copy(msg: Any) -> Any:
    return type(msg).deserialize(type(msg).serialize(msg))


class CloudRunFake(RestFake):
    """State and rules; ``handle`` (tests/standins/rest.py) serves one HTTP request. Thread-safe."""

    NAME = "cloudrun fake"
    ROUTES = _ROUTES

    def __init__(self, project: str = "test-project", project_number: int = 123456789012) -> None:
        super().__init__()
        self.project = project
        self.project_number = project_number
        self.endpoint = ""
        self.jobs: dict[str, run_v2.Job] = {}
        self.executions: dict[str, run_v2.Execution] = {}
        self.policies: dict[str, policy_pb2.Policy] = {}
        self.project_roles: dict[str, set[str]] = {}  # member -> roles held on the project
        self.denied: set[str] = set()  # permissions the deploying caller lacks
        self.disabled = False  # the Cloud Run Admin API is not enabled in the project
        self.race_next_create = False  # the next create loses to a concurrent one of the same job (409)
        self.race_next_set_policy = False  # the next setIamPolicy loses to another writer's (409 ABORTED)
        self.delete_before_next_patch = False  # a concurrent delete lands just before the next patch (404)
        self.executor: Optional[Executor] = None
        self.tokens: dict[str, str] = {}  # opaque OAuth access token -> the service account it is for
        self._ops: dict[str, tuple[operations_pb2.Operation, Callable[[], bool]]] = {}
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(0)
        self._seq = itertools.count(1)

    # ---- inspection ----
    def client(self) -> run_v2.JobsClient:
        return run_v2.JobsClient(transport="rest", credentials=AnonymousCredentials(),
                                 client_options=ClientOptions(api_endpoint=self.endpoint))

    def wait_executions(self, timeout: float = 300) -> None:
        """Block until every execution started so far has finished."""
        deadline = time.time() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.time()))

    def executions_of(self, job_name: str) -> list[run_v2.Execution]:
        with self.lock:
            return [_copy(e) for e in self.executions.values() if e.job == job_name.rsplit("/", 1)[-1]
                    and e.name.startswith(job_name + "/")]

    # ---- helpers ----
    def _parent(self, project: str, location: str) -> None:
        if project not in (self.project, str(self.project_number)):
            raise ApiError(403, f"Permission denied on resource project {project}.")
        if location not in REGIONS:
            raise ApiError(400, f"Location '{location}' is not a valid Cloud Run region.")

    def _job(self, name: str) -> run_v2.Job:
        job = self.jobs.get(name)
        if job is None:
            _, p, _, loc, _, jid = name.split("/")
            raise ApiError(404, f"Resource '{jid}' of kind 'JOB' in region '{loc}' in project '{p}' does not exist.")
        return job

    def _check(self, permission: str, resource: str) -> None:
        if permission in self.denied:
            raise ApiError(403, f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).")

    def _validate(self, job: run_v2.Job, name: str) -> None:
        for f in _OUTPUT_ONLY:
            if f in job and getattr(job, f):
                raise ApiError(400, f"job.{f}: output only field must not be set")
        tt = job.template.template
        if not tt.containers:
            raise ApiError(400, "job.template.template.containers: at least one container is required")
        for i, c in enumerate(tt.containers):
            if not c.image:
                raise ApiError(400, f"job.template.template.containers[{i}].image: required")
            names = [e.name for e in c.env]
            for n in names:
                if not ENV_NAME_RE.fullmatch(n):
                    raise ApiError(400, f"env var name {n!r} is not a valid C identifier")
                if n in RESERVED_ENV:
                    raise ApiError(400, f"The following reserved env names were provided: {n}. "
                                        "These values are automatically set by the system.")
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ApiError(400, f"duplicate env var names: {', '.join(sorted(dup))}")
        if "max_retries" in tt and not 0 <= tt.max_retries <= 10:
            raise ApiError(400, "job.template.template.max_retries must be between 0 and 10")
        if "timeout" in tt and not timedelta(0) < tt.timeout <= timedelta(hours=168):
            raise ApiError(400, "job.template.template.timeout must be positive and at most 168h")
        sa = tt.service_account
        if sa:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com|\d+-compute@developer\.gserviceaccount\.com", sa):
                raise ApiError(400, f"service account {sa!r} is not a service account email")
            if "iam.serviceAccounts.actAs" in self.denied:
                # Cloud Run's own words, lowercase "serviceaccounts" included (as users report it,
                # e.g. github.com/GoogleCloudPlatform/cloud-run-release-manager/issues/81).
                raise ApiError(403, f"Permission 'iam.serviceaccounts.actAs' denied on service account {sa} "
                                    "(or it may not exist).")

    @staticmethod
    def _fill_defaults(job: run_v2.Job) -> None:
        tt = job.template.template
        if "max_retries" not in tt:
            tt.max_retries = 3
        if "timeout" not in tt:
            tt.timeout = timedelta(seconds=600)
        if not job.template.task_count:
            job.template.task_count = 1
        if not job.template.parallelism:
            job.template.parallelism = 1
        for c in tt.containers:
            if not c.resources.limits:
                c.resources.limits = {"cpu": "1000m", "memory": "512Mi"}

    def _operation(self, location: str, metadata: Any, done: Callable[[], bool],
                   response: Callable[[], Any]) -> operations_pb2.Operation:
        name = f"projects/{self.project}/locations/{location}/operations/{uuid.UUID(int=self._rng.getrandbits(128))}"
        op = operations_pb2.Operation(name=name, done=False)
        op.metadata.Pack(type(metadata).pb(metadata))
        polled = [0]

        def is_done() -> bool:
            polled[0] += 1
            if polled[0] >= 1 and done():
                op.done = True
                op.response.Pack(type(response()).pb(response()))
            return op.done

        self._ops[name] = (op, is_done)
        return op

    # ---- rpcs ----
    def _create(self, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        self._parent(a["project"], a["location"])
        parent = f"projects/{a['project']}/locations/{a['location']}"
        jid = q.get("jobId", "")
        if not JOB_ID_RE.fullmatch(jid):
            raise ApiError(400, f"Invalid jobId {jid!r}: must be a DNS label, [a-z]([-a-z0-9]{{0,61}}[a-z0-9])?")
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{jid}"
        self._check("run.jobs.create", parent)
        job = run_v2.Job.from_json(body or b"{}", ignore_unknown_fields=False)
        if job.name and job.name != name:
            raise ApiError(400, f"job.name must be empty or {name}, not {job.name}")
        self._validate(job, name)
        if self.race_next_create and name not in self.jobs:
            self.race_next_create = False
            self._create(a, q, body)  # another deployer, with the same plan, lands first
        if name in self.jobs:
            raise ApiError(409, f"Resource '{jid}' already exists.")
        job.name = name
        job.uid = str(uuid.UUID(int=self._rng.getrandbits(128)))
        job.generation = 1
        job.create_time = job.update_time = _now()
        job.etag = f'"{next(self._seq)}"'
        self._fill_defaults(job)
        self.jobs[name] = job
        return self._operation(a["location"], job, lambda: True, lambda: self.jobs.get(name, job))

    def _patch(self, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
        self._parent(a["project"], a["location"])
        self._check("run.jobs.update", name)
        if self.delete_before_next_patch:  # a concurrent undeploy lands first
            self.delete_before_next_patch = False
            self.jobs.pop(name, None)
            self.policies.pop(name, None)
        cur = self._job(name)
        job = run_v2.Job.from_json(body or b"{}", ignore_unknown_fields=False)
        etag = job.etag
        if etag and etag != cur.etag:
            raise ApiError(409, "The etag provided does not match the current etag of the resource.")
        job.etag = ""
        if job.name and job.name != name:
            raise ApiError(400, f"job.name {job.name} does not match the URL")
        self._validate(job, name)
        for f in ("name", "uid", "create_time", "creator", "execution_count", "latest_created_execution"):
            setattr(job, f, getattr(cur, f))
        job.generation = cur.generation + 1
        job.update_time = _now()
        job.etag = f'"{next(self._seq)}"'
        self._fill_defaults(job)
        self.jobs[name] = job
        return self._operation(a["location"], job, lambda: True, lambda: self.jobs.get(name, job))

    def _delete(self, a: dict[str, str]) -> Any:
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
        self._check("run.jobs.delete", name)
        job = self._job(name)
        del self.jobs[name]
        self.policies.pop(name, None)
        return self._operation(a["location"], job, lambda: True, lambda: job)

    def _run(self, a: dict[str, str], caller: Optional[str]) -> Any:
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
        job = self._job(name)
        if caller is None:
            self._check("run.jobs.run", name)
        else:
            member = f"serviceAccount:{caller}"
            held = set(self.project_roles.get(member, set()))
            for b in self.policies.get(name, policy_pb2.Policy()).bindings:
                if member in b.members:
                    held.add(b.role)
            if not held & INVOKER_ROLES:
                raise ApiError(403, f"Permission 'run.jobs.run' denied on resource '{name}' (or it may not exist).")
        suffix = "".join(self._rng.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        ex = run_v2.Execution(
            name=f"{name}/executions/{a['job']}-{suffix}", job=a["job"], uid=str(uuid.uuid4()),
            generation=1, create_time=_now(), start_time=_now(), task_count=job.template.task_count,
            creator=caller or "",
            parallelism=job.template.parallelism, template=_copy(job.template.template), running_count=1)
        self.executions[ex.name] = ex
        job.execution_count += 1
        job.latest_created_execution = run_v2.ExecutionReference(name=ex.name, create_time=ex.create_time)
        env = {"CLOUD_RUN_JOB": a["job"], "CLOUD_RUN_EXECUTION": ex.name.rsplit("/", 1)[-1],
               "CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_ATTEMPT": "0",
               "CLOUD_RUN_TASK_COUNT": str(job.template.task_count)}
        snapshot = _copy(job)

        def execute() -> None:
            code = 0
            try:
                code = self.executor(snapshot, _copy(ex), env) if self.executor else 0
            except Exception as e:  # noqa: BLE001 - a broken executor is a failed task, and a loud test
                self.internal_errors.append(f"executor: {e!r}")
                code = 1
            with self.lock:
                cur = self.executions[ex.name]
                cur.running_count = 0
                cur.succeeded_count, cur.failed_count = (1, 0) if code == 0 else (0, 1)
                cur.completion_time = _now()
                job_now = self.jobs.get(name)
                if job_now is not None and job_now.latest_created_execution.name == ex.name:
                    job_now.latest_created_execution.completion_time = cur.completion_time

        t = threading.Thread(target=execute, name=f"execution-{suffix}", daemon=True)
        self._threads.append(t)
        t.start()
        return self._operation(a["location"], ex, lambda: self.executions[ex.name].running_count == 0,
                               lambda: self.executions[ex.name])

    def _get_policy(self, a: dict[str, str]) -> Any:
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
        self._job(name)
        self._check("run.jobs.getIamPolicy", name)
        return self.policies.get(name) or policy_pb2.Policy(version=1, etag=b"\x00")

    def _set_policy(self, a: dict[str, str], body: bytes) -> Any:
        name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
        self._job(name)
        self._check("run.jobs.setIamPolicy", name)
        req = iam_policy_pb2.SetIamPolicyRequest()
        json_format.Parse(body or b"{}", req, ignore_unknown_fields=False)
        cur = self.policies.get(name) or policy_pb2.Policy(version=1, etag=b"\x00")
        if self.race_next_set_policy:  # another writer's change lands first
            self.race_next_set_policy = False
            cur = policy_pb2.Policy()
            cur.CopyFrom(self.policies.get(name) or policy_pb2.Policy(version=1))
            cur.bindings.add(role="roles/run.viewer", members=["user:other@example.com"])
            cur.etag = str(next(self._seq)).encode()
            self.policies[name] = cur
        if req.policy.etag and req.policy.etag != cur.etag:
            raise ApiError(409, "There were concurrent policy changes. Please retry the whole "
                                "read-modify-write with exponential backoff.")
        new = policy_pb2.Policy()
        new.CopyFrom(req.policy)
        new.etag = str(next(self._seq)).encode()
        self.policies[name] = new
        return new

    # ---- HTTP ----
    def answer(self, rpc: str, args: dict[str, str], q: dict[str, str], body: bytes, headers: dict[str, str],
               int_enums: bool) -> str:
        if self.disabled:
            raise disabled_api_error("Cloud Run Admin API", "run.googleapis.com", self.project_number)
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        caller = None
        if auth.startswith("Bearer fake-oidc:"):
            raise ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                                "access token, login cookie or other valid authentication credential.")
        if auth.startswith("Bearer fake-oauth:"):
            caller = auth.split(":", 1)[1]
        elif auth.startswith("Bearer "):
            caller = self.tokens.get(auth[len("Bearer "):].strip())
            if caller is None:
                raise ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                                    "access token, login cookie or other valid authentication credential.")
        result = self._dispatch(rpc, args, q, body, caller)
        if isinstance(result, (operations_pb2.Operation, policy_pb2.Policy)):
            return json_format.MessageToJson(result, use_integers_for_enums=int_enums)
        return to_json(result, int_enums=int_enums)

    def _dispatch(self, rpc: str, a: dict[str, str], q: dict[str, str], body: bytes,
                  caller: Optional[str]) -> Any:
        if rpc == "jobs.create":
            return self._create(a, q, body)
        if rpc == "jobs.get":
            self._parent(a["project"], a["location"])
            name = f"projects/{self.project}/locations/{a['location']}/jobs/{a['job']}"
            self._check("run.jobs.get", name)
            return self._job(name)
        if rpc == "jobs.patch":
            return self._patch(a, q, body)
        if rpc == "jobs.delete":
            return self._delete(a)
        if rpc == "jobs.run":
            return self._run(a, caller)
        if rpc == "jobs.getIamPolicy":
            return self._get_policy(a)
        if rpc == "jobs.setIamPolicy":
            return self._set_policy(a, body)
        if rpc == "operations.get":
            entry = self._ops.get(a["name"])
            if entry is None:
                raise ApiError(404, f"Operation {a['name']} not found.")
            op, is_done = entry
            if not op.done:
                is_done()
            return op
        raise ApiError(501, f"cloudrun fake: {rpc} is not implemented")


@contextmanager
def run_cloudrun_fake(project: str = "test-project") -> Iterator[CloudRunFake]:
    fake = CloudRunFake(project)
    with serve(fake, "cloudrun-fake") as endpoint:
        fake.endpoint = endpoint
        yield fake


@pytest.fixture
def cloudrun_fake() -> Iterator[CloudRunFake]:
    """A fresh fake per test, external network blocked; fails the test on an escape or a crash."""
    with guarded_stand_in(run_cloudrun_fake(), "cloudrun fake") as fake:
        yield fake
        fake.wait_executions(timeout=60)
