"""The seed catalogue (zones, machine and accelerator types, COS images, default quotas) and its
read-only resources: small, but shaped like the real thing (zones differ in what they offer)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import ApiError, _as_dict, _not_found
from tests.standins.compute.filters import parse_filter
from tests.standins.compute.model import API, _page


@dataclass(frozen=True)
class _MachineSpec:
    cpus: int
    memory_mb: int
    description: str
    accelerator: Optional[tuple[str, int]] = None  # bundled GPU: (type, count)
    cpu_platform: str = "Intel Broadwell"


MACHINE_TYPES: dict[str, _MachineSpec] = {
    "n1-standard-4": _MachineSpec(4, 15360, "4 vCPUs, 15 GB RAM"),
    "n1-standard-8": _MachineSpec(8, 30720, "8 vCPUs, 30 GB RAM"),
    "e2-standard-4": _MachineSpec(4, 16384, "Efficient Instance, 4 vCPUs, 16 GB RAM", None,
                                  "AMD Rome"),
    "g2-standard-8": _MachineSpec(8, 32768, "8 vCPUs, 32 GB RAM, 1 GPU", ("nvidia-l4", 1),
                                  "Intel Cascade Lake"),
    "a2-highgpu-1g": _MachineSpec(12, 87040, "Accelerator Optimized: 1 NVIDIA Tesla A100 GPU, "
                                  "12 vCPUs, 85GB RAM", ("nvidia-tesla-a100", 1),
                                  "Intel Cascade Lake"),
    "a3-highgpu-8g": _MachineSpec(208, 1916928, "Accelerator Optimized: 8 NVIDIA H100 80GB GPUs, "
                                  "208 vCPUs, 1872GB RAM", ("nvidia-h100-80gb", 8),
                                  "Intel Sapphire Rapids"),
    # The count is not in the name: g2-standard-24 carries 2 L4s (GPU platforms page, G2 table,
    # https://cloud.google.com/compute/docs/gpus/).
    "g2-standard-24": _MachineSpec(24, 98304, "24 vCPUs, 96 GB RAM, 2 GPUs", ("nvidia-l4", 2),
                                   "Intel Cascade Lake"),
    "a3-ultragpu-8g": _MachineSpec(224, 2952 * 1024, "Accelerator Optimized: 8 NVIDIA H200 141GB "
                                   "GPUs, 224 vCPUs, 2952GB RAM", ("nvidia-h200-141gb", 8),
                                   "Intel Emerald Rapids"),
    "a4-highgpu-8g": _MachineSpec(224, 3968 * 1024, "Accelerator Optimized: 8 NVIDIA B200 GPUs, "
                                  "224 vCPUs, 3968GB RAM", ("nvidia-b200", 8),
                                  "Intel Emerald Rapids"),
}
# Machine types whose disks must be Hyperdisk: A3 Ultra ("for A3U machines, the default value is
# hyperdisk-balanced", https://docs.cloud.google.com/vertex-ai/docs/reference/rest/v1/DiskSpec;
# a3-ultragpu-8g does not support pd-ssd in the GKE autoscaler's disk table) and A4 (issue 19's
# claim; no Google page found in the time box, modelled the same).
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-")

ACCELERATOR_TYPES: dict[str, tuple[str, int]] = {  # name -> (description, max cards)
    "nvidia-tesla-t4": ("NVIDIA T4", 4),
    "nvidia-l4": ("NVIDIA L4", 8),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8),
    "nvidia-h200-141gb": ("NVIDIA H200 141GB", 8),
    "nvidia-b200": ("NVIDIA B200", 8),
}

# What each zone offers. europe-west4-a has no T4 and us-central1-b no A3/H100, on purpose:
# zone-selection code must consult the catalogue instead of assuming.
ZONES: dict[str, dict[str, tuple[str, ...]]] = {
    "us-central1-a": {"machine_types": tuple(MACHINE_TYPES),
                      "accelerators": tuple(ACCELERATOR_TYPES)},
    "us-central1-b": {"machine_types": ("n1-standard-4", "n1-standard-8", "e2-standard-4",
                                        "g2-standard-8", "a2-highgpu-1g"),
                      "accelerators": ("nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100")},
    "us-central1-c": {"machine_types": ("n1-standard-4", "n1-standard-8", "e2-standard-4",
                                        "g2-standard-8", "a2-highgpu-1g"),
                      "accelerators": ("nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100")},
    "europe-west4-a": {"machine_types": tuple(MACHINE_TYPES),
                       "accelerators": ("nvidia-l4", "nvidia-tesla-a100", "nvidia-h100-80gb")},
}

# (family, image name) in release order; the last non-deprecated one is what the family serves.
COS_IMAGES: list[tuple[str, str]] = [
    ("cos-stable", "cos-stable-117-18613-164-4"),
    ("cos-stable", "cos-stable-121-18867-90-38"),
    ("cos-beta", "cos-beta-125-19216-0-40"),
    ("cos-121-lts", "cos-121-18867-90-38"),
    ("cos-117-lts", "cos-117-18613-164-4"),
]

_QUOTA_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h200-141gb": "NVIDIA_H200_GPUS",
    "nvidia-b200": "NVIDIA_B200_GPUS",
}

DEFAULT_REGION_QUOTAS: dict[str, tuple[float, float]] = {
    "CPUS": (24.0, 0.0), "PREEMPTIBLE_CPUS": (0.0, 0.0),
    "NVIDIA_T4_GPUS": (1.0, 0.0), "PREEMPTIBLE_NVIDIA_T4_GPUS": (1.0, 0.0),
    "NVIDIA_L4_GPUS": (1.0, 0.0), "PREEMPTIBLE_NVIDIA_L4_GPUS": (1.0, 0.0),
}


def _machine_type(p: str, zone: str, name: str) -> compute_v1.MachineType:
    spec = MACHINE_TYPES[name]
    mt = compute_v1.MachineType(
        kind="compute#machineType", id=zlib.crc32(name.encode()), name=name,
        description=spec.description, guest_cpus=spec.cpus, memory_mb=spec.memory_mb,
        image_space_gb=0, maximum_persistent_disks=128, maximum_persistent_disks_size_gb=263168,
        zone=zone, is_shared_cpu=False, architecture="X86_64",
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        self_link=f"{API}/projects/{p}/zones/{zone}/machineTypes/{name}")
    if spec.accelerator:
        mt.accelerators = [compute_v1.Accelerators(guest_accelerator_type=spec.accelerator[0],
                                                   guest_accelerator_count=spec.accelerator[1])]
    return mt


def _accelerator_type(p: str, zone: str, name: str) -> compute_v1.AcceleratorType:
    desc, cards = ACCELERATOR_TYPES[name]
    return compute_v1.AcceleratorType(
        kind="compute#acceleratorType", id=zlib.crc32(name.encode()) % 10**5, name=name,
        description=desc, maximum_cards_per_instance=cards,
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        zone=f"{API}/projects/{p}/zones/{zone}",
        self_link=f"{API}/projects/{p}/zones/{zone}/acceleratorTypes/{name}")


def _zone(p: str, zone: str) -> compute_v1.Zone:
    region = zone.rsplit("-", 1)[0]
    return compute_v1.Zone(
        kind="compute#zone", id=2000 + sorted(ZONES).index(zone), name=zone,
        description=zone, status="UP", supports_pzs=True,
        region=f"{API}/projects/{p}/regions/{region}",
        creation_timestamp="1969-12-31T16:00:00.000-08:00",
        available_cpu_platforms=sorted({s.cpu_platform for s in MACHINE_TYPES.values()}),
        self_link=f"{API}/projects/{p}/zones/{zone}")


def _catalogue(rpc: str, p: str, a: dict[str, str], q: dict[str, str]) -> Any:
    zone = a.get("zone", "")
    if rpc == "machineTypes.get":
        if a["machine_type"] not in ZONES[zone]["machine_types"]:
            raise _not_found(f"projects/{p}/zones/{zone}/machineTypes/{a['machine_type']}")
        return _machine_type(p, zone, a["machine_type"])
    if rpc == "machineTypes.list":
        items, token = _page([_machine_type(p, zone, n) for n in ZONES[zone]["machine_types"]], q)
        return compute_v1.MachineTypeList(kind="compute#machineTypeList", items=items,
                                          next_page_token=token,
                                          id=f"projects/{p}/zones/{zone}/machineTypes",
                                          self_link=f"{API}/projects/{p}/zones/{zone}/machineTypes")
    if rpc == "machineTypes.aggregatedList":
        pred = parse_filter(q.get("filter", ""), each_in_parentheses=True)
        return compute_v1.MachineTypeAggregatedList(
            kind="compute#machineTypeAggregatedList", id=f"projects/{p}/aggregated/machineTypes",
            items={f"zones/{z}": compute_v1.MachineTypesScopedList(machine_types=[
                mt for mt in (_machine_type(p, z, n) for n in ZONES[z]["machine_types"])
                if pred(_as_dict(mt))]) for z in ZONES})
    if rpc == "acceleratorTypes.get":
        if a["accelerator_type"] not in ZONES[zone]["accelerators"]:
            raise _not_found(f"projects/{p}/zones/{zone}/acceleratorTypes/{a['accelerator_type']}")
        return _accelerator_type(p, zone, a["accelerator_type"])
    if rpc == "acceleratorTypes.list":
        items, token = _page([_accelerator_type(p, zone, n) for n in ZONES[zone]["accelerators"]],
                             q)
        return compute_v1.AcceleratorTypeList(
            kind="compute#acceleratorTypeList", items=items, next_page_token=token,
            id=f"projects/{p}/zones/{zone}/acceleratorTypes",
            self_link=f"{API}/projects/{p}/zones/{zone}/acceleratorTypes")
    if rpc == "acceleratorTypes.aggregatedList":
        pred = parse_filter(q.get("filter", ""), each_in_parentheses=True)
        return compute_v1.AcceleratorTypeAggregatedList(
            kind="compute#acceleratorTypeAggregatedList",
            id=f"projects/{p}/aggregated/acceleratorTypes",
            items={f"zones/{z}": compute_v1.AcceleratorTypesScopedList(accelerator_types=[
                at for at in (_accelerator_type(p, z, n) for n in ZONES[z]["accelerators"])
                if pred(_as_dict(at))]) for z in ZONES})
    if rpc == "zones.get":
        return _zone(p, zone)
    if rpc == "zones.list":
        items, token = _page([_zone(p, z) for z in sorted(ZONES)], q)
        return compute_v1.ZoneList(kind="compute#zoneList", items=items, next_page_token=token,
                                   id=f"projects/{p}/zones", self_link=f"{API}/projects/{p}/zones")
    raise ApiError(501, "notImplemented", f"compute fake: {rpc} is not implemented")
