"""Machine shapes and GPUs: which combinations exist, decided before any API call.

g2, a2, a3 (and a4) machine types carry their GPUs: asking for an extra ``--accelerator`` on
them fails at insert time on GCE, so it is refused here with the fix. Attached GPUs
(``guestAccelerators``) go only on N1 machines.
"""

from __future__ import annotations

from dataclasses import dataclass

# Families whose machine types come with GPUs built in, and which GPU they carry.
GPU_FAMILIES = {
    "g2": "nvidia-l4",
    "a2": "nvidia-tesla-a100",  # a2-ultragpu-* carry nvidia-a100-80gb
    "a3": "nvidia-h100-80gb",
    "a4": "nvidia-b200",
}
ATTACHABLE_GPUS = {
    "nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4",
    "nvidia-tesla-k80",
}


class ShapeError(ValueError):
    """An impossible machine/GPU combination; the message says what would work."""


@dataclass(frozen=True)
class GpuRequest:
    type: str | None  # None: the machine type's built-in GPUs (or none)
    count: int
    built_in: bool

    @property
    def wants_driver(self) -> bool:
        return self.count > 0


def parse_gpu(value: str | None) -> tuple[str, int] | None:
    """``TYPE[:COUNT]`` → (type, count)."""
    if not value:
        return None
    gtype, _, count = value.partition(":")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ShapeError(f"--gpu {value!r}: COUNT must be a whole number, as in nvidia-tesla-t4:2") from None
    if n < 1:
        raise ShapeError(f"--gpu {value!r}: COUNT must be at least 1")
    return gtype.strip(), n


def family(machine_type: str) -> str:
    return machine_type.split("-", 1)[0]


def resolve_gpu(machine_type: str, gpu: str | None, no_gpu: bool = False,
                built_in_count: int | None = None) -> GpuRequest:
    """What to ask GCE for, or ``ShapeError`` naming the combination that would work.

    ``built_in_count`` is the machine type's GPU count when known (from the API); the name's
    ``-Ng``/``-Mg`` suffix is used otherwise.
    """
    fam = family(machine_type)
    parsed = parse_gpu(gpu)
    if fam in GPU_FAMILIES:
        if parsed is not None:
            raise ShapeError(
                f"{machine_type} already carries {GPU_FAMILIES[fam]} GPUs: drop --gpu "
                f"(an extra accelerator on {fam} machines is rejected by GCE)"
            )
        if no_gpu:
            raise ShapeError(f"{machine_type} always has GPUs; pick a CPU machine type for --no-gpu")
        count = built_in_count if built_in_count is not None else _count_from_name(machine_type)
        return GpuRequest(None, count, built_in=True)
    if no_gpu or parsed is None:
        return GpuRequest(None, 0, built_in=False)
    gtype, n = parsed
    if fam != "n1":
        raise ShapeError(
            f"GPUs attach only to N1 machine types, not {machine_type}: use e.g. "
            f"--machine-type n1-standard-8 --gpu {gtype}:{n}, or a g2-/a2- type that carries its GPUs"
        )
    if gtype not in ATTACHABLE_GPUS:
        raise ShapeError(
            f"{gtype} cannot be attached to N1 machines; attachable: {', '.join(sorted(ATTACHABLE_GPUS))} "
            "(L4 comes with g2-*, A100 with a2-*, H100 with a3-*)"
        )
    return GpuRequest(gtype, n, built_in=False)


def _count_from_name(machine_type: str) -> int:
    last = machine_type.rsplit("-", 1)[-1]
    if last.endswith("g") and last[:-1].isdigit():
        return int(last[:-1])
    return 1


def waits_for_driver(backend: str, machine_type: str | None, gpu: str | None, no_gpu: bool) -> bool:
    """Whether an instance of this shape waits (up to gpu_timeout) for its GPU driver before the
    job can start: GCE VMs with a GPU, attached or built in. Local containers and CPU VMs do not,
    so the rule that the stall window must cover that wait does not apply to them."""
    if backend != "gce" or no_gpu:
        return False
    return bool(gpu) or family(machine_type or "") in GPU_FAMILIES
