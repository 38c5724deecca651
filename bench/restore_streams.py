"""Checkpoint restore from GCS: one stream vs parallel ranged slices (issue 18).

A 2 GiB checkpoint (one ``last.pt``), restored by ``entrypoint.checkpoints.restore_checkpoints``
through the real google-cloud-storage client from the strict emulator, whose connections are
each held to a modelled 200 MiB/s. That rate is a THIRD-PARTY figure (a blog, author not
verified as Google: "from 200 MiB/s for a single stream",
https://www.beginswithdata.com/2024/02/01/google-cloud-storage-max-throughput/; see
docs/research/recovery-timeline.md section 5).

Scale: the bytes are scaled down 32x (64 MiB real stand for 2 GiB, and 1 MiB slices for the
32 MiB ones restore uses), and the emulator's time scale is the same 32, so the emulator's waits
are the 2 GiB checkpoint's modelled transfer times and the seconds printed are measured wall
time. Everything not modelled (HTTP on loopback, CRC32C, copies of the real 64 MiB) is counted
as measured, unscaled. Not modelled: per-request latency to GCS, the VM's NIC cap (8 x 200 MiB/s
is below the ~16 Gbps of an 8-vCPU VM), disk write speed. Not a test: it prints, it asserts
nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid

from entrypoint.checkpoints import DEFAULT_STREAMS, restore_checkpoints
from entrypoint.store_gcs import GcsStore
from tests.standins.gcs_emulator import emulator

MiB = 1 << 20
SCALE = 32  # modelled bytes = real bytes x SCALE; modelled seconds = real seconds
MODELLED_BYTES = 2048 * MiB
REAL_BYTES = MODELLED_BYTES // SCALE
STREAM_MIBPS = 200.0  # per connection, third-party figure (see above)
SLICE = 32 * MiB // SCALE
PREFIX = "runs/bench/checkpoints/"


def restore_seconds(store: GcsStore, streams: int, data: bytes) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as vm:
        t0 = time.monotonic()
        done = restore_checkpoints(store, PREFIX, vm, streams=streams, large_object=SLICE, slice_bytes=SLICE)
        seconds = time.monotonic() - t0
        with open(os.path.join(vm, "last.pt"), "rb") as f:
            if f.read() != data:
                raise SystemExit("restore_streams: the restored bytes differ from the stored ones")
    return seconds, done.streams


def main() -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    data = os.urandom(REAL_BYTES)
    with emulator("bench-bucket", read_mibps_per_stream=STREAM_MIBPS, time_scale=SCALE) as (hostport, strict):
        client = storage.Client(project="local", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": f"http://{hostport}"})
        store = GcsStore(f"gs://bench-bucket/{uuid.uuid4().hex[:8]}", client=client)
        strict.read_mibps_per_stream = 0  # uploading the checkpoint is not what is measured
        store.write(PREFIX + "last.pt", data)
        strict.read_mibps_per_stream = STREAM_MIBPS
        one, _ = restore_seconds(store, 1, data)
        many, streams = restore_seconds(store, DEFAULT_STREAMS, data)
    ideal = MODELLED_BYTES / MiB / STREAM_MIBPS
    print(f"2 GiB checkpoint (modelled; {REAL_BYTES // MiB} MiB real x{SCALE}), {STREAM_MIBPS:.0f} MiB/s per stream:")
    print(f"  one stream:         {one:6.2f} s  (model alone: {ideal:.2f} s)")
    print(f"  {streams} parallel slices: {many:6.2f} s  (model alone: {ideal / streams:.2f} s)")
    print(f"  ratio one/parallel: {one / many:.1f}x")


if __name__ == "__main__":
    main()
