"""``python3 -m entrypoint.prestage DIR``: fetch a run's checkpoint to DIR before its job starts.

Why: on a warm boot (driver files and image already on the disk) the driver still has to be
verified and loaded, seconds the checkpoint download can use. The startup script runs this in
the workload image, in the background, while ``cos-extensions`` works, and mounts DIR into the
job's container as ``RUNNER_PRESTAGED_DIR``; the agent adopts a file only if it is exactly the
stored object (``entrypoint.prestaged``), so a copy that is stale, torn or cut short by the
deadline costs a download, never a wrong resume. Reads ``RUNNER_STORE`` and ``RUNNER_RUN_ID``.
"""

from __future__ import annotations

import os
import sys

from entrypoint.checkpoints import restore_checkpoints
from entrypoint.record import RunRecord
from entrypoint.stores import open_store


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.environ.get("RUNNER_STORE") or not os.environ.get("RUNNER_RUN_ID"):
        print("usage: RUNNER_STORE=gs://... RUNNER_RUN_ID=ID python3 -m entrypoint.prestage DIR", file=sys.stderr)
        return 2
    record = RunRecord(open_store(os.environ["RUNNER_STORE"]), os.environ["RUNNER_RUN_ID"])
    try:
        got = restore_checkpoints(record.store, record.name(RunRecord.CHECKPOINTS), args[0])
    except Exception as e:  # noqa: BLE001 - the agent downloads what is not here; say why
        print(f"prestage: checkpoint not fetched ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    print(f"prestage: {len(got.names)} file(s), {got.bytes} bytes in {got.seconds:.1f} s ({got.streams} streams)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
