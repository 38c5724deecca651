"""A gang's generation on GCE: N nodes created all or nothing in one zone with ``bulkInsert``.

Why ``bulkInsert`` with ``minCount = N`` rather than N inserts: "If min_count instances cannot be
created, then no instances will be created and instances already created will be deleted"
(BulkInsertInstanceResource, https://cloud.google.com/php/docs/reference/cloud-compute/latest/V1.BulkInsertInstanceResource),
so a zone with room for N-1 nodes leaves nothing billing, and the whole gang costs one API call
("One request for each bulk operation",
https://cloud.google.com/compute/docs/instances/multiple/about-bulk-creation). GCE reports the
shortfall as the operation error ``VM_MIN_COUNT_NOT_REACHED`` (HTTP 503,
https://github.com/googleapis/google-cloud-go/issues/5168): the next zone may have room.

One bulkInsert gives every VM the same metadata and labels (``perInstanceProperties`` holds only
``name`` and ``hostname``), so a node's rank is in its *name* (``runner.naming.node_name`` /
``rank_of``): the VM's startup script reads its own name from the metadata server, and the
backend's listing reads the rank from the name. Rank 0's address, known only once the VMs exist,
is read back from ``networkInterfaces[0].networkIP``; the supervisor publishes every node's
address in the attempt's create claim, where each node's agent finds rank 0's
(runner.launch.backends.gang). Research: docs/research/gce-gangs-bulk-insert.md.

Plan, then act: ``gang_plan`` turns the single-VM ``GcePlan`` (one candidate Instance per zone)
into the exact ``BulkInsertInstanceRequest`` per zone without I/O; ``create_generation`` sends them.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from runner.cloud.gcp_clients import ComputeClients, api_retry
from runner.launch.backends.base import LABEL_ATTEMPT, LABEL_RANK, LABEL_RUN_ID, LABEL_STORE, BackendError
from runner.launch.backends.gce_listing import label_filter
from runner.launch.zone_stockouts import STOCKOUT_CODES
from runner.launch.backends.gce_zone_walk import ZONE_RETRYABLE, OverGlobalGpuQuota, ZoneExhausted, global_gpu_quota
from runner.naming import instance_names, label_value

if TYPE_CHECKING:
    from runner.launch.backends.gce import GcePlan

# The bulk call's own refusal of a zone without room for minCount VMs (see the module docstring).
MIN_COUNT_NOT_REACHED = "VM_MIN_COUNT_NOT_REACHED"
GANG_ZONE_RETRYABLE = frozenset(ZONE_RETRYABLE | {MIN_COUNT_NOT_REACHED})
# "You can create up to 5,000 VMs with each call" (About bulk creation of VMs, Limitations,
# https://cloud.google.com/compute/docs/instances/using-bulk-api): far above a gang's size.
BULK_INSERT_MAX = 5000
_GANG_REQUEST_NAMESPACE = uuid.UUID("0b6c1f3e-8d2a-4e57-9c4b-7a1e5d3f9b21")  # gang bulkInsert ids


@dataclass(frozen=True)
class Generation:
    """A created gang: every node in one zone, as GCE reports them (``compute_v1.Instance``), in
    rank order."""

    run_id: str
    attempt: int
    zone: str
    vms: tuple[Any, ...]

    @property
    def master_addr(self) -> str:
        """Rank 0's internal address: the rendezvous endpoint the run record publishes."""
        return internal_ip(self.vms[0]) if self.vms else ""


def internal_ip(vm: Any) -> str:
    """A VM's address on its VPC network (``networkInterfaces[0].networkIP``); "" before GCE
    assigned one."""
    nics = list(vm.network_interfaces)
    return nics[0].network_i_p if nics else ""


@dataclass(frozen=True)
class GangPlan:
    """The bulkInsert of one generation per candidate zone, tried in order."""

    run_id: str
    attempt: int
    nnodes: int
    project: str
    candidates: tuple[tuple[str, Any], ...]  # (zone, compute_v1.InstanceProperties)
    request_key: str = ""  # LaunchContext.request_key: deterministic request ids ("" → random)
    before_insert: Optional[Callable[[str], None]] = field(default=None, compare=False, repr=False)

    @property
    def names(self) -> list[str]:
        """The nodes' names in rank order (``runner.naming.node_name``): the rank is in the name."""
        return instance_names(self.run_id, self.attempt, self.nnodes)

    def request_id(self, zone: str) -> str:
        """The same for the same (claim round, generation, zone): a resent bulkInsert (the
        library's retry after a lost reply, or a takeover of a dead creator's claim) is answered
        with the first operation, not a second gang (``requestId``, compute v1 reference)."""
        if not self.request_key:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_GANG_REQUEST_NAMESPACE, f"{self.request_key}/{self.names[0]}/{zone}"))

    def request(self, zone: str) -> Any:
        """The exact ``BulkInsertInstanceRequest`` for ``zone`` (no I/O): N named VMs, minCount N."""
        from google.cloud import compute_v1

        props = dict(self.candidates)[zone]
        per = {n: compute_v1.BulkInsertInstanceResourcePerInstanceProperties(name=n) for n in self.names}
        return compute_v1.BulkInsertInstanceRequest(
            project=self.project, zone=zone, request_id=self.request_id(zone),
            bulk_insert_instance_resource_resource=compute_v1.BulkInsertInstanceResource(
                count=self.nnodes, min_count=self.nnodes, instance_properties=props,
                per_instance_properties=per))

    def to_dict(self) -> list[dict[str, Any]]:
        """What ``runner submit --dry-run`` prints: one bulkInsert per zone, in the order tried."""
        from google.cloud import compute_v1

        return [{"zone": z, "bulk_insert": compute_v1.BulkInsertInstanceRequest.to_dict(self.request(z))}
                for z, _ in self.candidates]


def gang_plan(plan: "GcePlan", run_id: str, attempt: int, nnodes: int) -> GangPlan:
    """The single-VM plan's candidates as the shared properties of a gang's nodes.

    Types become bare names, as instance properties (templates) give them; the rank label goes,
    because one bulkInsert labels every VM alike (the rank is in the name instead)."""
    from google.cloud import compute_v1

    if not 1 <= nnodes <= BULK_INSERT_MAX:
        raise ValueError(f"a gang has 1 to {BULK_INSERT_MAX} nodes, not {nnodes}")
    candidates = []
    for zone, inst in plan.candidates:
        props = compute_v1.InstanceProperties.from_json(compute_v1.Instance.to_json(inst),
                                                        ignore_unknown_fields=True)
        props.machine_type = _bare(props.machine_type)
        for acc in props.guest_accelerators:
            acc.accelerator_type = _bare(acc.accelerator_type)
        for d in props.disks:
            if d.source:
                raise BackendError("a gang cannot share one data disk (--data-disk) between its nodes: "
                                   "use a per-run disk size instead (data_disk_gb)")
            if d.initialize_params.disk_type:
                d.initialize_params.disk_type = _bare(d.initialize_params.disk_type)
        props.labels.pop(LABEL_RANK, None)
        candidates.append((zone, props))
    return GangPlan(run_id=run_id, attempt=attempt, nnodes=nnodes, project=plan.project,
                    candidates=tuple(candidates), request_key=plan.request_key,
                    before_insert=plan.before_insert)


def create_generation(clients: ComputeClients, plan: GangPlan, stocked_out: list[str] | None = None) -> Generation:
    """Create the N nodes of ``plan`` in the first zone that takes all N; returns them with rank
    0's internal address.

    A zone without room (or quota) for all N is skipped; GCE rolls back what it made there, and
    any node still found afterwards (a rollback that did not finish) is deleted before the next
    zone is tried, so at most one zone ever holds nodes of this generation. Idempotent per
    request id: a retry after a lost reply gets the first operation. Raises ``ZoneExhausted``
    when no zone takes the gang, ``OverGlobalGpuQuota`` at the first zone that refuses it for the
    project-wide GPU quota (no other zone can say otherwise), ``BackendError`` on anything else
    (after deleting what it made). ``stocked_out`` gets the zones that refused for capacity
    (not quota), for the store's stockout history (runner.launch.zone_stockouts).
    """
    from google.api_core import exceptions as gexc

    refusals = []
    for zone, _props in plan.candidates:
        if plan.before_insert is not None:
            plan.before_insert(zone)  # raises once the create claim is no longer ours
        try:
            op = clients.instances.bulk_insert_unary(request=plan.request(zone), retry=api_retry())
            op = _wait(clients, plan.project, zone, op)
        except gexc.Conflict:
            # Some names exist already (an earlier round's gang in this zone): adopt a complete
            # gang, never a part of one.
            return _adopt_or_clear(clients, plan, zone)
        except gexc.GoogleAPICallError as e:
            quota = global_gpu_quota(e)
            if quota is not None:
                raise OverGlobalGpuQuota(zone, *quota) from None
            reasons = _reasons(e)
            if reasons & GANG_ZONE_RETRYABLE:
                refusals.append(f"{zone}: {', '.join(sorted(reasons))}")
                if stocked_out is not None and reasons & STOCKOUT_CODES:
                    stocked_out.append(zone)
                continue
            raise BackendError(f"creating the {plan.nnodes} nodes of {plan.names[0]}… in {zone} failed: "
                               f"{getattr(e, 'message', e)}") from None
        if op.error and op.error.errors:
            reasons = {e.code for e in op.error.errors}
            _clear(clients, plan, zone)  # a rollback that left a node behind: none survives
            quota = global_gpu_quota(op)
            if quota is not None:  # every zone shares it: walking on would only repeat it
                raise OverGlobalGpuQuota(zone, *quota)
            if reasons & GANG_ZONE_RETRYABLE:
                refusals.append(f"{zone}: " + "; ".join(f"{e.code}: {e.message}" for e in op.error.errors))
                if stocked_out is not None and reasons & STOCKOUT_CODES:
                    stocked_out.append(zone)
                continue
            raise BackendError(f"creating the {plan.nnodes} nodes of {plan.names[0]}… in {zone} failed: "
                               + "; ".join(f"{e.code}: {e.message}" for e in op.error.errors))
        return _read_back(clients, plan, zone)
    raise ZoneExhausted(
        f"no zone could take all {plan.nnodes} nodes of {plan.names[0]}… ({'; '.join(refusals)}): add "
        "zones (--zones / zones in runner.toml), use fewer nodes, or try again later; the supervisor "
        "retries on its next pass")


# ---- internals -----------------------------------------------------------------------------------

def _bare(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1] if url else url


def _reasons(e: Any) -> set[str]:
    out = {str(d.get("reason", "")) for d in (getattr(e, "errors", None) or []) if isinstance(d, dict)}
    msg = str(getattr(e, "message", "") or "")
    out |= {code for code in GANG_ZONE_RETRYABLE if code in msg}
    return out - {""}


def _wait(clients: ComputeClients, project: str, zone: str, op: Any) -> Any:
    """Our own operations client: the library's extended operation polls the default endpoint."""
    while str(getattr(op.status, "name", op.status)) != "DONE":
        op = clients.zone_operations.wait(project=project, zone=zone, operation=op.name, retry=api_retry())
    return op


def _existing(clients: ComputeClients, plan: GangPlan, zone: str) -> dict[str, Any]:
    """The nodes of this generation that exist in ``zone``, by name (one list call)."""
    from google.cloud import compute_v1

    # The store too: another store's run of the same id may hold these names, and its VMs are
    # neither ours to adopt nor ours to delete.
    labels = {LABEL_RUN_ID: label_value(plan.run_id), LABEL_ATTEMPT: str(plan.attempt)}
    store = _store_of(plan)
    if store:
        labels[LABEL_STORE] = store
    flt = label_filter(labels)
    wanted = set(plan.names)
    req = compute_v1.ListInstancesRequest(project=plan.project, zone=zone, filter=flt)
    return {i.name: i for i in clients.instances.list(request=req, retry=api_retry()) if i.name in wanted}


def _clear(clients: ComputeClients, plan: GangPlan, zone: str) -> None:
    for name in sorted(_existing(clients, plan, zone)):
        print(f"runner: deleting {name} in {zone}: the rest of its gang could not be created", file=sys.stderr)
        _delete(clients, plan.project, zone, name)


def _delete(clients: ComputeClients, project: str, zone: str, name: str) -> None:
    from google.api_core import exceptions as gexc

    try:
        clients.instances.delete_unary(project=project, zone=zone, instance=name, retry=api_retry())
    except gexc.NotFound:
        pass


def _adopt_or_clear(clients: ComputeClients, plan: GangPlan, zone: str) -> Generation:
    found = _existing(clients, plan, zone)
    if set(found) == set(plan.names):
        return _generation(plan, zone, found)
    for name in sorted(found):
        _delete(clients, plan.project, zone, name)
    raise BackendError(f"{zone} held {len(found)} of the {plan.nnodes} nodes of {plan.names[0]}… (names "
                       "taken by something else, or a gang partly gone): deleted them; the supervisor "
                       "creates the generation again on its next pass")


def _read_back(clients: ComputeClients, plan: GangPlan, zone: str) -> Generation:
    """The created nodes with their addresses. A node already gone (preempted while booting)
    breaks the generation at birth: the rest are deleted and the caller creates it again."""
    found = _existing(clients, plan, zone)
    if set(found) != set(plan.names):
        for name in sorted(found):
            _delete(clients, plan.project, zone, name)
        raise BackendError(f"the gang {plan.names[0]}… was created in {zone} and {plan.nnodes - len(found)} "
                           "node(s) are already gone (preempted while booting): deleted the rest; the "
                           "supervisor creates the generation again")
    return _generation(plan, zone, found)


def _generation(plan: GangPlan, zone: str, found: dict[str, Any]) -> Generation:
    return Generation(run_id=plan.run_id, attempt=plan.attempt, zone=zone,
                      vms=tuple(found[n] for n in plan.names))


def _store_of(plan: GangPlan) -> str:
    """The store label every node carries (the plan's shared labels), "" where it has none."""
    return str(dict(plan.candidates[0][1].labels).get(LABEL_STORE, "")) if plan.candidates else ""
