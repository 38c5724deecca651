"""The named phases of an attempt's recovery timeline (``attempts/N/phases/<phase>.json``).

A recovery is a timeline, not an event: each phase is marked once, create-only, by whoever sees
it happen (supervisor, startup script, agent), so ``ops`` can show it and a benchmark can sum it.
"""

from __future__ import annotations

NOTICED = "noticed"  # supervisor: the previous attempt was seen lost
REPLACEMENT_REQUESTED = "replacement_requested"  # supervisor: the create of this attempt was sent
VM_RUNNING = "vm_running"  # supervisor: the instance is listed running
STARTUP_SCRIPT = "startup_script"  # startup script: it began
DRIVER_READY = "driver_ready"  # startup script: the GPU driver answers
IMAGE_READY = "image_ready"  # startup script: the workload image is pulled
CHECKPOINT_RESTORED = "checkpoint_restored"  # agent: the checkpoint is restored (or there was none)
FIRST_STEP = "first_step"  # agent: the job reported its first step of this attempt
# agent: the run's --data is staged (detail: files, bytes, copied, kept). Not in ORDER or the
# recovery's segments yet: runs without data have no such mark, and "first_step" still spans it.
DATA_STAGED = "data_staged"

ORDER: tuple[str, ...] = (NOTICED, REPLACEMENT_REQUESTED, VM_RUNNING, STARTUP_SCRIPT, DRIVER_READY,
                          IMAGE_READY, CHECKPOINT_RESTORED, FIRST_STEP)
# Warm boots skip phases; the mark that they did is a flag in the detail of the phase after.
WARM_DRIVER = "warm_driver"
WARM_IMAGE = "warm_image"


def valid_phase(phase: str) -> bool:
    """A phase name is one path segment of plain lower-case words (it becomes an object name)."""
    return bool(phase) and phase.replace("_", "").isalnum() and phase == phase.lower()
