"""Which GCE refusals send a create on to the next zone, which stop the walk (the project-wide
GPU quota, which every zone shares), and the error once every zone refused.

Its own module because two creates walk zones: one VM's ``instances.insert`` (gce.py) and a
gang's ``instances.bulkInsert`` (gce_gang.py); gce.py builds on gce_gang, so what both read
lives below both.
"""

from __future__ import annotations

import re
from typing import Any

from runner.launch.backends.base import BackendError

# Errors after which the next zone may well succeed.
ZONE_RETRYABLE = {
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "QUOTA_EXCEEDED",
    "quotaExceeded",
    "resourcePoolExhausted",
    "STOCKOUT",
    "UNSUPPORTED_OPERATION",  # e.g. the GPU type is not offered in that zone
}


class ZoneExhausted(BackendError):
    """Every zone refused for capacity or quota; the message lists each zone's reason."""


# The project-wide GPU quota: over it every zone refuses, so walking zones cannot help.
GLOBAL_GPU_QUOTA = "GPUS_ALL_REGIONS"
GLOBAL_GPU_QUOTA_ID = "GPUS-ALL-REGIONS-per-project"  # its Cloud Quotas id (the refusal's limitName)


class OverGlobalGpuQuota(BackendError):
    """A zone refused for ``GPUS_ALL_REGIONS``: every other zone would too, so the walk stops."""

    def __init__(self, zone: str, limit: float | None, message: str) -> None:
        super().__init__(f"{zone}: {message}")
        self.zone, self.limit, self.message = zone, limit, message


def global_gpu_quota(exc_or_op: Any) -> tuple[float | None, str] | None:
    """(limit, message) when the refusal is the project-wide GPUS_ALL_REGIONS quota: by the
    error's ``quotaInfo`` (``metricName`` …/gpus_all_regions) or, for an HTTP error, its text."""
    errors = getattr(getattr(exc_or_op, "error", None), "errors", None) or []
    for e in errors:
        for detail in getattr(e, "error_details", None) or []:
            info = detail.quota_info if "quota_info" in detail else None
            if info is not None and info.metric_name.rsplit("/", 1)[-1].upper() == GLOBAL_GPU_QUOTA:
                return (info.limit if "limit" in info else None), e.message
        if GLOBAL_GPU_QUOTA in (e.message or ""):
            return _limit_in(e.message), e.message
    message = str(getattr(exc_or_op, "message", "") or "")
    if f"'{GLOBAL_GPU_QUOTA}'" in message:
        return _limit_in(message), message
    return None


def _limit_in(message: str) -> float | None:
    m = re.search(r"Limit: ([0-9.]+)", message or "")
    return float(m.group(1)) if m else None


