"""The claim on creating one attempt's instances (``attempts/<N>/create.json``), with a lease.

Why a lease: creating an attempt can take minutes (a GCE zone walk: each zone's insert operation
can take tens of seconds, and every zone may be out of capacity). A claim that only said *when*
it was taken made a second supervisor, one create-grace later, see "claimed, no instance" and
declare the attempt vanished while the first was still walking zones: two VMs. Now the holder
renews the claim while its create is in flight (``status: creating``), and nothing may judge an
attempt lost while that lease runs; only a claim whose create *finished* (``created``) can be
judged by a missing instance. A holder that died mid-create lets its lease lapse: the next
supervisor takes the claim over in the **same round**, so it re-sends the same inserts with the
same request ids and GCE itself deduplicates what the dead holder already sent.

Rounds: a create that failed with nothing made (every zone out of capacity) is ``released``; the
next claim starts a new round, so its requests get fresh ids (GCE answers a replayed request id
with the first operation, for an hour: a stockout would be replayed instead of retried).

Every write is a compare-and-swap on the claim object's generation, so exactly one actor holds
a round at a time. A claim written by an older supervisor (``{"time", "actor"}`` only) reads as
``legacy``: judged as before, by its age. Times are the writer's own clock; a lease is judged
against the reader's clock, so the lease (minutes) must stay well above any clock skew.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from entrypoint.record.damaged import build, load_object
from entrypoint.record.documents import utcnow
from entrypoint.record.paths import RunPaths, run_prefix
from entrypoint.store import PreconditionFailed, Store

CREATING = "creating"  # a create is (or may be) in flight: its holder renews the lease
CREATED = "created"  # the create returned instances: from now on, a missing instance is lost
RELEASED = "released"  # the create failed with nothing made: the next claim starts a new round
LEGACY = "legacy"  # written by an older supervisor: no status, no lease
DEFAULT_LEASE_S = 120.0  # the shortest lease (``runner.launch.recovery.create_lease``)


@dataclass(frozen=True)
class CreateClaim:
    """One attempt's create claim as stored, plus the generation it was read at."""

    attempt: int
    actor: str
    time: float  # when this round was claimed: when the machine may begin to exist (cost)
    round: int = 1
    status: str = LEGACY
    renewed: float = 0.0  # the holder's last lease renewal (its clock)
    lease_s: float = 0.0
    instances: tuple[dict[str, Any], ...] = ()  # what the create made: name, zone, rank
    created_at: float | None = None
    generation: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"time": self.time, "actor": self.actor, "round": self.round,
                               "status": self.status, "renewed": self.renewed, "lease_s": self.lease_s}
        if self.instances:
            doc["instances"] = list(self.instances)
        if self.created_at is not None:
            doc["created_at"] = self.created_at
        return doc

    @classmethod
    def from_dict(cls, attempt: int, doc: dict[str, Any], generation: int) -> "CreateClaim":
        return cls(
            attempt=attempt, actor=str(doc.get("actor") or "?"), time=float(doc.get("time") or 0.0),
            round=int(doc.get("round") or 1), status=str(doc.get("status") or LEGACY),
            renewed=float(doc.get("renewed") or doc.get("time") or 0.0),
            lease_s=float(doc.get("lease_s") or 0.0),
            instances=tuple(i for i in doc.get("instances") or () if isinstance(i, dict)),
            created_at=None if doc.get("created_at") is None else float(doc["created_at"]),
            generation=generation,
        )

    # ---- how a reader judges it ----
    def in_flight(self, now: float) -> bool:
        """A create may still be running: its holder renewed the lease within the lease time."""
        return self.status == CREATING and now - self.renewed <= self.lease_s

    def abandoned(self, now: float) -> bool:
        """A create was running and its holder stopped renewing (died, was killed): take it over."""
        return self.status == CREATING and now - self.renewed > self.lease_s

    def finished_at(self) -> float | None:
        """When the create is known to have finished (instances made), if it is."""
        if self.status == CREATED:
            return self.created_at if self.created_at is not None else self.renewed
        if self.status == LEGACY:
            return self.time  # an older supervisor's claim: judged by its age, as it was then
        return None

    def request_key(self, store_url: str, run_id: str) -> str:
        """What makes this round's insert request ids: the same for a takeover, new per round,
        and never the same for a run of the same id in another store (GCE would answer that
        store's insert with this one's VM)."""
        return f"{store_url}|{run_id}/{self.attempt}/{self.round}"


def billed_from(claim: CreateClaim | None) -> float | None:
    """When the attempt's machine may have begun to exist, for its cost: the claim of the round
    whose create ran (a released claim made nothing; no claim: not known from the claim)."""
    return claim.time if claim is not None and claim.status != RELEASED else None


class CreateClaims:
    """Reads and writes the create claims of one run (every write a compare-and-swap)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def _name(self, attempt: int) -> str:
        return run_prefix(self.run_id) + RunPaths.claim_name(attempt)

    def read(self, attempt: int) -> CreateClaim | None:
        blob = self.store.read(self._name(attempt))
        if blob is None:
            return None
        name = self._name(attempt)
        return build(name, load_object(name, blob.data),
                     lambda doc: CreateClaim.from_dict(attempt, doc, blob.generation))

    def _write(self, claim: CreateClaim, if_generation_match: int) -> CreateClaim:
        gen = self.store.write(self._name(claim.attempt), json.dumps(claim.to_dict()).encode(),
                               if_generation_match=if_generation_match)
        return replace(claim, generation=gen)

    def take(self, attempt: int, actor: str, lease_s: float, now: float | None = None) -> CreateClaim | None:
        """Claim creating ``attempt``: a first claim, a new round after a released one, or a
        takeover (same round) of one whose holder stopped renewing. None: someone else holds it,
        or its create finished."""
        now = utcnow() if now is None else now
        cur = self.read(attempt)
        fresh = CreateClaim(attempt=attempt, actor=actor, time=now, status=CREATING, renewed=now, lease_s=lease_s)
        try:
            if cur is None:
                return self._write(fresh, 0)
            if cur.status == RELEASED:
                return self._write(replace(fresh, round=cur.round + 1), cur.generation)
            if cur.abandoned(now):
                # Same round (same request ids): the dead holder's inserts that GCE already
                # accepted are answered with their first operation. Its machine may exist since
                # the first claim, so that stays the time it is billed from; the lease restarts.
                return self._write(replace(fresh, round=cur.round, time=cur.time), cur.generation)
        except PreconditionFailed:
            return None  # another actor claimed or renewed in between
        return None

    def renew(self, claim: CreateClaim, now: float | None = None) -> CreateClaim | None:
        """Extend the lease of a claim we hold; None if it is no longer ours (taken over)."""
        try:
            return self._write(replace(claim, renewed=utcnow() if now is None else now), claim.generation)
        except PreconditionFailed:
            return None

    def mark_created(self, claim: CreateClaim, instances: list[dict[str, Any]],
                     now: float | None = None) -> CreateClaim | None:
        """The create returned: from now on a missing instance means the attempt was lost."""
        now = utcnow() if now is None else now
        try:
            return self._write(replace(claim, status=CREATED, instances=tuple(instances), created_at=now,
                                       renewed=now), claim.generation)
        except PreconditionFailed:
            return None

    def release(self, claim: CreateClaim) -> bool:
        """The create failed and made nothing: the next claim may start a new round."""
        try:
            self._write(replace(claim, status=RELEASED), claim.generation)
            return True
        except PreconditionFailed:
            return False
