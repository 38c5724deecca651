"""A local Cloud Build fake that the real ``google-cloud-build`` REST client can talk to.

Same idea as ``tests/standins/compute/``: product bugs live in how it *uses* the API (what Build it
sends, how it waits, whether it reads the failure detail, whether it survives a 503), so this
serves the ``cloudbuild.googleapis.com/v1`` REST paths on ``127.0.0.1`` and the product points
its real client at it::

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.devtools import cloudbuild_v1

    client = cloudbuild_v1.CloudBuildClient(
        transport="rest",                                       # gRPC cannot reach http://...
        client_options=ClientOptions(api_endpoint=fake.endpoint),  # "http://127.0.0.1:PORT"
        credentials=AnonymousCredentials())
    op = client.create_build(project_id="test-project", build=build)
    build_id = op.metadata.build.id                 # known at once, before the build runs
    done = op.result(timeout=600)                   # polls GET /v1/operations/build/... here too

The LRO's ``.result()`` reaches the fake: ``CloudBuildRestTransport.operations_client`` is built
with the transport's own host, so ``GET /v1/{name=operations/**}`` goes to ``api_endpoint``
(unlike ``compute_v1``'s extended operations). ``.result()`` *raises* for a build that did not
succeed (``google.api_core.exceptions.Unknown``: "Build failed; check build logs for details");
the useful detail is in ``client.get_build(...).status_detail`` (or ``op.metadata.build``).

Every body is a message type of the library: ``cloudbuild_v1.Build``,
``cloudbuild_v1.BuildOperationMetadata``, ``google.longrunning.operations_pb2.Operation`` with
``metadata``/``response`` Any-packed, serialized with proto-plus ``to_json`` / protobuf
``json_format``; request bodies are parsed with ``cloudbuild_v1.Build.from_json``. ``fake.builds``
holds exactly what the client sent.

Behaviour kept from Cloud Build because product code depends on it:

- A build is ``QUEUED`` (first third of ``build_seconds``), then ``WORKING``, then ``SUCCESS``
  (or ``FAILURE``/``TIMEOUT``/``CANCELLED``). The create answer is an Operation whose metadata
  already carries the build (id, ``logUrl``, ``logsBucket``); the global operation is named
  ``operations/build/{project}/{base64(build id)}``, a regional one
  ``projects/{project}/locations/{location}/operations/{uuid}``.
- On success ``results.images`` holds one ``BuiltImage(name, digest)`` per ``build.images`` entry
  (substitutions applied); the digest is ``sha256(object + "\\n" + image)`` (``digest_for``),
  so a test can predict it.
- The log is written as ``log-{id}.txt`` in ``logsBucket`` (through the ``write_log`` hook) when
  the build starts, when a test appends output, and when it ends, the way gcloud tails it. Not
  written for ``CLOUD_LOGGING_ONLY``/``STACKDRIVER_ONLY``/``NONE`` logging, as in Cloud Build.
- Which account a build runs as: its ``serviceAccount``, else the project's default,
  ``service_account_email``. That default is the Compute Engine default account
  (``NUMBER-compute@developer.gserviceaccount.com``) as for every project that ran its first build
  after the 2024 change (https://cloud.google.com/build/docs/cloud-build-service-account-updates);
  set it to ``NUMBER@cloudbuild.gserviceaccount.com`` for a legacy project, or to "" for one whose
  organisation left it none. ``GET .../locations/L/defaultServiceAccount`` answers it in the
  ``projects/P/serviceAccounts/EMAIL`` form
  (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.locations/getDefaultServiceAccount).
- ``source_readable_by(account, bucket) -> bool``: whether that account may list and read objects
  in the staging bucket (tests wire it to the bucket's and the project's IAM policies). False ends
  the build FAILURE in FETCHSOURCE (``FETCH_SOURCE_FAILED``) with "AccessDeniedException: 403
  ACCOUNT does not have storage.objects.list access to the Google Cloud Storage bucket...", the
  shape reported for the new default account
  (https://github.com/GoogleCloudPlatform/bigquery-dlp-remote-function/issues/70) and the legacy
  one (https://github.com/GoogleCloudPlatform/secrets-store-csi-driver-provider-gcp/pull/43). Where
  Cloud Build puts that text besides the log (``statusDetail``, ``failureInfo.detail``) is not
  documented; the fake puts it in both.
- ``push_refusal(image) -> str | None``: consulted for each resolved ``images`` entry; a reason
  fails the build in its ``push`` step (the Artifact Registry fake's ``push_refusal``: a
  ``*-docker.pkg.dev`` repository must exist before the first push).
- ``push_denial(account, image) -> str | None``: consulted next, with the account the build runs
  as; a reason fails the push step the same way (``artifact_registry.repository_writers``: the
  account must hold a role that uploads to the repository).
- A source object the build service account cannot read (``source_exists`` hook returns False)
  fails ``create`` with HTTP 400 ``could not resolve source: googleapi: Error 403: ... does not
  have storage.objects.get access``: that is how Cloud Build reports it (gcloud shows
  ``INVALID_ARGUMENT: could not resolve source``). ``source_error = "build"`` instead ends the
  build FAILURE with that detail (``FETCH_SOURCE_FAILED``), for products that must handle both.
- A regional build is not found through the global paths (``get_build(project_id, id)``), and
  vice versa; a global build is found by either the project ID or the project number.
- ``strict`` validation that real Cloud Build does and that catches real bugs: user substitution
  keys must look like ``_FOO``; every substitution must be used and every ``$VAR``/``${VAR}`` in
  the steps/images must be defined (unless ``ALLOW_LOOSE``; ``$$`` escapes); a build needs a
  step; a user-specified ``serviceAccount`` needs ``logsBucket``, the REGIONAL_USER_OWNED_BUCKET
  behaviour, or CLOUD_LOGGING_ONLY / NONE logging, refused with Cloud Build's own text (quoted in
  https://github.com/cert-manager/cert-manager/pull/8851 and
  https://github.com/GoogleCloudPlatform/terraform-google-dataplex-auto-data-quality/pull/39);
  an image name that still contains ``$`` after substitution is rejected.

Known simplifications: the operation for a failed build carries ``error {code: 2}`` with gcloud's
message (observed); the codes used for TIMEOUT (4) and CANCELLED (1) are the natural ones, not
verified against the service. The 400 texts for strict validation paraphrase Cloud Build's.
``list_builds`` filters with the compute fake's filter subset. Steps are not run; ``append_log``
supplies their output. Unimplemented paths answer HTTP 501 so gaps are loud.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Callable, Iterator, Optional
from urllib.parse import unquote

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.devtools import cloudbuild_v1
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.rpc import code_pb2

from tests.standins.compute.filters import FilterError, parse_filter
from tests.standins.google_api import GoogleApiError, RecordedRequest, RoutedApi
from tests.standins.network_guard import guarded_stand_in
from tests.standins.json_http_server import serve

DEFAULT_FAIL_MESSAGE = "step 0 exited 1: archive crash"
BUILD_FAILED_MESSAGE = "Build failed; check build logs for details"  # what .result() raises with
_Status = cloudbuild_v1.Build.Status
_TERMINAL = {_Status.SUCCESS, _Status.FAILURE, _Status.INTERNAL_ERROR, _Status.TIMEOUT,
             _Status.CANCELLED, _Status.EXPIRED}
_NO_GCS_LOG = {cloudbuild_v1.BuildOptions.LoggingMode.STACKDRIVER_ONLY,
               cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
               cloudbuild_v1.BuildOptions.LoggingMode.NONE}
# Substitutions Cloud Build defines itself (repo ones are empty for a build with a storage source).
_BUILTINS = {"PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA",
             "SHORT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REF_NAME", "REPO_NAME",
             "REPO_FULL_NAME", "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL",
             "SERVICE_ACCOUNT", "_HEAD_BRANCH", "_BASE_BRANCH", "_HEAD_REPO_URL", "_PR_NUMBER"}
_USER_KEY_RE = re.compile(r"_[A-Z0-9_]+")
# "$$" (an escaped dollar), "${NAME...}" (with an optional bash operator part), or "$NAME".
_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# ---------------------------------------------------------------------------------------------
# Serialization and errors
# ---------------------------------------------------------------------------------------------

def to_json(msg: Any, *, int_enums: bool = False) -> str:
    """A proto-plus message as the service writes it: camelCase, no empty fields."""
    try:
        return type(msg).to_json(msg, use_integers_for_enums=int_enums,
                                 always_print_fields_with_no_presence=False)
    except TypeError:  # proto-plus < 1.24 names the option differently
        return type(msg).to_json(msg, use_integers_for_enums=int_enums,
                                 including_default_value_fields=False)


def _copy(msg: Any) -> Any:
    cls = type(msg)
    return cls.deserialize(cls.serialize(msg))


_GRPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION",
                429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_CANNED = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Quota exceeded for quota metric 'Build and Operation Get requests' and limit 'Build and "
         "Operation Get requests per minute' of service 'cloudbuild.googleapis.com'.",
    500: "Internal error encountered.",
    502: "Bad Gateway",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}


class ApiError(GoogleApiError):
    """An HTTP error with the One Platform JSON body Cloud Build sends (``error.status``)."""

    def __init__(self, code: int, message: Optional[str] = None) -> None:
        super().__init__(code, message or _CANNED.get(code) or HTTPStatus(code).phrase,
                         status=_GRPC_STATUS.get(code, "UNKNOWN"))


def _invalid(message: str) -> ApiError:
    return ApiError(400, message)


# ---------------------------------------------------------------------------------------------
# Substitutions
# ---------------------------------------------------------------------------------------------

def _template_strings(build: cloudbuild_v1.Build) -> list[str]:
    """The fields Cloud Build substitutes into (steps, images, artifacts, a few options)."""
    doc = json.loads(to_json(build))
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    for step in doc.get("steps", []):
        walk({k: v for k, v in step.items() if k not in ("script",)})
    for key in ("images", "artifacts", "logsBucket", "serviceAccount", "tags"):
        walk(doc.get(key))
    opts = doc.get("options", {})
    walk(opts.get("env"))
    walk(opts.get("secretEnv"))
    return out


def _referenced(strings: list[str]) -> set[str]:
    names: set[str] = set()
    for s in strings:
        for m in _VAR_RE.finditer(s):
            if m.group(0) != "$$":
                names.add(m.group(1) or m.group(3))
    return names


def substitute(text: str, values: dict[str, str], *, dynamic: bool = False) -> str:
    """Expand ``$VAR``/``${VAR}`` the way Cloud Build does; ``$$`` stays a literal ``$``.

    Bash operators (``${_X:0:7}``, ``${_X:-d}``) are only interpreted with
    ``dynamicSubstitutions``, as in Cloud Build; otherwise the whole expression is left alone.
    """
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), "")
        if name not in values:
            return m.group(0)
        value = values[name]
        if not op:
            return value
        if not dynamic:
            return m.group(0)
        if op.startswith(":-"):
            return value or op[2:]
        mm = re.fullmatch(r":(\d+)(?::(\d+))?", op)
        if mm:
            start = int(mm.group(1))
            return value[start:start + int(mm.group(2))] if mm.group(2) else value[start:]
        return m.group(0)

    return _VAR_RE.sub(repl, text)


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------

@dataclass
class _Rec:
    project: str
    location: str
    build: cloudbuild_v1.Build  # live state, mutated as time passes
    op_name: str
    working_at: float  # monotonic
    done_at: Optional[float]  # None: held in WORKING until finish()
    outcome: tuple[int, str]  # (final Build.Status, status_detail)
    fail_step: int = 0
    failure_type: int = 0
    step_output: list[str] = field(default_factory=list)
    log_started: bool = False


class CloudBuildFake(RoutedApi):
    """State and switches of the fake; served over HTTP by ``run_cloudbuild_fake``.

    Switches are plain attributes, read under the fake's lock on every request:

    - ``build_seconds``: a build is QUEUED for the first third of this, then WORKING (0.3 s).
    - ``hold_builds``: builds created while true stay WORKING until ``finish(build_id, ...)``.
    - ``fail_next_builds``: the next N builds created end FAILURE with ``fail_message``.
    - ``fail_create_http``: every create answers this HTTP code (403, 500, ...) while set.
    - ``drop_create_responses``: the next N creates *do* start a build but answer 503, as a
      lost response does (CreateBuild has no request id: a blind retry builds twice).
    - ``error_rate``/``error_codes``: that fraction of requests first gets 429/503 (seeded RNG);
      ``fail_next(code, times, rpc)`` injects exact failures.
    - ``source_exists(bucket, object) -> bool``: consulted at create for ``source.storageSource``;
      False fails the create (or, with ``source_error = "build"``, the build) with the 403 text.
    - ``write_log(bucket, object_name, text)``: where the build log goes (e.g. a GCS emulator).
    - ``strict``: validate Build bodies the way Cloud Build does (on by default).
    """

    def __init__(self, project: str = "test-project", *, project_number: int = 123456789012,
                 seed: int = 0) -> None:
        self.project = project
        self.project_number = project_number
        self.build_seconds = 0.3
        self.hold_builds = False
        self.fail_next_builds = 0
        self.fail_message = DEFAULT_FAIL_MESSAGE
        self.fail_create_http: Optional[int] = None
        self.drop_create_responses = 0  # next N creates start the build but answer 503
        self.error_rate = 0.0
        self.error_codes: tuple[int, ...] = (429, 503)
        self.source_exists: Optional[Callable[[str, str], bool]] = None
        self.source_error = "create"  # or "build"
        self.write_log: Optional[Callable[[str, str, str], None]] = None
        # The account builds that name none run as (see the module docstring).
        self.service_account_email = f"{project_number}-compute@developer.gserviceaccount.com"
        self.source_readable_by: Optional[Callable[[str, str], bool]] = None
        self.push_refusal: Optional[Callable[[str], Optional[str]]] = None
        self.push_denial: Optional[Callable[[str, str], Optional[str]]] = None
        self.strict = True
        self.endpoint = ""  # set by run_cloudbuild_fake
        self.internal_errors: list[str] = []  # crashes of the fake or its hooks; fixture fails
        self.lock = threading.RLock()
        self._rng = random.Random(seed)  # ids
        self._err_rng = random.Random(seed + 1)  # injected errors: independent of builds made
        self._seq = itertools.count(1)
        self._builds: dict[str, _Rec] = {}
        self._sent: list[tuple[str, cloudbuild_v1.Build]] = []
        self._ops: dict[str, str] = {}  # operation name -> build id
        self._requests: list[RecordedRequest] = []
        self._fail_next: list[tuple[int, Optional[str]]] = []

    # ---- inspection -------------------------------------------------------------------------

    # ``requests``, ``reset_requests`` and ``calls(rpc, ok=)`` come from RoutedApi; the rpcs are
    # builds.create, builds.get, builds.cancel, builds.list, operations.get, operations.cancel.

    @property
    def builds(self) -> list[cloudbuild_v1.Build]:
        """Copies of each Build exactly as the client sent it, in creation order."""
        with self.lock:
            return [_copy(b) for _, b in self._sent]

    @property
    def build_ids(self) -> list[str]:
        """Ids given to the builds in ``builds`` (same order)."""
        with self.lock:
            return [i for i, _ in self._sent]

    def current(self, build_id: str) -> cloudbuild_v1.Build:
        """The build as the service would return it now."""
        with self.lock:
            self._tick()
            return _copy(self._rec(build_id).build)

    def log_text(self, build_id: str) -> str:
        """The build log as written so far (empty while QUEUED)."""
        with self.lock:
            self._tick()
            return self._log(self._rec(build_id))

    def log_object(self, build_id: str) -> tuple[str, str]:
        """(bucket, object name) the log is written to: ``log-{id}.txt`` in ``logsBucket``."""
        with self.lock:
            return _log_location(self._rec(build_id).build)

    @staticmethod
    def digest_for(object_name: str, image: str) -> str:
        """The digest a successful build reports for ``image`` built from ``object_name``."""
        return "sha256:" + hashlib.sha256(f"{object_name}\n{image}".encode()).hexdigest()

    def client_kwargs(self) -> dict[str, Any]:
        """``CloudBuildClient(**kw)``: REST transport, this endpoint, anonymous credentials."""
        return {"transport": "rest", "client_options": ClientOptions(api_endpoint=self.endpoint),
                "credentials": AnonymousCredentials()}

    def client(self) -> cloudbuild_v1.CloudBuildClient:
        return cloudbuild_v1.CloudBuildClient(**self.client_kwargs())

    # ---- switches that act ------------------------------------------------------------------

    def fail_next(self, code: int = 503, times: int = 1, rpc: Optional[str] = None) -> None:
        """The next ``times`` requests (to ``rpc`` only, if given) get HTTP ``code`` unprocessed."""
        with self.lock:
            self._fail_next.extend([(code, rpc)] * times)

    def append_log(self, build_id: str, text: str) -> None:
        """Step output, as a running build prints it (each line prefixed ``Step #0:``)."""
        with self.lock:
            rec = self._rec(build_id)
            step = min(rec.fail_step, max(len(rec.build.steps) - 1, 0))
            prefix = _step_prefix(rec.build, step)
            rec.step_output.extend(f"{prefix}{line}" for line in text.splitlines())
            if rec.log_started:
                self._write_log(rec)

    def finish(self, build_id: str, status: Optional[str] = None, detail: str = "") -> None:
        """End a (held or running) build now: with its planned outcome (SUCCESS, or FAILURE if
        ``fail_next_builds`` picked it), or with ``status`` (SUCCESS, FAILURE, TIMEOUT, ...)."""
        with self.lock:
            self._tick()
            rec = self._rec(build_id)
            if rec.build.status in _TERMINAL:
                raise ValueError(f"build {build_id} already ended {rec.build.status.name}")
            if status is not None:
                final = _Status[status]
                if final == _Status.FAILURE and not detail:
                    detail = self.fail_message
                rec.outcome = (final, detail)
                rec.failure_type = (cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP
                                    if final == _Status.FAILURE else 0)
            self._end_now(rec)

    def _end_now(self, rec: _Rec) -> None:
        now = time.monotonic()
        rec.working_at = min(rec.working_at, now)
        rec.done_at = now
        self._tick()

    def advance(self) -> None:
        """Apply what time has made true (the server's ticker calls this every 10 ms)."""
        with self.lock:
            self._tick()

    # ---- internals: time ---------------------------------------------------------------------

    def _rec(self, build_id: str) -> _Rec:
        rec = self._builds.get(build_id)
        if rec is None:
            raise KeyError(f"no build {build_id}")
        return rec

    def _tick(self) -> None:
        now = time.monotonic()
        for rec in self._builds.values():
            b = rec.build
            if b.status == _Status.QUEUED and now >= rec.working_at:
                b.status = _Status.WORKING
                b.start_time = _utcnow()
                if b.steps:
                    b.steps[0].status = _Status.WORKING
                rec.log_started = True
                self._write_log(rec)
            if b.status == _Status.WORKING and rec.done_at is not None and now >= rec.done_at:
                self._complete(rec)

    def _complete(self, rec: _Rec) -> None:
        b = rec.build
        status, detail = rec.outcome
        b.status = status
        b.finish_time = _utcnow()
        if detail:
            b.status_detail = detail
        if rec.failure_type:
            b.failure_info = cloudbuild_v1.Build.FailureInfo(type_=rec.failure_type,
                                                             detail=detail)
        span = cloudbuild_v1.TimeSpan(start_time=b.start_time, end_time=b.finish_time)
        b.timing["BUILD"] = span
        for i, step in enumerate(b.steps):
            if status == _Status.SUCCESS or i < rec.fail_step:
                step.status = _Status.SUCCESS
                step.timing = span
            elif i == rec.fail_step:
                step.status = status
                step.timing = span
                if status == _Status.FAILURE:
                    step.exit_code = 1
            else:
                step.status = _Status.QUEUED
        if status == _Status.SUCCESS:
            obj = b.source.storage_source.object_
            for image in self._resolved_images(rec):
                b.results.images.append(cloudbuild_v1.BuiltImage(
                    name=image, digest=self.digest_for(obj, image), push_timing=span))
            b.results.build_step_images.extend(
                "sha256:" + hashlib.sha256(s.name.encode()).hexdigest() for s in b.steps)
            b.timing["PUSH"] = span
        self._write_log(rec)

    # ---- internals: the log ------------------------------------------------------------------

    def _log(self, rec: _Rec) -> str:
        if not rec.log_started:
            return ""
        b = rec.build
        lines = [f'starting build "{b.id}"', "", "FETCHSOURCE"]
        src = b.source.storage_source
        if src.bucket:
            generation = b.source_provenance.resolved_storage_source.generation
            url = f"gs://{src.bucket}/{src.object_}#{generation}"
            lines += [f"Fetching storage object: {url}", f"Copying {url}...",
                      "/ [1 files][  1.0 KiB/  1.0 KiB]",
                      "Operation completed over 1 objects/1.0 KiB."]
        if b.status == _Status.FAILURE and rec.failure_type == \
                cloudbuild_v1.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED:
            return "\n".join(lines + ["ERROR", f"ERROR: {b.status_detail}"]) + "\n"
        lines.append("BUILD")
        done = b.status in _TERMINAL
        last = len(b.steps) - 1 if b.status == _Status.SUCCESS else rec.fail_step
        for i, step in enumerate(b.steps):
            if i > last or (not done and i > 0):
                break
            prefix = _step_prefix(b, i)
            lines += [f"Starting {prefix[:-2]}", f"{prefix}Already have image (with digest): "
                      f"{step.name}"]
            if i == min(rec.fail_step, len(b.steps) - 1):
                lines += rec.step_output
            if done and (i < last or b.status == _Status.SUCCESS):
                lines.append(f"Finished {prefix[:-2]}")
        if not done:
            return "\n".join(lines) + "\n"
        if b.status == _Status.SUCCESS:
            if b.results.images:
                lines.append("PUSH")
            for img in b.results.images:
                repo, _, tag = img.name.rpartition(":") if ":" in img.name.rsplit("/", 1)[-1] \
                    else (img.name, "", "latest")
                lines += [f"Pushing {img.name}", f"The push refers to repository [{repo}]",
                          f"{tag}: digest: {img.digest} size: 2417"]
            lines.append("DONE")
        elif b.status == _Status.CANCELLED:
            lines += ["CANCELLED"]
        else:
            lines += ["ERROR", f"ERROR: {b.status_detail or b.status.name}"]
        return "\n".join(lines) + "\n"

    def _write_log(self, rec: _Rec) -> None:
        if self.write_log is None or rec.build.options.logging in _NO_GCS_LOG:
            return
        bucket, name = _log_location(rec.build)
        try:
            self.write_log(bucket, name, self._log(rec))
        except Exception as e:  # noqa: BLE001 - a broken hook must fail the test, not the fake
            self.internal_errors.append(f"write_log({bucket!r}, {name!r}): {e!r}")

    # ---- internals: builds -------------------------------------------------------------------

    def _values(self, rec_or_build: Any, build_id: str, location: str) -> dict[str, str]:
        b = rec_or_build
        sa = _sa_email(b, self.service_account_email)
        values = {name: "" for name in _BUILTINS}
        values.update(PROJECT_ID=self.project, PROJECT_NUMBER=str(self.project_number),
                      BUILD_ID=build_id, LOCATION=location, SERVICE_ACCOUNT_EMAIL=sa,
                      SERVICE_ACCOUNT=f"projects/{self.project}/serviceAccounts/{sa}")
        user = dict(b.substitutions)
        if b.options.dynamic_substitutions:
            user = {k: substitute(v, {**values, **user}, dynamic=True) for k, v in user.items()}
        values.update(user)
        return values

    def _resolved_images(self, rec: _Rec) -> list[str]:
        b = rec.build
        values = self._values(b, b.id, rec.location)
        return [substitute(i, values, dynamic=bool(b.options.dynamic_substitutions))
                for i in b.images]

    def _validate(self, b: cloudbuild_v1.Build, location: str) -> None:
        if not b.steps:
            raise _invalid("invalid build: build must have at least one step")
        for i, step in enumerate(b.steps):
            if not step.name:
                raise _invalid(f"invalid build: step {i} must specify name")
        src = b.source.storage_source
        if "storage_source" in b.source and not (src.bucket and src.object_):
            raise _invalid("invalid build: storage source must specify bucket and object")
        for key in b.substitutions:
            if not _USER_KEY_RE.fullmatch(key):
                raise _invalid(f"invalid value for 'build.substitutions': substitution key "
                               f"{key!r} does not respect format \"^_[A-Z0-9_]+$\" and is not "
                               "an overridable built-in substitution")
        loose = cloudbuild_v1.BuildOptions.SubstitutionOption.ALLOW_LOOSE
        if b.options.substitution_option != loose:
            used = _referenced(_template_strings(b))
            for key in sorted(b.substitutions):
                if key not in used:
                    raise _invalid(f'generic::invalid_argument: key "{key}" in the substitution '
                                   "data is not matched in the template")
            for name in sorted(used):
                if name not in b.substitutions and name not in _BUILTINS:
                    raise _invalid("generic::invalid_argument: invalid value for "
                                   f"'build.substitutions': key in the template \"{name}\" is not "
                                   "a valid built-in substitution")
        mode = cloudbuild_v1.BuildOptions.LoggingMode
        logs_ok = (b.logs_bucket or b.options.logging in (mode.CLOUD_LOGGING_ONLY, mode.NONE)
                   or b.options.default_logs_bucket_behavior == cloudbuild_v1.BuildOptions
                   .DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET)
        if b.service_account and not logs_ok:
            raise _invalid("if 'build.service_account' is specified, the build must either (a) "
                           "specify 'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET "
                           "build.options.default_logs_bucket_behavior option, or (c) use either "
                           "CLOUD_LOGGING_ONLY / NONE logging options: invalid argument")
        values = self._values(b, "0" * 8, location)
        for image in b.images:
            name = substitute(image, values, dynamic=bool(b.options.dynamic_substitutions))
            if "$" in name or not name or any(c.isspace() for c in name):
                raise _invalid(f'invalid build: invalid image name "{name}"')

    def _h_create(self, project: str, location: str, query: dict[str, str], body: bytes) -> Any:
        if self.fail_create_http is not None:
            raise ApiError(self.fail_create_http)
        try:
            sent = cloudbuild_v1.Build.from_json(body or b"{}", ignore_unknown_fields=False)
        except Exception as e:  # noqa: BLE001 - a body the library would not produce
            raise _invalid(f"Invalid JSON payload received. {e}") from e
        if self.strict:
            self._validate(sent, location)
        b = _copy(sent)
        build_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        sa = _sa_email(b, self.service_account_email)
        src = b.source.storage_source
        fetch_error = ""
        if src.bucket and self.source_exists is not None and not self.source_exists(
                src.bucket, src.object_):
            denial = (f"googleapi: Error 403: {sa} does not have storage.objects.get access to "
                      "the Google Cloud Storage object. Permission 'storage.objects.get' denied "
                      f"on resource '//storage.googleapis.com/projects/_/buckets/{src.bucket}/"
                      f"objects/{src.object_}' (or it may not exist)., forbidden")
            if self.source_error == "create":
                raise _invalid(f"could not resolve source: {denial}")
            fetch_error = (f"failed to fetch source: {denial} (grant {sa} "
                           f"roles/storage.objectViewer on gs://{src.bucket})")
        if (not fetch_error and src.bucket and self.source_readable_by is not None
                and not self.source_readable_by(sa, src.bucket)):
            fetch_error = (f"AccessDeniedException: 403 {sa} does not have storage.objects.list "
                           "access to the Google Cloud Storage bucket. Permission "
                           "'storage.objects.list' denied on resource (or it may not exist).")
        number = self.project_number
        b.id = build_id
        b.project_id = self.project
        b.name = f"projects/{number}/locations/{location}/builds/{build_id}"
        b.status = _Status.QUEUED
        b.create_time = _utcnow()
        if not b.logs_bucket:
            b.logs_bucket = f"gs://{number}.cloudbuild-logs.googleusercontent.com"
        region = "" if location == "global" else f";region={location}"
        b.log_url = (f"https://console.cloud.google.com/cloud-build/builds{region}/{build_id}"
                     f"?project={number}")
        if "timeout" not in b:
            b.timeout = timedelta(seconds=600)
        if "queue_ttl" not in b:
            b.queue_ttl = timedelta(seconds=3600)
        if not b.service_account and sa:  # a project left with no default shows none
            b.service_account = f"projects/{self.project}/serviceAccounts/{sa}"
        if src.bucket:
            b.source_provenance.resolved_storage_source = cloudbuild_v1.StorageSource(
                bucket=src.bucket, object_=src.object_,
                generation=src.generation or 1_700_000_000_000_000 + next(self._seq))
        for step in b.steps:
            step.status = _Status.QUEUED
        now = time.monotonic()
        queued = self.build_seconds / 3
        working_at = now + queued
        done_at: Optional[float] = None if self.hold_builds else now + self.build_seconds
        outcome: tuple[int, str] = (_Status.SUCCESS, "")
        failure_type = 0
        fail_step = 0
        if fetch_error:
            outcome = (_Status.FAILURE, fetch_error)
            failure_type = cloudbuild_v1.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
            done_at = working_at
        elif self.fail_next_builds > 0:
            self.fail_next_builds -= 1
            outcome = (_Status.FAILURE, self.fail_message)
            failure_type = cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP
        elif refusal := self._push_refused(b, location, sa):
            outcome = (_Status.FAILURE, refusal)
            failure_type = cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP
            fail_step = next((i for i, st in enumerate(b.steps) if st.id == "push"), len(b.steps) - 1)
        timeout = b.timeout.total_seconds()
        if done_at is not None and 0 < timeout < done_at - working_at and not fetch_error:
            done_at = working_at + timeout
            outcome = (_Status.TIMEOUT, f"Build timeout ({int(timeout)}s) exceeded")
            failure_type = 0
            fail_step = 0
        if location == "global":
            op_name = (f"operations/build/{self.project}/"
                       f"{base64.urlsafe_b64encode(build_id.encode()).decode().rstrip('=')}")
        else:
            op_name = (f"projects/{number}/locations/{location}/operations/"
                       f"{uuid.UUID(int=self._rng.getrandbits(128), version=4)}")
        rec = _Rec(project, location, b, op_name, working_at, done_at, outcome,
                   fail_step=fail_step, failure_type=failure_type)
        self._builds[build_id] = rec
        self._ops[op_name] = build_id
        self._sent.append((build_id, sent))
        self._tick()  # build_seconds=0: straight through
        return self._operation(rec)

    def _push_refused(self, b: cloudbuild_v1.Build, location: str, account: str) -> str:
        """The first reason a registry gives for refusing one of the build's images (pushed as
        ``account``), or ""."""
        if self.push_refusal is None and self.push_denial is None:
            return ""
        values = self._values(b, b.id, location)
        for image in b.images:
            resolved = substitute(image, values, dynamic=bool(b.options.dynamic_substitutions))
            reason = (self.push_refusal and self.push_refusal(resolved)) or \
                (self.push_denial and self.push_denial(account, resolved))
            if reason:
                return f"step exited 1: {reason}"
        return ""

    def _operation(self, rec: _Rec) -> operations_pb2.Operation:
        b = rec.build
        op = operations_pb2.Operation(name=rec.op_name, done=b.status in _TERMINAL)
        op.metadata.Pack(cloudbuild_v1.BuildOperationMetadata.pb(
            cloudbuild_v1.BuildOperationMetadata(build=b)))
        if b.status == _Status.SUCCESS:
            op.response.Pack(cloudbuild_v1.Build.pb(b))
        elif b.status == _Status.CANCELLED:
            op.error.code, op.error.message = code_pb2.CANCELLED, "Build was cancelled"
        elif b.status == _Status.TIMEOUT:
            op.error.code, op.error.message = code_pb2.DEADLINE_EXCEEDED, "Build timeout"
        elif b.status in _TERMINAL:
            op.error.code, op.error.message = code_pb2.UNKNOWN, BUILD_FAILED_MESSAGE
        return op

    def _find(self, project: str, location: str, build_id: str) -> _Rec:
        rec = self._builds.get(build_id)
        if rec is None or project not in (self.project, str(self.project_number)) \
                or rec.location != location:
            raise ApiError(404)
        return rec

    def _cancel(self, rec: _Rec) -> None:
        if rec.build.status in _TERMINAL:  # cancelling a finished build changes nothing
            return
        rec.outcome = (_Status.CANCELLED, "")
        rec.failure_type = 0
        self._end_now(rec)

    # ---- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, rpc: str, a: dict[str, str], q: dict[str, str], body: bytes) -> Any:
        project = a.get("project", "")
        location = a.get("location")
        if location is None:  # the client's first URI binding carries parent/name as a query
            ref = q.get("parent") or q.get("name") or ""
            if not ref and body and rpc == "builds.cancel":
                ref = json.loads(body).get("name", "")
            m = re.match(r"projects/[^/]+/locations/([^/]+)", ref)
            location = m.group(1) if m else "global"
        if rpc == "builds.create":
            op = self._h_create(project, location, q, body)
            if self.drop_create_responses > 0:
                self.drop_create_responses -= 1
                raise ApiError(503)
            return op
        if rpc == "builds.get":
            return self._find(project, location, a["id"]).build
        if rpc == "builds.cancel":
            rec = self._find(project, location, a["id"])
            self._cancel(rec)
            return rec.build
        if rpc == "builds.list":
            return self._h_list(project, location, q)
        if rpc == "defaultServiceAccount.get":
            if project not in (self.project, str(self.project_number)):
                raise ApiError(403)
            email = self.service_account_email
            return cloudbuild_v1.DefaultServiceAccount(
                name=f"projects/{project}/locations/{location}/defaultServiceAccount",
                service_account_email=f"projects/{self.project}/serviceAccounts/{email}" if email else "")
        if rpc in ("operations.get", "operations.cancel"):
            build_id = self._ops.get(a["operation"])
            if build_id is None:
                raise ApiError(404)
            rec = self._builds[build_id]
            if rpc == "operations.cancel":
                self._cancel(rec)
                return {}
            return self._operation(rec)
        raise ApiError(501, f"cloudbuild fake: {rpc} is not implemented")

    def _h_list(self, project: str, location: str, q: dict[str, str]) -> Any:
        if project not in (self.project, str(self.project_number)):
            return cloudbuild_v1.ListBuildsResponse()
        pred = parse_filter(q.get("filter", ""))
        recs = [r for r in self._builds.values() if r.location == location]
        recs.sort(key=lambda r: r.build.create_time, reverse=True)  # newest first, like the API
        matching = [r.build for r in recs if pred(json.loads(to_json(r.build)))]
        size = int(q.get("pageSize") or 0) or 50
        offset = int(q.get("pageToken") or 0)
        page = matching[offset:offset + size]
        token = str(offset + size) if offset + size < len(matching) else ""
        return cloudbuild_v1.ListBuildsResponse(builds=page, next_page_token=token)

    # ---- one request (the template is tests/standins/google_api.py's RoutedApi.handle) -------

    def find_route(self, method: str, path: str) -> Optional[tuple[str, dict[str, str]]]:
        for verb, pattern, rpc in _ROUTES:
            if verb == method:
                m = re.fullmatch(pattern, path)
                if m:
                    return rpc, {k: unquote(v) for k, v in m.groupdict().items()}
        return None

    def before(self) -> None:
        self._tick()

    def not_implemented(self, method: str, path: str) -> ApiError:
        return ApiError(501, f"cloudbuild fake: {method} {path} is not implemented")

    def client_error(self, e: Exception, query: dict[str, str]) -> Optional[ApiError]:
        return _invalid(f"invalid filter: {e}") if isinstance(e, FilterError) else None

    def crashed(self, e: Exception) -> ApiError:
        return ApiError(500, f"cloudbuild fake crashed: {e!r}")

    def respond(self, rpc: str, args: dict[str, str], query: dict[str, str], body: bytes,
                headers: dict[str, str]) -> str:
        int_enums = "enum-encoding=int" in query.get("$alt", "")
        self._inject_error(rpc)
        result = self._dispatch(rpc, args, query, body)
        if isinstance(result, operations_pb2.Operation):
            return json_format.MessageToJson(result, use_integers_for_enums=int_enums)
        if isinstance(result, dict):
            return json.dumps(result)
        return to_json(result, int_enums=int_enums)

    def _inject_error(self, rpc: str) -> None:
        for i, (code, only) in enumerate(self._fail_next):
            if only is None or only == rpc:
                del self._fail_next[i]
                raise ApiError(code)
        if self.error_rate > 0 and self._err_rng.random() < self.error_rate:
            raise ApiError(self._err_rng.choice(tuple(self.error_codes)))


_P = r"/v1/projects/(?P<project>[^/]+)"
_L = _P + r"/locations/(?P<location>[^/]+)"
_ROUTES: list[tuple[str, str, str]] = [
    ("POST", _P + r"/builds", "builds.create"),
    ("POST", _L + r"/builds", "builds.create"),
    ("GET", _P + r"/builds", "builds.list"),
    ("GET", _L + r"/builds", "builds.list"),
    ("GET", _P + r"/builds/(?P<id>[^/:]+)", "builds.get"),
    ("GET", _L + r"/builds/(?P<id>[^/:]+)", "builds.get"),
    ("POST", _P + r"/builds/(?P<id>[^/:]+):cancel", "builds.cancel"),
    ("POST", _L + r"/builds/(?P<id>[^/:]+):cancel", "builds.cancel"),
    ("GET", _L + r"/defaultServiceAccount", "defaultServiceAccount.get"),
    ("GET", r"/v1/(?P<operation>operations/.+)", "operations.get"),
    ("POST", r"/v1/(?P<operation>operations/.+):cancel", "operations.cancel"),
    ("GET", r"/v1/(?P<operation>projects/[^/]+/locations/[^/]+/operations/[^/:]+)",
     "operations.get"),
    ("POST", r"/v1/(?P<operation>projects/[^/]+/locations/[^/]+/operations/[^/:]+):cancel",
     "operations.cancel"),
]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _sa_email(b: cloudbuild_v1.Build, default: str) -> str:
    return b.service_account.rsplit("/", 1)[-1] if b.service_account else default


def _step_prefix(b: cloudbuild_v1.Build, i: int) -> str:
    sid = b.steps[i].id if i < len(b.steps) else ""
    return f'Step #{i} - "{sid}": ' if sid else f"Step #{i}: "


def _log_location(b: cloudbuild_v1.Build) -> tuple[str, str]:
    rest = b.logs_bucket[len("gs://"):] if b.logs_bucket.startswith("gs://") else b.logs_bucket
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, (f"{prefix}/" if prefix else "") + f"log-{b.id}.txt"


# ---------------------------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------------------------

@contextmanager
def run_cloudbuild_fake(project: str = "test-project", *, project_number: int = 123456789012,
                        seed: int = 0) -> Iterator[CloudBuildFake]:
    """Serve a fresh CloudBuildFake on 127.0.0.1 (free port) for the duration of the block.

    A ticker thread advances builds every 10 ms, so a build starts, writes its log and ends on
    time even if nothing polls it (a product that only tails the GCS log sees it grow).
    """
    fake = CloudBuildFake(project, project_number=project_number, seed=seed)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            try:
                fake.advance()
            except Exception as e:  # noqa: BLE001
                fake.internal_errors.append(f"ticker: {e!r}")

    ticker = threading.Thread(target=tick, name="cloudbuild-fake-ticker", daemon=True)
    with serve(fake, "cloudbuild-fake") as endpoint:
        fake.endpoint = endpoint
        ticker.start()
        try:
            yield fake
        finally:
            stop.set()
            ticker.join(timeout=5)


@pytest.fixture
def cloudbuild_fake() -> Iterator[CloudBuildFake]:
    """A fresh fake per test, with external network blocked; fails the test on any escape.

    Use through ``pytest_plugins = ["tests.standins.cloudbuild"]`` or ``from tests.standins.cloudbuild
    import cloudbuild_fake``. Build the client with ``cloudbuild_fake.client()``.
    """
    with guarded_stand_in(run_cloudbuild_fake(), "cloudbuild fake") as fake:
        yield fake
