"""Machine shapes and GPUs: which combinations exist, decided before any API call.

g2, a2, a3 (and a4) machine types carry their GPUs: asking for an extra ``--accelerator`` on
them fails at insert time on GCE, so it is refused here with the fix. Attached GPUs
(``guestAccelerators``) go only on N1 machines.

How many GPUs a built-in-GPU machine type carries is what ``machineTypes.get`` says
(``accelerators[].guestAcceleratorCount``): submit reads it and pins it in the run's spec
(``spec.vm["gpu_count"]``), so the GPU wait, the quota check and the cost count what GCE gives.
``KNOWN_GPU_COUNTS`` is only the offline answer (a dry run, a config check) for the types whose
count the name does not say (``g2-standard-24`` carries 2 L4s, not 1).
"""

from __future__ import annotations

from dataclasses import dataclass

# Families whose machine types come with GPUs built in, and which GPU they carry.
GPU_FAMILIES = {
    "g2": "nvidia-l4",
    "a2": "nvidia-tesla-a100",  # a2-ultragpu-* carry nvidia-a100-80gb
    "a3": "nvidia-h100-80gb",   # a3-megagpu-*: nvidia-h100-mega-80gb, a3-ultragpu-*: nvidia-h200-141gb
    "a4": "nvidia-b200",
}
# Machine-type prefixes whose GPU differs from their family's (GPUs docs, "Accelerator-optimized
# machine types" table: A3 Ultra H200, A3 Mega H100 Mega, A2 Ultra A100 80GB;
# https://cloud.google.com/compute/docs/gpus/about-gpus).
GPU_OF_PREFIX = {
    "a2-ultragpu": "nvidia-a100-80gb",
    "a3-megagpu": "nvidia-h100-mega-80gb",
    "a3-ultragpu": "nvidia-h200-141gb",
}
# GPUs that attach to N1 machines. K80 is gone: NVIDIA K80 reached end of support on GCE (the GPU
# platforms page marks it "See NVIDIA K80 end of support"; https://cloud.google.com/compute/docs/gpus/).
ATTACHABLE_GPUS = {
    "nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4",
}
END_OF_LIFE_GPUS = {"nvidia-tesla-k80": "NVIDIA K80 reached its end of support on Compute Engine"}
# The regional quota metric each GPU draws on (spot VMs: PREEMPTIBLE_<metric> where the project
# has one). Each A3 variant has its own (H100, H100 Mega, H200), as do A4 (B200) and A2 Ultra.
GPU_QUOTA_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-p4": "NVIDIA_P4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
    "nvidia-b200": "NVIDIA_B200_GPUS",
}
# Built-in GPU counts the machine-type name does not spell (no -Ng suffix): the G2 table of the
# GPU platforms page (g2-standard-4..32: 1 L4, -24: 2, -48: 4, -96: 8).
KNOWN_GPU_COUNTS = {
    "g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
    "g2-standard-32": 1, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8,
}
# Machine types that boot only from Hyperdisk: A3 Ultra takes no Persistent Disk (Vertex AI's
# DiskSpec: "for A3U machines, the default value is hyperdisk-balanced",
# https://docs.cloud.google.com/vertex-ai/docs/reference/rest/v1/DiskSpec), nor does A4.
HYPERDISK_ONLY_PREFIXES = ("a3-ultragpu", "a4-")
PERSISTENT_DISK_TYPES = {"pd-standard", "pd-balanced", "pd-ssd", "pd-extreme"}
DEFAULT_BOOT_DISK_TYPE = "pd-balanced"
HYPERDISK_BOOT_DISK_TYPE = "hyperdisk-balanced"


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


def built_in_gpu(machine_type: str) -> str | None:
    """The GPU type a g2/a2/a3/a4 machine type carries (None for other families)."""
    for prefix, gpu in GPU_OF_PREFIX.items():
        if machine_type.startswith(prefix + "-"):
            return gpu
    return GPU_FAMILIES.get(family(machine_type))


def resolve_gpu(machine_type: str, gpu: str | None, no_gpu: bool = False,
                built_in_count: int | None = None) -> GpuRequest:
    """What to ask GCE for, or ``ShapeError`` naming the combination that would work.

    ``built_in_count`` is the machine type's GPU count from ``machineTypes.get`` (pinned at
    submit); without it, ``KNOWN_GPU_COUNTS`` and then the name's ``-Ng`` suffix answer.
    """
    fam = family(machine_type)
    parsed = parse_gpu(gpu)
    if fam in GPU_FAMILIES:
        if parsed is not None:
            raise ShapeError(
                f"{machine_type} already carries {built_in_gpu(machine_type)} GPUs: drop --gpu "
                f"(an extra accelerator on {fam} machines is rejected by GCE)"
            )
        if no_gpu:
            raise ShapeError(f"{machine_type} always has GPUs; pick a CPU machine type for --no-gpu")
        count = built_in_count if built_in_count is not None else offline_gpu_count(machine_type)
        return GpuRequest(None, count, built_in=True)
    if no_gpu or parsed is None:
        return GpuRequest(None, 0, built_in=False)
    gtype, n = parsed
    if gtype in END_OF_LIFE_GPUS:
        raise ShapeError(f"{gtype}: {END_OF_LIFE_GPUS[gtype]}; use nvidia-tesla-t4 on n1, or a "
                         "g2- machine type (L4)")
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


def offline_gpu_count(machine_type: str) -> int:
    """The built-in GPU count when the API was not asked: the known table, else the ``-Ng`` suffix."""
    if machine_type in KNOWN_GPU_COUNTS:
        return KNOWN_GPU_COUNTS[machine_type]
    last = machine_type.rsplit("-", 1)[-1]
    if last.endswith("g") and last[:-1].isdigit():
        return int(last[:-1])
    return 1


def gpu_quota_metric(machine_type: str, gpu: str | None) -> tuple[str | None, str | None]:
    """(GPU type, its regional quota metric) of a shape; (None, None) without a GPU."""
    parsed = parse_gpu(gpu)
    gtype = parsed[0] if parsed else built_in_gpu(machine_type)
    if gtype is None:
        return None, None
    return gtype, GPU_QUOTA_METRICS.get(gtype)


def boot_disk_type(machine_type: str, configured: str | None) -> str:
    """The boot (and per-run data) disk type for ``machine_type``: the configured one, except
    that Hyperdisk-only machine types get ``hyperdisk-balanced`` for the default
    ``pd-balanced`` (the default cannot be told from a choice: the spec pins it as a value),
    and any other Persistent Disk type there is refused with the fix."""
    wanted = configured or DEFAULT_BOOT_DISK_TYPE
    if not machine_type.startswith(HYPERDISK_ONLY_PREFIXES):
        return wanted
    if wanted == DEFAULT_BOOT_DISK_TYPE:
        return HYPERDISK_BOOT_DISK_TYPE
    if wanted in PERSISTENT_DISK_TYPES:
        raise ShapeError(f"{machine_type} boots only from Hyperdisk, not {wanted}: set "
                         f"boot_disk_type = \"{HYPERDISK_BOOT_DISK_TYPE}\" in runner.toml")
    return wanted


def waits_for_driver(backend: str, machine_type: str | None, gpu: str | None, no_gpu: bool) -> bool:
    """Whether an instance of this shape waits (up to gpu_timeout) for its GPU driver before the
    job can start: GCE VMs with a GPU, attached or built in. Local containers and CPU VMs do not,
    so the rule that the stall window must cover that wait does not apply to them."""
    if backend != "gce" or no_gpu:
        return False
    return bool(gpu) or family(machine_type or "") in GPU_FAMILIES
