"""Where the torch base image gets PyTorch's CPU wheel (scripts/torch_wheels.py, the fetch step of
scripts/build-torch-base.sh): a local wheel cache first, then PyTorch's CPU index, never the CUDA
build, and a message that names both and the way out when neither has it.

Without network and without the real wheels: pip itself runs against loopback stand-ins
(tests/standins/wheel_index.py), a find-links folder for the local cache, a simple index playing
PyPI (the CUDA build, as PyPI has) and one playing download.pytorch.org/whl/cpu. pip's own
configuration is shut out: ``PIP_CONFIG_FILE=os.devnull`` loads no configuration file
(https://pip.pypa.io/en/latest/topics/configuration/; this machine's /etc/pip.conf has a real
wheel cache) and every other ``PIP_*`` variable is dropped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.standins.wheel_index import (
    CPU_TORCH,
    CUDA_TORCH,
    FILELOCK,
    NUMPY,
    NVIDIA_CUBLAS,
    TORCH_VERSION,
    FakeWheel,
    SimpleIndex,
    serve_index,
    write_index,
)

SCRIPT = ROOT / "scripts" / "torch_wheels.py"
_spec = importlib.util.spec_from_file_location("torch_wheels", SCRIPT)
torch_wheels = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("torch_wheels", torch_wheels)  # dataclasses look their module up there
_spec.loader.exec_module(torch_wheels)

CPU_SET = {CPU_TORCH.filename, NUMPY.filename, FILELOCK.filename}


def fetch(tmp_path: Path, cpu_index: SimpleIndex, pypi: SimpleIndex,
          cache: list[FakeWheel] | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the fetch step as build-torch-base.sh does, with only the stand-ins as sources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=pypi.url, PIP_NO_CACHE_DIR="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_RETRIES="0", PIP_TIMEOUT="10",
               TORCH_INDEX_URL=cpu_index.url)
    if cache is not None:
        folder = tmp_path / "wheel-cache"
        for wheel in cache:
            wheel.write(folder)
        env["PIP_FIND_LINKS"] = str(folder)
    dest = tmp_path / "torch-wheels" / TORCH_VERSION
    out = subprocess.run([sys.executable, str(SCRIPT), "--torch-version", TORCH_VERSION,
                          "--python-version", "311", "--dest", str(dest)],
                         capture_output=True, text=True, timeout=120, env=env)
    return out, dest


def fetched(dest: Path) -> set[str]:
    return {p.name for p in dest.glob("*.whl")} if dest.is_dir() else set()


@pytest.fixture
def pypi(tmp_path):
    """PyPI as a fresh machine sees it: torch==X is the CUDA build, with its nvidia wheels."""
    with serve_index(write_index(tmp_path / "pypi", [CUDA_TORCH, NVIDIA_CUBLAS, FILELOCK, NUMPY])) as index:
        yield index


@pytest.fixture
def cpu_index(tmp_path):
    """download.pytorch.org/whl/cpu: the +cpu build and torch's dependencies."""
    with serve_index(write_index(tmp_path / "cpu-index", [CPU_TORCH, FILELOCK, NUMPY])) as index:
        yield index


def test_a_cpu_wheel_in_the_local_cache_is_used_and_the_cpu_index_is_not_contacted(tmp_path, pypi, cpu_index):
    out, dest = fetch(tmp_path, cpu_index, pypi, cache=[CPU_TORCH, FILELOCK, NUMPY])

    assert out.returncode == 0, out.stderr
    assert fetched(dest) == CPU_SET
    assert (dest / ".complete").exists()
    assert cpu_index.asked == []
    assert "from pip's configured sources" in out.stderr


def test_a_cache_with_only_the_cuda_build_falls_to_the_cpu_index(tmp_path, pypi, cpu_index):
    out, dest = fetch(tmp_path, cpu_index, pypi, cache=[CUDA_TORCH, NVIDIA_CUBLAS, FILELOCK, NUMPY])

    assert out.returncode == 0, out.stderr
    assert fetched(dest) == CPU_SET
    assert (dest / ".complete").exists()
    assert f"/torch/{CPU_TORCH.filename.replace('+', '%2B')}" in cpu_index.asked  # pip quotes the +
    assert f"from PyTorch's CPU index {cpu_index.url}" in out.stderr


def test_a_machine_that_sees_only_pypi_gets_the_cpu_index_build_without_downloading_the_cuda_one(
        tmp_path, pypi, cpu_index):
    out, dest = fetch(tmp_path, cpu_index, pypi)

    assert out.returncode == 0, out.stderr
    assert fetched(dest) == CPU_SET
    # PyPI was asked which torch builds it has, and no file of the (multi-GB) CUDA build was taken.
    assert "/torch/" in pypi.asked
    assert not [p for p in pypi.asked if p.endswith(".whl") and ("torch" in p or "nvidia" in p)]


def test_neither_source_has_it_exits_1_naming_both_what_pip_said_and_the_remedy(tmp_path, pypi):
    with serve_index(write_index(tmp_path / "empty-cpu-index", [FILELOCK, NUMPY])) as cpu_index:
        out, dest = fetch(tmp_path, cpu_index, pypi, cache=[CUDA_TORCH, NVIDIA_CUBLAS])

    assert out.returncode == 1
    lines = out.stderr.splitlines()
    tried = [line for line in lines if line.startswith("torch-base:   1. ") or line.startswith("torch-base:   2. ")]
    assert len(tried) == 2, out.stderr
    assert "pip's configured sources" in tried[0]
    assert f"PyTorch's CPU index {cpu_index.url}" in tried[1]
    for line in tried:
        assert f"No matching distribution found for torch=={TORCH_VERSION}+cpu" in line
    assert "set TORCH_INDEX_URL=URL" in out.stderr
    assert "PIP_FIND_LINKS=/that/folder" in out.stderr
    assert "`make test-no-torch`" in out.stderr
    assert fetched(dest) == set() and not (dest / ".complete").exists()
    assert not list(dest.parent.glob(".fetch-*")), "a failed attempt left its folder behind"


def test_a_cpu_labelled_wheel_that_brings_nvidia_wheels_is_refused(tmp_path, pypi):
    mislabelled = FakeWheel("torch", f"{TORCH_VERSION}+cpu", CPU_TORCH.tags, ("nvidia-cublas-cu12",))
    with serve_index(write_index(tmp_path / "odd-cpu-index", [mislabelled, NVIDIA_CUBLAS, NUMPY])) as cpu_index:
        out, dest = fetch(tmp_path, cpu_index, pypi)

    assert out.returncode == 1
    assert "refused: a CUDA build (it brought nvidia_cublas_cu12" in out.stderr
    assert fetched(dest) == set()


def test_the_remedy_make_test_no_torch_runs_the_suite_without_the_torch_image():
    out = subprocess.run(["make", "-n", "test-no-torch"], cwd=ROOT, capture_output=True, text=True, timeout=30)

    assert out.returncode == 0, out.stderr
    assert "pytest" in out.stdout and '-m "not torch"' in out.stdout
    assert "build-torch-base.sh" not in out.stdout


def test_the_readme_names_the_cpu_index_its_variable_and_the_order():
    readme = (ROOT / "README.md").read_text()

    assert torch_wheels.CPU_INDEX_URL in readme
    assert torch_wheels.INDEX_URL_VARIABLE in readme
    assert "make test-no-torch" in readme
