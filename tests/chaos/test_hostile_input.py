"""Hostile input, generated: every refusal is one line, the documented exit code, nothing written.

Issue 10 §5 found 46 hostile inputs by hand; this replays their families with random members
(seeded, and the seed printed on failure) through the real CLI in subprocesses:
run ids invalid by construction (too many bytes, bidi/zero-width/control characters, spaces at
an edge, '/'), config files of random binary bytes, negative counts on the command line, and
commands on runs that do not exist. README: exit 2 for usage or config, 3 for not found.
No Docker is needed: every one of these must be refused before Docker is asked anything.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.harness import cycles
from tests.conftest import ROOT

_INVISIBLE = ["\u202e", "\u200b", "\u200d", "\ufeff", "\u2066", "\u00ad"]
_CONTROL = ["\x01", "\x1b", "\n", "\t", "\x7f", "\x85"]  # no NUL: argv cannot carry it
_LETTERS = "abcXYZ019_-. éß日本"


def _runner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    # A Docker that cannot be reached: if validation let anything through, the exit would be 1.
    env.update(PYTHONPATH=str(ROOT), DOCKER_HOST="unix:///nonexistent/docker.sock")
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def _one_line(p: subprocess.CompletedProcess[str], case: str) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("runner: "), f"{case}: {p.stderr!r}"
    return lines[0]


def _hostile_run_id(rng: random.Random) -> str:
    body = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 20))).strip() or "x"
    kind = rng.choice(["bytes", "invisible", "control", "edge", "slash"])
    if kind == "bytes":
        return rng.choice(["😀", "𝔘", "日"]) * rng.randint(70, 128)  # within 128 chars, over 200 bytes
    if kind == "invisible":
        i = rng.randint(0, len(body))
        return body[:i] + rng.choice(_INVISIBLE) + body[i:]
    if kind == "control":
        i = rng.randint(0, len(body))
        return body[:i] + rng.choice(_CONTROL) + body[i:]
    if kind == "edge":
        return rng.choice([" " + body, body + " ", "\u3000" + body, body + "\u00a0"])
    return body + "/" + body


def _hostile_case(rng: random.Random, tmp: Path, store: Path) -> tuple[str, list[str], int]:
    kind = rng.choice(["run_id", "binary_config", "negative_count", "unknown_run"])
    if kind == "run_id":
        rid = _hostile_run_id(rng)
        return f"run id {rid!r}", ["submit", "--run-id", rid, "--store", str(store), "--image", "img:1",
                                   "--detach", "--", "true"], 2
    if kind == "binary_config":
        cfg = tmp / f"bin-{rng.getrandbits(32):08x}.toml"
        cfg.write_bytes(b"\xff" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        return f"binary config {cfg.read_bytes()[:16]!r}", ["ops", "list", "--config", str(cfg),
                                                            "--store", str(store)], 2
    if kind == "negative_count":
        flag = rng.choice(["--max-restarts", "--retry-on-failure"])
        n = str(-rng.randint(1, 10**6))
        return f"{flag} {n}", ["submit", "--run-id", "neg", "--store", str(store), "--image", "img:1",
                               flag, n, rng.choice(["--detach", "--dry-run"]), "--", "true"], 2
    rid = f"ghost-{rng.getrandbits(32):08x}"
    cmd = rng.choice([["supervise", "--once"], ["ops", "status"], ["ops", "logs"], ["ops", "events"]])
    return f"{' '.join(cmd)} of unknown run {rid}", [*cmd, "--run-id", rid, "--store", str(store)], 3


def test_generated_hostile_input_is_refused_cleanly(tmp_path: Path) -> None:
    seed = int(os.environ.get("RUNNER_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    store = tmp_path / "store"
    store.mkdir()
    for _ in range(cycles(short=12, long=150)):
        case, args, expected = _hostile_case(rng, tmp_path, store)
        p = _runner(*args, cwd=tmp_path)
        assert p.returncode == expected, f"seed {seed}, {case}: exit {p.returncode}, {p.stderr!r}"
        _one_line(p, f"seed {seed}, {case}")
        written = [str(x.relative_to(store)) for x in store.rglob("*") if not x.name.startswith(".")
                   and ".tmp" not in x.parts and ".locks" not in x.parts]
        assert written == [], f"seed {seed}, {case}: wrote {written}"


@pytest.mark.docker
def test_permanent_failures_side_by_side_each_fail_at_once(runner, run_id) -> None:
    """Broken commands submitted together, one supervisor: each FAILED on attempt 1, none restarted."""
    broken = {
        "missing": (["no-such-program-xyz"], 127),
        "not-exec": (["/etc/hostname"], 126),
        "directory": (["/tmp"], 126),
        "exit-2": (["python3", "-c", "raise SystemExit(2)"], 2),
    }
    ids = {f"{run_id}-{k}": v for k, v in broken.items()}
    image = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
    for rid, (cmd, _) in ids.items():
        out = runner("submit", "--run-id", rid, "--image", image, "--detach", "--max-restarts", "3",
                     "--retry-on-failure", "0", "--", *cmd)
        assert out.returncode == 0, out.stderr
    deadline = time.time() + 120
    while not all(runner.state(r).get("state") == "FAILED" for r in ids) and time.time() < deadline:
        p = runner("supervise", "--once")
        assert p.returncode == 0, p.stderr
    for rid, (_, code) in ids.items():
        st = runner.state(rid)
        assert (st["state"], st["attempt"], st["restarts"], st["exit_code"]) == ("FAILED", 1, 0, code), (rid, st)
        if code in (126, 127):
            assert "cannot start" in (runner.run_dir(rid) / "logs/1.log").read_text()
    # The pass that saw the last FAILED may have read its state just before the agent wrote it:
    # the next pass removes what is left. No container may outlive that.
    p = runner("supervise", "--once")
    assert p.returncode == 0, p.stderr
    for rid in ids:
        assert runner.containers(rid) == []
