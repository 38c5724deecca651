"""Restore in seconds (issue 18): many objects at once, a large one in parallel slices, prestaged
files adopted only when exact, and every byte still checked before the job can load it.

Both stores run the same behaviours (the local directory, and GCS through the strict emulator);
the GCS-only ones read through the real google-cloud-storage client, its transfer manager and
the emulator's per-stream throughput model.
"""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import pytest

from entrypoint.checkpoints import restore, restore_checkpoints
from entrypoint.store import Store, StoreError, crc32c_of_bytes
from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_emulator import emulator
from tests.standins.gcs_fault_proxy import FaultRule
from tests.standins.gcs_fixture import BUCKET, store_through

KiB, MiB = 1 << 10, 1 << 20
PREFIX = "runs/r1/checkpoints/"


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


def put(store: Store, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        store.write(PREFIX + rel, data)


@pytest.fixture
def vm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The VM's disk: not ``tmp_path``, which the local store takes for its bucket."""
    return tmp_path_factory.mktemp("vm")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative name: what the job would find there."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- the store interface: listing with metadata, sliced downloads ----

def test_list_info_reports_what_stat_reports_for_every_object_under_the_prefix(store: Store) -> None:
    put(store, {"a.pt": b"alpha", "d/b.pt": os.urandom(3000), "empty": b""})
    store.write("runs/other/x", b"not under the prefix")
    infos = store.list_info(PREFIX)
    assert [i.name for i in infos] == [PREFIX + n for n in ("a.pt", "d/b.pt", "empty")]
    for info in infos:
        assert info == store.stat(info.name)
    assert infos[0].crc32c == crc32c_of_bytes(b"alpha") and infos[0].size == 5


def test_a_sliced_download_lands_the_same_bytes_as_one_stream(store: Store, vm: Path) -> None:
    data = os.urandom(5 * MiB + 123)  # not a multiple of the slice: the last slice is short
    store.write("big.pt", data)
    one = store.download_file("big.pt", str(vm / "one"))
    sliced = store.download_file("big.pt", str(vm / "sliced"), streams=4, slice_bytes=256 * KiB)
    assert (vm / "sliced").read_bytes() == data == (vm / "one").read_bytes()
    assert sliced == one
    assert sorted(os.listdir(vm)) == ["one", "sliced"]  # no temp file left


# ---- restore ----

def test_restore_puts_many_files_and_a_large_one_in_place_byte_for_byte(store: Store, vm: Path) -> None:
    files = {f"shard-{i:02d}.pt": os.urandom(10 * KiB + i) for i in range(24)}
    files["opt/state.pt"] = os.urandom(64 * KiB)
    files["last.pt"] = os.urandom(3 * MiB + 7)  # above large_object: read in slices on GCS
    put(store, files)
    store.write(PREFIX + ".partial/last.pt.a1", b"an upload in flight, never restored")
    done = restore_checkpoints(store, PREFIX, str(vm / "ckpt"), streams=6,
                               large_object=1 * MiB, slice_bytes=512 * KiB)
    assert tree(vm / "ckpt") == files
    assert done.names == sorted(PREFIX + n for n in files)
    assert (done.bytes, done.streams, done.prestaged) == (sum(map(len, files.values())), 6, 0)
    assert done.detail()["files"] == len(files)


def test_restore_of_nothing_says_so(store: Store, vm: Path) -> None:
    done = restore_checkpoints(store, PREFIX, str(vm / "ckpt"))
    assert done.detail() == {"files": 0, "bytes": 0, "seconds": done.detail()["seconds"], "streams": 0,
                             "prestaged": 0}
    assert tree(vm / "ckpt") == {}


# ---- prestaged files ----

def prestage(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def other_file_system(tmp_path: Path) -> Path:
    """A directory on another file system than ``tmp_path`` (/dev/shm), where rename cannot go."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to prestage on")
    d = Path(os.path.join(shm, f"prestaged-{os.getpid()}-{time.monotonic_ns()}"))
    d.mkdir()
    return d


@pytest.mark.parametrize("where", ["same file system", "another file system"])
def test_only_prestaged_files_equal_to_the_stored_objects_are_adopted(
    store: Store, vm: Path, where: str
) -> None:
    files = {"last.pt": os.urandom(200 * KiB), "opt/state.pt": os.urandom(50 * KiB),
             "best.pt": os.urandom(80 * KiB), "meta.json": b'{"step": 100}'}
    put(store, files)
    wrong = bytearray(files["best.pt"])
    wrong[1000] ^= 0x01  # same size, one bit off: only the CRC32C can tell
    root = vm / "prestaged" if where == "same file system" else other_file_system(vm)
    prestage(root, {
        "last.pt": files["last.pt"],            # exact: adopted
        "opt/state.pt": files["opt/state.pt"],  # exact: adopted
        "best.pt": bytes(wrong),                # corrupted: never used
        "meta.json": b'{"step": 10',            # torn (short): never used
        "stale.pt": b"not in the store any more",  # no such object: ignored
    })
    try:
        done = restore_checkpoints(store, PREFIX, str(vm / "ckpt"), prestaged_dir=str(root))
        assert tree(vm / "ckpt") == files
        assert done.prestaged == 2
        if where == "same file system":  # moved, not copied: the bytes were never read twice
            assert not (root / "last.pt").exists() and not (root / "opt/state.pt").exists()
        assert done.names == sorted(PREFIX + n for n in files)
    finally:
        if where != "same file system":
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def test_a_missing_prestaged_directory_means_download_everything(store: Store, vm: Path) -> None:
    put(store, {"last.pt": b"x" * 1000})
    done = restore_checkpoints(store, PREFIX, str(vm / "ckpt"), prestaged_dir=str(vm / "nope"))
    assert (tree(vm / "ckpt"), done.prestaged) == ({"last.pt": b"x" * 1000}, 0)


# ---- a torn or wrong download never lands ----

@pytest.mark.parametrize("sliced", [False, True], ids=["one stream", "sliced"])
def test_a_download_damaged_in_transit_is_refused_and_the_previous_file_stays(
    fault_proxy, tmp_path: Path, sliced: bool  # type: ignore[no-untyped-def]
) -> None:
    store = store_through(fault_proxy, "torn")
    data = os.urandom(2 * MiB)
    store.write(PREFIX + "last.pt", data)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"the checkpoint this VM had")
    # One media read (the whole object, or one slice of it) comes back with a byte flipped.
    fault_proxy.add(FaultRule(action="corrupt_body", match="alt=media", writes_only=False, times=1))
    with pytest.raises(StoreError, match="(?i)checksum|crc32c"):
        restore(store, PREFIX, str(ckpt), large_object=1 * MiB if sliced else 64 * MiB,
                slice_bytes=256 * KiB)
    assert fault_proxy.stats.by_action == {"corrupt_body": 1}
    assert tree(ckpt) == {"last.pt": b"the checkpoint this VM had"}  # no temp file, no torn file
    # Without the fault, the same restore lands the object.
    restore(store, PREFIX, str(ckpt), large_object=1 * MiB if sliced else 64 * MiB, slice_bytes=256 * KiB)
    assert tree(ckpt) == {"last.pt": data}


# ---- the emulator: ranged reads and per-stream throughput ----

def test_the_emulator_answers_a_range_with_206_and_content_range_as_gcs_does(gcs_store: GcsStore) -> None:
    data = bytes(range(256)) * 40
    gcs_store.write("ranged", data)
    host = os.environ["STORAGE_EMULATOR_HOST"].split("//", 1)[1]
    key = (gcs_store.prefix + "ranged").replace("/", "%2F")
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.request("GET", f"/download/storage/v1/b/{BUCKET}/o/{key}?alt=media",
                     headers={"Range": "bytes=1000-1999"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes 1000-1999/{len(data)}"
    assert body == data[1000:2000]


def test_parallel_slices_beat_one_stream_when_each_connection_is_rate_limited(tmp_path: Path) -> None:
    """8 MiB at a modelled 2 MiB/s per connection (x0.5 time scale): 2 s on one stream; four
    slices share the wait, about 0.5 s."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    data = os.urandom(8 * MiB)
    with emulator("slow-bucket", read_mibps_per_stream=2, time_scale=0.5) as (hostport, strict):
        client = storage.Client(project="local", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": f"http://{hostport}"})
        slow = GcsStore("gs://slow-bucket/p", client=client)
        strict.read_mibps_per_stream = 0  # the write is not what is measured
        slow.write("big", data)
        strict.read_mibps_per_stream = 2
        t0 = time.monotonic()
        slow.download_file("big", str(tmp_path / "one"))
        one = time.monotonic() - t0
        t0 = time.monotonic()
        slow.download_file("big", str(tmp_path / "four"), streams=4, slice_bytes=2 * MiB)
        four = time.monotonic() - t0
    assert (tmp_path / "one").read_bytes() == data == (tmp_path / "four").read_bytes()
    assert one >= 2.0  # the model holds a single stream to its rate
    assert four < one * 0.6, (one, four)


def test_the_emulator_takes_its_throughput_model_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How a whole session is run against a slower store: the session fixture starts the
    emulator through ``run_emulator``, which reads these two variables once."""
    monkeypatch.setenv("RUNNER_GCS_READ_MIBPS", "200")
    monkeypatch.setenv("RUNNER_GCS_TIME_SCALE", "0.01")
    with emulator("env-bucket") as (_, strict):
        assert (strict.read_mibps_per_stream, strict.time_scale) == (200.0, 0.01)
        assert strict.read_delay(200 * MiB) == pytest.approx(0.01)
    monkeypatch.delenv("RUNNER_GCS_READ_MIBPS")
    with emulator("env-bucket") as (_, strict):
        assert strict.read_delay(200 * MiB) == 0.0  # unlimited unless asked
