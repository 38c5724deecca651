"""The job's side of the contract, as a library: what a training script imports instead of
re-implementing the rules in the README ("Your job's side of the contract").

    from entrypoint.job import Checkpoint, PreemptionNotice, report_progress

    notice = PreemptionNotice.install()          # SIGTERM sets notice.requested
    ckpt = Checkpoint("last.pt")                 # in $RUNNER_CHECKPOINT_DIR
    state = ckpt.load(torch.load, weights_only=False)   # None on a fresh start
    ...
    ckpt.save(state, torch.save)                 # last.pt.tmp, fsync, rename
    if notice.requested: ckpt.save(...); sys.exit(143)

Why it lives in ``entrypoint/``: every workload image already carries this package (it is the
image's ENTRYPOINT), so a job can import it with nothing more to install, on CPU and CUDA images
alike. Why it takes ``torch.save``/``torch.load`` as arguments instead of importing torch: the
agent must stay standard library plus google-cloud-storage (tests/test_entrypoint_imports.py
checks every import in this package, lazy ones included), and the same two calls then serve any
framework whose save function writes to a file object (``pickle.dump``, ``numpy.save``…).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, Callable, TypeVar

from entrypoint.markers import progress_line

T = TypeVar("T")

# Where the agent puts checkpoints when the job runs under it; a job run by hand (no agent) uses
# ./checkpoints, so the same script works on a laptop.
DEFAULT_CHECKPOINT_DIR = "./checkpoints"


def checkpoint_dir() -> str:
    """``$RUNNER_CHECKPOINT_DIR`` (set by the agent), else ./checkpoints."""
    return os.environ.get("RUNNER_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR


def results_dir() -> str:
    """``$RUNNER_RESULTS_DIR`` (uploaded to ``runs/ID/results/`` at the end), else ./results."""
    return os.environ.get("RUNNER_RESULTS_DIR") or "./results"


class Checkpoint:
    """One checkpoint file (``last.pt``) in the checkpoint directory, saved atomically.

    The agent uploads every new or changed file in the checkpoint directory while the job runs.
    A file rewritten in place can be caught half-written; one written to ``NAME.tmp`` (never
    uploaded) and renamed cannot, so ``save`` always does the latter.
    """

    def __init__(self, name: str = "last.pt", directory: str | None = None) -> None:
        self.directory = directory or checkpoint_dir()
        self.path = os.path.join(self.directory, name)

    def save(self, obj: Any, writer: Callable[[Any, Any], object]) -> str:
        """Write ``obj`` with ``writer(obj, binary_file)`` (e.g. ``torch.save``) to ``NAME.tmp``,
        flush it to disk, then rename it over ``NAME``; returns the path.

        A crash at any point leaves either the previous checkpoint or the new one, never a mix.
        """
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                writer(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            # The previous checkpoint is untouched; drop the partial one so that it is not
            # mistaken for anything (the agent never uploads *.tmp either way).
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)  # the rename itself survives a power loss
        return self.path

    def load(self, reader: Callable[..., T], **kwargs: Any) -> T | None:
        """``reader(path, **kwargs)`` (e.g. ``torch.load``) if the checkpoint exists, else None.

        Looks in ``$RUNNER_RESUME_FROM`` when the agent restored a checkpoint, else in the
        checkpoint directory (a job run by hand resumes from what it left there).
        """
        directory = os.environ.get("RUNNER_RESUME_FROM") or self.directory
        path = os.path.join(directory, os.path.basename(self.path))
        if not os.path.exists(path):
            if os.environ.get("RUNNER_RESUME_FROM"):
                # The agent restored something, but not this file: starting over silently would
                # redo (and overwrite) finished work, so say so loudly.
                print(f"entrypoint.job: RUNNER_RESUME_FROM={directory} has no {os.path.basename(path)}; "
                      "starting from scratch", file=sys.stderr, flush=True)
            return None
        return reader(path, **kwargs)


class ShardedCheckpoint:
    """This rank's shard of a sharded checkpoint (FSDP, ZeRO: each rank holds a different part).

    ``save(step, shard, torch.save)`` writes ``shards/step-N/rank-R-of-W`` atomically; each node's
    agent uploads its own ranks' shards, and rank 0's agent marks step N committed once all W
    shards are stored (``entrypoint.shards``). ``load(torch.load)`` returns ``(step, shard)`` of the
    newest *committed* step (a preemption that landed between two ranks' saves never leaves a
    step with a shard missing to resume from), or None on a fresh start. Only the newest ``keep``
    steps stay on the local disk.

        ckpt = ShardedCheckpoint(dist.get_rank(), dist.get_world_size())
        found = ckpt.load(torch.load, weights_only=True)
        ...
        ckpt.save(step, {"model": sharded_state_dict, ...}, torch.save)
    """

    def __init__(self, rank: int, world: int, directory: str | None = None, keep: int = 2) -> None:
        from entrypoint.shards import shard_file

        self.rank, self.world, self.keep = rank, world, max(1, keep)
        self.directory = directory or checkpoint_dir()
        self.name = shard_file(rank, world)  # checks the rank

    def save(self, step: int, obj: Any, writer: Callable[[Any, Any], object]) -> str:
        """Write this rank's shard of ``step`` (``Checkpoint.save``'s atomic write); returns its path."""
        from entrypoint.shards import step_dir

        path = Checkpoint(self.name, os.path.join(self.directory, step_dir(step))).save(obj, writer)
        for old in self._steps(self.directory)[:-self.keep]:  # the disk holds `keep` steps
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.directory, step_dir(old), self.name))
        return path

    def load(self, reader: Callable[..., T], **kwargs: Any) -> tuple[int, T] | None:
        """``(step, reader(path, **kwargs))`` of the newest committed step, None if there is none."""
        from entrypoint.shards import COMMITTED, step_dir

        directory = os.environ.get("RUNNER_RESUME_FROM") or self.directory
        for step in reversed(self._steps(directory)):
            where = os.path.join(directory, step_dir(step))
            if not os.path.exists(os.path.join(where, COMMITTED)):
                continue  # some rank's shard of it never reached the store: not resumable
            path = os.path.join(where, self.name)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"step {step} is committed but has no {self.name} in {where}: it was saved by a world "
                    f"of another size than {self.world} ({', '.join(sorted(os.listdir(where)))})")
            return step, reader(path, **kwargs)
        return None

    @staticmethod
    def _steps(directory: str) -> list[int]:
        """The steps with a folder under ``directory``/shards, oldest first."""
        from entrypoint.shards import SHARDS_DIR

        try:
            names = os.listdir(os.path.join(directory, SHARDS_DIR))
        except FileNotFoundError:
            return []
        return sorted(int(n[5:]) for n in names if n.startswith("step-") and n[5:].isdigit())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # fsync on a directory is unsupported there; atomicity does not depend on it
    finally:
        os.close(fd)


class PreemptionNotice:
    """Turns SIGTERM (the agent forwards the VM's preemption notice) into a flag.

    The handler only sets the flag: the training loop checks ``requested`` between steps, where
    the state is consistent, checkpoints and exits. The agent kills the job 60% of the grace
    period after SIGTERM (15 s with the default 25 s), so a step plus a save must fit in that.
    """

    def __init__(self) -> None:
        self.requested = False
        self.received_at: float | None = None

    @classmethod
    def install(cls, signals: tuple[int, ...] = (signal.SIGTERM,)) -> "PreemptionNotice":
        """A notice whose flag these signals set (SIGTERM by default; add SIGINT for Ctrl-C)."""
        notice = cls()
        for sig in signals:
            signal.signal(sig, notice._on_signal)
        return notice

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.received_at = time.time()
        self.requested = True


def report_progress(step: int, total: int | None = None, **fields: object) -> None:
    """Print the progress line the agent parses (``RUNNER_PROGRESS step=N total=T …``).

    The stall watchdog restarts a run whose progress stops changing, so call it every step.
    """
    print(progress_line(step, total, **fields), flush=True)
