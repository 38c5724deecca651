"""Resume from the best checkpoint tier: the kept local disk, the primary bucket, or the mirror.

``entrypoint.tiers`` decides which copy is newest; this module puts it in place (nothing to do
for the local disk, ``checkpoints.restore_checkpoints`` for a store) and says what it did, for
the agent's log line and the run's journal.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from entrypoint import tiers
from entrypoint.checkpoints import Restored, _is_syncable, restore_checkpoints
from entrypoint.prestaged import empty_prestaged
from entrypoint.store import Store

log = logging.getLogger("entrypoint.resume")


@dataclass(frozen=True)
class Resumed:
    restored: Restored
    tier: str | None  # None: no checkpoint in any tier
    step: float | None
    skipped: dict[str, str]
    # Files of the local copy that the primary store holds byte for byte (same size and CRC32C
    # in both stamps): a resume from the kept disk need not upload them again.
    in_primary: dict[str, tuple[int, str]] = field(default_factory=dict)

    def detail(self) -> dict[str, object]:
        """The ``checkpoint_restored`` mark's detail: the restore's figures, the tier and step
        (left out when there was nothing anywhere and nothing to say about it: a first start)."""
        if self.tier is None and not self.skipped:
            return self.restored.detail()
        return {**self.restored.detail(), "tier": self.tier, "step": self.step, "skipped": self.skipped}


def resume(local_dir: str, primary: Store, prefix: str, mirror: Store | None, *,
           prestaged_dir: str | None = None, use_local: bool = True) -> Resumed:
    """Put the newest valid copy of the checkpoints in ``local_dir`` (see ``entrypoint.tiers``).

    Without a mirror and without a local stamp this is exactly the restore from the primary it
    always was (an error reading the primary propagates: resuming from nothing when the only copy
    is unreachable would throw away the run's work). With a mirror, an unreachable primary is
    skipped with a log line and the mirror's copy is used.
    """
    started = time.monotonic()
    stores = [(tiers.PRIMARY, primary, prefix)] + ([(tiers.MIRROR, mirror, prefix)] if mirror is not None else [])
    if mirror is None and (not use_local or tiers.read_local_stamp(local_dir) is None):
        done = restore_checkpoints(primary, prefix, local_dir, prestaged_dir=prestaged_dir)
        return Resumed(done, tiers.PRIMARY if done.names else None, None, {})
    found = tiers.gather(local_dir if use_local else None, stores, _is_syncable)
    choice = tiers.choose(found)
    for tier, why in choice.skipped.items():
        log.info("checkpoint tier %s not used: %s", tier, why)
    chosen = choice.chosen
    if chosen is None:
        unreachable = [t for t, why in choice.skipped.items() if why.startswith("unreachable")]
        if tiers.PRIMARY in unreachable and (mirror is None or tiers.MIRROR in unreachable):
            # Every store is down: starting from step 0 would overwrite the stored work later.
            raise OSError(f"no checkpoint tier can be read ({'; '.join(choice.skipped.values())}); "
                          "the run is not started from scratch over its stored checkpoints")
        os.makedirs(local_dir, exist_ok=True)
        return Resumed(Restored([], 0, time.monotonic() - started, 0, 0), None, None, choice.skipped)
    if prestaged_dir and chosen.tier != tiers.PRIMARY and os.path.isdir(prestaged_dir):
        empty_prestaged(prestaged_dir)  # the VM fetched the primary's copy; another tier won
    if chosen.tier == tiers.LOCAL:
        assert chosen.stamp is not None
        names = sorted(prefix + rel for rel in chosen.stamp.files)
        size = sum(int(f["size"]) for f in chosen.stamp.files.values())
        log.info("resuming from the kept local disk at step %s: %d file(s), nothing downloaded",
                 chosen.step, len(names))
        primary_stamp = next((c.stamp for t, c, _ in found if t == tiers.PRIMARY and c is not None), None)
        same = {rel: (int(f["size"]), str(f["crc32c"])) for rel, f in chosen.stamp.files.items()
                if primary_stamp is not None and primary_stamp.files.get(rel) == f}
        return Resumed(Restored(names, size, time.monotonic() - started, 0, 0), tiers.LOCAL, chosen.step,
                       choice.skipped, same)
    store = primary if chosen.tier == tiers.PRIMARY else mirror
    assert store is not None
    if chosen.tier == tiers.MIRROR:
        why = choice.skipped.get(tiers.PRIMARY, "older")
        log.warning("resuming from the mirror %s at step %s; the primary bucket %s was not used: %s",
                    store.url, chosen.step, primary.url, why)
    done = restore_checkpoints(store, prefix, local_dir,
                               prestaged_dir=prestaged_dir if chosen.tier == tiers.PRIMARY else None)
    return Resumed(done, chosen.tier, chosen.step, choice.skipped)
