"""The second checkpoint tier: the mirror, and the stamps that let a restart pick a tier.

The mirror (``mirror = "gs://OTHER-BUCKET"``, pinned in the run spec) gets each checkpoint
*after* the primary bucket has it: its own thread, woken after each primary pass, publishes only
files whose current signature the primary pass published (``DirectorySync.eligible``), at the
same lowest CPU and I/O priority as the primary's sync. Training never waits for it, and the
primary's passes never wait for the mirror (a slow far-away region only makes the mirror lag).

The lag (``MirrorSync.lag``) is how far the mirror's newest complete copy is behind the
primary's: in steps (the job's reported step when it wrote the files) and in seconds (between
the two copies' newest files). It goes into the heartbeat's ``sync`` as ``mirror``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from entrypoint import tiers
from entrypoint.checkpoints import DirectorySync, lower_thread_priority
from entrypoint.store import Store, StoreError

log = logging.getLogger("entrypoint.mirror")


class Stamper:
    """``DirectorySync.after_pass``: after a pass that published everything it found, write the
    copy's stamp (``entrypoint.tiers``) to the store and, for the primary, to the local disk.

    ``step_at(t)``: the step the job had reported at time ``t`` (None if unknown).
    """

    def __init__(self, sync: DirectorySync, step_at: Callable[[float], float | None], attempt: int,
                 local_dir: str | None = None) -> None:
        self.sync = sync
        self.step_at = step_at
        self.attempt = attempt
        self.local_dir = local_dir
        self.stamp: tiers.Stamp | None = None  # the last one written
        self.failures = 0
        sync.after_pass = self

    def current(self) -> tiers.Stamp | None:
        uploaded = dict(self.sync._uploaded)  # noqa: SLF001 - the signatures the pass published
        files = {rel: {"size": self.sync.published[rel][0], "crc32c": self.sync.published[rel][1]}
                 for rel in uploaded if rel in self.sync.published}
        if not files:
            return None
        written_at = max(sig[2] for sig in uploaded.values()) / 1e9
        return tiers.Stamp(files=files, written_at=written_at, step=self.step_at(written_at), attempt=self.attempt)

    def __call__(self, ok: bool) -> None:
        if not ok:
            return  # a file of this pass is missing from the store: the copy is not complete
        stamp = self.current()
        if stamp is None or (self.stamp is not None and stamp.files == self.stamp.files
                             and stamp.written_at == self.stamp.written_at):
            return
        try:
            tiers.write_store_stamp(self.sync.store, self.sync.prefix, stamp)
            if self.local_dir is not None:
                tiers.write_local_stamp(self.local_dir, stamp)
            self.stamp = stamp
        except (StoreError, OSError) as e:
            self.failures += 1
            log.warning("checkpoint stamp for %s not written (the next pass tries again): %s", self.sync.store.url, e)


class MirrorSync:
    """Publishes to the mirror what the primary has published, in its own low-priority thread."""

    def __init__(self, primary: DirectorySync, primary_stamper: Stamper, mirror_store: Store,
                 step_at: Callable[[float], float | None], attempt: int) -> None:
        self.primary = primary
        self.primary_stamper = primary_stamper
        self.sync = DirectorySync(mirror_store, primary.local_dir, primary.prefix, f"m{attempt}")
        self.sync.eligible = lambda rel, sig: primary._uploaded.get(rel) == sig  # noqa: SLF001
        self.sync.known_crc = self._primary_crc  # the primary read these bytes already
        self.stamper = Stamper(self.sync, step_at, attempt)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        chained = primary.after_pass

        def after_primary(ok: bool) -> None:
            if chained is not None:
                chained(ok)
            self._wake.set()

        primary.after_pass = after_primary

    def _primary_crc(self, rel: str, sig: tuple[int, int, int]) -> str | None:
        known = self.primary.crc_by_sig.get(rel)
        return known[1] if known is not None and known[0] == sig else None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for problem in lower_thread_priority():
            log.info("checkpoint mirror keeps its normal priority (%s)", problem)
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self.sync.sync_once()

    def sync_once(self) -> bool:
        """A pass now, in the caller's thread (the agent's final pass after the job ended)."""
        return self.sync.sync_once()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def lag(self) -> dict[str, object]:
        """The mirror's state for the heartbeat: its own counts, and how far behind the primary."""
        p, m = self.primary_stamper.stamp, self.stamper.stamp
        out: dict[str, object] = {"url": self.sync.store.url, "uploads": self.sync.stats.uploads,
                                  "failures": self.sync.stats.failures, "last_error": self.sync.stats.last_error,
                                  "step": m.step if m else None, "written_at": m.written_at if m else None,
                                  "lag_steps": None, "lag_seconds": None}
        if p is not None:
            if m is None:
                out["lag_seconds"] = None  # nothing mirrored yet: behind by everything
                out["lag_steps"] = p.step
            else:
                out["lag_seconds"] = max(0.0, round(p.written_at - m.written_at, 3))
                if p.step is not None and m.step is not None:
                    out["lag_steps"] = max(0, p.step - m.step)
        return out


def mirror_url_for(spec_mirror: str | None, env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The run's mirror: ``RUNNER_MIRROR`` where the backend set it (the local backend: the spec's
    host path as mounted in the container), else the spec's (pinned at submit; a VM reaches gs://)."""
    return env.get("RUNNER_MIRROR") or spec_mirror or None
