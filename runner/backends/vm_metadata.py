"""The VM metadata contract between the GCE backend and ``gcp/startup.sh``.

One prefix for every key, values always plain strings. Anything that is not a plain token (the
command, the job's environment) is base64 of JSON, always: the startup script never guesses
whether a value is encoded (DESIGN §4). Secrets never go here: metadata is readable by anyone
with ``compute.instances.get`` on the project, and by every process on the VM.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

PREFIX = "runner-"

RUN_ID = PREFIX + "run-id"                  # the run id in full (labels only hold a sanitized form)
ATTEMPT = PREFIX + "attempt"
STORE = PREFIX + "store"                    # gs://BUCKET[/PREFIX]
IMAGE = PREFIX + "image"                    # pinned: REPO@sha256:...
COMMAND_B64 = PREFIX + "command-b64"        # base64(JSON list of argv strings)
ENV_B64 = PREFIX + "env-b64"                # base64(JSON object of str -> str)
GPU_COUNT = PREFIX + "gpu-count"            # "0" = CPU only: no driver step at all
GPU_TIMEOUT = PREFIX + "gpu-timeout"        # seconds to wait for nvidia-smi
GPU_DRIVER_VERSION = PREFIX + "gpu-driver-version"  # passed to cos-extensions ("" = default)
CHECKPOINT_DIR = PREFIX + "checkpoint-dir"
RESULTS_DIR = PREFIX + "results-dir"
HEARTBEAT_INTERVAL = PREFIX + "heartbeat-interval"
SYNC_INTERVAL = PREFIX + "sync-interval"
GRACE_PERIOD = PREFIX + "grace-period"
SHM_SIZE = PREFIX + "shm-size"
DATA_DISK = PREFIX + "data-disk"            # device name of an attached data disk ("" = none)
DATA_MOUNT = PREFIX + "data-mount"          # where it is mounted on the host, under /var/lib
STARTUP_SCRIPT = "startup-script"
SHUTDOWN_SCRIPT = "shutdown-script"


def encode_json_b64(value: object) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def decode_json_b64(value: str) -> object:
    return json.loads(base64.b64decode(value, validate=True))


@dataclass(frozen=True)
class VmMetadata:
    run_id: str
    attempt: int
    store: str
    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    gpu_count: int = 0
    gpu_timeout: float = 600
    gpu_driver_version: str = ""
    checkpoint_dir: str = "/var/lib/runner/checkpoints"
    results_dir: str = "/var/lib/runner/results"
    heartbeat_interval: float = 5
    sync_interval: float = 10
    grace_period: float = 25
    shm_size: str = "2g"
    data_disk: str = ""
    data_mount: str = "/var/lib/runner/data"

    def items(self) -> dict[str, str]:
        """The metadata key/values, startup and shutdown scripts excluded."""
        return {
            RUN_ID: self.run_id,
            ATTEMPT: str(self.attempt),
            STORE: self.store,
            IMAGE: self.image,
            COMMAND_B64: encode_json_b64(list(self.command)),
            ENV_B64: encode_json_b64(dict(self.env)),
            GPU_COUNT: str(self.gpu_count),
            GPU_TIMEOUT: str(int(self.gpu_timeout)),
            GPU_DRIVER_VERSION: self.gpu_driver_version,
            CHECKPOINT_DIR: self.checkpoint_dir,
            RESULTS_DIR: self.results_dir,
            HEARTBEAT_INTERVAL: str(self.heartbeat_interval),
            SYNC_INTERVAL: str(self.sync_interval),
            GRACE_PERIOD: str(self.grace_period),
            SHM_SIZE: self.shm_size,
            DATA_DISK: self.data_disk,
            DATA_MOUNT: self.data_mount,
        }
