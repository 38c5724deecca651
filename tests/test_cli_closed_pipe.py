"""`runner … | head`: when the reader of stdout leaves early, the CLI ends quietly, as Unix tools do.

A shell shows 141 (128 + SIGPIPE) for a producer whose reader left (`seq 1 10000 | head -1;
echo ${PIPESTATUS[0]}` says 141: https://relentlesscoding.com/posts/prevent-exit-when-sigpipe-received-and-pipefail-set),
and nothing is printed about it. Python raises BrokenPipeError instead
(https://docs.python.org/3/library/signal.html#note-on-sigpipe). The real CLI in a subprocess,
against a local store holding a run with a 6 MB log (far more than a pipe holds, so the reader is
gone while the command is still writing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from tests.conftest import ROOT

LOG = b"".join(b"line %d of the job's output\n" % i for i in range(200_000))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "store").mkdir()
    store = LocalStore(str(tmp_path / "store"))
    rec = RunRecord(store, "r1")
    rec.write_spec(RunSpec(run_id="r1", image="img", command=["train"], backend="local"))
    rec.create_state("submit")
    rec.transition(State.PROVISIONING, "supervisor", attempt=1)
    store.write(rec.name(RunRecord.log_name(1)), LOG)
    (tmp_path / "none.toml").write_text("")
    return {**os.environ, "PYTHONPATH": str(ROOT), "RUNNER_STORE": f"file://{tmp_path / 'store'}",
            "RUNNER_BACKEND": "local", "RUNNER_CONFIG": str(tmp_path / "none.toml")}


def _into_a_pipe_already_closed(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """The reader closes before the first byte: every write meets a closed pipe, on any machine."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, stdout=w,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [(), ("--json",), ("--attempt", "1")])
def test_a_reader_that_closed_its_end_ends_logs_quietly_with_the_status_of_a_unix_tool(env, args):
    out = _into_a_pipe_already_closed(env, "ops", "logs", "--run-id", "r1", *args)
    assert out.stderr == b""
    assert out.returncode == 141


def test_logs_into_head_ends_quietly_and_a_pipefail_shell_sees_what_it_sees_for_seq(env):
    script = ("set -o pipefail; seq 1 10000000 | head -1 >/dev/null; echo seq=$?; "
              f"{sys.executable} -m runner.cli ops logs --run-id r1 | head -1; echo runner=$?")
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, timeout=120)
    assert out.stderr == b""
    assert out.stdout.decode().splitlines() == ["seq=141", "===== attempt 1: job output =====", "runner=141"]


def test_a_reader_that_stays_gets_every_byte_of_a_log_larger_than_a_pipe(env):
    out = subprocess.run(["bash", "-c", f"{sys.executable} -m runner.cli ops logs --run-id r1 | cat"],
                         env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"===== attempt 1: job output =====\n" + LOG
