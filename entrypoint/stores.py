"""Opening a store by URL: the one module that knows every implementation.

Kept apart from ``entrypoint.store`` (the interface) so that the interface imports none of its
implementations and ``store_gcs``/``store_local`` import only the interface: no import circle.
"""

from __future__ import annotations

from entrypoint.store import Store, StoreError


def open_store(url: str) -> Store:
    """Open ``gs://BUCKET[/PREFIX]`` or ``file:///DIR`` (a bare path means a directory)."""
    if url.startswith("gs://"):
        from entrypoint.store_gcs import GcsStore

        return GcsStore(url)
    if url.startswith("file://"):
        path = url[len("file://"):]
    elif "://" in url:
        raise StoreError(f"unsupported store URL {url!r}: use gs://BUCKET or file:///DIR")
    else:
        path = url
    from entrypoint.store_local import LocalStore

    return LocalStore(path)
