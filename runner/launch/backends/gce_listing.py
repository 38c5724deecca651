"""``instances.aggregatedList`` with ``returnPartialSuccess``, which the Python client cannot send.

Why not the library's ``InstancesClient.aggregated_list``: google-cloud-compute (1.57, and 1.56
on PyPI) has no ``return_partial_success`` field on ``AggregatedListInstancesRequest`` although
the REST method takes the parameter, and the reference says "To prevent failure, Google
recommends that you set the returnPartialSuccess parameter to true"
(https://cloud.google.com/compute/docs/reference/rest/beta/instances/aggregatedList). So the GET
goes through the client's own authorized session and endpoint (same credentials, same
``compute_endpoint``), its errors become the library's exceptions (``from_http_response``) and it
is retried with the same ``api_retry``; the answer is parsed into the library's own
``InstanceAggregatedList``.

A partial answer names what it could not read in ``unreachables`` and as a scope warning
``UNREACHABLE``; ``AggregatedInstances.unreachable`` collects both, so no caller mistakes a
partial listing for a complete one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.cloud.gcp_clients import api_retry

MAX_RESULTS = 500


@dataclass
class AggregatedInstances:
    """Instances of every zone that answered, and the scopes (``zones/Z``) that did not."""

    instances: list[Any] = field(default_factory=list)  # compute_v1.Instance
    unreachable: list[str] = field(default_factory=list)


def label_filter(labels: dict[str, str]) -> str:
    """``(labels.k = "v") (labels.k2 = "v2")``: each expression in parentheses, as Compute
    requires of a filter with several ("To filter on multiple expressions, provide each
    separate expression within parentheses", the compute v1 ``filter`` reference)."""
    return " ".join(f'(labels.{k} = "{v}")' for k, v in labels.items())


def list_all_instances(instances_client: Any, project: str, flt: str) -> AggregatedInstances:
    """Every page of ``instances.aggregatedList`` with ``returnPartialSuccess=true``."""
    from google.api_core import exceptions as gexc
    from google.cloud import compute_v1

    transport = instances_client.transport
    session, host = transport._session, transport._host  # the client's own: see module doc
    url = f"{host}/compute/v1/projects/{project}/aggregated/instances"

    def page(token: str) -> Any:
        params = {"filter": flt, "maxResults": str(MAX_RESULTS), "returnPartialSuccess": "true"}
        if token:
            params["pageToken"] = token
        resp = session.get(url, params=params, timeout=60)
        if resp.status_code >= 400:
            raise gexc.from_http_response(resp)
        return compute_v1.InstanceAggregatedList.from_json(resp.content, ignore_unknown_fields=True)

    out = AggregatedInstances()
    token = ""
    while True:
        got = api_retry()(page)(token)
        out.unreachable += [u for u in got.unreachables if u not in out.unreachable]
        for scope, scoped in got.items.items():
            out.instances += list(scoped.instances)
            warning = scoped.warning if "warning" in scoped else None
            if warning is not None and _code(warning.code) == "UNREACHABLE" and scope not in out.unreachable:
                out.unreachable.append(scope)
        token = got.next_page_token
        if not token:
            return out


def _code(code: Any) -> str:
    return getattr(code, "name", None) or str(code)
