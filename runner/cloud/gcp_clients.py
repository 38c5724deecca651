"""Every Google Cloud client the control plane uses, built in one place from config.

Why one place: an ``InstancesClient`` pointed at a custom endpoint still polls its extended
operations through an internal ``ZoneOperationsClient`` on the *default* endpoint. So we wait on
operations with our own operations client, configured exactly like the others, and a test (or a
private endpoint) reaches every call through ``compute_endpoint`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def retryable_api_errors() -> tuple[type[Exception], ...]:
    from google.api_core import exceptions as gexc

    return (gexc.TooManyRequests, gexc.ServiceUnavailable, gexc.InternalServerError,
            gexc.GatewayTimeout, gexc.BadGateway)


# Compute (and the other classic JSON APIs) answer a rate limit with 403 and one of these
# reasons, not only with 429 ("API rate limits", Compute Engine docs). Such a 403 is a reason to
# wait and retry, never a missing permission.
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


def is_rate_limited(exc: BaseException) -> bool:
    """Whether ``exc`` is a 403 (or 429) that says "too many requests", by its error reasons."""
    for err in getattr(exc, "errors", None) or []:
        if isinstance(err, dict) and err.get("reason") in RATE_LIMIT_REASONS:
            return True
    return getattr(exc, "reason", None) in RATE_LIMIT_REASONS


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, and a 403 that is a rate limit: worth the same backoff."""
    return isinstance(exc, retryable_api_errors()) or is_rate_limited(exc)


# How long one call keeps retrying 429/5xx/403-rate-limits before it gives up with a RetryError
# (module level so a test can shorten it: a sustained fault must end within the test).
API_RETRY_DEADLINE = 120.0


def api_retry(timeout: float | None = None) -> Any:
    """429, 5xx and 403 rate limits are retried with exponential backoff; anything else
    surfaces at once. Past the deadline the call raises ``google.api_core.exceptions.RetryError``,
    which is *not* a ``GoogleAPICallError``: catch ``api_errors()``."""
    from google.api_core import retry as gretry

    return gretry.Retry(predicate=is_retryable, initial=0.5, maximum=16.0, multiplier=2.0,
                        timeout=API_RETRY_DEADLINE if timeout is None else timeout)


def api_errors() -> tuple[type[Exception], ...]:
    """Every way a Google API call made with ``api_retry`` fails: an answered error
    (``GoogleAPICallError``) or a fault sustained past the retry deadline (``RetryError``, whose
    ``cause`` is the last answer)."""
    from google.api_core import exceptions as gexc

    return (gexc.GoogleAPICallError, gexc.RetryError)


def retry_exhausted_text(e: BaseException) -> str:
    """What a ``RetryError`` says to a user: the last answer and how long it lasted."""
    cause = getattr(e, "cause", None)
    last = _answer_text(cause) if cause else str(e)
    return f"still failing after {API_RETRY_DEADLINE:g} s of retries (last answer: {last})"


def _answer_text(cause: BaseException) -> str:
    """``CODE message`` of an API error; an upload's error (google-resumable-media's
    ``InvalidResponse``, whose args are a tuple) carries the HTTP response instead."""
    response = getattr(cause, "response", None)
    if getattr(cause, "code", None) is None and hasattr(response, "status_code"):
        try:
            message = response.json()["error"]["message"]
        except Exception:  # noqa: BLE001 - not Google's JSON error body: its reason phrase will do
            message = getattr(response, "reason", "") or ""
        return f"{response.status_code} {message}".strip()
    return f"{getattr(cause, 'code', '')} {getattr(cause, 'message', cause)}".strip()


@dataclass
class ComputeClients:
    instances: Any
    zone_operations: Any
    images: Any
    machine_types: Any
    accelerator_types: Any
    zones: Any
    disks: Any
    global_operations: Any = None  # images.insert/delete answer with global operations
    projects: Any = None  # projects.get: project-wide quotas (GPUS_ALL_REGIONS)
    regions: Any = None  # regions.get: regional quotas, for the queue (gce_quota)
    advice: Any = None  # advice.capacity: which zone is likely to have room now (gce_capacity_advice.py)


def _client_kwargs(endpoint: str | None) -> dict[str, Any]:
    """Client options for ``endpoint`` (None: Google's); an http:// stand-in gets no credentials."""
    from google.api_core.client_options import ClientOptions

    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
        if endpoint.startswith("http://"):
            # A local stand-in (tests, an emulator): never look for real credentials.
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
    return kwargs


def compute_clients(endpoint: str | None = None) -> ComputeClients:
    from google.cloud import compute_v1

    kwargs = _client_kwargs(endpoint)
    return ComputeClients(
        instances=compute_v1.InstancesClient(**kwargs),
        zone_operations=compute_v1.ZoneOperationsClient(**kwargs),
        images=compute_v1.ImagesClient(**kwargs),
        machine_types=compute_v1.MachineTypesClient(**kwargs),
        accelerator_types=compute_v1.AcceleratorTypesClient(**kwargs),
        zones=compute_v1.ZonesClient(**kwargs),
        disks=compute_v1.DisksClient(**kwargs),
        global_operations=compute_v1.GlobalOperationsClient(**kwargs),
        projects=compute_v1.ProjectsClient(**kwargs),
        regions=compute_v1.RegionsClient(**kwargs),
        advice=compute_v1.AdviceClient(**kwargs),
    )


def cloudbuild_client(endpoint: str | None = None) -> Any:
    """A Cloud Build client over REST, pointed at ``endpoint`` when given (a fake in tests)."""
    from google.cloud.devtools import cloudbuild_v1

    return cloudbuild_v1.CloudBuildClient(transport="rest", **_client_kwargs(endpoint))


def regions_client(endpoint: str | None = None) -> Any:
    """A Compute ``RegionsClient`` (quotas, for ``runner doctor``) at ``endpoint``."""
    from google.cloud import compute_v1

    return compute_v1.RegionsClient(**_client_kwargs(endpoint))


def projects_client(endpoint: str | None = None) -> Any:
    """A Compute ``ProjectsClient`` (project-wide quotas such as GPUS_ALL_REGIONS) at ``endpoint``."""
    from google.cloud import compute_v1

    return compute_v1.ProjectsClient(**_client_kwargs(endpoint))


def machine_types_client(endpoint: str | None = None) -> Any:
    """A Compute ``MachineTypesClient`` (a machine type's built-in GPUs) at ``endpoint``."""
    from google.cloud import compute_v1

    return compute_v1.MachineTypesClient(**_client_kwargs(endpoint))
