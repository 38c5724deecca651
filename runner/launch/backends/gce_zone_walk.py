"""Which GCE refusals send a create on to the next zone, and the error once every zone refused.

Its own module because two creates walk zones: one VM's ``instances.insert`` (gce.py) and a
gang's ``instances.bulkInsert`` (gce_gang.py); gce.py builds on gce_gang, so what both read
lives below both.
"""

from __future__ import annotations

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
