"""How the fake answers when it refuses (Compute's classic error shape, on the stand-ins' one
``GoogleApiError``), and the JSON of the library's own types."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Optional

from tests.standins.google_api import GoogleApiError


def to_json(msg: Any) -> str:
    """Serialize a compute_v1 message the way GCE writes it: camelCase, enum names, no empties.

    ``to_json``'s defaults (integer enums, every empty repeated field printed) also parse, but
    GCE sends ``"status": "DONE"`` and omits empty fields, and product code that inspects raw
    JSON or checks field presence should see the same.
    """
    try:
        return type(msg).to_json(msg, use_integers_for_enums=False,
                                 always_print_fields_with_no_presence=False)
    except TypeError:  # proto-plus < 1.24 names the option differently
        return type(msg).to_json(msg, use_integers_for_enums=False,
                                 including_default_value_fields=False)


def _as_dict(msg: Any) -> dict[str, Any]:
    return json.loads(to_json(msg))


def _copy(msg: Any) -> Any:
    """A detached copy, so callers of the inspection helpers cannot mutate the fake's state."""
    cls = type(msg)
    return cls.deserialize(cls.serialize(msg))


class ApiError(GoogleApiError):
    """An HTTP error answered with a GCE JSON error body, the classic ``errors`` list with its
    ``reason`` and ``domain`` (api_core maps it to an exception)."""

    def __init__(self, code: int, reason: str, message: str, domain: str = "global") -> None:
        super().__init__(code, message, errors=[{"reason": reason, "message": message, "domain": domain}],
                         summary=f"{code} {reason}: {message}")
        self.reason, self.domain = reason, domain


def _not_found(resource: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


def _invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {why}")


_RETRYABLE = {
    429: ("rateLimitExceeded", "Rate Limit Exceeded"),
    500: ("backendError", "Internal error. Please try again or contact Google Support."),
    502: ("backendError", "Bad Gateway"),
    503: ("backendError", "The service is currently unavailable."),
    504: ("backendError", "Deadline exceeded."),
}
# Compute answers most rate limits with 403, not 429 (the "Queries per minute" quota of
# compute.googleapis.com; "API rate limits" in the Compute docs), in the classic error shape
# with domain usageLimits and reason rateLimitExceeded or userRateLimitExceeded (per user).
_RATE_LIMITS = {
    "rateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                         "minute' of service 'compute.googleapis.com'.",
    "userRateLimitExceeded": "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                             "minute per user' of service 'compute.googleapis.com'.",
}
# What an injected 403 is when no reason is given: a rate limit, the usual transient 403.
_FORBIDDEN = ("forbidden", "Required 'compute.instances.list' permission for "
              "'projects/{project}'")


def _retryable_error(code: int, reason: Optional[str] = None) -> ApiError:
    """An injected error in GCE's shape: 429/5xx, or 403 rate limits (``reason`` picks which;
    ``reason="forbidden"`` makes a 403 a permission error instead)."""
    if code == 403:
        reason = reason or "rateLimitExceeded"
        if reason in _RATE_LIMITS:
            return ApiError(403, reason, _RATE_LIMITS[reason], domain="usageLimits")
        return ApiError(403, reason, _FORBIDDEN[1].format(project="the project"))
    default_reason, message = _RETRYABLE.get(code, ("backendError", HTTPStatus(code).phrase))
    return ApiError(code, reason or default_reason, message)


_PACIFIC = timezone(timedelta(hours=-7))  # GCE timestamps carry the US/Pacific offset


def _now_ts() -> str:
    return datetime.now(_PACIFIC).isoformat(timespec="milliseconds")
