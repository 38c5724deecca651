"""An in-process GCS emulator that keeps the promises our store relies on.

``gcp-storage-emulator`` speaks enough of the JSON API for google-cloud-storage, but it ignores
``ifGenerationMatch``: a second create-only write and a stale compare-and-swap both succeed. Every
guarantee of ``entrypoint.store`` rests on that precondition, so tests against the bare emulator
would pass while proving nothing. This module serves the emulator's own handlers through a router
of ours that adds, without touching the library's module state:

- ``ifGenerationMatch`` (query parameter, or ``x-goog-if-generation-match`` on the XML upload) on
  media, multipart and resumable uploads and on copy/rewrite/compose destinations, checked at the
  moment the object is committed; ``0`` means "must not exist". A failure answers 412 with the JSON
  error GCS sends (reason ``conditionNotMet``) and leaves the object as it was.
- The same precondition, and ``generation=``, on object GET/DELETE/PATCH and media downloads.
- ``ifGenerationNotMatch``, ``ifMetagenerationMatch`` and ``ifMetagenerationNotMatch`` (query, or
  ``x-goog-if-metageneration-match``) on the same requests, as "Request preconditions" in the GCS
  docs describes them: a failed one is 412 ``conditionNotMet``, except a failed ``*NotMatch`` on
  a read, which is 304 Not Modified; a metageneration condition on a missing object fails (the
  emulator's metadata PATCH already increments ``metageneration``).
- Single-request (``uploadType=media``) uploads store the body exactly as sent, whatever its
  Content-Type (the emulator parsed an ``application/json`` body as JSON and failed): that is
  what ``gcp/startup.sh`` sends with curl, and GCS keeps the header as the ``contentType``.
- Generations that strictly increase across writes (the emulator uses ``time.time_ns()``, which
  can repeat or go backwards), and ``crc32c``/``md5Hash``/``size`` computed from the stored bytes.
- A declared checksum is checked against the bytes received before an upload commits, as GCS
  does ("The server receives the data payload, calculates its own checksum, and validates the
  data", https://docs.cloud.google.com/storage/docs/data-validation): ``crc32c``/``md5Hash`` in
  the object metadata (a multipart upload's JSON part, a resumable upload's initiating POST),
  and the ``x-goog-hash: crc32c=B64,md5=B64`` header (google-cloud-storage sends it with the
  final chunk of a resumable upload: ``google/cloud/storage/_media/_upload.py``). A mismatch
  answers 400 reason ``invalid`` with GCS's words, ``Provided CRC32C "X" doesn't match
  calculated CRC32C "Y".`` (as users quote it: github.com/googleapis/python-storage/issues/1541)
  or ``Provided MD5 hash "X" doesn't match calculated MD5 hash "Y".`` (gsutil's ``cp`` help
  quotes it); CRC32C is named first when both are wrong (github.com/googleapis/google-cloud-ruby
  /pull/12160), and the object keeps what it held. The library checks the metadata form itself
  in the version installed here, not the header; this check is ours so neither depends on it.
  A refused resumable session is dropped (not modelled: whether GCS lets a client resume it).
- ``x-goog-generation``/``x-goog-metageneration`` on downloads, as GCS sends them, so a client gets
  data and generation from one response.
- Bucket inserts that keep what the request asked for (location, uniform bucket-level access,
  lifecycle...) instead of the emulator's fixed defaults, so setup code can be checked.
- GCS-shaped 404 bodies that say whether the bucket or the object is missing, and an optional
  ``deny`` set of buckets that answer 403, so error translation can be tested.
- Read throughput per stream (``read_mibps_per_stream``, 0 = unlimited): each media download,
  whole or ``Range``d, is held back until its bytes would have arrived over one connection at
  that rate, scaled by ``time_scale`` (modelled seconds x scale = real sleep). The wait happens
  after the lock is released and before the body is sent (the whole transfer time up front:
  the total is what is modelled, not the pacing), so concurrent streams wait side by side, as
  parallel connections to GCS do. The default a test or bench picks is 200 MiB/s, a THIRD-PARTY figure (a blog whose
  author is not verified as Google: "from 200 MiB/s for a single stream",
  https://www.beginswithdata.com/2024/02/01/google-cloud-storage-max-throughput/); Google's own
  docs only say sliced downloads "can be significantly faster"
  (https://cloud.google.com/storage/docs/sliced-object-downloads). ``Range: bytes=A-B`` is
  answered 206 with ``Content-Range: bytes A-B/SIZE``, as a GET with a Range header is on GCS
  (https://docs.cloud.google.com/storage/docs/downloads); the emulator's own handler does that,
  tests/test_restore_parallel.py checks it.

One lock serializes all handlers: the emulator's ``Storage`` is not thread-safe, and holding it
across check-and-commit is what makes the precondition atomic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Iterable, Iterator

import google_crc32c
from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets as emu_buckets
from gcp_storage_emulator.handlers import objects as emu_objects
from gcp_storage_emulator.storage import Storage

logger = logging.getLogger(__name__)
# The emulator logs every read of a missing object at ERROR; for us a miss is a normal answer.
logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)

Handler = Callable[[emu_server.Request, emu_server.Response, "StrictStorage"], None]

# Handlers that commit an object: their precondition is checked inside StrictStorage.create_file.
_WRITES = {
    emu_objects.insert,
    emu_objects.upload_partial,
    emu_objects.copy,
    emu_objects.rewrite,
    emu_objects.compose,
    emu_objects.xml_upload,
}
# Handlers that address one existing object: their precondition is checked before they run.
_OBJECT_ACCESS = {emu_objects.get, emu_objects.download, emu_objects.delete, emu_objects.patch}
_DOWNLOADS = {emu_objects.download}


class ConditionNotMet(Exception):
    """Raised inside a handler when ifGenerationMatch does not hold; answered as HTTP 412."""


class NotModified(Exception):
    """A read whose ``*NotMatch`` precondition failed: answered 304, as GCS does."""


class ChecksumMismatch(Exception):
    """An upload whose bytes do not have the checksum it declared: answered 400 ``invalid``."""


# Handlers that receive an object's bytes from the client: their declared checksums are checked.
_UPLOADS = {emu_objects.insert, emu_objects.upload_partial, emu_objects.xml_upload}


def declared_hashes(values: Iterable[str]) -> dict[str, str]:
    """``x-goog-hash`` header values (``crc32c=B64,md5=B64``, possibly repeated) as a dict."""
    out: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            kind, sep, digest = part.strip().partition("=")
            if sep and kind.strip().lower() in ("crc32c", "md5"):
                out[kind.strip().lower()] = digest.strip()
    return out


class _Conditions:
    """The generation/metageneration preconditions of one request (None: not given)."""

    def __init__(self, gen_match: int | None = None, gen_not: int | None = None,
                 meta_match: int | None = None, meta_not: int | None = None) -> None:
        self.gen_match, self.gen_not = gen_match, gen_not
        self.meta_match, self.meta_not = meta_match, meta_not

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.gen_match, self.gen_not, self.meta_match, self.meta_not))

    def failure(self, obj: dict | None) -> str | None:
        """Which condition ``obj`` (None: no live object) fails, or None when all hold."""
        gen = int(obj["generation"]) if obj else 0
        meta = int(obj.get("metageneration", 1)) if obj else None
        if self.gen_match is not None and gen != self.gen_match:
            return f"ifGenerationMatch={self.gen_match}"
        if self.gen_not is not None and gen == self.gen_not:
            return f"ifGenerationNotMatch={self.gen_not}"
        if self.meta_match is not None and meta != self.meta_match:
            return f"ifMetagenerationMatch={self.meta_match}"
        if self.meta_not is not None and meta == self.meta_not:
            return f"ifMetagenerationNotMatch={self.meta_not}"
        return None

    @property
    def only_not_match(self) -> bool:
        return self.gen_match is None and self.meta_match is None


def _crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _gcs_error(code: int, message: str, reason: str) -> dict[str, Any]:
    """The JSON body GCS sends with an error, which google-api-core turns into exceptions."""
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}],
        }
    }


class StrictStorage(Storage):
    """In-memory emulator storage with generation preconditions enforced at commit time.

    The precondition of the request being handled travels in a thread-local, because the
    emulator's handlers call ``create_file`` without passing request details along. A resumable
    upload carries its precondition from the initiating POST to the final PUT.
    """

    def __init__(self, deny: Iterable[str] = (), read_mibps_per_stream: float = 0.0,
                 time_scale: float = 1.0) -> None:
        super().__init__(use_memory_fs=True)
        self.lock = threading.RLock()
        # Modelled read throughput of one connection (MiB/s, 0: unlimited) and how many real
        # seconds one modelled second takes; plain attributes, so a test may change them live.
        self.read_mibps_per_stream = read_mibps_per_stream
        self.time_scale = time_scale
        # (start, end) epoch seconds of each modelled read wait: a benchmark counts the time they
        # covered at its modelled length (bench/recovery.py).
        self.slept: list[tuple[float, float]] = []
        self.denied_buckets = frozenset(deny)
        self._request = threading.local()
        self._last_generation = 0
        self._resumable_expected: dict[str, int] = {}

    def _write_config_to_file(self) -> None:
        """Not done. The library saves every object's metadata as one JSON file after each write,
        so that an emulator on disk survives a restart; this one lives in memory and dies with
        its process, and the save costs O(objects) per write: with 10,000 objects (1,000 runs)
        each write took tens of milliseconds, a cost GCS does not have and a benchmark would
        measure instead of the product."""

    # -- request-scoped precondition ---------------------------------------------------------

    @contextmanager
    def expecting(self, generation: "int | _Conditions | None",
                  hashes: dict[str, str] | None = None) -> Iterator[None]:
        """The request's precondition and, for an upload, its ``x-goog-hash`` (None: not an
        upload, so no declared checksum applies: copies and composes carry the source's)."""
        self._request.expected = generation
        self._request.hashes = hashes
        try:
            yield
        finally:
            self._request.expected = None
            self._request.hashes = None

    def read_delay(self, nbytes: int) -> float:
        """Real seconds one stream's ``nbytes`` take at the modelled per-stream rate."""
        if self.read_mibps_per_stream <= 0 or nbytes <= 0:
            return 0.0
        return nbytes / (self.read_mibps_per_stream * (1 << 20)) * self.time_scale

    def _expected(self) -> "int | _Conditions | None":
        return getattr(self._request, "expected", None)

    def current_generation(self, bucket: str, name: str) -> int:
        """The live generation of ``bucket/name``, or 0 when there is none (GCS's convention)."""
        obj = self.objects.get(bucket, {}).get(name)
        return int(obj["generation"]) if obj else 0

    def check(self, bucket: str, name: str, expected: "int | _Conditions | None",
              read: bool = False) -> None:
        if expected is None:
            return
        if isinstance(expected, _Conditions):
            obj = self.objects.get(bucket, {}).get(name)
            failed = expected.failure(obj)
            if failed is None:
                return
            if read and expected.only_not_match:
                raise NotModified(failed)
            current = int(obj["generation"]) if obj else 0
            raise ConditionNotMet(
                f"At least one of the pre-conditions you specified did not hold "
                f"(conditionNotMet): {bucket}/{name} is at generation {current}, "
                f"metageneration {obj.get('metageneration') if obj else None}, {failed}."
            )
        current = self.current_generation(bucket, name)
        if current != expected:
            raise ConditionNotMet(
                f"At least one of the pre-conditions you specified did not hold "
                f"(conditionNotMet): {bucket}/{name} is at generation {current}, "
                f"ifGenerationMatch={expected}."
            )

    # -- hooks into the emulator's Storage ---------------------------------------------------

    def create_resumable_upload(self, bucket_name: str, file_name: str, file_obj: dict) -> str:
        expected = self._expected()
        self.check(bucket_name, file_name, expected)  # fail early, as GCS does
        file_id = super().create_resumable_upload(bucket_name, file_name, file_obj)
        if expected is not None:
            self._resumable_expected[file_id] = expected  # type: ignore[assignment]
        return file_id

    def create_file(
        self,
        bucket_name: str,
        file_name: str,
        content: bytes,
        file_obj: dict,
        file_id: str | None = None,
    ) -> None:
        if bucket_name not in self.buckets:
            raise NotFound
        expected = self._resumable_expected.pop(file_id, None) if file_id else self._expected()
        try:
            self.check(bucket_name, file_name, expected)
            self.check_declared(content, file_obj)
        except (ConditionNotMet, ChecksumMismatch):
            if file_id:  # the session is spent, as on GCS; drop its buffered bytes
                self.resumable.pop(file_id, None)
                self._delete_file("_resumable", self.safe_id(file_id))
            raise
        self._stamp(bucket_name, file_name, content, file_obj)
        super().create_file(bucket_name, file_name, content, file_obj, file_id)

    def check_declared(self, content: bytes, obj: dict) -> None:
        """Refuse ``content`` unless it has every checksum the upload declared (metadata or
        ``x-goog-hash``); CRC32C first, as GCS names it first when both are wrong."""
        hashes = getattr(self._request, "hashes", None)
        if hashes is None:
            return
        crc = [v for v in (obj.get("crc32c"), hashes.get("crc32c")) if v]
        md5 = [v for v in (obj.get("md5Hash"), hashes.get("md5")) if v]
        actual_crc, actual_md5 = _crc32c(content), _md5(content)
        for declared in crc:
            if declared != actual_crc:
                raise ChecksumMismatch(f'Provided CRC32C "{declared}" doesn\'t match calculated CRC32C "{actual_crc}".')
        for declared in md5:
            if declared != actual_md5:
                raise ChecksumMismatch(f'Provided MD5 hash "{declared}" doesn\'t match calculated MD5 hash "{actual_md5}".')

    def _stamp(self, bucket: str, name: str, content: bytes, obj: dict) -> None:
        """Give ``obj`` a fresh, strictly larger generation and hashes of what is stored.

        ``obj`` is the dict the handler serializes into its response after this call, so the
        client sees the same values.
        """
        generation = max(time.time_ns(), self._last_generation + 1)
        self._last_generation = generation
        obj["generation"] = str(generation)
        obj["metageneration"] = "1"
        obj["id"] = f"{bucket}/{name}/{generation}"
        if isinstance(obj.get("mediaLink"), str):
            base = obj["mediaLink"].split("?")[0]
            obj["mediaLink"] = f"{base}?generation={generation}&alt=media"
        obj["size"] = str(len(content))
        obj["crc32c"] = _crc32c(content)
        obj["md5Hash"] = _md5(content)
        obj["etag"] = obj["md5Hash"]


# -- request handling --------------------------------------------------------------------------


def _query_int(request: emu_server.Request, key: str) -> int | None:
    values = request.query.get(key)
    return int(values[0]) if values else None


def _requested_generation(request: emu_server.Request) -> int | None:
    value = _query_int(request, "ifGenerationMatch")
    header = request.get_header("x-goog-if-generation-match")
    return int(header) if value is None and header is not None else value


def _requested_conditions(request: emu_server.Request) -> "int | _Conditions | None":
    """ifGenerationMatch alone stays an int (the common case); any other condition: all four."""
    gen = _requested_generation(request)
    meta_header = request.get_header("x-goog-if-metageneration-match")
    meta = _query_int(request, "ifMetagenerationMatch")
    cond = _Conditions(gen, _query_int(request, "ifGenerationNotMatch"),
                       int(meta_header) if meta is None and meta_header is not None else meta,
                       _query_int(request, "ifMetagenerationNotMatch"))
    if cond.gen_not is None and cond.meta_match is None and cond.meta_not is None:
        return gen
    return cond


def _check_object_access(request: emu_server.Request, storage: StrictStorage) -> None:
    """Preconditions of reads/deletes/patches, which need no hook: they act on the live object."""
    params = request.params or {}
    bucket, name = params.get("bucket_name"), params.get("object_id")
    if not bucket or not name:
        return
    storage.check(bucket, name, _requested_conditions(request), read=request.method == "GET")
    pinned = _query_int(request, "generation")
    soft_deleted = (request.query.get("softDeleted") or [""])[0].lower() in ("1", "true", "yes")
    if pinned is not None and not soft_deleted and pinned != storage.current_generation(bucket, name):
        # No versioning here: any generation but the live one is gone.
        raise NotFound


def _add_download_headers(request: emu_server.Request, response: emu_server.Response,
                          storage: StrictStorage) -> None:
    if response.status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        return
    params = request.params or {}
    obj = storage.objects.get(params.get("bucket_name"), {}).get(params.get("object_id"))
    if obj:
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]
        response["x-goog-stored-content-length"] = obj["size"]
        response["x-goog-stored-content-encoding"] = "identity"


def _fill_not_found(request: emu_server.Request, response: emu_server.Response,
                    storage: StrictStorage) -> None:
    """Give bare 404s the body GCS sends, which is how a client tells bucket from object."""
    if response.status != HTTPStatus.NOT_FOUND or response._content:
        return
    params = request.params or {}
    bucket, name = params.get("bucket_name"), params.get("object_id")
    if bucket and bucket not in storage.buckets:
        message = "The specified bucket does not exist."
    else:
        message = f"No such object: {bucket}/{name}"
    response.json(_gcs_error(404, message, "notFound"))


def _reply_error(response: emu_server.Response, status: HTTPStatus, message: str, reason: str) -> None:
    response._headers = {}
    response.status = status
    response.json(_gcs_error(status.value, message, reason))


def _strict(handler: Handler) -> Handler:
    """Wrap one emulator handler with the lock, preconditions and GCS-shaped answers."""
    is_write = handler in _WRITES
    is_upload = handler in _UPLOADS
    is_object_access = handler in _OBJECT_ACCESS

    def wrapped(request: emu_server.Request, response: emu_server.Response,
                storage: StrictStorage) -> None:
        bucket = (request.params or {}).get("bucket_name")
        if bucket in storage.denied_buckets:
            _reply_error(response, HTTPStatus.FORBIDDEN,
                         f"anonymous caller does not have storage.objects access to the Google "
                         f"Cloud Storage bucket {bucket}. Permission denied.", "forbidden")
            return
        try:
            expected = _requested_conditions(request)
        except ValueError:
            _reply_error(response, HTTPStatus.BAD_REQUEST, "Invalid precondition", "invalid")
            return
        if is_write and (request.query.get("uploadType") or [""])[0] == "media":
            # The body is the object, whatever its Content-Type (GCS keeps that as contentType);
            # the emulator would parse an application/json body as JSON.
            raw = emu_server._read_raw_data(request._request_handler)
            request._data = emu_server._decode_raw_data(raw, request._request_handler) or b""
        with storage.lock:
            try:
                if is_object_access:
                    _check_object_access(request, storage)
                hashes = declared_hashes(request._request_handler.headers.get_all("x-goog-hash") or []) \
                    if is_upload else None
                with storage.expecting(expected if is_write else None, hashes):
                    handler(request, response, storage)
            except ConditionNotMet as err:
                _reply_error(response, HTTPStatus.PRECONDITION_FAILED, str(err), "conditionNotMet")
                return
            except ChecksumMismatch as err:
                _reply_error(response, HTTPStatus.BAD_REQUEST, str(err), "invalid")
                return
            except NotModified:
                response._headers = {}
                response.status = HTTPStatus.NOT_MODIFIED
                response._content = ""
                return
            except NotFound:
                response.status = HTTPStatus.NOT_FOUND
            is_media = handler in _DOWNLOADS or (request.query.get("alt") or [""])[0] == "media"
            if is_media and handler in _OBJECT_ACCESS:
                _add_download_headers(request, response, storage)
            _fill_not_found(request, response, storage)
        if is_media and handler in _OBJECT_ACCESS and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            # Outside the lock: each connection waits for its own bytes, side by side.
            body = response._content
            delay = storage.read_delay(len(body) if isinstance(body, (bytes, str)) else 0)
            if delay > 0:
                t0 = time.time()
                time.sleep(delay)
                storage.slept.append((t0, time.time()))

    wrapped.__name__ = f"strict_{handler.__name__}"
    return wrapped


def _insert_bucket(request: emu_server.Request, response: emu_server.Response,
                   storage: StrictStorage) -> None:
    """The emulator's bucket insert, then the request's writable fields applied, as GCS does."""
    emu_buckets.insert(request, response, storage)
    body = request.data if isinstance(request.data, dict) else {}
    bucket = storage.buckets.get(body.get("name"))
    if response.status != HTTPStatus.OK or bucket is None:
        return
    emu_buckets._patch_bucket(bucket, body)
    bucket["metageneration"] = "1"
    if isinstance(bucket.get("location"), str):
        bucket["location"] = bucket["location"].upper()  # GCS reports locations upper-case
    storage.create_bucket(bucket["name"], bucket)
    response.json(bucket)


# Objects per page of a listing: GCS's default and maximum for ``maxResults`` (objects.list,
# https://cloud.google.com/storage/docs/json_api/v1/objects/list; Firebase's reference, a client
# of the same service, states it: "The default and maximum maxResults is 1000",
# https://firebase.google.com/docs/reference/js/storage.listoptions). GCS counts items and
# prefixes together; this counts items only.
LIST_PAGE_MAX = 1000


def _list_objects(request: emu_server.Request, response: emu_server.Response,
                  storage: StrictStorage) -> None:
    """The emulator's object listing, with ``startOffset``/``endOffset`` applied as GCS does
    (names >= start, < end), which the emulator ignores: paged journal reads rely on them.

    Paged as GCS pages it: at most ``maxResults`` items (1,000 by default and at most), then a
    ``nextPageToken`` the client sends back as ``pageToken`` (the emulator returned every
    object in one page, so a listing of 2,000 objects looked like one request instead of two).
    Not modelled: paging of ``prefixes`` (a delimiter listing returns them all on each page).
    """
    emu_objects.ls(request, response, storage)
    if response.status != HTTPStatus.OK:
        return
    start = (request.query.get("startOffset") or [None])[0]
    end = (request.query.get("endOffset") or [None])[0]
    after = (request.query.get("pageToken") or [None])[0]
    size = min(int((request.query.get("maxResults") or [LIST_PAGE_MAX])[0]), LIST_PAGE_MAX)
    doc = json.loads(response._content)
    items = [o for o in doc.get("items") or []
             if (start is None or o["name"] >= start) and (end is None or o["name"] < end)
             and (after is None or o["name"] > after)]
    if len(items) > size:
        items = items[:size]
        doc["nextPageToken"] = items[-1]["name"]
    doc["items"] = items
    response.json(doc)


_REPLACED = {emu_buckets.insert: _insert_bucket, emu_objects.ls: _list_objects}


def _build_routes() -> list[tuple[re.Pattern[str], dict[str, Handler]]]:
    return [
        (re.compile(regex), {method: _strict(_REPLACED.get(fn, fn)) for method, fn in handlers.items()})
        for regex, handlers in emu_server.HANDLERS
    ]


class _RequestHandler(emu_server.RequestHandler):
    """The emulator's HTTP handler with our routing table instead of the module-level one."""

    routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def _route(self, method: str) -> None:
        method = self.headers.get("x-http-method-override") or method
        request = emu_server.Request(self, method)
        response = emu_server.Response(self)
        handler = self._find(request, method)
        if handler is None:
            response.status = HTTPStatus.NOT_IMPLEMENTED
        else:
            try:
                handler(request, response, self.storage)
            except Exception as err:  # a bug in a handler: answer 500 rather than hang up
                logger.exception("emulator handler failed for %s %s", method, request.path)
                _reply_error(response, HTTPStatus.INTERNAL_SERVER_ERROR, repr(err), "backendError")
        response.close()

    def _find(self, request: emu_server.Request, method: str) -> Handler | None:
        for pattern, handlers in self.routes:
            match = pattern.fullmatch(request.path)
            if not match:
                continue
            request.set_match(match)
            handler = handlers.get(method)
            if handler is None and method == "POST" and request.query.get("uploadType") \
                    and request.path.endswith("/o"):
                handler = _strict(emu_objects.insert)  # uploads posted without /upload
            return handler
        return None

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a client opening more connections at once has its
    # extra SYNs dropped and retried a second later, a delay real GCS never adds.
    request_queue_size = 128


@contextmanager
def _serving(httpd: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield f"{host}:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


READ_MIBPS_ENV = "RUNNER_GCS_READ_MIBPS"
TIME_SCALE_ENV = "RUNNER_GCS_TIME_SCALE"


@contextmanager
def run_emulator(bucket: str, deny: Iterable[str] = (), read_mibps_per_stream: float | None = None,
                 time_scale: float | None = None) -> Iterator[str]:
    """Serve a strict in-memory emulator with ``bucket`` created; yields ``host:port``.

    Binds port 0 so the kernel picks a free port with no race. Buckets in ``deny`` (created too)
    answer every request with 403. Reads no environment variable but the two throughput knobs
    (``RUNNER_GCS_READ_MIBPS``, ``RUNNER_GCS_TIME_SCALE``, read once here when not passed), so
    a whole test session can be run against a slower store; point a client at
    ``http://HOST:PORT`` through ``STORAGE_EMULATOR_HOST`` or ``client_options``.
    """
    with emulator(bucket, deny, read_mibps_per_stream, time_scale) as (hostport, _storage):
        yield hostport


@contextmanager
def emulator(bucket: str, deny: Iterable[str] = (), read_mibps_per_stream: float | None = None,
             time_scale: float | None = None) -> Iterator[tuple[str, StrictStorage]]:
    """``run_emulator``, also yielding its ``StrictStorage`` (to change the knobs while serving)."""
    if read_mibps_per_stream is None:
        read_mibps_per_stream = float(os.environ.get(READ_MIBPS_ENV) or 0)
    if time_scale is None:
        time_scale = float(os.environ.get(TIME_SCALE_ENV) or 1)
    storage = StrictStorage(deny=deny, read_mibps_per_stream=read_mibps_per_stream, time_scale=time_scale)
    for name in {bucket, *deny}:
        emu_buckets.create_bucket(name, storage)
    handler_cls = type("StrictRequestHandler", (_RequestHandler,), {"routes": _build_routes()})
    httpd = _Server(("127.0.0.1", 0), partial(handler_cls, storage))
    with _serving(httpd) as hostport:
        yield hostport, storage


@contextmanager
def run_raw_emulator(bucket: str) -> Iterator[str]:
    """Serve the unpatched emulator, to show what ``run_emulator`` fixes; yields ``host:port``."""
    storage = Storage(use_memory_fs=True)
    emu_buckets.create_bucket(bucket, storage)
    httpd = _Server(("127.0.0.1", 0), partial(emu_server.RequestHandler, storage))
    with _serving(httpd) as hostport:
        yield hostport
