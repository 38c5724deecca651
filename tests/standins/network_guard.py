"""Refuse every host but loopback while a stand-in is in use: no test may reach Google."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator, TypeVar



class ExternalNetworkBlocked(RuntimeError):
    """Something tried to resolve a non-loopback host while the compute fake was in use."""


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


@contextmanager
def block_external_network() -> Iterator[list[str]]:
    """Refuse name resolution of anything but loopback; yields the list of blocked hosts.

    Every TCP client (requests/urllib3, http.client, google.auth's metadata probe) resolves its
    host through ``socket.getaddrinfo`` first, so this catches a client built with the default
    endpoint (``compute.googleapis.com``), a metadata-server probe (169.254.169.254) and token
    refreshes alike. The attempt raises, and is also recorded so a caller that swallows the
    exception (retry loops, google.auth's "am I on GCE?" check) still fails the test.
    Metadata env vars point at a closed loopback port so credential discovery fails fast.
    """
    blocked: list[str] = []
    original = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and h not in _LOOPBACK and not str(h).startswith("127."):
            blocked.append(str(h))
            raise ExternalNetworkBlocked(f"test tried to reach {h!r}; only the local compute "
                                         "fake (127.0.0.1) may be contacted")
        return original(host, *args, **kwargs)

    env = {"GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
           "NO_GCE_CHECK": "True"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    socket.getaddrinfo = guarded  # type: ignore[assignment]
    try:
        yield blocked
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


StandIn = TypeVar("StandIn")


@contextmanager
def guarded_stand_in(running: ContextManager[StandIn], what: str) -> Iterator[StandIn]:
    """A stand-in for one test, with the external network blocked; afterwards the test fails on any
    request that tried to leave this machine, or any crash of the stand-in itself (its
    ``internal_errors``), even where the code under test swallowed the error."""
    with block_external_network() as blocked, running as stand_in:
        yield stand_in
    if blocked:
        import pytest

        pytest.fail(f"requests escaped towards real endpoints: {sorted(set(blocked))}")
    if stand_in.internal_errors:  # type: ignore[attr-defined]
        import pytest

        pytest.fail(f"the {what} crashed: {stand_in.internal_errors}")  # type: ignore[attr-defined]
