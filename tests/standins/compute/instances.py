"""Instances: insert (validated as GCE does), get, list and aggregatedList, delete, stop/start,
metadata and labels, maintenance events and the serial console."""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Union

from google.cloud import compute_v1

from tests.standins.compute.catalogue import HYPERDISK_ONLY, MACHINE_TYPES, ZONES
from tests.standins.compute.errors import ApiError, _copy, _invalid, _not_found, _now_ts
from tests.standins.compute.model import (
    API, _path as _path_of, _disk_ref, _fill_scheduling, _fingerprint, _full, _is_spot, _last, _no_results, _page, _Vm,
    _zonal_ref,
)


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
_METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")


# Flex-start (provisioningModel FLEX_START): "Flex-start VMs support all accelerator-optimized
# machine types (except A4X and G4) and H4D machine types" and "run for up to seven days"
# (https://cloud.google.com/compute/docs/instances/about-flex-start-vms). Google's pages quote no
# error text for a refused flex-start insert: the messages below are the fake's own, on GCE's
# usual 400 ``invalid`` for a field it will not take.
_FLEX_START_FAMILIES = ("a4", "a3", "a2", "g2", "h4d")
_FLEX_START_MAX_S = 7 * 86400


def _check_flex_start(machine_type: str, sched: compute_v1.Scheduling) -> None:
    if machine_type.split("-", 1)[0] not in _FLEX_START_FAMILIES:
        raise _invalid("resource.scheduling.provisioningModel", "FLEX_START",
                       f"The flex-start provisioning model is not supported for machine type "
                       f"'{machine_type}'.")
    if "max_run_duration" not in sched:
        raise _invalid("resource.scheduling.maxRunDuration", "",
                       "Must be specified for the flex-start provisioning model.")
    if sched.max_run_duration.seconds > _FLEX_START_MAX_S:
        raise _invalid("resource.scheduling.maxRunDuration.seconds", sched.max_run_duration.seconds,
                       f"Must be at most {_FLEX_START_MAX_S} seconds (7 days) for the flex-start "
                       "provisioning model.")


def _check_disk_type(machine_type: str, i: int, d: compute_v1.AttachedDisk) -> None:
    """A3 Ultra and A4 take Hyperdisk only (see ``HYPERDISK_ONLY`` in the catalogue). GCE's exact
    words for this refusal were not found; the message below is the fake's."""
    kind = _last(d.initialize_params.disk_type)
    if machine_type.startswith(HYPERDISK_ONLY) and kind.startswith("pd-"):
        raise _invalid(f"resource.disks[{i}].initializeParams.diskType", d.initialize_params.disk_type,
                       f"Disk type '{kind}' is not supported by machine type '{machine_type}': "
                       "it supports Hyperdisk only.")


class InstanceRecords:
    """The instances part of ``ComputeFake``; runs under its lock."""

    def instances(self, project: Optional[str] = None) -> list[compute_v1.Instance]:
        """Copies of the stored instances (what the product sent plus GCE-filled fields)."""
        with self.lock:
            self._tick()
            return [_copy(vm.instance) for key, vm in sorted(self._vms.items())
                    if project is None or vm.project == project]

    def instance(self, zone: str, name: str, project: Optional[str] = None
                 ) -> Optional[compute_v1.Instance]:
        with self.lock:
            self._tick()
            vm = self._vms.get((project or self.project, zone, name))
            return _copy(vm.instance) if vm else None

    def append_serial(self, zone: str, name: str, text: Union[str, bytes],
                      project: Optional[str] = None) -> None:
        """Write to a VM's serial port 1, as its startup script would."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        with self.lock:
            vm = self._vms.get((project or self.project, zone, name))
            if vm is None:
                raise KeyError(f"no instance {zone}/{name}")
            vm.serial += data
            excess = len(vm.serial) - self.serial_retain_bytes
            if excess > 0:
                del vm.serial[:excess]
                vm.serial_base += excess

    def seed_instance(self, zone: str, instance: compute_v1.Instance,
                      project: Optional[str] = None) -> compute_v1.Instance:
        """Store a VM directly (no request recorded, no validation): state that predates a test."""
        with self.lock:
            vm = self._create_vm(project or self.project, zone, _copy(instance))
            return _copy(vm.instance)

    # ---- internals: instances ---------------------------------------------------------------

    def _create_vm(self, project: str, zone: str, inst: compute_v1.Instance) -> _Vm:
        """Fill in what GCE fills in on insert, and store."""
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        inst.kind = "compute#instance"
        inst.id = next(self._ids)
        inst.self_link = f"{zone_url}/instances/{inst.name}"
        inst.zone = zone_url
        inst.creation_timestamp = _now_ts()
        inst.fingerprint = _fingerprint(self._rng)
        inst.cpu_platform = spec.cpu_platform if spec else "Intel Broadwell"
        inst.start_restricted = False
        inst.deletion_protection = bool(inst.deletion_protection)
        inst.can_ip_forward = bool(inst.can_ip_forward)
        if inst.machine_type:
            inst.machine_type = f"{zone_url}/machineTypes/{_last(inst.machine_type)}"
        if spec and spec.accelerator and not inst.guest_accelerators:
            inst.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=spec.accelerator[0], accelerator_count=spec.accelerator[1])]
        for acc in inst.guest_accelerators:
            acc.accelerator_type = f"{zone_url}/acceleratorTypes/{_last(acc.accelerator_type)}"
        _fill_scheduling(inst.scheduling)
        inst.label_fingerprint = _fingerprint(self._rng)
        inst.metadata.kind = "compute#metadata"
        inst.metadata.fingerprint = _fingerprint(self._rng)
        if inst.tags.items:
            inst.tags.fingerprint = _fingerprint(self._rng)
        for i, disk in enumerate(inst.disks):
            disk.kind, disk.index = "compute#attachedDisk", i
            disk.type_ = disk.type_ or "PERSISTENT"
            disk.mode = disk.mode or "READ_WRITE"
            disk.interface = disk.interface or "SCSI"
            disk_name = disk.initialize_params.disk_name or (
                inst.name if i == 0 else f"{inst.name}-{i}")
            disk.device_name = disk.device_name or f"persistent-disk-{i}"
            created = not disk.source
            disk.source = _full(disk.source or f"zones/{zone}/disks/{disk_name}", project)
            disk.disk_size_gb = disk.disk_size_gb or disk.initialize_params.disk_size_gb or 10
            ref = _disk_ref(disk.source, project)
            rec = self._disks.get(ref) if ref else None
            if rec is None and ref is not None and (created or ref[1] == zone):
                rec = self._new_disk(ref[0], ref[1], ref[2], disk.disk_size_gb,
                                     disk.initialize_params.source_image,
                                     _last(disk.initialize_params.disk_type) or "pd-standard")
            if rec is not None:
                rec.users.append(inst.self_link)
                rec.last_attach_timestamp = _now_ts()
        resolved = self._resolve_interfaces(project, zone, inst, check=False)
        for i, nic in enumerate(inst.network_interfaces):
            nic.kind, nic.name = "compute#networkInterface", f"nic{i}"
            network, subnetwork = resolved[i]
            nic.network = _full(network, project)
            if subnetwork:
                nic.subnetwork = _full(subnetwork, project)
            n = len(self._vms) + 2
            nic.network_i_p = nic.network_i_p or f"10.128.{n // 250}.{n % 250 + 2}"
            nic.stack_type = nic.stack_type or "IPV4_ONLY"
            nic.fingerprint = _fingerprint(self._rng)
            for ac in nic.access_configs:
                ac.kind = "compute#accessConfig"
                ac.type_ = ac.type_ or "ONE_TO_ONE_NAT"
                ac.name = ac.name or "External NAT"
                ac.network_tier = ac.network_tier or "PREMIUM"
                ac.nat_i_p = ac.nat_i_p or f"34.{n % 250}.{(n * 7) % 250}.{(n * 13) % 250 + 1}"
        vm = _Vm(project, zone, inst)
        self._boot(vm)
        self._vms[(project, zone, inst.name)] = vm
        return vm

    def _validate_insert(self, project: str, zone: str, inst: compute_v1.Instance) -> None:
        """Reject what GCE rejects synchronously (HTTP 400), so product bugs surface in tests."""
        if not inst.name:
            raise _invalid("resource.name", "", "Must be specified.")
        if not _NAME_RE.fullmatch(inst.name):
            raise _invalid("resource.name", inst.name,
                           "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if not self.strict:
            return
        offered = ZONES[zone]
        mt = _zonal_ref(inst.machine_type, "machineTypes")
        if mt is None:
            raise _invalid("resource.machineType", inst.machine_type,
                           "Must be a full or partial URL: zones/ZONE/machineTypes/TYPE.")
        if mt[0] != zone or mt[1] not in offered["machine_types"]:
            raise _invalid("resource.machineType", inst.machine_type,
                           f"Machine type with name '{mt[1]}' does not exist in zone '{zone}'.")
        spec = MACHINE_TYPES[mt[1]]
        gpus = 0
        for acc in inst.guest_accelerators:
            ref = _zonal_ref(acc.accelerator_type, "acceleratorTypes")
            if ref is None or ref[0] != zone or ref[1] not in offered["accelerators"]:
                raise _invalid("resource.guestAccelerators[0].acceleratorType",
                               acc.accelerator_type,
                               f"Accelerator type does not exist in zone '{zone}'.")
            if spec.accelerator and (ref[1], acc.accelerator_count) != spec.accelerator:
                raise _invalid("resource.guestAccelerators", acc.accelerator_type,
                               f"Machine type {mt[1]} comes with {spec.accelerator[1]} x "
                               f"{spec.accelerator[0]}.")
            if not spec.accelerator and not mt[1].startswith("n1-"):
                raise _invalid("resource.guestAccelerators", acc.accelerator_type,
                               f"Accelerators are not supported for machine type {mt[1]}.")
            gpus += acc.accelerator_count
        gpus += spec.accelerator[1] if spec.accelerator else 0
        sched = inst.scheduling
        spot = _is_spot(inst)
        if spot and "automatic_restart" in sched and sched.automatic_restart:
            raise _invalid("resource.scheduling.automaticRestart", "true",
                           "Spot and preemptible instances cannot be automatically restarted.")
        if "max_run_duration" in sched:
            mrd = sched.max_run_duration
            seconds = mrd.seconds + mrd.nanos / 1e9
            if not 30 <= seconds <= 120 * 86400:
                raise _invalid("resource.scheduling.maxRunDuration.seconds", mrd.seconds,
                               "Must be between 30 seconds and 120 days (10368000 seconds).")
            if not sched.instance_termination_action:
                raise _invalid("resource.scheduling.instanceTerminationAction", "",
                               "Must be specified when maxRunDuration is set.")
        if sched.provisioning_model == "FLEX_START":
            _check_flex_start(mt[1], sched)
        on_maint = sched.on_host_maintenance or ("TERMINATE" if spot else "MIGRATE")
        if on_maint == "MIGRATE" and (spot or gpus):
            raise ApiError(400, "invalid", "Instances with guest accelerators do not support "
                           "live migration." if gpus else "Spot instances cannot live-migrate; "
                           "onHostMaintenance must be TERMINATE.")
        if len(inst.labels) > 64:
            raise _invalid("resource.labels", len(inst.labels), "At most 64 labels.")
        for k, v in inst.labels.items():
            if not _LABEL_KEY_RE.fullmatch(k) or not _LABEL_VALUE_RE.fullmatch(v):
                raise _invalid("labels", f"{k}={v}", "Label keys must start with a lowercase "
                               "letter; keys and values may contain only lowercase letters, "
                               "digits, '_' and '-', at most 63 characters.")
        seen: set[str] = set()
        total = 0
        for item in inst.metadata.items:
            if not _METADATA_KEY_RE.fullmatch(item.key) or item.key in seen:
                raise _invalid("resource.metadata", item.key, "Invalid or duplicate metadata key.")
            seen.add(item.key)
            size = len(item.key.encode()) + len(item.value.encode())
            if len(item.value.encode()) > 256 * 1024:
                raise _invalid("resource.metadata", item.key, "Metadata value exceeds 256 KB.")
            total += size
        if total > 512 * 1024:
            raise _invalid("resource.metadata", "", "Metadata total size exceeds 512 KB.")
        self._resolve_interfaces(project, zone, inst, check=True)  # networks.py: network, subnet, external IP
        if inst.disks and sum(1 for d in inst.disks if d.boot) != 1:
            raise _invalid("resource.disks", "", "Exactly one boot disk must be specified.")
        for i, d in enumerate(inst.disks):
            self._check_source_image(i, d)
            _check_disk_type(mt[1], i, d)

    def _check_source_image(self, i: int, d: compute_v1.AttachedDisk) -> None:
        """A disk made from an image: the image exists (any project the fake holds images of),
        is READY (a PENDING image cannot be used yet: "resourceNotReady"), and the disk is not
        smaller than it ("Requested disk size cannot be smaller than the image size (N GB)", the
        400 GCE answers, quoted in https://github.com/test-kitchen/kitchen-google/pull/152)."""
        self._ready_images()
        src = d.initialize_params.source_image
        m = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", src or "")
        if not m:
            return
        project, family, name = m.group(1), bool(m.group(2)), m.group(3)
        if project not in ("cos-cloud", self.project) and not any(p == project for p, _n in self._images):
            return  # a public image project the fake does not model: not checked
        image = self._find_image(project, name, family=family)
        if image is None:
            raise _invalid(f"resource.disks[{i}].initializeParams.sourceImage", src,
                           "The referenced image resource cannot be found.")
        if image.status != "READY":
            raise ApiError(400, "resourceNotReady", f"The resource '{_path_of(image.self_link)}' "
                           "is not ready")
        size = d.initialize_params.disk_size_gb
        if size and size < image.disk_size_gb:
            raise _invalid(f"resource.disks[{i}].initializeParams.diskSizeGb", str(size),
                           f"Requested disk size cannot be smaller than the image size "
                           f"({image.disk_size_gb} GB)")

    def _vm(self, project: str, zone: str, name: str) -> _Vm:
        vm = self._vms.get((project, zone, name))
        if vm is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return vm

    # ---- request handlers (called under the lock) -------------------------------------------

    def _h_insert(self, p: str, zone: str, q: dict[str, str], body: bytes) -> Any:
        try:
            inst = compute_v1.Instance.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        self._validate_insert(p, zone, inst)
        if (p, zone, inst.name) in self._vms:
            raise ApiError(409, "alreadyExists",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{inst.name}' "
                           "already exists")
        self._check_disks(p, zone, inst)
        if zone in self.quota_zones:  # membership, not iteration: safe while a test mutates
            raise self._quota_error(zone, inst)
        target = compute_v1.Instance(name=inst.name, id=next(self._ids),
                                     self_link=f"{API}/projects/{p}/zones/{zone}/instances/"
                                               f"{inst.name}")
        refused = self._global_gpu_refusal(p, inst)
        if refused:
            return self._quota_op(p, zone, target, "insert", *refused)
        over = self._quota_exceeded(p, zone, inst)
        if over:
            return self._quota_op(p, zone, target, "insert", over)
        if zone in self.stockout_zones or self.zone_capacity.get(zone, 1) < 1 or \
                (zone in self.spot_stockout_zones and _is_spot(inst)):
            return self._stockout(p, zone, target, "insert")
        vm = self._create_vm(p, zone, inst)
        if zone in self.zone_capacity:
            self.zone_capacity[zone] -= 1
        return self._new_op(p, zone, "insert", vm.instance)

    def _h_get(self, p: str, zone: str, name: str) -> Any:
        return self._vm(p, zone, name).instance

    def _h_delete(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.deletion_protection:
            raise ApiError(400, "resourceInUseByAnotherResource",
                           "Invalid resource usage: 'Resource cannot be deleted if it's "
                           "protected against deletion.'")
        rec = self._op_record(p, zone, self._new_op(p, zone, "delete", vm.instance))
        self._begin_shutdown(vm, "DELETE", rec)
        return self._render_op(rec)

    def _h_stop(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        rec = self._op_record(p, zone, self._new_op(p, zone, "stop", vm.instance))
        if vm.instance.status != "TERMINATED" or vm.shutdown is not None:
            self._begin_shutdown(vm, "STOP", rec)
        return self._render_op(rec)

    def _h_start(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.status == "STOPPING":
            raise ApiError(400, "resourceNotReady",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{name}' is not "
                           "ready")
        if vm.instance.status == "TERMINATED":
            refused = self._global_gpu_refusal(p, vm.instance)
            if refused:
                return self._quota_op(p, zone, vm.instance, "start", *refused)
            over = self._quota_exceeded(p, zone, vm.instance)
            if over:
                return self._quota_op(p, zone, vm.instance, "start", over)
            if zone in self.stockout_zones:
                return self._stockout(p, zone, vm.instance, "start")
            self._boot(vm)
        return self._new_op(p, zone, "start", vm.instance)

    def _h_set(self, rpc: str, p: str, zone: str, name: str, body: bytes) -> Any:
        """setMetadata / setLabels, with GCE's fingerprint check (412 on a stale fingerprint)."""
        vm = self._vm(p, zone, name)
        inst = vm.instance
        doc = json.loads(body or b"{}")
        if rpc == "instances.setMetadata":
            if doc.get("fingerprint") != inst.metadata.fingerprint:
                raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current metadata fingerprint.")
            inst.metadata = compute_v1.Metadata(items=[compute_v1.Items(key=i["key"], value=i.get("value", ""))
                                                       for i in doc.get("items", [])])
            inst.metadata.fingerprint = _fingerprint(self._rng)
            return self._new_op(p, zone, "setMetadata", inst)
        if doc.get("labelFingerprint") != inst.label_fingerprint:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have changed")
        inst.labels.clear()
        inst.labels.update(doc.get("labels", {}))
        inst.label_fingerprint = _fingerprint(self._rng)
        return self._new_op(p, zone, "setLabels", inst)

    def _h_maintenance(self, p: str, zone: str, name: str) -> Any:
        vm = self._vm(p, zone, name)
        if vm.instance.status != "RUNNING":
            raise ApiError(400, "resourceNotReady",
                           f"The resource 'projects/{p}/zones/{zone}/instances/{name}' is not "
                           "ready")
        op = self._new_op(p, zone, "simulateMaintenanceEvent", vm.instance)
        if _is_spot(vm.instance):
            self._preempt(vm)
        elif vm.instance.scheduling.on_host_maintenance == "TERMINATE":
            self._new_op(p, zone, "compute.instances.terminateOnHostMaintenance", vm.instance,
                         user="system", immediate=True)
            if vm.guest_running and self.guest is not None:
                guest, key = self.guest, (p, zone, name)
                self._to_guest(lambda: guest.on_power_off(*key))
                vm.guest_running = False
            self._boot(vm)  # automaticRestart brings it back
        else:
            self._new_op(p, zone, "compute.instances.migrateOnHostMaintenance", vm.instance,
                         user="system", immediate=True)
        return op

    def _h_serial(self, p: str, zone: str, name: str, q: dict[str, str]) -> Any:
        vm = self._vm(p, zone, name)
        port = int(q.get("port", "1") or 1)
        if port not in (1, 2, 3, 4):
            raise _invalid("port", port, "Must be between 1 and 4.")
        buf, base = (vm.serial, vm.serial_base) if port == 1 else (bytearray(), 0)
        end = base + len(buf)
        try:
            start = int(q.get("start", "0") or 0)
        except ValueError as e:
            raise _invalid("start", q.get("start"), "Must be an integer.") from e
        if start < 0:  # "-N": the most recent N bytes
            start = max(end + start, base)
        start = min(max(start, base), end)  # discarded output: moved to the oldest retained byte
        contents = bytes(buf[start - base:]).decode("utf-8", errors="replace")
        return compute_v1.SerialPortOutput(
            kind="compute#serialPortOutput", contents=contents, start=start, next_=end,
            self_link=f"{vm.instance.self_link}/serialPort?port={port}")

    def _h_list(self, p: str, zone: str, q: dict[str, str]) -> Any:
        vms = sorted((vm for (pp, z, _), vm in self._vms.items() if pp == p and z == zone),
                     key=lambda vm: vm.instance.name)
        items, token = _page([vm.instance for vm in vms], q)
        return compute_v1.InstanceList(
            kind="compute#instanceList", id=f"projects/{p}/zones/{zone}/instances", items=items,
            self_link=f"{API}/projects/{p}/zones/{zone}/instances", next_page_token=token)

    def _h_aggregated(self, p: str, q: dict[str, str]) -> Any:
        """One page of every zone's instances. A zone in ``unreachable_zones`` cannot be read:
        without ``returnPartialSuccess=true`` the whole call fails (the reference recommends the
        flag "to prevent failure", https://cloud.google.com/compute/docs/reference/rest/beta/instances/aggregatedList;
        the status of that failure is not documented: modelled as 503 backendError); with it,
        the answer leaves that zone's instances out, names it in ``unreachables`` and gives its
        scope the warning ``UNREACHABLE`` ("A given scope cannot be reached", compute_v1.Warning.Code)."""
        unreachable = {z for z in self.unreachable_zones}
        partial = q.get("returnPartialSuccess", "").lower() == "true"
        if unreachable and not partial:
            raise ApiError(503, "backendError", "The service is currently unavailable: zones "
                           f"{', '.join(sorted(unreachable))} could not be reached.")
        vms = sorted((vm for (pp, z, _), vm in self._vms.items() if pp == p and z not in unreachable),
                     key=lambda vm: (vm.zone, vm.instance.name))
        zone_of = {id(vm.instance): vm.zone for vm in vms}
        items, token = _page([vm.instance for vm in vms], q)
        scoped = {f"zones/{z}": compute_v1.InstancesScopedList() for z in
                  sorted(set(ZONES) | {vm.zone for vm in vms})}
        for inst in items:
            scoped[f"zones/{zone_of[id(inst)]}"].instances.append(inst)
        for scope, lst in scoped.items():
            if scope.split("/", 1)[1] in unreachable:
                lst.warning = compute_v1.Warning(
                    code="UNREACHABLE", message=f"Scope '{scope}' is unreachable.",
                    data=[compute_v1.Data(key="scope", value=scope)])
            elif not lst.instances:
                lst.warning = _no_results(scope)
        return compute_v1.InstanceAggregatedList(
            kind="compute#instanceAggregatedList", id=f"projects/{p}/aggregated/instances",
            items=scoped, self_link=f"{API}/projects/{p}/aggregated/instances",
            next_page_token=token, unreachables=[f"zones/{z}" for z in sorted(unreachable)])
