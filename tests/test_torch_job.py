"""entrypoint.job, the helper a training script imports: atomic saves into the checkpoint
directory, resume-if-present, and the SIGTERM flag. No torch needed: the helper takes the save
and load functions as arguments (pickle here, torch.save/torch.load in examples/torch_train.py).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.job import Checkpoint, PreemptionNotice, report_progress
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _no_runner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RUNNER_CHECKPOINT_DIR", "RUNNER_RESUME_FROM", "RUNNER_RESULTS_DIR"):
        monkeypatch.delenv(k, raising=False)


def test_save_lands_in_the_checkpoint_directory_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    path = Checkpoint("last.pt").save({"step": 3}, pickle.dump)
    assert path == str(tmp_path / "ckpt" / "last.pt")
    assert os.listdir(tmp_path / "ckpt") == ["last.pt"]
    assert pickle.loads(Path(path).read_bytes()) == {"step": 3}


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_whole(tmp_path):
    ckpt = Checkpoint("last.pt", str(tmp_path))
    ckpt.save({"step": 1}, pickle.dump)

    def torn_writer(obj: object, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save({"step": 2}, torn_writer)
    assert ckpt.load(lambda p: pickle.loads(Path(p).read_bytes())) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_load_is_none_on_a_fresh_start_and_reads_where_the_agent_restored(tmp_path, monkeypatch):
    read = lambda p: pickle.loads(Path(p).read_bytes())  # noqa: E731
    monkeypatch.setenv("RUNNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert Checkpoint("last.pt").load(read) is None
    restored = tmp_path / "restored"
    Checkpoint("last.pt", str(restored)).save({"step": 40}, pickle.dump)
    monkeypatch.setenv("RUNNER_RESUME_FROM", str(restored))
    assert Checkpoint("last.pt").load(read) == {"step": 40}


def test_load_passes_its_keyword_arguments_to_the_reader(tmp_path):
    ckpt = Checkpoint("last.pt", str(tmp_path))
    ckpt.save([1], pickle.dump)
    seen = {}
    ckpt.load(lambda p, **kw: seen.update(kw), map_location="cpu", weights_only=True)
    assert seen == {"map_location": "cpu", "weights_only": True}


def test_sigterm_sets_the_preemption_flag_instead_of_killing_the_job():
    code = ("import os, signal, time; from entrypoint.job import PreemptionNotice\n"
            "n = PreemptionNotice.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "deadline = time.time() + 5\n"
            "while not n.requested and time.time() < deadline: time.sleep(0.01)\n"
            "print(n.requested, n.received_at is not None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout.strip()) == (0, "True True"), out.stderr


def test_progress_lines_are_the_ones_the_agent_parses(capsys):
    from entrypoint.progress import parse_progress_line

    report_progress(12, 300, loss="0.5")
    line = capsys.readouterr().out
    assert line == "RUNNER_PROGRESS step=12 total=300 loss=0.5\n"
    assert parse_progress_line(line)["step"] == 12


def test_the_helper_imports_without_torch():
    code = "import sys, entrypoint.job; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
