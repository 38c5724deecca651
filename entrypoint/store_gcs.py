"""``gs://BUCKET[/PREFIX]``: the store on Google Cloud Storage.

How each guarantee of ``entrypoint.store.Store`` is kept:

- Conditional writes use GCS's own ``ifGenerationMatch``; a 412 becomes ``PreconditionFailed``.
  GCS objects are replaced atomically, so readers see old or new content, never a mix.
- ``read`` is one request: the media download carries ``x-goog-generation``, so data and
  generation come from the same response and cannot belong to different writes.
- Uploads declare the CRC32C computed locally *before* sending (in the object metadata, for
  multipart and resumable uploads alike). GCS checks the received bytes against it and refuses to
  commit on a mismatch, so a torn upload never replaces a good object. The library's own
  client-side upload check is off on purpose: on a mismatch it deletes the object it just wrote,
  which could be someone else's newer write.
- Downloads are checked by the library against ``x-goog-hash`` while streaming, and again from
  the finished temp file before it is renamed into place.
- A conditional write whose reply is lost recognises itself: see ``write``.

google-cloud-storage is imported lazily: this module is only loaded for ``gs://`` URLs, and the
local backend must not need it. With ``STORAGE_EMULATOR_HOST`` set the client talks to that
emulator with anonymous credentials. Retries are the library's defaults (408, 429, 5xx and
dropped connections, as https://cloud.google.com/storage/docs/retry-strategy advises;
and every upload, with or without a precondition: see ``_upload_retry``).
"""

from __future__ import annotations

import base64
import os
import re
import uuid
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

from entrypoint.store import (
    MODE_METADATA_KEY,
    SLICE_BYTES,
    Blob,
    ObjectInfo,
    PreconditionFailed,
    Store,
    StoreError,
    StoreNotFound,
    crc32c_of_bytes,
    crc32c_of_file,
    download_temp_name,
    mode_of_text,
    mode_text,
)

if TYPE_CHECKING:
    from google.cloud import storage as gcs

_CONTENT_TYPE = "application/octet-stream"
_OBJECT_ADMIN = "roles/storage.objectAdmin"
# Custom metadata key of the per-write token that lets a conditional write recognise itself.
WRITE_TOKEN_KEY = "cos-spot-runner-write"
# Custom metadata key of the content a listing carries (``write_listed``). GCS allows 4 KiB per
# value and 8 KiB per object (MAX_CUSTOM_METADATA_FIELD_VALUE_BYTES, MAX_CUSTOM_METADATA_TOTAL_SIZE_BYTES,
# https://docs.cloud.google.com/storage/docs/reference/rpc/google.storage.v1); larger content is
# read the usual way. Its value is the content compressed (zlib), then base64.
LISTED_KEY = "cos-spot-runner-doc"
LISTED_MAX_BYTES = 4096
_GLOB_CHARS = re.compile(r"[*?\[\]{}\\!]")


def parse_gs_url(url: str) -> tuple[str, str]:
    """Split ``gs://BUCKET[/PREFIX]`` into the bucket and a key prefix ('' or ending in '/')."""
    if not url.startswith("gs://"):
        raise StoreError(f"not a gs:// URL: {url!r}")
    bucket, _, prefix = url[len("gs://"):].partition("/")
    if not bucket:
        raise StoreError(f"no bucket in {url!r}: use gs://BUCKET or gs://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


# Connections kept open to GCS per client: as many as the widest reader runs requests at once
# (``ops list``'s workers, ``runner.ops.runs.LIST_WORKERS``). requests keeps 10 per host by
# default (``HTTPAdapter(pool_maxsize=10)``); a thread beyond that opens a connection of its own
# and throws it away after one request ("Connection pool is full, discarding connection",
# https://github.com/googleapis/python-storage/issues/253), paying a new TCP and TLS handshake.
CONNECTION_POOL_SIZE = 32


def size_connection_pool(client: "gcs.Client", size: int = CONNECTION_POOL_SIZE) -> "gcs.Client":
    """Keep ``size`` connections per host open in ``client``'s HTTP session, for HTTPS (GCS) and
    HTTP (an emulator). Threads beyond ``size`` still get a connection (``pool_block=False``):
    a wider reader is slower, never stuck. Returns ``client``."""
    from requests.adapters import HTTPAdapter

    session = client._http  # the library's AuthorizedSession: it adds the credentials
    for scheme in ("https://", "http://"):
        session.mount(scheme, HTTPAdapter(pool_connections=size, pool_maxsize=size))
    return client


def make_client() -> "gcs.Client":
    """A storage client: anonymous against an emulator, default credentials otherwise; its
    connection pool sized for concurrent readers (``size_connection_pool``)."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local")
        return size_connection_pool(storage.Client(project=project, credentials=AnonymousCredentials()))
    try:
        return size_connection_pool(storage.Client())
    except DefaultCredentialsError as err:
        raise StoreError(
            "no Google credentials found for the gs:// store: run "
            "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a "
            f"service-account key, or run on a VM with a service account ({err})"
        ) from err


def _data_corruption_errors() -> tuple[type[BaseException], ...]:
    """The library's checksum-mismatch exception(s); the class moved in google-cloud-storage 3."""
    found: list[type[BaseException]] = []
    try:
        from google.cloud.storage.exceptions import DataCorruption

        found.append(DataCorruption)
    except ImportError:
        pass
    try:
        from google.resumable_media import DataCorruption as LegacyDataCorruption

        found.append(LegacyDataCorruption)
    except ImportError:
        pass
    return tuple(found)


def _server_message(err: BaseException) -> str:
    """The ``error.message`` GCS sent, without the URL and status the library wraps it in."""
    response = getattr(err, "response", None)
    try:
        return str(response.json()["error"]["message"])
    except Exception:  # not JSON, no response, or no message: fall back to the whole text
        return str(getattr(err, "message", None) or err)


def _upload_retry() -> Any:
    """Retry every upload, with or without a precondition (google-cloud-storage 2.x retried only
    conditional ones). Safe for an unconditional write too: last writer wins, and a retry of
    ours is simply our write landing later, still within our call."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _is_bucket_missing(err: BaseException) -> bool:
    """GCS answers 404 both for a missing object and a missing bucket; only the text differs."""
    return "bucket does not exist" in str(err).lower()


class GcsStore(Store):
    def __init__(self, url: str, client: "gcs.Client | None" = None) -> None:
        self.bucket_name, self.prefix = parse_gs_url(url)
        self.url = f"gs://{self.bucket_name}" + (f"/{self.prefix.rstrip('/')}" if self.prefix else "")
        self._client = client or make_client()
        self._bucket = self._client.bucket(self.bucket_name)  # no request: bucket may be unreadable

    # -- names ---------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        # Same rules as LocalStore, so a name that works here also works on the local backend.
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise StoreError(f"invalid object name {name!r}")
        return self.prefix + name

    def _name(self, key: str) -> str:
        return key[len(self.prefix):]

    def _blob(self, name: str) -> Any:
        return self._bucket.blob(self._key(name))

    def _where(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}{name}"

    # -- errors --------------------------------------------------------------------------------

    def _project(self) -> str:
        project = getattr(self._client, "project", None)
        return project if project and project != "<none>" else "YOUR_PROJECT"

    def _member(self) -> str | None:
        """The IAM member of the credentials in use, when they say (``gcloud`` ADC often don't)."""
        creds = getattr(self._client, "_credentials", None)
        email = getattr(creds, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return f"serviceAccount:{email}"
        account = getattr(creds, "account", None)
        return f"user:{account}" if isinstance(account, str) and "@" in account else None

    def _bucket_missing(self, err: BaseException) -> NoReturn:
        raise StoreNotFound(
            f"bucket {self.bucket_name} does not exist: create it with "
            f"`gcloud storage buckets create gs://{self.bucket_name} --project {self._project()}` "
            "or point the store URL at an existing bucket"
        ) from err

    def _raise_if_bucket_missing(self, err: BaseException) -> None:
        if _is_bucket_missing(err):
            self._bucket_missing(err)

    def _forbidden(self, what: str, err: BaseException) -> NoReturn:
        member = self._member()
        who = member or "the principal in use (see `gcloud auth list`, or the VM's service account)"
        member = member or "PRINCIPAL"
        raise StoreError(
            f"permission denied to {what}: grant {_OBJECT_ADMIN} on bucket gs://{self.bucket_name} "
            f"to {who}: `gcloud storage buckets add-iam-policy-binding gs://{self.bucket_name} "
            f"--member={member} --role={_OBJECT_ADMIN}` (GCS said: {_server_message(err)})"
        ) from err

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Turn library exceptions into store errors that say what to do.

        Callers that expect a missing object (``read``, ``stat``...) catch ``NotFound`` inside
        the block; what reaches here is an error.
        """
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        try:
            yield
        except gexc.PreconditionFailed as err:
            raise PreconditionFailed(
                f"{what}: the object's generation is not the one expected (another writer got "
                "there first); re-read it and decide again"
            ) from err
        except gexc.NotFound as err:
            self._raise_if_bucket_missing(err)
            raise StoreError(f"{what}: not found (GCS said: {_server_message(err)})") from err
        except gexc.Forbidden as err:
            self._forbidden(what, err)
        except gexc.Unauthorized as err:
            raise StoreError(
                f"{what}: credentials were rejected: run `gcloud auth application-default login` "
                f"or check GOOGLE_APPLICATION_CREDENTIALS (GCS said: {_server_message(err)})"
            ) from err
        except gexc.BadRequest as err:
            said = _server_message(err)
            if "crc32c" in said.lower() or "md5" in said.lower():
                raise StoreError(
                    f"{what}: the bytes GCS received do not match the CRC32C computed before "
                    f"sending (the file changed during the upload, or was corrupted in transit); "
                    f"nothing was replaced: retry (GCS said: {said})"
                ) from err
            raise StoreError(f"{what}: GCS refused the request, nothing was changed: {said}") from err
        except gexc.GoogleAPIError as err:
            raise StoreError(f"{what}: GCS request failed after retries: {err}") from err
        except GoogleAuthError as err:
            raise StoreError(
                f"{what}: could not obtain credentials ({err}): run "
                "`gcloud auth application-default login` or check the VM's service account"
            ) from err
        except RequestException as err:
            raise StoreError(f"{what}: cannot reach GCS ({err}); check the network and retry") from err
        except _data_corruption_errors() as err:
            raise StoreError(f"{what}: checksum mismatch in transfer ({err}); retry") from err

    # -- Store ---------------------------------------------------------------------------------

    def read(self, name: str) -> Blob | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        with self._translated(f"read {self._where(name)}"):
            try:
                data = blob.download_as_bytes(checksum="crc32c")
            except NotFound as err:
                self._raise_if_bucket_missing(err)
                return None
        return Blob(data, self._generation(blob, name))

    def write(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        """Store ``data``; returns the new generation.

        A conditional write can land while its reply is lost (a dropped connection, a 503 sent
        after the commit); the library then retries it, and the retry meets a 412 caused by our
        own write. So every conditional write carries a random token in its custom metadata,
        and on a 412 (or a failure after retries) the object is read back: if it holds our
        token, the write is ours and its generation is returned. Someone else's write never
        carries our token, so a real conflict still raises ``PreconditionFailed``.
        """
        return self._write(name, data, if_generation_match, {})

    def write_listed(self, name: str, data: bytes, if_generation_match: int | None = None) -> int:
        """``write``, with ``data`` also in the object's custom metadata (``LISTED_KEY``), which
        an object listing returns (``read_listed``). Written in the same upload as the bytes, so
        the two are one generation and never disagree. Compressed (zlib): a run's state grows
        with its attempts (8 KB after 20), and JSON compresses four to five times. Base64: a
        metadata value is text, and
        custom metadata also travels as ``X-Goog-Meta-KEY`` headers
        (https://cloud.google.com/storage/docs/json_api/v1/parameters), where a JSON document's
        newlines would break the reply (the emulator's downloads did). ``data`` that does not
        fit GCS's limit (``LISTED_MAX_BYTES`` encoded) is written without it, and read the
        usual way."""
        text = base64.b64encode(zlib.compress(data)).decode("ascii")
        fits = len(text) <= LISTED_MAX_BYTES
        return self._write(name, data, if_generation_match, {LISTED_KEY: text} if fits else {})

    listing_carries_content = True

    def read_listed(self, prefix: str, pattern: str) -> dict[str, Blob | None]:
        """One listing per thousand matching objects, asking only for each one's name,
        generation and carried content (``fields``: a partial response,
        https://cloud.google.com/storage/docs/json_api#partial-response), filtered on GCS's side
        by ``matchGlob``."""
        if _GLOB_CHARS.search(self.prefix):
            return super().read_listed(prefix, pattern)  # the store's own prefix is no glob
        out: dict[str, Blob | None] = {}
        with self._translated(f"list gs://{self.bucket_name}/{self.prefix}{prefix}"):
            blobs = self._client.list_blobs(
                self._bucket, prefix=self.prefix + prefix, match_glob=self.prefix + pattern,
                fields="items(name,generation,metadata),nextPageToken",
            )
            for b in blobs:
                text = (b.metadata or {}).get(LISTED_KEY)
                out[self._name(b.name)] = (None if text is None or b.generation is None
                                           else Blob(zlib.decompress(base64.b64decode(text)), int(b.generation)))
        return out

    def _write(self, name: str, data: bytes, if_generation_match: int | None, metadata: dict[str, str]) -> int:
        blob = self._blob(name)
        blob.crc32c = crc32c_of_bytes(data)  # GCS verifies this before committing
        token = uuid.uuid4().hex if if_generation_match is not None else None
        if token is not None:
            metadata = {**metadata, WRITE_TOKEN_KEY: token}
        if metadata:
            blob.metadata = metadata
        try:
            with self._translated(f"write {self._where(name)}"):
                blob.upload_from_string(
                    data,
                    content_type=_CONTENT_TYPE,
                    if_generation_match=if_generation_match,
                    checksum=None,
                    retry=_upload_retry(),
                )
        except StoreError:
            landed = self._landed(name, token) if token is not None else None
            if landed is None:
                raise
            return landed
        return self._generation(blob, name)

    def _landed(self, name: str, token: str) -> int | None:
        """The generation of ``name`` if it is the write that carried ``token``, else None.

        Best effort by design: it runs after a write already failed, so if this check cannot
        reach GCS either, the write's own error is the one worth raising.
        """
        blob = self._blob(name)
        try:
            with self._translated(f"read back {self._where(name)}"):
                blob.reload()
        except StoreError:
            return None
        if (blob.metadata or {}).get(WRITE_TOKEN_KEY) != token or blob.generation is None:
            return None
        return int(blob.generation)

    def stat(self, name: str) -> ObjectInfo | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        with self._translated(f"stat {self._where(name)}"):
            try:
                blob.reload()
            except NotFound as err:
                self._raise_if_bucket_missing(err)
                return None
        return self._info(name, blob)

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        with self._translated(f"delete {self._where(name)}"):
            try:
                blob.delete()
            except NotFound as err:
                self._raise_if_bucket_missing(err)

    def list(self, prefix: str) -> list[str]:
        with self._translated(f"list gs://{self.bucket_name}/{self.prefix}{prefix}"):
            blobs = self._client.list_blobs(
                self._bucket, prefix=self.prefix + prefix, fields="items(name),nextPageToken"
            )
            return sorted(self._name(b.name) for b in blobs)

    def list_from(self, prefix: str, start_offset: str) -> list[str]:
        with self._translated(f"list gs://{self.bucket_name}/{self.prefix}{prefix} from {start_offset}"):
            blobs = self._client.list_blobs(
                self._bucket, prefix=self.prefix + prefix, start_offset=self.prefix + start_offset,
                fields="items(name),nextPageToken",
            )
            return sorted(self._name(b.name) for b in blobs)

    def list_prefixes(self, prefix: str) -> list[str]:
        with self._translated(f"list gs://{self.bucket_name}/{self.prefix}{prefix}"):
            it = self._client.list_blobs(
                self._bucket,
                prefix=self.prefix + prefix,
                delimiter="/",
                fields="prefixes,nextPageToken",
            )
            for _page in it.pages:  # prefixes accumulate as pages are read
                pass
            return sorted(self._name(p) for p in it.prefixes)

    def upload_file(self, name: str, path: str, crc32c: str | None = None, mode: int | None = None) -> ObjectInfo:
        # A CRC32C the caller computed from this very file (the checkpoint sync: its snapshot) is
        # not computed again: a second read of every byte costs CPU beside the job, and GCS
        # checks the declared value against the bytes it receives anyway (a file that changed
        # in between is refused, below or by GCS, never stored).
        local = crc32c if crc32c is not None else crc32c_of_file(path)
        blob = self._blob(name)
        blob.crc32c = local  # declared up front: GCS refuses to commit different bytes
        if mode is not None:
            # GCS keeps no file modes: custom metadata, sent with the upload, carries it
            # (https://cloud.google.com/storage/docs/metadata#custom-metadata); ``copy``'s rewrite
            # keeps it ("Optionally overrides metadata": we never override,
            # https://docs.cloud.google.com/storage/docs/json_api/v1/objects/rewrite).
            blob.metadata = {MODE_METADATA_KEY: mode_text(mode)}
        with self._translated(f"upload {path} to {self._where(name)}"):
            blob.upload_from_filename(path, content_type=_CONTENT_TYPE, checksum=None,
                                      retry=_upload_retry())
        info = self._info(name, blob)
        if info.crc32c != local:  # GCS checked already; this guards against a server that didn't
            raise StoreError(
                f"{self._where(name)}: CRC32C mismatch after upload (local {local}, stored "
                f"{info.crc32c}): upload it again"
            )
        return info

    def download_file(self, name: str, path: str, *, streams: int = 1,
                      slice_bytes: int = SLICE_BYTES) -> ObjectInfo:
        """One stream, or (``streams`` > 1, object over ``slice_bytes``) a sliced download:
        concurrent ranged reads of one generation, each written in place into the temp file.

        Either way the finished temp file's CRC32C is compared with the object's before the
        rename, so a torn slice, a short read or a wrong byte never becomes ``path``.
        """
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        tmp = download_temp_name(path)
        try:
            with self._translated(f"download {self._where(name)} to {path}"):
                try:
                    if streams > 1:
                        blob.reload()  # size, and the generation every slice is pinned to
                    if streams > 1 and (blob.size or 0) > slice_bytes:
                        self._download_sliced(blob, tmp, streams, slice_bytes)
                    else:
                        with open(tmp, "wb") as f:
                            blob.download_to_file(f, checksum="crc32c")
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                except NotFound as err:
                    self._raise_if_bucket_missing(err)
                    raise StoreError(f"{self._where(name)}: no such object") from err
            info = ObjectInfo(name, os.path.getsize(tmp), self._generation(blob, name),
                              crc32c_of_file(tmp))
            if info.crc32c != blob.crc32c:
                raise StoreError(
                    f"{self._where(name)}: downloaded CRC32C {info.crc32c} does not match the "
                    f"stored {blob.crc32c}: download it again"
                )
            os.replace(tmp, path)
            return info
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _download_sliced(blob: Any, tmp: str, streams: int, slice_bytes: int) -> None:
        """Parallel ranged reads through google-cloud-storage's transfer manager.

        Threads, not the library's default processes: the work is waiting on sockets and
        writing to disk, both of which release the GIL, so threads do get one connection each;
        a process pool would re-create the client in every worker from a pickled approximation
        ("may not capture every detail of the Client object",
        https://cloud.google.com/python/docs/reference/storage/latest/google.cloud.storage.transfer_manager),
        losing the credentials and endpoint this store was opened with, and would start (and
        import google-cloud-storage in) a Python per worker inside the recovery's critical path.
        The library combines the slices' CRC32Cs and checks them against the object's
        (``crc32c_checksum``); ``download_file`` checks the whole file again before the rename.
        """
        from google.cloud.storage import transfer_manager

        transfer_manager.download_chunks_concurrently(
            blob, tmp, chunk_size=slice_bytes, worker_type=transfer_manager.THREAD,
            max_workers=streams, crc32c_checksum=True,
        )

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        with self._translated(f"list gs://{self.bucket_name}/{self.prefix}{prefix}"):
            blobs = self._client.list_blobs(
                self._bucket, prefix=self.prefix + prefix,
                fields="items(name,size,generation,crc32c),nextPageToken",
            )
            found = [self._info(self._name(b.name), b) for b in blobs]
        return sorted(found, key=lambda i: i.name)

    def copy(self, src: str, dst: str) -> ObjectInfo:
        from google.api_core.exceptions import NotFound
        from google.cloud.storage.retry import DEFAULT_RETRY

        source, target = self._blob(src), self._blob(dst)
        with self._translated(f"copy {self._where(src)} to {self._where(dst)}"):
            try:
                token = None
                while True:  # rewrite may need several calls for large objects
                    # An unconditional copy of the same source is idempotent: safe to retry.
                    token, _, _ = target.rewrite(source, token=token, retry=DEFAULT_RETRY)
                    if token is None:
                        break
            except NotFound as err:
                self._raise_if_bucket_missing(err)
                raise StoreError(f"{self._where(src)}: no such object") from err
        return self._info(dst, target)

    # -- helpers -------------------------------------------------------------------------------

    def _generation(self, blob: Any, name: str) -> int:
        if blob.generation is None:
            raise StoreError(
                f"{self._where(name)}: the server reported no generation (x-goog-generation); "
                "is STORAGE_EMULATOR_HOST pointing at a GCS-compatible server?"
            )
        return int(blob.generation)

    def _info(self, name: str, blob: Any) -> ObjectInfo:
        return ObjectInfo(name, int(blob.size or 0), self._generation(blob, name), blob.crc32c or "",
                          mode_of_text((blob.metadata or {}).get(MODE_METADATA_KEY)))
