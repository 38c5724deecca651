"""Holding an attempt's create claim while the create runs (see entrypoint/record/create_claim.py).

A create can outlive a pass's usual pace by minutes (a GCE zone walk: each zone's operation can
take tens of seconds). While it runs, a thread renews the claim's lease, so no other supervisor
judges the attempt lost and starts the next one beside it; before each insert the backend asks
``check``, which refuses once this process may have lost the claim (a renewal was refused: another
supervisor took it over; or no renewal landed within the lease: this process was frozen or the
store unreachable for that long, and a takeover may be under way). The walk then stops instead
of inserting a VM that another creator may be inserting too.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from entrypoint.record.create_claim import CreateClaim, CreateClaims
from runner.launch.backends.base import CreateClaimLost


class CreateLease:
    """Renews ``claim`` every ``every`` seconds until the ``with`` block ends."""

    def __init__(self, claims: CreateClaims, claim: CreateClaim, now: Callable[[], float],
                 every: float) -> None:
        self.claims = claims
        self._claim = claim
        self.now = now
        self.every = max(0.05, every)
        self._lock = threading.Lock()
        self._lost = False
        self._renewed_mono = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"runner-lease-{claims.run_id}-{claim.attempt}")

    @property
    def claim(self) -> CreateClaim:
        """The claim as last written by us (its generation is what the next write must match)."""
        with self._lock:
            return self._claim

    @property
    def lost(self) -> bool:
        with self._lock:
            return self._lost or time.monotonic() - self._renewed_mono > self._claim.lease_s

    def check(self, zone: str) -> None:
        """Before an insert in ``zone``: raise ``CreateClaimLost`` if the claim may not be ours."""
        if self.lost:
            raise CreateClaimLost(
                f"attempt {self._claim.attempt} of {self.claims.run_id}: this supervisor's create "
                f"claim lapsed before the insert in {zone}; the supervisor that took it over creates")

    def __enter__(self) -> "CreateLease":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew_loop(self) -> None:
        while not self._done.wait(self.every):
            with self._lock:
                if self._lost:
                    return
                claim = self._claim
            try:
                renewed = self.claims.renew(claim, self.now())
            except Exception:  # noqa: BLE001 - the store is unreachable: try again; ``lost`` counts the time
                continue
            with self._lock:
                if renewed is None:
                    self._lost = True  # another supervisor took the claim over
                    return
                self._claim = renewed
                self._renewed_mono = time.monotonic()
