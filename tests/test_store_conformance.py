"""The guarantees of ``entrypoint.store.Store``, checked against every implementation.

Each behaviour test runs against ``LocalStore`` and ``GcsStore`` (on the strict in-process
emulator from tests/standins/gcs_emulator.py), because the run record and checkpoint sync are written
against the interface and must not care which backend they get. Assertions look at the bytes
actually stored, not only at return values.

The GCS-only tests at the end cover what has no local counterpart: error messages for a missing
or forbidden bucket, and the emulator patch that makes the precondition tests meaningful.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import google_crc32c
import pytest

from entrypoint.store import Blob, PreconditionFailed, Store, StoreError, StoreNotFound
from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_emulator import run_emulator, run_raw_emulator
from tests.standins.gcs_fault_proxy import FaultProxy, FaultRule
from tests.standins.gcs_fixture import BUCKET, DENIED_BUCKET

MiB = 1 << 20


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory outside the store (the local store's root is ``tmp_path``)."""
    return tmp_path_factory.mktemp("files")


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def content(store: Store, name: str) -> bytes | None:
    blob = store.read(name)
    return None if blob is None else blob.data


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` on n threads released together, and re-raise the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]


@pytest.fixture(params=["local", "gcs"])
def lossy(request: pytest.FixtureRequest) -> tuple[Store, "FaultProxy | None"]:
    """A store whose transport can lose replies: GCS through the fault proxy; the local store has
    no transport, so the same tests check it keeps the same promises with nothing to lose."""
    if request.param == "local":
        return request.getfixturevalue("local_store"), None
    proxy = request.getfixturevalue("fault_proxy")
    return request.getfixturevalue("faulty_gcs_store"), proxy


def lose(proxy: "FaultProxy | None", match: str, action: str = "drop_reply") -> None:
    if proxy is not None:
        proxy.add(FaultRule(action=action, match=match, times=1))


# -- missing objects -----------------------------------------------------------------------------


def test_read_of_a_missing_object_returns_none(store: Store) -> None:
    assert store.read("nope") is None
    assert store.read("no/such/dir/nope") is None


def test_stat_of_a_missing_object_returns_none(store: Store) -> None:
    assert store.stat("nope") is None
    assert not store.exists("nope")


def test_an_empty_object_is_not_a_missing_one(store: Store) -> None:
    gen = store.write("empty", b"")
    blob = store.read("empty")
    assert blob is not None and blob.data == b"" and blob.generation == gen
    assert store.stat("empty").size == 0


# -- writes and generations ----------------------------------------------------------------------


def test_write_then_read_returns_the_bytes_and_the_generation_write_returned(store: Store) -> None:
    gen = store.write("a/b.json", b'{"x": 1}')
    blob = store.read("a/b.json")
    assert blob is not None
    assert blob.data == b'{"x": 1}'
    assert blob.generation == gen


def test_every_write_of_an_object_gets_a_new_generation(store: Store) -> None:
    gens = [store.write("obj", f"v{i}".encode()) for i in range(5)]
    assert len(set(gens)) == len(gens)
    assert content(store, "obj") == b"v4"
    assert store.read("obj").generation == gens[-1]


def test_stat_reports_size_generation_and_crc32c_of_the_stored_bytes(store: Store) -> None:
    data = os.urandom(1000)
    gen = store.write("s", data)
    info = store.stat("s")
    assert info is not None
    assert (info.name, info.size, info.generation, info.crc32c) == ("s", 1000, gen, crc32c(data))
    assert store.exists("s")


def test_invalid_object_names_are_rejected(store: Store) -> None:
    for bad in ("", "/abs", "a/../b"):
        with pytest.raises(StoreError):
            store.write(bad, b"x")


# -- conditional writes --------------------------------------------------------------------------


def test_create_only_write_fails_if_the_object_exists_and_keeps_the_original(store: Store) -> None:
    gen = store.write("lease", b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        store.write("lease", b"second", if_generation_match=0)
    blob = store.read("lease")
    assert (blob.data, blob.generation) == (b"first", gen)


def test_create_only_write_succeeds_again_after_delete(store: Store) -> None:
    store.write("lease", b"first", if_generation_match=0)
    store.delete("lease")
    store.write("lease", b"second", if_generation_match=0)
    assert content(store, "lease") == b"second"


def test_compare_and_swap_with_a_stale_generation_fails_and_keeps_the_content(store: Store) -> None:
    old = store.write("rec", b"v1")
    new = store.write("rec", b"v2", if_generation_match=old)
    with pytest.raises(PreconditionFailed):
        store.write("rec", b"v3-from-stale-reader", if_generation_match=old)
    blob = store.read("rec")
    assert (blob.data, blob.generation) == (b"v2", new)


def test_compare_and_swap_with_the_current_generation_replaces_the_content(store: Store) -> None:
    gen = store.write("rec", b"v1")
    new = store.write("rec", b"v2", if_generation_match=gen)
    assert new != gen
    blob = store.read("rec")
    assert (blob.data, blob.generation) == (b"v2", new)


def test_compare_and_swap_on_a_missing_object_fails_and_creates_nothing(store: Store) -> None:
    gen = store.write("rec", b"v1")
    store.delete("rec")
    with pytest.raises(PreconditionFailed):
        store.write("rec", b"v2", if_generation_match=gen)
    assert store.read("rec") is None


def test_concurrent_create_only_writes_have_exactly_one_winner(store: Store) -> None:
    n = 8
    outcome: dict[int, int | None] = {}

    def claim(i: int) -> None:
        try:
            outcome[i] = store.write("claim", f"writer-{i}".encode(), if_generation_match=0)
        except PreconditionFailed:
            outcome[i] = None

    run_threads(n, claim)
    winners = [i for i, gen in outcome.items() if gen is not None]
    assert len(outcome) == n and len(winners) == 1
    blob = store.read("claim")
    assert (blob.data, blob.generation) == (f"writer-{winners[0]}".encode(), outcome[winners[0]])


def test_concurrent_compare_and_swap_increments_lose_no_update(store: Store) -> None:
    threads, per_thread = 4, 12
    store.write("counter", b"0", if_generation_match=0)

    def increment(i: int) -> None:
        for _ in range(per_thread):
            while True:
                blob = store.read("counter")
                try:
                    store.write("counter", b"%d" % (int(blob.data) + 1), if_generation_match=blob.generation)
                    break
                except PreconditionFailed:
                    continue  # someone else incremented first: re-read and try again

    run_threads(threads, increment)
    assert content(store, "counter") == str(threads * per_thread).encode()


def test_readers_see_old_or_new_content_never_a_mix(store: Store) -> None:
    a, b = b"a" * (2 * MiB), b"b" * (2 * MiB)
    store.write("big", a)
    store.write("other", b)
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(6):
                store.write("big", b if i % 2 == 0 else a)
                store.copy("other" if i % 2 else "big", "big")
        finally:
            done.set()

    def reader() -> None:
        while not done.is_set():
            data = content(store, "big")
            assert data in (a, b), "torn read"

    run_threads(3, lambda i: writer() if i == 0 else reader())
    assert content(store, "big") in (a, b)


# -- delete and listing --------------------------------------------------------------------------


def test_delete_removes_the_object_and_deleting_again_does_nothing(store: Store) -> None:
    store.write("d/x", b"x")
    store.write("d/y", b"y")
    store.delete("d/x")
    assert store.read("d/x") is None
    store.delete("d/x")
    store.delete("never/existed")
    assert content(store, "d/y") == b"y"


LAYOUT = ["a/1", "a/b/2", "a/b/c/3", "ab/4", "z"]


def write_layout(store: Store) -> None:
    for name in LAYOUT:
        store.write(name, name.encode())


def test_list_is_recursive_under_a_prefix(store: Store) -> None:
    write_layout(store)
    assert store.list("") == LAYOUT
    assert store.list("a/") == ["a/1", "a/b/2", "a/b/c/3"]
    assert store.list("a/b/") == ["a/b/2", "a/b/c/3"]
    assert store.list("a") == ["a/1", "a/b/2", "a/b/c/3", "ab/4"]  # a string prefix, not a dir
    assert store.list("missing/") == []


def test_list_from_starts_at_an_offset_under_a_prefix(store: Store) -> None:
    write_layout(store)
    assert store.list_from("a/", "a/b/") == ["a/b/2", "a/b/c/3"]
    assert store.list_from("a/", "a/b/2") == ["a/b/2", "a/b/c/3"]  # the offset itself included
    assert store.list_from("a/", "") == store.list("a/")
    assert store.list_from("a/", "a/z") == []


def test_list_prefixes_returns_one_level_of_directories(store: Store) -> None:
    write_layout(store)
    assert store.list_prefixes("") == ["a/", "ab/"]
    assert store.list_prefixes("a/") == ["a/b/"]
    assert store.list_prefixes("a/b/") == ["a/b/c/"]
    assert store.list_prefixes("a/b/c/") == []
    assert store.list_prefixes("missing/") == []


def test_list_prefixes_matches_a_partial_last_segment_like_gcs(store: Store) -> None:
    store.write("a/b/x", b"1")
    store.write("ab/y", b"2")
    assert store.list_prefixes("a") == ["a/", "ab/"]


def test_list_prefixes_forgets_a_directory_once_its_objects_are_deleted(store: Store) -> None:
    store.write("runs/r1/x", b"x")
    store.write("runs/r2/x", b"x")
    store.delete("runs/r1/x")
    assert store.list_prefixes("runs/") == ["runs/r2/"]


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3 * MiB + 17, 9 * MiB], ids=["multipart", "resumable"])
def test_upload_then_download_round_trips_a_file_with_its_crc32c(
    store: Store, files: Path, size: int
) -> None:
    data = os.urandom(size)
    src, dst = files / "src.bin", files / "dst.bin"
    src.write_bytes(data)
    up = store.upload_file("ckpt/model.bin", str(src), crc32c=crc32c(data))
    assert (up.name, up.size, up.crc32c) == ("ckpt/model.bin", size, crc32c(data))
    assert store.stat("ckpt/model.bin") == up
    assert content(store, "ckpt/model.bin") == data

    down = store.download_file("ckpt/model.bin", str(dst))
    assert dst.read_bytes() == data
    assert down == up


def test_upload_without_an_expected_crc32c_still_records_the_right_one(store: Store, files: Path) -> None:
    data = os.urandom(50_000)
    (files / "f").write_bytes(data)
    info = store.upload_file("f", str(files / "f"))
    assert info.crc32c == crc32c(data) == store.stat("f").crc32c


def test_a_files_mode_is_recorded_with_it_and_kept_by_publish_and_copy(store: Store, files: Path) -> None:
    """Issue 20 item 7: results kept their bytes but lost their executable bit. GCS stores no
    file modes; custom metadata carries it (https://cloud.google.com/storage/docs/metadata#custom-metadata,
    kept by a rewrite), the local store a user xattr."""
    (files / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    crc = crc32c(b"#!/bin/sh\necho hi\n")
    assert store.upload_file("r/run.sh", str(files / "run.sh"), mode=0o100755).mode == 0o755
    assert store.stat("r/run.sh").mode == 0o755
    store.publish_file("r/pub.sh", str(files / "run.sh"), crc, "r/.partial/pub.sh.x", mode=0o750)
    assert store.stat("r/pub.sh").mode == 0o750
    store.copy("r/pub.sh", "r/copy.sh")
    assert store.stat("r/copy.sh").mode == 0o750
    store.upload_file("r/plain", str(files / "run.sh"))
    assert store.stat("r/plain").mode is None  # none recorded: a download keeps its default


def test_upload_with_the_wrong_expected_crc32c_fails_and_keeps_the_existing_object(
    store: Store, files: Path
) -> None:
    gen = store.write("ckpt", b"good")
    (files / "f").write_bytes(b"new bytes")
    with pytest.raises(StoreError):
        store.upload_file("ckpt", str(files / "f"), crc32c=crc32c(b"other bytes"))
    blob = store.read("ckpt")
    assert (blob.data, blob.generation) == (b"good", gen)


def test_download_replaces_the_target_through_a_temp_file_and_leaves_none_behind(
    store: Store, files: Path
) -> None:
    store.write("obj", b"new content")
    target = files / "out.bin"
    target.write_bytes(b"old content that is longer")
    info = store.download_file("obj", str(target))
    assert target.read_bytes() == b"new content"
    assert info.crc32c == crc32c(b"new content")
    assert sorted(os.listdir(files)) == ["out.bin"]


def test_download_of_a_missing_object_raises_and_leaves_the_target_alone(
    store: Store, files: Path
) -> None:
    target = files / "out.bin"
    target.write_bytes(b"keep me")
    with pytest.raises(StoreError):
        store.download_file("nope", str(target))
    assert target.read_bytes() == b"keep me"
    assert sorted(os.listdir(files)) == ["out.bin"]


# -- copy ----------------------------------------------------------------------------------------


def test_copy_replaces_the_destination_with_the_source(store: Store) -> None:
    src_gen = store.write("src", b"source bytes")
    old_dst = store.write("dst", b"old destination")
    info = store.copy("src", "dst")
    assert content(store, "dst") == b"source bytes"
    assert info == store.stat("dst")
    assert info.crc32c == crc32c(b"source bytes") and info.generation != old_dst
    assert store.read("src").generation == src_gen


def test_copy_of_a_missing_source_raises_and_keeps_the_destination(store: Store) -> None:
    store.write("dst", b"keep")
    with pytest.raises(StoreError):
        store.copy("nope", "dst")
    assert content(store, "dst") == b"keep"


# -- GCS only: URLs, errors, checksums -----------------------------------------------------------


def test_gcs_names_are_relative_to_the_url_prefix(gcs_emulator: str) -> None:
    one, two = GcsStore(f"gs://{BUCKET}/iso/one/"), GcsStore(f"gs://{BUCKET}/iso/two")
    one.write("x", b"1")
    two.write("x", b"2")
    assert (one.url, one.list(""), content(one, "x")) == (f"gs://{BUCKET}/iso/one", ["x"], b"1")
    assert content(two, "x") == b"2"
    root = GcsStore(f"gs://{BUCKET}")
    assert root.list("iso/") == ["iso/one/x", "iso/two/x"]
    assert root.list_prefixes("iso/") == ["iso/one/", "iso/two/"]


def test_gcs_missing_bucket_raises_store_not_found_with_the_create_command(gcs_emulator: str) -> None:
    store = GcsStore("gs://no-such-bucket/p")
    for op in (lambda: store.read("x"), lambda: store.stat("x"), lambda: store.write("x", b""),
               lambda: store.delete("x"), lambda: store.list(""), lambda: store.list_prefixes("")):
        with pytest.raises(StoreNotFound) as err:
            op()
        assert "gcloud storage buckets create gs://no-such-bucket --project local" in str(err.value)


def test_gcs_forbidden_bucket_says_which_role_to_grant(gcs_emulator: str, files: Path) -> None:
    store = GcsStore(f"gs://{DENIED_BUCKET}")
    (files / "f").write_bytes(b"x")
    for op in (lambda: store.read("x"), lambda: store.write("x", b"x"), lambda: store.list(""),
               lambda: store.upload_file("x", str(files / "f"))):
        with pytest.raises(StoreError) as err:
            op()
        assert "roles/storage.objectAdmin" in str(err.value)
        assert f"gs://{DENIED_BUCKET}" in str(err.value)


@pytest.mark.parametrize("size", [1000, 9 * MiB], ids=["multipart", "resumable"])
def test_gcs_upload_whose_bytes_do_not_match_the_declared_crc32c_is_refused_by_the_server(
    gcs_store: GcsStore, files: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Simulates the file changing between checksumming and sending: nothing may be replaced."""
    gen = gcs_store.write("ckpt", b"good")
    (files / "f").write_bytes(os.urandom(size))
    monkeypatch.setattr("entrypoint.store_gcs.crc32c_of_file", lambda path: crc32c(b"stale"))
    with pytest.raises(StoreError, match="nothing was replaced"):
        gcs_store.upload_file("ckpt", str(files / "f"))
    blob = gcs_store.read("ckpt")
    assert (blob.data, blob.generation) == (b"good", gen)


# -- the emulator itself -------------------------------------------------------------------------


def _client(hostport: str):  # noqa: ANN202 - google.cloud.storage.Client, imported lazily
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="local", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": f"http://{hostport}"})


def test_the_unpatched_emulator_ignores_if_generation_match() -> None:
    """Why tests/standins/gcs_emulator.py exists. If this fails, the emulator learned preconditions and
    the patch there may be retired."""
    with run_raw_emulator("raw") as hostport:
        blob = _client(hostport).bucket("raw").blob("x")
        blob.upload_from_string(b"first", if_generation_match=0)
        blob.upload_from_string(b"second", if_generation_match=0)  # should have been a 412
        assert blob.download_as_bytes() == b"second"


@pytest.fixture(scope="module")
def strict_bucket() -> Iterator[object]:
    with run_emulator("strict") as hostport:
        yield _client(hostport).bucket("strict")


def test_strict_emulator_enforces_preconditions_on_resumable_uploads(strict_bucket) -> None:
    from google.api_core.exceptions import PreconditionFailed as Http412

    data = os.urandom(9 * MiB)
    blob = strict_bucket.blob("resumable")
    blob.chunk_size = 4 * MiB
    blob.upload_from_string(data, if_generation_match=0)
    again = strict_bucket.blob("resumable")
    again.chunk_size = 4 * MiB
    with pytest.raises(Http412):
        again.upload_from_string(b"x" * (9 * MiB), if_generation_match=0)
    assert strict_bucket.blob("resumable").download_as_bytes() == data


def test_strict_emulator_enforces_preconditions_on_copy_rewrite_and_compose(strict_bucket) -> None:
    from google.api_core.exceptions import PreconditionFailed as Http412

    src, dst = strict_bucket.blob("src"), strict_bucket.blob("dst")
    src.upload_from_string(b"src")
    dst.upload_from_string(b"dst")
    with pytest.raises(Http412):
        strict_bucket.copy_blob(src, strict_bucket, "dst", if_generation_match=0)
    with pytest.raises(Http412):
        strict_bucket.blob("dst").rewrite(src, if_generation_match=dst.generation + 1)
    with pytest.raises(Http412):
        strict_bucket.blob("dst").compose([src], if_generation_match=0)
    assert strict_bucket.blob("dst").download_as_bytes() == b"dst"
    strict_bucket.blob("dst").rewrite(src, if_generation_match=dst.generation)
    assert strict_bucket.blob("dst").download_as_bytes() == b"src"


def test_strict_emulator_generations_strictly_increase_and_hashes_match(strict_bucket) -> None:
    gens = []
    for i in range(30):
        blob = strict_bucket.blob("g")
        blob.upload_from_string(b"%d" % i)
        gens.append(blob.generation)
        assert blob.crc32c == crc32c(b"%d" % i)
    assert gens == sorted(gens) and len(set(gens)) == len(gens)


# -- lost replies: a write that landed although its answer did not ----------------------------


@pytest.mark.parametrize("action", ["drop_reply", "applied_503"])
def test_a_create_only_write_whose_reply_is_lost_reports_its_own_success(lossy, action) -> None:
    store, proxy = lossy
    lose(proxy, "claim.json", action)
    gen = store.write("claim.json", b"mine", if_generation_match=0)
    blob = store.read("claim.json")
    assert blob is not None and blob.data == b"mine" and blob.generation == gen
    if proxy is not None:
        assert proxy.stats.by_action == {action: 1}  # the fault really happened


def test_a_compare_and_swap_whose_reply_is_lost_reports_its_own_success(lossy) -> None:
    store, proxy = lossy
    g1 = store.write("state.json", b"v1", if_generation_match=0)
    lose(proxy, "state.json")
    g2 = store.write("state.json", b"v2", if_generation_match=g1)
    blob = store.read("state.json")
    assert blob is not None and blob.data == b"v2" and blob.generation == g2 != g1


def test_a_lost_reply_never_makes_someone_elses_write_ours(lossy) -> None:
    store, proxy = lossy
    store.write("claim.json", b"theirs", if_generation_match=0)
    lose(proxy, "claim.json")
    with pytest.raises(PreconditionFailed):
        store.write("claim.json", b"mine", if_generation_match=0)
    assert content(store, "claim.json") == b"theirs"


@pytest.mark.parametrize("action", ["429", "503"])
def test_a_conditional_write_refused_with_a_retryable_error_is_retried(lossy, action) -> None:
    store, proxy = lossy
    lose(proxy, "claim.json", action)
    gen = store.write("claim.json", b"mine", if_generation_match=0)
    assert store.read("claim.json").generation == gen


# -- local store: nothing left behind by writers that die (issue 10 §6) --------------------------

_UPLOADER = """
import sys
from entrypoint.store_local import LocalStore
LocalStore(sys.argv[1]).upload_file(sys.argv[2], sys.argv[3])
"""


def _start_uploader(root: Path, name: str, src: Path) -> "subprocess.Popen[bytes]":
    import subprocess
    import sys

    from tests.conftest import ROOT

    return subprocess.Popen([sys.executable, "-c", _UPLOADER, str(root), name, str(src)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _caught_mid_upload(root: Path, name: str, src: Path, sig: int) -> "subprocess.Popen[bytes]":
    """Start an upload and send ``sig`` once its temp file holds at least 1 MiB (retries if missed).

    The writer is frozen (SIGSTOP, confirmed in /proc) before its temp file is weighed, so what
    is weighed is what the signal leaves: a test descheduled between looking and signalling,
    as on a loaded machine, can neither kill a writer that already finished (its temp file
    renamed away) nor see a file vanish under ``stat``. A look that finds less than 1 MiB lets
    the writer go on. At least 1 MiB, not just any byte: the test weighs what was left behind."""
    import signal
    import time

    tmp = root / ".tmp"
    for _ in range(20):
        before = set(tmp.iterdir())
        proc = _start_uploader(root, name, src)
        while proc.poll() is None:
            if [p for p in tmp.iterdir() if p not in before]:
                os.kill(proc.pid, signal.SIGSTOP)
                if not _stopped(proc):
                    break  # it exited between our look and the stop: start another
                fresh = [p for p in tmp.iterdir() if p not in before]
                if fresh and fresh[0].stat().st_size >= 1 << 20:
                    if sig != signal.SIGSTOP:
                        os.kill(proc.pid, sig)
                    return proc
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.0005)
        proc.wait()
    raise AssertionError("never caught an upload in the middle")


def _stopped(proc: "subprocess.Popen[bytes]") -> bool:
    """Wait until ``proc`` is in the stopped state (kill() only queues SIGSTOP); False if it
    exited instead. /proc/PID/stat's third field is the state, ``T`` when stopped
    (https://man.archlinux.org/man/proc_pid_stat.5.txt)."""
    import time

    while True:
        try:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        if state == "T":
            return True
        if state in ("Z", "X"):
            return False
        time.sleep(0.0005)


def _age(directory: Path, seconds: float) -> None:
    import time

    past = time.time() - seconds
    for p in directory.iterdir():
        os.utime(p, (past, past))


def test_temp_files_of_killed_uploads_are_removed_and_a_live_writers_never(tmp_path: Path, files: Path) -> None:
    import signal
    import sys

    from entrypoint.store_local import LOCK_IDLE_AFTER, TEMP_STALE_AFTER, LocalStore

    root = tmp_path / "store"
    root.mkdir()
    LocalStore(str(root))
    src = files / "ckpt.bin"
    src.write_bytes(os.urandom(1 << 20) * 64)  # 64 MiB
    for i in range(5):  # writers killed -9 mid-upload
        proc = _caught_mid_upload(root, f"runs/r/checkpoints/k{i}.pt", src, signal.SIGKILL)
        proc.wait()
    live = _caught_mid_upload(root, "runs/r/checkpoints/last.pt", src, signal.SIGSTOP)
    try:
        left = list((root / ".tmp").iterdir())
        assert len(left) == 6 and sum(p.stat().st_size for p in left) > 5 << 20
        print(f"\n.tmp after 5 kills -9 and 1 stopped writer: {len(left)} files, "
              f"{sum(p.stat().st_size for p in left) >> 20} MiB", file=sys.stderr)
        _age(root / ".tmp", TEMP_STALE_AFTER + 60)  # long enough ago, for the dead and the stopped alike
        LocalStore(str(root))  # opening the store cleans up
        kept = list((root / ".tmp").iterdir())
        assert len(kept) == 1, kept  # the stopped writer's, and only it
    finally:
        os.kill(live.pid, signal.SIGCONT)
    assert live.wait(timeout=60) == 0
    store = LocalStore(str(root))
    assert store.stat("runs/r/checkpoints/last.pt").crc32c == crc32c(src.read_bytes())
    assert list((root / ".tmp").iterdir()) == []


def test_lock_files_do_not_pile_up_one_per_object(local_store: Store) -> None:
    from entrypoint.store_local import LOCK_IDLE_AFTER, LocalStore

    for i in range(200):
        local_store.write(f"runs/r/events/{i:04d}.json", b"{}", if_generation_match=0)
    locks = Path(local_store.root) / ".locks"
    _age(locks, LOCK_IDLE_AFTER + 60)
    LocalStore(local_store.root)
    assert len(list(locks.iterdir())) == 0


_INCREMENTER = """
import sys
from entrypoint.store import PreconditionFailed
from entrypoint.store_local import LocalStore
store = LocalStore(sys.argv[1])
for _ in range(int(sys.argv[2])):
    while True:
        blob = store.read("n")
        try:
            store.write("n", str(int(blob.data) + 1).encode(), if_generation_match=blob.generation)
            break
        except PreconditionFailed:
            continue
"""

_SWEEPER = """
import sys
from entrypoint.store_local import LocalStore
store = LocalStore(sys.argv[1])
while True:
    store.sweep(lock_min_age=-1)  # temp files keep their age guard: it covers create-to-flock
"""


def test_sweeping_lock_files_while_writers_use_them_loses_no_update(local_store: Store) -> None:
    """Writers in separate processes (as the agent, supervisors and ops are) increment a counter
    by compare-and-swap while another process sweeps lock files as fast as it can."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    local_store.write("n", b"0")
    sweeper = subprocess.Popen([sys.executable, "-c", _SWEEPER, local_store.root], env=env)
    try:
        writers = [subprocess.Popen([sys.executable, "-c", _INCREMENTER, local_store.root, "300"], env=env)
                   for _ in range(4)]
        assert [w.wait(timeout=120) for w in writers] == [0] * 4
    finally:
        sweeper.kill()
        sweeper.wait()
    assert content(local_store, "n") == b"1200"


def test_an_unconditional_write_whose_reply_is_lost_is_retried_and_lands_once(lossy) -> None:
    """Last writer wins, so sending it again is safe (our write's moment is simply the retry).
    google-cloud-storage 3 retries every upload; this pins that down for our writes."""
    store, proxy = lossy
    lose(proxy, "heartbeat.json")
    gen = store.write("heartbeat.json", b"beat")
    assert proxy is None or proxy.stats.by_action == {"drop_reply": 1}
    blob = store.read("heartbeat.json")
    assert blob is not None and blob.data == b"beat" and blob.generation == gen


def test_an_upload_whose_reply_is_lost_is_retried_and_verified(lossy, files: Path) -> None:
    store, proxy = lossy
    src = files / "last.pt"
    src.write_bytes(os.urandom(300_000))
    lose(proxy, "last.pt")
    info = store.upload_file("checkpoints/last.pt", str(src))
    assert proxy is None or proxy.stats.by_action == {"drop_reply": 1}
    assert info.crc32c == crc32c(src.read_bytes()) == store.stat("checkpoints/last.pt").crc32c


# -- the run record's phase marks (attempts/N/phases/<phase>.json), on every store ---------------


def test_a_phase_mark_is_create_only_and_the_first_mark_stands(store: Store) -> None:
    from entrypoint.record import RunRecord
    from entrypoint.record.phases import CHECKPOINT_RESTORED, FIRST_STEP

    rec = RunRecord(store, "r1")
    assert rec.mark_phase(2, CHECKPOINT_RESTORED, "agent", at=10.0, tier="bucket") is True
    assert rec.mark_phase(2, CHECKPOINT_RESTORED, "agent", at=10.0, tier="bucket") is True  # itself, again
    assert rec.mark_phase(2, CHECKPOINT_RESTORED, "sup", at=11.0) is False  # someone else's: refused
    assert rec.mark_phase(2, FIRST_STEP, "agent", at=12.0, step=501) is True
    marks = rec.phases(2)
    assert sorted(marks) == [CHECKPOINT_RESTORED, FIRST_STEP]
    assert (marks[CHECKPOINT_RESTORED]["time"], marks[CHECKPOINT_RESTORED]["actor"],
            marks[CHECKPOINT_RESTORED]["detail"]) == (10.0, "agent", {"tier": "bucket"})
    assert marks[FIRST_STEP]["detail"] == {"step": 501} and marks[FIRST_STEP]["attempt"] == 2
    assert rec.phases(1) == {} and rec.phases(3) == {}
    assert store.read(rec.name("attempts/2/phases/first_step.json")) is not None  # the layout


def test_a_phase_mark_whose_reply_is_lost_is_still_its_own_and_stored_once(lossy) -> None:
    from entrypoint.record import RunRecord
    from entrypoint.record.phases import VM_RUNNING

    store, proxy = lossy
    rec = RunRecord(store, "r1")
    lose(proxy, "phases")
    assert rec.mark_phase(1, VM_RUNNING, "sup", at=5.0) is True
    assert rec.phases(1)[VM_RUNNING]["actor"] == "sup"
    if proxy is not None:
        assert proxy.stats.by_action == {"drop_reply": 1}


def test_a_phase_name_must_be_one_plain_segment(store: Store) -> None:
    from entrypoint.record import RunRecord

    for bad in ("", "../state", "a/b", "Noticed"):
        with pytest.raises(ValueError):
            RunRecord(store, "r1").mark_phase(1, bad, "sup")
    assert store.list("runs/r1/") == []


# ---- listed documents (write_listed / read_listed: ops list over 1,000 runs, issue 22 §3) ----


def test_a_listed_write_is_read_back_from_the_listing_with_its_generation(store):
    gen = store.write_listed("runs/a/state.json", b'{"state": "RUNNING"}\n', if_generation_match=0)
    store.write_listed("runs/b/state.json", b"{}")
    store.write("runs/a/events/x.json", b"{}")  # under the prefix, not matching: left out
    store.write("runs/a/deep/state.json", b"{}")  # '*' stays within one folder

    found = store.read_listed("runs/", "runs/*/{state,heartbeat}.json")

    assert sorted(found) == ["runs/a/state.json", "runs/b/state.json"]
    assert found["runs/a/state.json"] == Blob(b'{"state": "RUNNING"}\n', gen)
    assert store.read("runs/a/state.json") == found["runs/a/state.json"]


def test_a_listed_write_keeps_every_promise_of_write(store):
    store.write_listed("runs/a/state.json", b"one", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        store.write_listed("runs/a/state.json", b"two", if_generation_match=0)
    assert content(store, "runs/a/state.json") == b"one"


def test_an_object_the_listing_cannot_carry_is_named_for_a_read(gcs_store):
    from entrypoint.store_gcs import LISTED_MAX_BYTES

    gcs_store.write("runs/old/state.json", b"{}")  # a plain write: nothing for a listing to carry
    big = os.urandom(LISTED_MAX_BYTES)  # incompressible: over GCS's metadata limit however packed
    gcs_store.write_listed("runs/big/state.json", big)

    found = gcs_store.read_listed("runs/", "runs/*/state.json")

    assert found == {"runs/big/state.json": None, "runs/old/state.json": None}
    assert content(gcs_store, "runs/big/state.json") == big


def test_a_run_state_of_twenty_attempts_is_still_carried_by_the_listing(gcs_store):
    from entrypoint.record import RunRecord, RunSpec, State

    rec = RunRecord(gcs_store, "r1")
    rec.write_spec(RunSpec(run_id="r1", image="i@sha256:" + "a" * 64, command=["true"], backend="local"))
    rec.create_state("user")
    for attempt in range(1, 21):  # a spot run preempted twenty times: its state holds each attempt
        rec.transition(State.PROVISIONING, "sup", attempt=attempt, instance=f"r1-{attempt}", restarts=attempt - 1)
        rec.transition(State.RUNNING, "agent")
        rec.transition(State.PREEMPTED, "sup", reason="preempted by GCE: the spot VM was reclaimed")

    found = gcs_store.read_listed("runs/", "runs/*/state.json")

    stored = gcs_store.read("runs/r1/state.json")
    assert len(stored.data) > 4096 and found == {"runs/r1/state.json": stored}
