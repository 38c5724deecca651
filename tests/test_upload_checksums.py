"""A torn upload never replaces a good object: the GCS emulator checks a declared checksum the
way GCS does, and the store relies on that check.

GCS compares the checksum a client declares with the bytes it received before it commits an
upload ("The server receives the data payload, calculates its own checksum, and validates the
data", https://docs.cloud.google.com/storage/docs/data-validation), and answers a mismatch with
400 ``invalid`` ``Provided CRC32C "X" doesn't match calculated CRC32C "Y".``
(github.com/googleapis/python-storage/issues/1541 quotes the whole reply). What
google-cloud-storage declares, read from its source (``google/cloud/storage/_media/_upload.py``):
a multipart upload puts ``crc32c``/``md5Hash`` in the object metadata; a resumable upload sends
``x-goog-hash: crc32c=...`` with its final chunk. ``entrypoint.store_gcs`` declares
``blob.crc32c`` itself, in the metadata, so every upload it makes is checked by the server.

The fault proxy's ``tear_upload`` sends bytes other than the ones the client hashed (a file that
changed while it was read): the server must refuse them, and the object keep what it held.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid

import google_crc32c
import pytest
import requests
from google.api_core import exceptions

from entrypoint.store import StoreError, crc32c_of_file
from tests.standins.gcs_fault_proxy import FaultRule
from tests.standins.gcs_fixture import BUCKET, client_through, store_through

GOOD = b"the checkpoint of step 100 " * 64
NEWER = b"the checkpoint of step 200 " * 64


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _name() -> str:
    return f"sum-{uuid.uuid4().hex[:10]}"


def test_a_resumable_upload_whose_bytes_are_not_the_ones_hashed_is_refused_and_the_object_kept(
        gcs_emulator: str, fault_proxy) -> None:
    """The library's own path: ``x-goog-hash`` with the final chunk (checksum="crc32c")."""
    bucket = client_through(fault_proxy).bucket(BUCKET)
    name = _name()
    bucket.blob(name).upload_from_string(GOOD)
    before = bucket.get_blob(name).generation
    fault_proxy.add(FaultRule(action="tear_upload", match="upload_id=", times=1))
    blob = bucket.blob(name, chunk_size=256 * 1024)
    with pytest.raises(exceptions.BadRequest, match=r"Provided CRC32C .+ doesn't match calculated CRC32C"):
        # A stream of unknown size goes up as a resumable upload (a known size under 8 MiB
        # would go as one multipart request).
        blob.upload_from_file(io.BytesIO(NEWER), checksum="crc32c")
    assert fault_proxy.stats.by_action == {"tear_upload": 1}
    kept = bucket.get_blob(name)
    assert kept.generation == before and kept.download_as_bytes() == GOOD


@pytest.mark.parametrize("header,says", [
    (lambda good, sent: f"crc32c={_crc(good)}", 'Provided CRC32C "{crc}" doesn\'t match calculated CRC32C'),
    (lambda good, sent: f"md5={_md5(good)}", 'Provided MD5 hash "{md5}" doesn\'t match calculated MD5 hash'),
    # Both wrong: GCS names the CRC32C (github.com/googleapis/google-cloud-ruby/pull/12160).
    (lambda good, sent: f"md5={_md5(good)},crc32c={_crc(good)}", 'Provided CRC32C "{crc}"'),
], ids=["crc32c", "md5", "both"])
def test_a_media_upload_with_another_x_goog_hash_is_refused_with_gcs_words(gcs_emulator: str, header, says) -> None:
    name = _name()
    url = f"{gcs_emulator}/upload/storage/v1/b/{BUCKET}/o"
    assert requests.post(url, params={"uploadType": "media", "name": name}, data=GOOD, timeout=10).status_code == 200
    r = requests.post(url, params={"uploadType": "media", "name": name}, data=NEWER,
                      headers={"x-goog-hash": header(GOOD, NEWER)}, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["errors"][0]["reason"] == "invalid"
    assert error["message"].startswith(says.format(crc=_crc(GOOD), md5=_md5(GOOD)))
    got = requests.get(f"{gcs_emulator}/download/storage/v1/b/{BUCKET}/o/{name}", params={"alt": "media"}, timeout=10)
    assert got.content == GOOD


def test_a_matching_x_goog_hash_is_accepted(gcs_emulator: str) -> None:
    name = _name()
    r = requests.post(f"{gcs_emulator}/upload/storage/v1/b/{BUCKET}/o", params={"uploadType": "media", "name": name},
                      data=GOOD, headers={"x-goog-hash": f"crc32c={_crc(GOOD)},md5={_md5(GOOD)}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["crc32c"] == _crc(GOOD)


def test_a_torn_record_write_never_replaces_the_record(fault_proxy) -> None:
    """``GcsStore.write`` (state.json and the other records) declares the CRC32C and has no
    check of its own after the upload: the server's check is the whole guarantee."""
    store = store_through(fault_proxy, "torn-write")
    gen = store.write("runs/r/state.json", GOOD)
    fault_proxy.add(FaultRule(action="tear_upload", times=1))
    with pytest.raises(StoreError, match="CRC32C"):
        store.write("runs/r/state.json", NEWER, if_generation_match=gen)
    kept = store.read("runs/r/state.json")
    assert kept is not None and kept.data == GOOD and kept.generation == gen


def test_a_torn_checkpoint_upload_leaves_the_previous_last_pt(fault_proxy, tmp_path) -> None:
    """DESIGN "Nothing lost": the previous good checkpoint stays until the new one is verified."""
    store = store_through(fault_proxy, "torn-ckpt")
    first, second = tmp_path / "100.pt", tmp_path / "200.pt"
    first.write_bytes(GOOD)
    second.write_bytes(NEWER)
    store.publish_file("ckpt/last.pt", str(first), crc32c_of_file(str(first)), "ckpt/.partial/last.pt.a")
    fault_proxy.add(FaultRule(action="tear_upload", times=1))
    with pytest.raises(StoreError, match="CRC32C"):
        store.publish_file("ckpt/last.pt", str(second), crc32c_of_file(str(second)), "ckpt/.partial/last.pt.b")
    kept = store.read("ckpt/last.pt")
    assert kept is not None and kept.data == GOOD
    assert store.stat("ckpt/.partial/last.pt.b") is None  # refused: nothing was stored under any name
