"""The two line formats that cross a process boundary as text, shared by writers and readers.

- Serial-console markers: the VM's startup and shutdown scripts print one ``runner-phase: NAME``
  line per boot phase (bash cannot import this module: tests assert the scripts' literals equal
  these constants), and ``runner ops`` and the tests read them back.
- The progress line a job prints for the agent: ``RUNNER_PROGRESS step=120 total=1000 loss=0.25``.
"""

from __future__ import annotations

PHASE_MARKER = "runner-phase:"
PHASE_LINE = PHASE_MARKER + " {}"  # printf 'runner-phase: %s\n' in gcp/startup.sh

# Boot phases gcp/startup.sh prints, in order (``failed:<phase>`` when one gives up).
BOOT_PHASES: tuple[str, ...] = ("metadata", "docker", "gpu-driver", "gpu-wait", "registry-auth",
                                "image-pull", "data-disk", "container-start", "container-running",
                                "bake-ready")  # bake-ready: a bake VM's last phase, instead of the container's
CONTAINER_RUNNING = "container-running"  # the last boot phase: from here on the job's output
FINISHED = "finished"  # startup.sh: the container exited
SHUTDOWN = "shutdown"  # shutdown.sh: the guest got its ACPI soft-off (a preemption notice)
FAILED_PREFIX = "failed:"  # startup.sh: ``failed:<phase>``

PROGRESS_PREFIX = "RUNNER_PROGRESS"


def phase_line(phase: str) -> str:
    """The console line that marks ``phase`` (without its newline)."""
    return PHASE_LINE.format(phase)


def phases_in(text: str) -> list[str]:
    """The phases marked in a console text, in order."""
    return [ln.split(PHASE_MARKER, 1)[1].strip() for ln in text.splitlines() if PHASE_MARKER in ln]


def progress_line(step: int, total: int | None = None, **fields: object) -> str:
    """``RUNNER_PROGRESS step=N total=T k=v…``: what ``entrypoint.progress`` parses."""
    parts = [f"step={step}"] + ([f"total={total}"] if total is not None else [])
    parts += [f"{k}={v}" for k, v in fields.items()]
    return PROGRESS_PREFIX + " " + " ".join(parts)
