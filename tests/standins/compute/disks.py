"""Persistent disks: created with their instance or on their own, attached and detached, and
released (or kept, ``autoDelete=false``) when their instance goes."""

from __future__ import annotations

import re
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import ApiError, _copy, _invalid, _not_found, _now_ts
from tests.standins.compute.instances import _NAME_RE
from tests.standins.compute.model import API, _disk_ref, _fingerprint, _full, _last, _page, _path, _Vm


class DiskRecords:
    """The disks part of ``ComputeFake``; runs under its lock."""

    def disks(self, project: Optional[str] = None) -> list[compute_v1.Disk]:
        """Copies of every disk, attached or not: a leaked disk shows here with no ``users``."""
        with self.lock:
            self._tick()
            return [_copy(d) for (pp, _z, _n), d in sorted(self._disks.items())
                    if project is None or pp == project]

    def add_disk(self, zone: str, name: str, size_gb: int = 100,
                 project: Optional[str] = None) -> compute_v1.Disk:
        """Create a blank disk, as ``gcloud compute disks create`` would."""
        with self.lock:
            return _copy(self._new_disk(project or self.project, zone, name, size_gb, ""))

    def _new_disk(self, project: str, zone: str, name: str, size_gb: int, source_image: str,
                  disk_type: str = "pd-standard") -> compute_v1.Disk:
        zone_url = f"{API}/projects/{project}/zones/{zone}"
        disk = compute_v1.Disk(
            kind="compute#disk", id=next(self._ids), name=name, zone=zone_url,
            size_gb=int(size_gb), status="READY", creation_timestamp=_now_ts(),
            type_=f"{zone_url}/diskTypes/{disk_type}", self_link=f"{zone_url}/disks/{name}",
            label_fingerprint=_fingerprint(self._rng))
        if source_image:
            disk.source_image = _full(source_image, project)
        self._disks[(project, zone, name)] = disk
        return disk

    def _check_disks(self, project: str, zone: str, inst: compute_v1.Instance,
                     only: Optional[int] = None) -> None:
        """What GCE refuses about an instance's disks (or disk ``only``), before any change."""
        for i, d in enumerate(inst.disks):
            if only is not None and i != only:
                continue
            if d.source:
                ref = _disk_ref(d.source, project)
                if ref is None:
                    raise _invalid(f"resource.disks[{i}].source", d.source,
                                   "Must be a full or partial URL: zones/ZONE/disks/NAME.")
                if ref[1] != zone:
                    raise _invalid(f"resource.disks[{i}].source", d.source, f"Disk must be in "
                                   f"the same zone as the instance ('{zone}').")
                disk = self._disks.get(ref)
                if disk is None:
                    raise _not_found(f"projects/{ref[0]}/zones/{ref[1]}/disks/{ref[2]}")
                writers = [u for u in disk.users if self._attached_mode(u, disk) == "READ_WRITE"]
                if disk.users and ((d.mode or "READ_WRITE") == "READ_WRITE" or writers):
                    raise ApiError(400, "resourceInUseByAnotherResource",
                                   f"The disk resource 'projects/{ref[0]}/zones/{ref[1]}/disks/"
                                   f"{ref[2]}' is already being used by "
                                   f"'{_path(disk.users[0])}'")
            else:
                name = d.initialize_params.disk_name or (
                    inst.name if i == 0 else f"{inst.name}-{i}")
                if (project, zone, name) in self._disks:
                    raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/zones/"
                                   f"{zone}/disks/{name}' already exists")

    def _attached_mode(self, user: str, disk: compute_v1.Disk) -> str:
        m = re.search(r"projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$", user)
        vm = self._vms.get((m.group(1), m.group(2), m.group(3))) if m else None
        for d in vm.instance.disks if vm else []:
            if d.source == disk.self_link:
                return d.mode or "READ_WRITE"
        return "READ_WRITE"

    def _release_disks(self, vm: _Vm) -> None:
        """The VM is deleted: detach its disks, and delete those marked ``autoDelete``."""
        for d in vm.instance.disks:
            ref = _disk_ref(d.source, vm.project)
            disk = self._disks.get(ref) if ref else None
            if disk is None:
                continue
            if vm.instance.self_link in disk.users:
                disk.users.remove(vm.instance.self_link)
            disk.last_detach_timestamp = _now_ts()
            if d.auto_delete and not disk.users:
                del self._disks[ref]  # type: ignore[arg-type]

    def _h_attach(self, p: str, zone: str, name: str, q: dict[str, str], body: bytes) -> Any:
        """attachDisk (an existing disk, by ``source``) and detachDisk (by ``deviceName``)."""
        vm = self._vm(p, zone, name)
        inst = vm.instance
        if q.get("deviceName") is not None or body in (b"", b"{}"):  # detachDisk
            device = q.get("deviceName", "")
            att = next((d for d in inst.disks if d.device_name == device), None)
            if att is None:
                raise _invalid("deviceName", device, f"No attached disk found with device name "
                               f"'{device}'.")
            if att.boot:
                raise ApiError(400, "invalid", "The boot disk cannot be detached while the "
                               "instance exists.")
            ref = _disk_ref(att.source, p)
            disk = self._disks.get(ref) if ref else None
            if disk is not None and inst.self_link in disk.users:
                disk.users.remove(inst.self_link)
                disk.last_detach_timestamp = _now_ts()
            inst.disks = [d for d in inst.disks if d.device_name != device]
            return self._new_op(p, zone, "detachDisk", inst)
        try:
            att = compute_v1.AttachedDisk.from_json(body, ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        if not att.source:
            raise _invalid("resource.source", "", "Must be specified.")
        probe = compute_v1.Instance(name=inst.name, disks=[att])
        self._check_disks(p, zone, probe, only=0)
        index = len(inst.disks)
        att.kind, att.index = "compute#attachedDisk", index
        att.type_, att.mode = att.type_ or "PERSISTENT", att.mode or "READ_WRITE"
        att.device_name = att.device_name or f"persistent-disk-{index}"
        if any(d.device_name == att.device_name for d in inst.disks):
            raise _invalid("resource.deviceName", att.device_name, "Device name is already in "
                           "use on this instance.")
        att.source = _full(att.source, p)
        ref = _disk_ref(att.source, p)
        disk = self._disks[ref]  # type: ignore[index]
        att.disk_size_gb = disk.size_gb
        disk.users.append(inst.self_link)
        disk.last_attach_timestamp = _now_ts()
        inst.disks.append(att)
        return self._new_op(p, zone, "attachDisk", inst)

    def _h_disks(self, rpc: str, p: str, zone: str, name: str, q: dict[str, str],
                 body: bytes) -> Any:
        if rpc == "disks.list":
            disks = [d for (pp, z, _), d in sorted(self._disks.items()) if pp == p and z == zone]
            items, token = _page(disks, q)
            return compute_v1.DiskList(kind="compute#diskList", items=items, next_page_token=token,
                                       id=f"projects/{p}/zones/{zone}/disks",
                                       self_link=f"{API}/projects/{p}/zones/{zone}/disks")
        if rpc == "disks.insert":
            try:
                want = compute_v1.Disk.from_json(body or b"{}", ignore_unknown_fields=True)
            except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
                raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
            if not _NAME_RE.fullmatch(want.name or ""):
                raise _invalid("resource.name", want.name, "Must be a match of regex "
                               "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
            if (p, zone, want.name) in self._disks:
                raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/zones/{zone}/"
                               f"disks/{want.name}' already exists")
            disk = self._new_disk(p, zone, want.name, want.size_gb or 10, want.source_image,
                                  _last(want.type_) or "pd-standard")
            return self._new_op(p, zone, "insert", compute_v1.Instance(
                name=disk.name, id=disk.id, self_link=disk.self_link))
        disk = self._disks.get((p, zone, name))
        if disk is None:
            raise _not_found(f"projects/{p}/zones/{zone}/disks/{name}")
        if rpc == "disks.get":
            return disk
        if disk.users:  # disks.delete
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"The disk resource 'projects/{p}/zones/{zone}/disks/{name}' is already "
                           f"being used by '{_path(disk.users[0])}'")
        del self._disks[(p, zone, name)]
        return self._new_op(p, zone, "delete", compute_v1.Instance(
            name=disk.name, id=disk.id, self_link=disk.self_link))
