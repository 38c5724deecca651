"""Images and image families (``cos-cloud`` seeded), as ``images.get`` and ``getFromFamily`` serve them."""

from __future__ import annotations

from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.errors import _not_found, _now_ts
from tests.standins.compute.model import API, _page


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

    def _find_image(self, project: str, name: str, *, family: bool) -> Optional[compute_v1.Image]:
        if not family:
            return self._images.get((project, name))
        candidates = [i for (p, _), i in self._images.items()
                      if p == project and i.family == name and i.deprecated.state != "DEPRECATED"]
        return candidates[-1] if candidates else None

    def _h_image(self, p: str, name: str, family: bool) -> Any:
        image = self._find_image(p, name, family=family)
        if image is None:
            what = f"family/{name}" if family else name
            raise _not_found(f"projects/{p}/global/images/{what}")
        return image

    def _h_images_list(self, p: str, q: dict[str, str]) -> Any:
        images = [i for (pp, _), i in self._images.items() if pp == p]
        items, token = _page(images, q)
        return compute_v1.ImageList(kind="compute#imageList", id=f"projects/{p}/global/images",
                                    items=items, next_page_token=token,
                                    self_link=f"{API}/projects/{p}/global/images")
