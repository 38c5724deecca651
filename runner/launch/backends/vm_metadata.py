"""The VM metadata contract between the GCE backend and ``gcp/startup.sh``.

One prefix for every key, values always plain scalars (a number, a path, a gs:// URL, an image
reference): COS has bash but no python or jq, so the startup script reads nothing it would have
to parse. Anything structured -- the job's command and env -- stays in ``spec.json`` in the
store, where the agent in the container reads it (``RUNNER_COMMAND_FROM_SPEC``): one encoding,
JSON, decoded by Python, never guessed (docs/architecture.md#on-the-vm-cos). Secrets never go here: metadata is readable
by anyone with ``compute.instances.get`` on the project, and by every process on the VM.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "runner-"

RUN_ID = PREFIX + "run-id"                  # the run id in full (labels only hold a sanitized form)
ATTEMPT = PREFIX + "attempt"
STORE = PREFIX + "store"                    # gs://BUCKET[/PREFIX]
IMAGE = PREFIX + "image"                    # pinned: REPO@sha256:...
GPU_COUNT = PREFIX + "gpu-count"            # "0" = CPU only: no driver step at all
GPU_TIMEOUT = PREFIX + "gpu-timeout"        # seconds for the driver install and the GPU wait
GPU_DRIVER_VERSION = PREFIX + "gpu-driver-version"  # passed to cos-extensions ("" = default)
CHECKPOINT_DIR = PREFIX + "checkpoint-dir"
RESULTS_DIR = PREFIX + "results-dir"
HEARTBEAT_INTERVAL = PREFIX + "heartbeat-interval"
SYNC_INTERVAL = PREFIX + "sync-interval"
GRACE_PERIOD = PREFIX + "grace-period"
SHM_SIZE = PREFIX + "shm-size"
DATA_DISK = PREFIX + "data-disk"            # device name of an attached data disk ("" = none)
DATA_MOUNT = PREFIX + "data-mount"          # where it is mounted on the host, under /var/lib
# projects/P/locations/L/jobs/J of the hosted supervisor ("" = none): gcp/shutdown.sh asks it for
# a pass at once when GCE preempts the VM, instead of waiting for the next scheduled minute.
SUPERVISOR_JOB = PREFIX + "supervisor-job"
# A gang's size N (absent: one VM). The same on every node of a bulkInsert, which gives all its VMs
# one metadata: a node learns its own rank from its name (runner.naming.rank_of), not from here.
NNODES = PREFIX + "nnodes"
# The attempt's GCE provisioningModel (SPOT, STANDARD, FLEX_START): the agent writes it into the
# attempt's manifest, so cost prices each attempt at its own model's price.
PROVISIONING = PREFIX + "provisioning"
STARTUP_SCRIPT = "startup-script"
SHUTDOWN_SCRIPT = "shutdown-script"


@dataclass(frozen=True)
class VmMetadata:
    """The scalars one attempt's VM needs to boot: identity, store, image and host settings."""

    run_id: str
    attempt: int
    store: str
    image: str
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
    supervisor_job: str = ""
    nnodes: int = 1
    provisioning: str = ""

    def items(self) -> dict[str, str]:
        """The metadata key/values, startup and shutdown scripts excluded."""
        return {
            RUN_ID: self.run_id,
            ATTEMPT: str(self.attempt),
            STORE: self.store,
            IMAGE: self.image,
            GPU_COUNT: str(self.gpu_count),
            GPU_TIMEOUT: str(int(self.gpu_timeout)),
            GPU_DRIVER_VERSION: self.gpu_driver_version,
            CHECKPOINT_DIR: self.checkpoint_dir,
            RESULTS_DIR: self.results_dir,
            HEARTBEAT_INTERVAL: str(self.heartbeat_interval),
            SYNC_INTERVAL: str(self.sync_interval),
            GRACE_PERIOD: str(max(1, int(self.grace_period))),  # whole seconds: docker stop --time
            SHM_SIZE: self.shm_size,
            DATA_DISK: self.data_disk,
            DATA_MOUNT: self.data_mount,
            SUPERVISOR_JOB: self.supervisor_job,
            # Only a gang's: a single VM's metadata stays what it was before gangs.
            **({NNODES: str(self.nnodes)} if self.nnodes > 1 else {}),
            **({PROVISIONING: self.provisioning} if self.provisioning else {}),
        }
