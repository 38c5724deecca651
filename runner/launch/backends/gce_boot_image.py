"""Which boot image a GCE VM of a run starts from: a READY warm image of the run's key, else cold COS.

A warm image is a COS boot disk saved after ``cos-extensions install gpu`` and ``docker pull``
ran on it (``runner images bake``, runner/build/warm_image.py). COS keeps /var/lib/nvidia and
/var/lib/docker on the stateful partition, so a VM booted from it skips the driver install and
the image pull (docs/research/recovery-timeline.md, section 8, option B). Such an image is only
right for one combination, its *key*: the concrete COS image (the kernel the driver was built
for), the driver version, and the workload image's digest. The image is named after a hash of
the key and labelled with its parts, so one ``images.list`` filtered by labels finds it.

Pure: no I/O here. The backend lists images once per create and hands them to ``choose``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable

WARM_PREFIX = "runner-warm-"
WARM_FAMILY = "cos-spot-runner-warm"
LABEL_WARM = "runner-warm"
LABEL_COS = "runner-cos"
LABEL_DRIVER = "runner-driver"
LABEL_DIGEST = "runner-digest"
DIGEST_LABEL_HEX = 40  # label values hold at most 63 characters: 40 hex of the sha256 suffice
NAME_HASH_HEX = 12
# A COS auto-update replaces the kernel under the baked driver (its modules are built for one
# kernel), so a warm boot turns it off ("Automatic updates", COS docs: set the instance metadata
# cos-update-strategy=update_disabled; https://cloud.google.com/container-optimized-os/docs/concepts/auto-update).
UPDATE_STRATEGY_KEY = "cos-update-strategy"
UPDATE_DISABLED = "update_disabled"
WARM_IMAGES_MODES = ("auto", "off")

_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


def label_safe(value: str) -> str:
    """``value`` as a GCE label value ([a-z0-9_-], at most 63 characters)."""
    return _LABEL_BAD.sub("_", value.lower())[:63]


def driver_label(driver_version: str, gpu_count: int) -> str:
    """The driver part of a key: ``none`` on a VM without GPUs (nothing is installed), else the
    version given to ``cos-extensions install gpu`` or ``default``."""
    if gpu_count <= 0:
        return "none"
    return label_safe(driver_version) if driver_version else "default"


def image_name_of(ref: str) -> str:
    """``projects/P/global/images/NAME`` (or a full URL) → ``NAME``."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class WarmKey:
    """What a warm image is right for: one COS image, one driver, one workload image digest."""

    cos_image: str  # a concrete image name, never a family: the driver is built for its kernel
    driver: str     # driver_label(): "none", "default" or the version
    digest: str     # "sha256:<64 hex>" of the workload image

    def __post_init__(self) -> None:
        if not _DIGEST_RE.fullmatch(self.digest):
            raise ValueError(f"a warm image key needs an image digest sha256:<64 hex>, not {self.digest!r}")

    @classmethod
    def of(cls, vm_image: str, driver_version: str, gpu_count: int, image: str) -> "WarmKey | None":
        """The key of a VM booted from ``vm_image`` (pinned: not a family) for ``image``
        (REPO@sha256:...); None when either still moves (nothing can match it)."""
        if "/family/" in vm_image or "@" not in image:
            return None
        digest = image.rsplit("@", 1)[1]
        if not _DIGEST_RE.fullmatch(digest):
            return None
        return cls(image_name_of(vm_image), driver_label(driver_version, gpu_count), digest)

    @property
    def name(self) -> str:
        """``runner-warm-<12 hex of sha256(key)>``: a valid image name, one per key."""
        text = "\n".join((self.cos_image, self.driver, self.digest))
        return WARM_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:NAME_HASH_HEX]

    @property
    def digest_label(self) -> str:
        return self.digest.removeprefix("sha256:")[:DIGEST_LABEL_HEX]

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_WARM: "1", LABEL_COS: label_safe(self.cos_image), LABEL_DRIVER: self.driver,
                LABEL_DIGEST: self.digest_label}

    @property
    def list_filter(self) -> str:
        """The ``images.list`` filter that finds this key's image (each term in parentheses:
        Compute wants several expressions so)."""
        return f'(labels.{LABEL_WARM} = "1") (labels.{LABEL_DIGEST} = "{self.digest_label}")'

    def describe(self) -> str:
        return f"COS {self.cos_image}, driver {self.driver}, image {self.digest[:19]}"


def warm_filter() -> str:
    """Every warm image this tool made (``runner images list``)."""
    return f'labels.{LABEL_WARM} = "1"'


@dataclass(frozen=True)
class BootImage:
    """The boot image a create uses, and why (``submit --dry-run`` and the plan show it)."""

    source_image: str
    path: str      # "warm" | "cold"
    reason: str
    disk_size_gb: int = 0  # the image's own size: a boot disk may not be smaller (GCE refuses it)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.source_image, "path": self.path, "reason": self.reason}


def choose(key: WarmKey | None, images: Iterable[Any], cold_image: str, project: str) -> BootImage:
    """The READY image named for ``key`` among ``images`` (compute_v1.Image), else ``cold_image``."""
    if key is None:
        return BootImage(cold_image, "cold", "no warm image can match: the COS image or the workload "
                                             "image is not pinned")
    for img in images:
        if img.name != key.name:
            continue
        labels = dict(img.labels)
        if any(labels.get(k) != v for k, v in key.labels.items()):
            continue  # same name, other labels: not ours to trust
        state = str(getattr(img.deprecated, "state", "") or "") if "deprecated" in img else ""
        if state in ("DEPRECATED", "OBSOLETE", "DELETED"):
            # OBSOLETE and DELETED images make no disks; a DEPRECATED one was retired on purpose.
            return BootImage(cold_image, "cold", f"warm image {img.name} is {state}")
        status = str(getattr(img.status, "name", img.status) or "")
        if status != "READY":
            return BootImage(cold_image, "cold", f"warm image {img.name} is {status or 'not ready'} "
                                                 "(a bake is still saving it)")
        return BootImage(f"projects/{project}/global/images/{img.name}", "warm",
                         f"warm image {img.name} holds the driver and the image ({key.describe()})",
                         int(img.disk_size_gb or 0))
    return BootImage(cold_image, "cold", f"no warm image for {key.describe()} "
                                         f"(`runner images bake` makes {key.name})")
