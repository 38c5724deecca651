"""Staged data (``--data``) from GCS: one stream vs parallel, many files and one big file (issue 23).

``entrypoint.staging.stage_source`` copies a prefix through the real google-cloud-storage client
from the strict emulator, twice per data set: with one stream (one file at a time, no slices)
and with ``DEFAULT_STREAMS`` (8 files at a time; a file of 32 MiB or more as 8 concurrent ranged
slices through the transfer manager). Every file is CRC32C-checked either way.

The emulator holds each connection to a modelled 200 MiB/s (``BENCH_TRANSFER_STREAM_MIBPS``; 0
turns the model off). That rate is a THIRD-PARTY figure (a blog, author not verified as Google:
"from 200 MiB/s for a single stream",
https://www.beginswithdata.com/2024/02/01/google-cloud-storage-max-throughput/). Everything else
is measured on this machine, unscaled: HTTP on loopback, the emulator's own Python, CRC32C, the
disk writes. So on a small machine the parallel figure is bounded by this machine's CPU (the
emulator and the client share it), not by the model; a VM reading real GCS has the NIC's
~16 Gbps (8 vCPUs) instead. Not modelled: per-request latency to GCS.

Size: ``BENCH_TRANSFER_MB`` (default 2048) for each data set; ``BENCH_TRANSFER_FILES`` (default
512) files in the many-files set. Not a test: it prints, it asserts only that the bytes landed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

from entrypoint.staging import DEFAULT_STREAMS, GcsSource, StagingProgress, manifest_path, stage_source
from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_emulator import emulator

MiB = 1 << 20


def _upload(store: GcsStore, name: str, size: int, scratch: str) -> None:
    path = os.path.join(scratch, "upload")
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    store.upload_file(name, path)
    os.unlink(path)


def _stage(url: str, store: GcsStore, streams: int, scratch: str) -> tuple[float, int]:
    dest = os.path.join(scratch, f"staged-{streams}")
    progress = StagingProgress()
    t0 = time.monotonic()
    counts = stage_source(GcsSource(url, store), os.path.join(dest, "0"), manifest_path(dest, 0), progress,
                          streams=streams)
    seconds = time.monotonic() - t0
    if progress.bytes_done != progress.bytes_total or counts["copied_files"] != progress.files_total:
        raise SystemExit(f"transfer: staging left files out: {progress.as_dict()}")
    shutil.rmtree(dest)
    return seconds, progress.bytes_total


def main() -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    total = int(os.environ.get("BENCH_TRANSFER_MB", "2048")) * MiB
    nfiles = max(1, int(os.environ.get("BENCH_TRANSFER_FILES", "512")))
    mibps = float(os.environ.get("BENCH_TRANSFER_STREAM_MIBPS", "200"))
    sets = [(f"{nfiles} files", [(f"shard-{i:05d}", total // nfiles) for i in range(nfiles)]),
            ("one file", [("big.bin", total)])]
    print(f"staging {total // MiB} MiB per set from the emulator, {mibps:.0f} MiB/s per stream modelled "
          f"(0 = unmodelled); 1 stream vs {DEFAULT_STREAMS}:")
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as scratch, \
            emulator("bench-bucket", read_mibps_per_stream=0) as (hostport, strict):
        client = storage.Client(project="local", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": f"http://{hostport}"})
        from entrypoint.store_gcs import size_connection_pool

        size_connection_pool(client)
        for label, files in sets:
            url = f"gs://bench-bucket/{uuid.uuid4().hex[:8]}"
            store = GcsStore(url, client=client)
            strict.read_mibps_per_stream = 0  # uploading is not what is measured
            for name, size in files:
                _upload(store, name, size, scratch)
            strict.read_mibps_per_stream = mibps
            one, nbytes = _stage(url, store, 1, scratch)
            many, _ = _stage(url, store, DEFAULT_STREAMS, scratch)
            for name, _size in files:
                store.delete(name)  # the emulator keeps objects in memory
            mb = nbytes / 1e6
            print(f"  {label:>11}: 1 stream {mb / one:7.1f} MB/s ({one:6.2f} s) | {DEFAULT_STREAMS} streams "
                  f"{mb / many:7.1f} MB/s ({many:6.2f} s) | ratio parallel/single {one / many:.2f}x", flush=True)


if __name__ == "__main__":
    main()
