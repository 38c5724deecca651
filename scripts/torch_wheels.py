"""The fetch step of scripts/build-torch-base.sh: PyTorch's CPU wheel and its dependencies, for the
torch base image, from the first of these sources that has them:

1. pip's own configured sources (find-links, index, extra indexes: ``pip config list``), e.g. a
   local wheel cache. Our CI machines have one with the CPU wheel; a fresh machine sees only PyPI,
   which has no ``+cpu`` build, and moves on after one look-up.
2. PyTorch's CPU wheel index, ``https://download.pytorch.org/whl/cpu`` (``TORCH_INDEX_URL``
   overrides it: a mirror, or a loopback stand-in in the tests), used as pip's ``--index-url`` the
   way PyTorch's install selector shows it; that index also holds torch's dependencies.

Only a CPU build is accepted. The request pins the local version label, ``torch==X+cpu``: PEP 440
matches a local label by strict string equality when the specifier has one, so pip never even
downloads the multi-GB CUDA build (plain ``torch==X`` would match it too, and PyPI's Linux wheel
is the CUDA build). A fetch that still brought ``nvidia_*`` wheels (a mislabelled wheel) is
refused and the next source is tried. When no source has it, the message names every source, what
pip said (one line each), and what the user can do.

Python rather than bash so that the choice is tested against loopback stand-ins
(tests/test_torch_base_sources.py) without the real wheels.

    python3 scripts/torch_wheels.py --torch-version 2.13.0 --python-version 311 --dest DIR

Exit codes: 0 the wheels are in DIR (with DIR/.complete), 1 no source had a CPU build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# PyTorch's own CPU-only wheel index, as its install selector gives it:
# `pip3 install torch --index-url https://download.pytorch.org/whl/cpu`
# (https://gist.github.com/wuriyanto48/2a3b557cc3893b0ed0facd8e6d56d0a9,
# https://github.com/pytorch/pytorch.github.io/pull/1255: `--index-url`, not `--extra-index-url`,
# "to have tighter control of package version installed").
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
INDEX_URL_VARIABLE = "TORCH_INDEX_URL"
COMPLETE = ".complete"  # written last: a directory without it is a fetch that did not finish

# The image is Debian bookworm on x86-64 (manylinux_2_28 covers its glibc 2.36); `any` for the
# pure-Python dependencies.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "any")


@dataclass(frozen=True)
class WheelSource:
    """Somewhere pip can fetch the wheels from: its name in messages and the pip options that
    select it (none: whatever pip's configuration says)."""

    name: str
    pip_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """What one source gave: the wheels, or in one line why not."""

    source: WheelSource
    fetched: bool
    said: str


def sources(index_url: str) -> list[WheelSource]:
    """The sources in the order they are tried: the local one first (no download, no network on
    our CI machines), then PyTorch's index."""
    return [
        WheelSource("pip's configured sources (find-links/index from `pip config list`)"),
        WheelSource(f"PyTorch's CPU index {index_url}", ("--index-url", index_url)),
    ]


def requirements(torch_version: str) -> list[str]:
    """The CPU build only (see the module's docstring); numpy because torch warns at every import
    without it."""
    return [f"torch=={torch_version}+cpu", "numpy"]


def one_line(pip_stderr: str) -> str:
    """pip's reason in one line: its last ERROR line (the one that names the requirement it
    could not satisfy), else its last line."""
    lines = [line.strip() for line in pip_stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["pip failed without saying why"])[-1]


def cuda_wheels(folder: Path) -> list[str]:
    """The NVIDIA runtime wheels a CUDA build of torch depends on (nvidia_cublas_cu12, …)."""
    return sorted(p.name for p in folder.glob("*.whl") if p.name.lower().startswith("nvidia"))


def try_source(source: WheelSource, torch_version: str, python_version: str, dest: Path,
               python: str = sys.executable) -> Attempt:
    """Fetch into a fresh folder beside ``dest`` and move the wheels in only when they are a CPU
    build, so that a refused or half-finished attempt leaves nothing behind for the next one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        work = Path(tmp)
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        pip = subprocess.run(
            [python, "-m", "pip", "download", "-q", "-d", str(work), "--only-binary=:all:",
             "--python-version", python_version, *platforms, *source.pip_options,
             *requirements(torch_version)],
            capture_output=True, text=True)
        if pip.returncode != 0:
            return Attempt(source, False, one_line(pip.stderr))
        cuda = cuda_wheels(work)
        if cuda:
            return Attempt(source, False, f"refused: a CUDA build (it brought {', '.join(cuda[:3])})")
        dest.mkdir(parents=True, exist_ok=True)
        for wheel in work.iterdir():
            shutil.move(str(wheel), dest / wheel.name)
    (dest / COMPLETE).touch()
    return Attempt(source, True, f"fetched torch=={torch_version}+cpu and its dependencies")


def fetch(torch_version: str, python_version: str, dest: Path, index_url: str,
          python: str = sys.executable) -> list[Attempt]:
    """Try each source in order and stop at the first that has a CPU build; the attempts made,
    the last one successful or none."""
    attempts: list[Attempt] = []
    for source in sources(index_url):
        attempts.append(try_source(source, torch_version, python_version, dest, python))
        if attempts[-1].fetched:
            break
    return attempts


def remedy(torch_version: str, python_version: str) -> list[str]:
    """What the user can do when no source has the wheel, each a real knob."""
    wheel = f"torch-{torch_version}+cpu-cp{python_version}-cp{python_version}-manylinux_2_28_x86_64.whl"
    return [
        f"set {INDEX_URL_VARIABLE}=URL to an index (a mirror of {CPU_INDEX_URL}) that has "
        f"torch=={torch_version}+cpu, e.g. `{INDEX_URL_VARIABLE}=https://mirror.example/whl/cpu make test`;",
        f"or put {wheel} and its dependencies in a folder and set PIP_FIND_LINKS=/that/folder;",
        "or run every test but the PyTorch ones without this image: `make test-no-torch`.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-version", required=True)
    parser.add_argument("--python-version", required=True, help="the image's Python, e.g. 311")
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    index_url = os.environ.get(INDEX_URL_VARIABLE) or CPU_INDEX_URL

    def say(line: str) -> None:
        print(f"torch-base: {line}", file=sys.stderr)

    attempts = fetch(args.torch_version, args.python_version, args.dest, index_url)
    if attempts[-1].fetched:
        say(f"{attempts[-1].said} from {attempts[-1].source.name} into {args.dest}")
        return 0
    say(f"no CPU build of torch=={args.torch_version} for cp{args.python_version}; tried, in order:")
    for number, attempt in enumerate(attempts, 1):
        say(f"  {number}. {attempt.source.name}: {attempt.said}")
    say("To fix it:")
    for line in remedy(args.torch_version, args.python_version):
        say(f"  {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
