"""Images and image families (``cos-cloud`` seeded), as ``images.get`` and ``getFromFamily`` serve
them; custom images made from a disk (``images.insert``) and removed (``images.delete``), each
answered with a *global* operation, as GCE does.

Modelled (compute v1 reference, ``images.insert`` / ``images.delete`` / ``Image``):

- ``images.insert`` takes ``sourceDisk`` (a zonal disk that must exist: 404 otherwise). A disk
  attached to an instance that is not TERMINATED is refused with 400
  ``resourceInUseByAnotherResource`` unless ``forceCreate=true`` ("If forceCreate is set to true,
  proceeds even if the disk is attached to a running instance. This may compromise integrity of
  the image!", https://cloud.google.com/compute/docs/samples/compute-images-create).
  The image is ``PENDING``, then ``READY`` after ``image_ready_seconds`` x ``time_scale`` (an
  estimate: Google publishes no figure; the insert operation is DONE at the same moment); its
  ``diskSizeGb`` is the source disk's size. Only a READY image makes disks ("An image can be
  used to create other resources, such as instances, only after the image has been
  successfully created and the status is set to READY", ``Image.status``,
  https://docs.cloud.google.com/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.Image.Types.Status):
  an instance insert from a PENDING one is refused (instances.py ``_check_source_image``). Names, families and labels are checked like an
  instance's (409 for a name that exists).
- ``images.delete``: the image is gone at once (404 if it was not there); disks made from it
  are not affected [E: the reference names no dependency check; the operation's own time is
  not modelled].
- Operations on images are global (``globalOperations.get`` / ``wait``).
- The guest hook ``Guest.on_image_created(project, image, source_disk)`` is told at insert, on
  the fake's guest thread, so a simulated VM's disk can be copied into the image.

Not modelled: sources other than ``sourceDisk`` (501), ``compute.disks.useReadOnly`` on the
source disk, storage locations, deprecation of custom images, image encryption keys.
"""

from __future__ import annotations

import re
import time
from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import ApiError, _copy, _invalid, _not_found, _now_ts
from tests.standins.compute.model import API, _disk_ref, _full, _Op, _page, _path

_IMAGE_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
# Seconds from images.insert to READY (an estimate, scaled by time_scale; no published figure).
IMAGE_READY_SECONDS = 60.0
# What a stored image of a COS boot disk weighs compressed (an estimate: the cos-cloud images
# report ~1.5 GB archiveSizeBytes for a 10 GB disk).
ARCHIVE_FRACTION = 0.15


class ImageRecords:
    """The images part of ``ComputeFake``; runs under its lock."""

    def add_image(self, project: str, name: str, *, family: Optional[str] = None,
                  deprecated: bool = False) -> compute_v1.Image:
        """Register an image; the newest non-deprecated one of a family is what it resolves to."""
        with self.lock:
            image = compute_v1.Image(
                kind="compute#image", id=next(self._ids), name=name,
                self_link=f"{API}/projects/{project}/global/images/{name}",
                creation_timestamp=_now_ts(), status="READY", architecture="X86_64",
                disk_size_gb=10, archive_size_bytes=1_500_000_000,
                description=f"{family or name} image", source_type="RAW",
                labels={}, licenses=[f"{API}/projects/{project}/global/licenses/{family or name}"],
            )
            if family:
                image.family = family
            if deprecated:
                image.deprecated = compute_v1.DeprecationStatus(state="DEPRECATED")
            for (p, _n), older in self._images.items():  # a new release deprecates the old one
                if p == project and family and older.family == family and not older.deprecated.state:
                    older.deprecated = compute_v1.DeprecationStatus(
                        state="DEPRECATED", replacement=image.self_link)
            self._images[(project, name)] = image
            return image

    def images(self, project: Optional[str] = None) -> list[compute_v1.Image]:
        """Copies of every image (the seeded public ones and those made by ``images.insert``)."""
        with self.lock:
            self._ready_images()
            return [_copy(i) for (p, _n), i in self._images.items() if project is None or p == project]

    # ---- internals: custom images -----------------------------------------------------------

    def _ready_images(self) -> None:
        now = time.monotonic()
        for key, at in list(self._image_ready_at.items()):
            if now >= at:
                img = self._images.get(key)
                if img is not None and img.status == "PENDING":
                    img.status = "READY"
                del self._image_ready_at[key]

    def _h_images_insert(self, p: str, q: dict[str, str], body: bytes) -> Any:
        try:
            want = compute_v1.Image.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        if not _IMAGE_NAME_RE.fullmatch(want.name or ""):
            raise _invalid("resource.name", want.name, "Must be a match of regex "
                           "'[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'")
        if want.family and not _IMAGE_NAME_RE.fullmatch(want.family):
            raise _invalid("resource.family", want.family, "Must be a match of regex "
                           "'[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'")
        for k, v in want.labels.items():
            if not _LABEL_KEY_RE.fullmatch(k) or not _LABEL_VALUE_RE.fullmatch(v):
                raise _invalid("labels", f"{k}={v}", "Label keys must start with a lowercase "
                               "letter; keys and values may contain only lowercase letters, "
                               "digits, '_' and '-', at most 63 characters.")
        if (p, want.name) in self._images:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{p}/global/images/"
                           f"{want.name}' already exists")
        if not want.source_disk:
            if want.source_image or want.source_snapshot or want.raw_disk.source:
                raise ApiError(501, "notImplemented", "compute fake: images.insert models "
                               "sourceDisk only")
            raise _invalid("resource.sourceDisk", "", "Must specify a source.")
        ref = _disk_ref(want.source_disk, p)
        disk = self._disks.get(ref) if ref else None
        if disk is None:
            raise _not_found(_path(_full(want.source_disk, p)))
        force = q.get("forceCreate", "").lower() == "true"
        running = [u for u in disk.users if self._user_status(u) != "TERMINATED"]
        if running and not force:
            raise ApiError(400, "resourceInUseByAnotherResource",
                           f"The disk resource '{_path(disk.self_link)}' is already being used by "
                           f"'{_path(running[0])}'")
        ready_in = self.image_ready_seconds * self.time_scale
        image = compute_v1.Image(
            kind="compute#image", id=next(self._ids), name=want.name,
            self_link=f"{API}/projects/{p}/global/images/{want.name}",
            creation_timestamp=_now_ts(), status="PENDING" if ready_in > 0 else "READY",
            architecture="X86_64", disk_size_gb=disk.size_gb,
            archive_size_bytes=int(disk.size_gb * ARCHIVE_FRACTION * (1 << 30)),
            description=want.description, source_type="RAW", source_disk=disk.self_link,
            source_disk_id=str(disk.id), labels=dict(want.labels),
            storage_locations=[ref[1].split("-")[0]],  # type: ignore[index]  # the multi-region: "us"
            label_fingerprint="42WmSpB8rSM=",
        )
        if want.family:
            image.family = want.family
        m = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", disk.source_image or "")
        src = self._find_image(m.group(1), m.group(3), family=bool(m.group(2))) if m else None
        if src is not None:  # the licenses travel with the disk's own image
            image.licenses = list(src.licenses)
        self._images[(p, want.name)] = image
        if ready_in > 0:
            self._image_ready_at[(p, want.name)] = time.monotonic() + ready_in
        guest = self.guest
        hook = getattr(guest, "on_image_created", None)
        if hook is not None:
            source = _path(disk.self_link)
            self._to_guest(lambda: hook(p, want.name, source))
        return self._new_global_op(p, "insert", image.self_link, image.id, ready_in)

    def _user_status(self, user: str) -> str:
        m = re.search(r"projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$", user)
        vm = self._vms.get((m.group(1), m.group(2), m.group(3))) if m else None
        return vm.instance.status if vm else "TERMINATED"

    def _h_images_delete(self, p: str, name: str) -> Any:
        image = self._images.pop((p, name), None)
        if image is None:
            raise _not_found(f"projects/{p}/global/images/{name}")
        self._image_ready_at.pop((p, name), None)
        return self._new_global_op(p, "delete", image.self_link, image.id, 0.0)

    def _new_global_op(self, project: str, op_type: str, target: str, target_id: int,
                       seconds: float) -> compute_v1.Operation:
        """A global operation (no zone), DONE after ``seconds``; kept with the zone ops under
        the zone key "global", which no zone is called."""
        seq = next(self._op_seq)
        name = (f"operation-{int(time.time() * 1000)}-{seq:013x}-"
                f"{self._rng.getrandbits(32):08x}-{self._rng.getrandbits(32):08x}")
        ts = _now_ts()
        op = compute_v1.Operation(
            kind="compute#operation", id=next(self._ids), name=name, operation_type=op_type,
            target_link=target, target_id=target_id, status="DONE", progress=100,
            user=f"fake-user@{project}.iam.gserviceaccount.com", insert_time=ts, start_time=ts,
            end_time=ts, self_link=f"{API}/projects/{project}/global/operations/{name}")
        self._ops[(project, "global", name)] = _Op(project, "global", op, time.monotonic() + seconds)
        return self._render_op(self._ops[(project, "global", name)])

    def _h_global_op(self, p: str, name: str) -> Any:
        rec = self._ops.get((p, "global", name))
        if rec is None:
            raise _not_found(f"projects/{p}/global/operations/{name}")
        return rec

    def _find_image(self, project: str, name: str, *, family: bool) -> Optional[compute_v1.Image]:
        if not family:
            return self._images.get((project, name))
        candidates = [i for (p, _), i in self._images.items()
                      if p == project and i.family == name and i.deprecated.state != "DEPRECATED"]
        return candidates[-1] if candidates else None

    def _h_image(self, p: str, name: str, family: bool) -> Any:
        self._ready_images()
        image = self._find_image(p, name, family=family)
        if image is None:
            what = f"family/{name}" if family else name
            raise _not_found(f"projects/{p}/global/images/{what}")
        return image

    def _h_images_list(self, p: str, q: dict[str, str]) -> Any:
        self._ready_images()
        images = [i for (pp, _), i in self._images.items() if pp == p]
        items, token = _page(images, q)
        return compute_v1.ImageList(kind="compute#imageList", id=f"projects/{p}/global/images",
                                    items=items, next_page_token=token,
                                    self_link=f"{API}/projects/{p}/global/images")
