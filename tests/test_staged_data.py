"""Staged data (``--data``): the rules for what may be asked, and staging itself against the
strict GCS emulator and a local directory (incremental, CRC32C-checked, failing loudly)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from entrypoint.data_sources import DataSourceError, from_spec, parse_all, parse_data_arg
from entrypoint.staging import (
    DataStagingError, DirSource, GcsSource, StagingProgress, manifest_path, stage_source,
)
from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_fault_proxy import FaultRule
from tests.standins.gcs_fixture import BUCKET, DENIED_BUCKET, client_through

KiB, MiB = 1 << 10, 1 << 20
CKPT, RESULTS = "/var/lib/runner/checkpoints", "/var/lib/runner/results"


def sources(*entries: str):  # type: ignore[no-untyped-def]
    return parse_all(entries, checkpoint_dir=CKPT, results_dir=RESULTS)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- what may be asked for ----

def test_data_entries_parse_into_source_and_mount() -> None:
    a, b = sources("gs://my-bucket/sets/imagenet/:/data/", "file:///srv/x:/models/x")
    assert (a.source, a.mount, a.bucket) == ("gs://my-bucket/sets/imagenet", "/data", "my-bucket")
    assert (b.source, b.mount, b.path) == ("file:///srv/x", "/models/x", "/srv/x")
    assert from_spec([a.to_dict(), b.to_dict()], checkpoint_dir=CKPT, results_dir=RESULTS) == [a, b]


@pytest.mark.parametrize("entry, says", [
    ("gs://b:/", "not a bucket name"),              # the bucket is too short, and / is no mount
    ("gs://bucket:/", "over /"),
    ("gs://bucket/p", "not SRC:/MOUNT"),            # no mount
    ("gs://bucket/p:data", "not SRC:/MOUNT"),       # relative mount
    ("gs://bucket/p:/data/../etc", "'.' or '..'"),
    ("gs://bucket/../p:/data", "'..'"),
    ("gs://bucket/p*:/data", "wildcards"),
    ("gs://bucket/p:/proc/x", "/proc"),
    ("gs://bucket/p:/dev", "/dev"),
    ("gs://bucket/p:/var", "/var/lib/runner"),       # would cover the runner's own directories
    ("gs://bucket/p:/tmp", "/tmp"),
    ("gs://bucket/p:/da ta", "letters, digits"),
    ("file://srv/x:/data", "absolute path"),
    ("file:///:/data", "whole filesystem"),
    ("s3://bucket/p:/data", "gs://BUCKET/PREFIX or file:///DIR"),
])
def test_hostile_data_entries_are_refused_with_the_reason(entry: str, says: str) -> None:
    with pytest.raises(DataSourceError, match=says.replace("*", r"\*")):
        sources(entry)


@pytest.mark.parametrize("entries, says", [
    (("gs://bucket/a:/data", "gs://bucket/a:/other"), "given twice"),
    (("gs://bucket/a:/data", "gs://bucket/b:/data"), "overlap"),
    (("gs://bucket/a:/data", "gs://bucket/b:/data/b"), "overlap"),
    (("gs://bucket/a:/var/lib/runner/checkpoints/x",), "/var/lib/runner"),
])
def test_data_entries_that_collide_are_refused(entries: tuple[str, ...], says: str) -> None:
    with pytest.raises(DataSourceError, match=says):
        sources(*entries)


def test_a_mount_over_the_runs_own_checkpoint_dir_is_refused() -> None:
    with pytest.raises(DataSourceError, match="checkpoint_dir"):
        parse_all(["gs://bucket/a:/work/ckpt"], checkpoint_dir="/work/ckpt", results_dir=RESULTS)


def test_a_hand_edited_spec_is_checked_by_the_same_rules() -> None:
    with pytest.raises(DataSourceError, match="/proc"):
        from_spec([{"source": "gs://bucket/a", "mount": "/proc"}], checkpoint_dir=CKPT, results_dir=RESULTS)
    with pytest.raises(DataSourceError, match="list"):
        from_spec({"source": "gs://bucket/a"}, checkpoint_dir=CKPT, results_dir=RESULTS)


# ---- staging a local directory: incremental, verified ----

def stage(source, dest: Path, **kw):  # type: ignore[no-untyped-def]
    progress = StagingProgress()
    counts = stage_source(source, str(dest / "0"), manifest_path(str(dest), 0), progress, **kw)
    return counts, progress.as_dict()


def test_a_restart_copies_only_what_changed_and_deletes_what_is_gone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / "sub" / f"f{i}").write_bytes(os.urandom(1000 + i))
    (src / "gone").write_bytes(b"x")
    source = DirSource("file://" + str(src), str(src))
    counts, prog = stage(source, tmp_path / "staged")
    assert counts["copied_files"] == 6 and prog["files_done"] == prog["files_total"] == 6
    assert tree(tmp_path / "staged" / "0") == tree(src)

    (src / "gone").unlink()
    (src / "sub" / "f1").write_bytes(b"changed")
    (tmp_path / "staged" / "0" / "stray.part-0123abcd").write_bytes(b"a copy cut short")
    counts, prog = stage(source, tmp_path / "staged")
    assert (counts["copied_files"], counts["kept_files"]) == (1, 4)
    assert counts["deleted_files"] == 2  # the file gone from the source, and the stray
    assert tree(tmp_path / "staged" / "0") == tree(src)

    counts, _ = stage(source, tmp_path / "staged")
    assert (counts["copied_files"], counts["deleted_files"], counts["kept_files"]) == (0, 0, 5)
    doc = json.loads((tmp_path / "staged" / "0.manifest.json").read_text())
    assert doc["source"] == source.url and sorted(doc["files"]) == ["sub/f0", "sub/f1", "sub/f2", "sub/f3", "sub/f4"]


def test_a_staged_file_changed_on_the_disk_is_copied_again(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"original")
    source = DirSource("file://" + str(src), str(src))
    stage(source, tmp_path / "staged")
    (tmp_path / "staged" / "0" / "a").write_bytes(b"tampered")
    counts, _ = stage(source, tmp_path / "staged")
    assert counts["copied_files"] == 1
    assert (tmp_path / "staged" / "0" / "a").read_bytes() == b"original"


def test_an_empty_or_missing_directory_fails_instead_of_staging_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataStagingError, match="holds no files"):
        stage(DirSource("file:///x", str(tmp_path / "empty")), tmp_path / "staged")
    with pytest.raises(DataStagingError, match="not a directory"):
        stage(DirSource("file:///x", str(tmp_path / "nope")), tmp_path / "staged")


# ---- staging from GCS (the strict emulator) ----

def put(store: GcsStore, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        store.write(name, data)


def test_many_files_and_one_big_one_are_staged_with_ranged_reads_and_verified(
        fault_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"gs://{BUCKET}/sets/{uuid.uuid4().hex[:8]}"
    store = GcsStore(url, client=client_through(fault_proxy))
    files = {f"shard-{i:03d}": os.urandom(3 * KiB + i) for i in range(40)}
    files["big/blob.bin"] = os.urandom(3 * MiB)
    put(store, files)
    source = GcsSource(url, store, slice_bytes=256 * KiB)
    fault_proxy.stats.max_in_flight = 0
    counts, prog = stage(source, tmp_path / "staged", streams=4, large_object=1 * MiB)
    assert tree(tmp_path / "staged" / "0") == files
    assert counts["copied_files"] == 41 and prog["bytes_done"] == sum(map(len, files.values()))
    assert fault_proxy.stats.max_in_flight >= 2  # reads in parallel, not one after another
    media = [s for s in fault_proxy.stats.seen if "alt=media" in s and "blob.bin" in s]
    assert len(media) >= 3 * MiB // (256 * KiB)  # the big object came as ranged slices

    store.write("shard-007", b"new bytes")
    store.delete("shard-008")
    counts, _ = stage(source, tmp_path / "staged", streams=4, large_object=1 * MiB)
    assert (counts["copied_files"], counts["deleted_files"], counts["kept_files"]) == (1, 1, 39)
    files["shard-007"] = b"new bytes"
    del files["shard-008"]
    assert tree(tmp_path / "staged" / "0") == files


def test_a_download_corrupted_in_transit_is_read_again(fault_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"gs://{BUCKET}/sets/{uuid.uuid4().hex[:8]}"
    store = GcsStore(url, client=client_through(fault_proxy))
    put(store, {"a.bin": os.urandom(64 * KiB)})
    fault_proxy.add(FaultRule(action="corrupt_body", match="alt=media", writes_only=False, times=1))
    counts, _ = stage(GcsSource(url, store), tmp_path / "staged", streams=2)
    assert fault_proxy.stats.by_action == {"corrupt_body": 1}
    assert counts["copied_files"] == 1
    assert (tmp_path / "staged" / "0" / "a.bin").read_bytes() == store.read("a.bin").data  # type: ignore[union-attr]


def test_an_object_that_never_reads_back_intact_fails_the_staging(fault_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"gs://{BUCKET}/sets/{uuid.uuid4().hex[:8]}"
    store = GcsStore(url, client=client_through(fault_proxy))
    put(store, {"a.bin": os.urandom(64 * KiB)})
    fault_proxy.add(FaultRule(action="corrupt_body", match="alt=media", writes_only=False))
    with pytest.raises(DataStagingError, match="could not be copied intact in 3 reads"):
        stage(GcsSource(url, store), tmp_path / "staged", streams=2)
    assert tree(tmp_path / "staged" / "0") == {}  # nothing torn left for a job to read


def test_a_missing_prefix_fails_with_what_to_check(gcs_emulator: str, tmp_path: Path) -> None:
    url = f"gs://{BUCKET}/no-such-prefix-{uuid.uuid4().hex[:8]}"
    with pytest.raises(DataStagingError, match=f"data source {url} holds no files"):
        stage(GcsSource(url), tmp_path / "staged")


def test_a_permission_error_names_the_role_the_bucket_and_the_account(
        gcs_emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_SERVICE_ACCOUNT", "trainer@proj.iam.gserviceaccount.com")
    with pytest.raises(DataStagingError) as e:
        stage(GcsSource(f"gs://{DENIED_BUCKET}/sets/x"), tmp_path / "staged")
    assert (f"grant roles/storage.objectViewer on gs://{DENIED_BUCKET} to the VM's service account "
            "trainer@proj.iam.gserviceaccount.com") in str(e.value)


class _Listing:
    """A source whose listing holds names GCS allows but a disk cannot hold as given."""

    url = "gs://bucket/hostile"

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list(self):  # type: ignore[no-untyped-def]
        from entrypoint.staging import SourceFile

        return [SourceFile(n, 1, 1, "AAAAAA==") for n in self.names]

    def fetch(self, f, dest, streams):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{f.rel} must not be fetched")


@pytest.mark.parametrize("names, says", [
    (["ok", "a/../../../etc/passwd"], "not a relative path"),
    (["ok", "/abs"], "not a relative path"),
    (["a", "a/b"], "both a file and a folder"),
])
def test_object_names_that_would_escape_or_collide_on_disk_are_refused(
        tmp_path: Path, names: list[str], says: str) -> None:
    with pytest.raises(DataStagingError, match=says):
        stage(_Listing(names), tmp_path / "staged")
    assert not (tmp_path / "etc").exists()
