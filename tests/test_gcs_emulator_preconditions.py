"""The GCS emulator's request preconditions and media uploads, as GCS documents them.

Through the real ``google-cloud-storage`` client where it can send the condition, and raw HTTP
for what the VM's startup script sends with curl. Sources: "Request preconditions" (GCS docs:
a failed condition is 412, except a failed ``*NotMatch`` on a read, which is 304) and "Perform
a single-request upload" (``uploadType=media`` stores the body as sent, whatever its
Content-Type, which becomes the object's contentType).
"""

from __future__ import annotations

import uuid

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.standins.gcs_fixture import BUCKET


@pytest.fixture
def bucket(gcs_emulator: str) -> storage.Bucket:
    return storage.Client(project="local", credentials=AnonymousCredentials()).bucket(BUCKET)


def name() -> str:
    return f"pre-{uuid.uuid4().hex[:10]}"


def test_a_json_media_upload_is_stored_as_the_bytes_sent(gcs_emulator: str, bucket: storage.Bucket) -> None:
    """What gcp/startup.sh does for startup.json: curl -H 'Content-Type: application/json'."""
    obj = name()
    body = b'{"schema_version":1,"status":"failed"}\n'
    r = requests.post(f"{gcs_emulator}/upload/storage/v1/b/{BUCKET}/o", params={"uploadType": "media", "name": obj},
                      data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == str(len(body)) and r.json()["contentType"] == "application/json"
    blob = bucket.get_blob(obj)
    assert blob.download_as_bytes() == body and blob.content_type == "application/json"


def test_if_metageneration_match_is_enforced_on_metadata_updates(bucket: storage.Bucket) -> None:
    blob = bucket.blob(name())
    blob.upload_from_string(b"x")
    blob.reload()
    assert blob.metageneration == 1
    blob.metadata = {"k": "1"}
    blob.patch(if_metageneration_match=1)
    assert blob.metageneration == 2
    blob.metadata = {"k": "2"}
    with pytest.raises(exceptions.PreconditionFailed):
        blob.patch(if_metageneration_match=1)
    with pytest.raises(exceptions.PreconditionFailed):
        blob.patch(if_metageneration_not_match=2)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(blob.name).upload_from_string(b"y", if_metageneration_match=7)
    assert bucket.get_blob(blob.name).download_as_bytes() == b"x"


def test_if_generation_not_match_refuses_writes_and_answers_reads_304(gcs_emulator: str,
                                                                      bucket: storage.Bucket) -> None:
    blob = bucket.blob(name())
    blob.upload_from_string(b"one")
    gen = bucket.get_blob(blob.name).generation
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(blob.name).upload_from_string(b"two", if_generation_not_match=gen)
    r = requests.get(f"{gcs_emulator}/storage/v1/b/{BUCKET}/o/{blob.name}",
                     params={"ifGenerationNotMatch": gen}, timeout=10)
    assert r.status_code == 304
    bucket.blob(blob.name).upload_from_string(b"two", if_generation_not_match=gen + 1)
    assert bucket.get_blob(blob.name).download_as_bytes() == b"two"
    with pytest.raises(exceptions.PreconditionFailed):  # no live object: a metageneration cannot match
        bucket.blob(name()).upload_from_string(b"z", if_metageneration_match=1)


def test_a_listing_longer_than_a_page_comes_in_pages_of_a_thousand(faulty_gcs_store, fault_proxy):
    """GCS returns at most 1,000 objects a page (maxResults, objects.list reference); the
    emulator returned all at once, so a benchmark counted one listing where GCS needs two."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.standins.gcs_fault_proxy import object_requests

    names = [f"many/{i:04d}" for i in range(1001)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: faulty_gcs_store.write(n, b"x"), names))
    fault_proxy.stats.seen.clear()

    assert faulty_gcs_store.list("many/") == names
    pages = [r for r in object_requests(fault_proxy.stats.seen) if r.startswith("GET /storage/v1/b/") and "/o?" in r]
    assert len(pages) == 2 and "pageToken=" in pages[1]
