"""``instances.bulkInsert``: N VMs of one shape in one zone, all or nothing down to ``minCount``.

What is modelled, and from where (research notes: docs/research/gce-gangs-bulk-insert.md):

- The body is a ``BulkInsertInstanceResource``: ``count`` is "the maximum number of instances to
  create"; ``minCount`` defaults to ``count``, and "if min_count instances cannot be created, then
  no instances will be created and instances already created will be deleted"; "either
  name_pattern or per_instance_properties must be set"; ``instanceProperties`` is "required if
  sourceInstanceTemplate is not provided"; a ``namePattern`` has "one continuous sequence of
  placeholder hash characters (#)", one digit each
  (https://cloud.google.com/php/docs/reference/cloud-compute/latest/V1.BulkInsertInstanceResource).
  ``perInstanceProperties`` carries only ``name`` and ``hostname`` (the library's type): metadata
  and labels are the same for every VM of one call.
- Quota and capacity are checked up front ("Upfront validation ... With capacity and quota",
  https://cloud.google.com/compute/docs/instances/multiple/about-bulk-creation): over a regional
  quota or ``GPUS_ALL_REGIONS`` for ``minCount`` VMs, the operation fails with QUOTA_EXCEEDED and
  nothing is made; if only some fit, as many as fit (at most ``count``) are made.
- Capacity: ``zone_capacity[zone]`` is how many more VMs the zone can take (absent: no limit;
  ``stockout_zones``: none). Fewer than ``minCount`` → the operation error
  ``VM_MIN_COUNT_NOT_REACHED`` "Requested minimum count of N VMs could not be created." with HTTP
  status 503 (the error GCE gave in https://github.com/googleapis/google-cloud-go/issues/5168), and
  no VM of the request is left. Whether GCE adds a second error naming the cause was not found:
  the fake gives only this one, so a client must read it as "try another zone".
- The operation is ``operationType: bulkInsert`` and carries
  ``instancesBulkInsertOperationMetadata.perLocationStatus`` with ``targetVmCount``,
  ``createdVmCount``, ``failedToCreateVmCount``, ``deletedVmCount`` ("deleted during rollback") and
  ``status`` DONE (BulkInsertOperationStatus,
  https://docs.cloud.google.com/python/docs/reference/compute/1.16.1/google.cloud.compute_v1.types.BulkInsertOperationStatus).
- ``requestId`` makes it idempotent like every mutation (service.py's dispatch).

Fault injection: ``bulk_rollback_leaves[zone] = k`` makes a failed request's rollback leave its
first k VMs behind (``deletedVmCount`` then falls short of ``createdVmCount``, which the
operation's metadata can express; GCE documenting such a case was not found), so a client's own
clean-up can be tested.

Not modelled (the fake's choices, said so): the rollback happens within the request, so no
client ever sees the partly made VMs (GCE makes and deletes them while the operation runs);
``perLocationStatus`` is keyed ``zones/ZONE`` and ``targetLink`` is the zone's instances
collection (neither was found documented); a ``perInstanceProperties`` name that exists already
is a synchronous 409 (not found documented); ``sourceInstanceTemplate``, ``locationPolicy`` and the
regional ``regionInstances.bulkInsert`` answer 501/400; several VMs sharing a ``source`` disk are
refused with 400 (a read-write disk attaches to one VM, disks.py).
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import ApiError, _copy, _invalid
from tests.standins.compute.model import API, _is_spot, _region


_PATTERN_RE = re.compile(r"[^#]*(#+)[^#]*")


class BulkInsertRecords:
    """The bulkInsert part of ``ComputeFake``; runs under its lock."""

    def _h_bulk_insert(self, p: str, zone: str, body: bytes) -> Any:
        try:
            req = compute_v1.BulkInsertInstanceResource.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        if req.source_instance_template:
            raise ApiError(501, "notImplemented", "compute fake: bulkInsert from "
                           "sourceInstanceTemplate is not implemented")
        if "instance_properties" not in req:
            raise _invalid("bulkInsertInstanceResource.instanceProperties", "",
                           "Required if sourceInstanceTemplate is not provided.")
        count = req.count if "count" in req else 0
        if count < 1:
            raise _invalid("bulkInsertInstanceResource.count", count, "Must be at least 1.")
        min_count = req.min_count if "min_count" in req else count
        if not 1 <= min_count <= count:
            raise _invalid("bulkInsertInstanceResource.minCount", min_count,
                           f"Must be between 1 and count ({count}).")
        if not req.name_pattern and not req.per_instance_properties:
            raise _invalid("bulkInsertInstanceResource", "",
                           "Either namePattern or perInstanceProperties must be set.")
        base = self._instance_from_properties(zone, req.instance_properties)
        if count > 1 and any(d.source for d in base.disks):
            raise _invalid("bulkInsertInstanceResource.instanceProperties.disks", "",
                           "A disk given by source can be attached read-write to one VM only.")
        names = self._bulk_names(p, zone, req, count)
        base.name = names[0]
        self._validate_insert(p, zone, base)  # the shape is checked once, as for one insert
        self._check_disks(p, zone, base)
        target = compute_v1.Instance(self_link=f"{API}/projects/{p}/zones/{zone}/instances")
        room, refusal = self._copies_within_quota(p, zone, base, count)
        if room < min_count:
            assert refusal is not None
            return self._bulk_op(p, zone, target, count, 0, 0, 0,
                                 error=("QUOTA_EXCEEDED", refusal, 403, "FORBIDDEN"))
        capacity = 0 if zone in self.stockout_zones else self.zone_capacity.get(zone, math.inf)
        if capacity < min_count:
            made = int(min(capacity, count))
            left = min(made, self.bulk_rollback_leaves.get(zone, 0))
            for name in names[:left]:  # fault injection: a rollback that did not finish
                self._make_node(p, zone, base, req, name)
            return self._bulk_op(p, zone, target, count, made, 1, made - left, error=(
                "VM_MIN_COUNT_NOT_REACHED",
                f"Requested minimum count of {min_count} VMs could not be created.",
                503, "SERVICE UNAVAILABLE"))
        n = int(min(count, room, capacity))
        for name in names[:n]:
            self._make_node(p, zone, base, req, name)
        return self._bulk_op(p, zone, target, count, n, 0, 0)

    # ---- internals ------------------------------------------------------------------------------

    def _make_node(self, p: str, zone: str, base: compute_v1.Instance,
                   req: compute_v1.BulkInsertInstanceResource, name: str) -> None:
        inst = _copy(base)
        inst.name = name
        hostname = req.per_instance_properties[name].hostname if name in req.per_instance_properties else ""
        if hostname:
            inst.hostname = hostname
        self._create_vm(p, zone, inst)
        if zone in self.zone_capacity:
            self.zone_capacity[zone] -= 1

    @staticmethod
    def _instance_from_properties(zone: str, props: compute_v1.InstanceProperties) -> compute_v1.Instance:
        """The Instance every VM of the request starts from. Templates name types bare
        (``n1-standard-4``); they are made zonal here so the insert validation applies."""
        inst = compute_v1.Instance.from_json(compute_v1.InstanceProperties.to_json(props),
                                             ignore_unknown_fields=True)
        if inst.machine_type and "/" not in inst.machine_type:
            inst.machine_type = f"zones/{zone}/machineTypes/{inst.machine_type}"
        for acc in inst.guest_accelerators:
            if "/" not in acc.accelerator_type:
                acc.accelerator_type = f"zones/{zone}/acceleratorTypes/{acc.accelerator_type}"
        for d in inst.disks:
            t = d.initialize_params.disk_type
            if t and "/" not in t:
                d.initialize_params.disk_type = f"zones/{zone}/diskTypes/{t}"
        return inst

    def _bulk_names(self, p: str, zone: str, req: compute_v1.BulkInsertInstanceResource,
                    count: int) -> list[str]:
        """``count`` names: the given ones first (sorted: a proto map has no order, so which of
        them a short zone makes is the fake's choice), then the pattern's free ones in order."""
        names: list[str] = []
        for key, props in sorted(req.per_instance_properties.items()):
            name = props.name or key
            if (p, zone, name) in self._vms:
                raise ApiError(409, "alreadyExists",
                               f"The resource 'projects/{p}/zones/{zone}/instances/{name}' already exists")
            names.append(name)
        if len(names) < count and req.name_pattern:
            m = _PATTERN_RE.fullmatch(req.name_pattern)
            if not m:
                raise _invalid("bulkInsertInstanceResource.namePattern", req.name_pattern,
                               "Must contain one continuous sequence of '#' characters.")
            width = len(m.group(1))
            for i in range(1, 10 ** width):
                name = req.name_pattern.replace(m.group(1), f"{i:0{width}d}")
                if (p, zone, name) not in self._vms and name not in names:
                    names.append(name)
                if len(names) == count:
                    break
        if len(names) < count:
            raise _invalid("bulkInsertInstanceResource.count", count,
                           f"Only {len(names)} instance names are available for {count} instances.")
        return names[:count]

    def _copies_within_quota(self, project: str, zone: str, inst: compute_v1.Instance, want: int
                             ) -> tuple[int, Optional[str]]:
        """How many copies of ``inst`` the regional quotas and GPUS_ALL_REGIONS allow (at most
        ``want``), and the refusal message for one more."""
        region = _region(zone)
        quotas = self.region_quotas.get(region, {})
        live = self._live_usage(project, region)
        needs = self._quota_needs(inst)
        for k in range(1, want + 1):
            for metric, amount in needs.items():
                m = self._metric_for(region, metric, _is_spot(inst))
                if m in quotas:
                    limit, usage = quotas[m]
                    if usage + live.get(m, 0.0) + amount * k > limit:
                        return k - 1, f"Quota '{m}' exceeded.  Limit: {limit:.1f} in region {region}."
            gpus = sum(a for m, a in needs.items() if m != "CPUS")
            if gpus and "GPUS_ALL_REGIONS" in self.project_quotas:
                limit, usage = self.project_quotas["GPUS_ALL_REGIONS"]
                if usage + self._project_gpus(project) + gpus * k > limit:
                    return k - 1, f"Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: {limit:.1f} globally."
        return want, None

    def _bulk_op(self, p: str, zone: str, target: compute_v1.Instance, target_count: int,
                 created: int, failed: int, deleted: int,
                 error: Optional[tuple[str, str, int, str]] = None) -> compute_v1.Operation:
        op = self._new_op(p, zone, "bulkInsert", target, error=error)
        rec = self._op_record(p, zone, op)
        rec.op.instances_bulk_insert_operation_metadata = compute_v1.InstancesBulkInsertOperationMetadata(
            per_location_status={f"zones/{zone}": compute_v1.BulkInsertOperationStatus(
                status="DONE", target_vm_count=target_count, created_vm_count=created,
                failed_to_create_vm_count=failed, deleted_vm_count=deleted)})
        return self._render_op(rec)
