"""Training first: the background checkpoint upload runs below the job's priority (issue 10 §7).

Asserted on what the kernel reports for the sync thread (/proc and ioprio_get), and on the
upload still happening, not on which functions were called.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import pytest

from entrypoint.checkpoints import BackgroundSync, DirectorySync
from entrypoint.store_local import LocalStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux")

_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def _nice_of(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def _ioprio_of(tid: int) -> tuple[int, int]:
    nr = _IOPRIO_GET.get(os.uname().machine)
    if nr is None:
        pytest.skip(f"ioprio_get syscall number unknown on {os.uname().machine}")
    value = ctypes.CDLL(None, use_errno=True).syscall(nr, 1, tid)
    assert value >= 0, os.strerror(ctypes.get_errno())
    return value >> 13, value & 0xFF


def test_the_sync_thread_runs_at_the_lowest_priority_and_still_uploads(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"x" * 4096)
    store = LocalStore(str(tmp_path / "store"))
    bg = BackgroundSync(DirectorySync(store, str(ckpt), "runs/r/checkpoints/"), 0.05)
    bg.start()
    try:
        deadline = time.time() + 10
        while store.stat("runs/r/checkpoints/last.pt") is None and time.time() < deadline:
            time.sleep(0.05)
        assert store.stat("runs/r/checkpoints/last.pt") is not None, "the low-priority sync never uploaded"
        tid = bg._thread.native_id
        assert tid is not None
        assert _nice_of(tid) == 19
        assert _ioprio_of(tid) == (2, 7)  # best-effort class, lowest level
    finally:
        bg.stop(timeout=5)
    # Only the sync thread: the agent's own thread (final sync, heartbeats) keeps its priority.
    assert _nice_of(os.getpid()) < 19


def test_the_job_shares_the_agents_session_so_the_low_priority_counts(tmp_path: Path) -> None:
    """With autogroup (most distributions), a new session is a new scheduling group that gets
    as much CPU as the agent's whole group, whatever the sync thread's nice value: the job must
    stay in the agent's session, in a process group of its own (signals reach all its children)."""
    from tests.test_agent_start_failure import _agent

    probe = ("import os; print('same-session', os.getsid(0) == os.getsid(os.getppid()), "
             "'own-group', os.getpgid(0) == os.getpid())")
    p, run = _agent(tmp_path, sys.executable, "-c", probe)
    assert p.returncode == 0, p.stderr
    assert "same-session True own-group True" in (run / "logs/1.log").read_text()
