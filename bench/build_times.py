"""Local image build: a full build vs a rebuild after touching one source file (target <= 0.1),
and the context upload size for this repo with and without .gcloudignore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from runner.build.build_context import IgnoreRules, collect, pack, summary

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("RUNNER_BASE_IMAGE", "cos-spot-runner/base:bookworm-2")
TAG = "cos-spot-runner/bench-build:latest"


def _build(ctx: Path, no_cache: bool) -> float:
    args = ["docker", "build", "-q", "-t", TAG, "--build-arg", f"BASE_IMAGE={BASE}", str(ctx)]
    if no_cache:
        args.insert(2, "--no-cache")
    t = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - t


def build_ratio() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(ROOT, ctx, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", ".runner", "tests"))
        full = _build(ctx, no_cache=True)
        agent = ctx / "entrypoint" / "agent.py"
        agent.write_text(agent.read_text() + "\n# touched\n")
        rebuild = _build(ctx, no_cache=False)
    subprocess.run(["docker", "rmi", "-f", TAG], capture_output=True)
    ratio = rebuild / full
    print(f"local image build: full (--no-cache) {full:.2f} s, rebuild after touching entrypoint/agent.py "
          f"{rebuild:.2f} s; ratio {ratio:.2f} (target <= 0.10)")
    return ratio


def upload_sizes() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with_rules = pack(ROOT, collect(ROOT, IgnoreRules.from_dir(ROOT)), os.path.join(tmp, "a.tgz"))
        everything = pack(ROOT, collect(ROOT, IgnoreRules.from_text("")), os.path.join(tmp, "b.tgz"))
    print(f"context upload: with .gcloudignore {summary(with_rules)}; without {summary(everything)}; "
          f"ratio {with_rules.size_bytes / everything.size_bytes:.4f}")


def main() -> None:
    upload_sizes()
    build_ratio()
