"""Package indexes on loopback, for the torch base's wheel sources (scripts/torch_wheels.py): tiny
fake wheels that pip really resolves and downloads, a find-links folder, and a PEP 503 simple
index served by ``http.server`` on 127.0.0.1 that records every path asked of it.

Modelled on what pip reads, no more:
- a wheel is a zip named ``{name}-{version}-{python}-{abi}-{platform}.whl`` whose
  ``{name}-{version}.dist-info/METADATA`` lists its dependencies as ``Requires-Dist``
  (https://packaging.python.org/en/latest/specifications/binary-distribution-format/);
- a simple index answers ``/{normalized-name}/`` with an HTML page holding one anchor per file,
  the anchor text being the file name, and 404 for a project it does not have
  (https://packaging.python.org/en/latest/specifications/simple-repository-api/, PEP 503:
  https://peps.python.org/pep-0503/);
- PyTorch's CPU index names its wheels with the local version label ``+cpu``
  (``torch-X+cpu-cp311-cp311-manylinux_2_28_x86_64.whl``) and hosts torch's dependencies beside
  it, which is why its install command needs no PyPI
  (https://gist.github.com/wuriyanto48/2a3b557cc3893b0ed0facd8e6d56d0a9); PyPI's Linux torch is
  the CUDA build, which depends on ``nvidia-*`` runtime wheels
  (https://lzwjava.github.io/pytorch-cpu-vs-cuda-wheel-choice-zh).
"""

from __future__ import annotations

import re
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator


def normalize(name: str) -> str:
    """A project's name as index URLs spell it (the simple API's "normalized names")."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class FakeWheel:
    """A wheel with no code: just enough metadata for pip to resolve it."""

    name: str
    version: str
    tags: str = "py3-none-any"
    requires: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-{self.tags}.whl"

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        dist_info = f"{self.name.replace('-', '_')}-{self.version}.dist-info"
        metadata = "".join([f"Metadata-Version: 2.1\nName: {self.name}\nVersion: {self.version}\n",
                            *(f"Requires-Dist: {r}\n" for r in self.requires)])
        python, abi, platform = self.tags.split("-")
        wheel = (f"Wheel-Version: 1.0\nGenerator: tests.standins.wheel_index\nRoot-Is-Purelib: "
                 f"{'true' if platform == 'any' else 'false'}\nTag: {self.tags}\n")
        path = folder / self.filename
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{dist_info}/METADATA", metadata)
            z.writestr(f"{dist_info}/WHEEL", wheel)
            z.writestr(f"{dist_info}/RECORD", f"{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n{dist_info}/RECORD,,\n")
        return path


# The builds the tests choose between, for the image's Python (cp311) on x86-64.
TORCH_VERSION = "2.13.0"
LINUX_CP311 = "cp311-cp311-manylinux_2_28_x86_64"
NUMPY = FakeWheel("numpy", "2.4.6", LINUX_CP311)
CPU_TORCH = FakeWheel("torch", f"{TORCH_VERSION}+cpu", LINUX_CP311, ("filelock",))
FILELOCK = FakeWheel("filelock", "4.3.1")
NVIDIA_CUBLAS = FakeWheel("nvidia-cublas-cu12", "12.8.4.1",
                          "py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64")
CUDA_TORCH = FakeWheel("torch", TORCH_VERSION, LINUX_CP311, ("filelock", "nvidia-cublas-cu12==12.8.4.1"))


@dataclass
class SimpleIndex:
    """A PEP 503 index being served: its URL for pip's ``--index-url`` and the paths asked."""

    url: str
    root: Path
    asked: list[str] = field(default_factory=list)


def write_index(root: Path, wheels: list[FakeWheel]) -> Path:
    """The index's files: ``/{project}/index.html`` listing that project's wheels, the wheels
    beside it, and a root page listing the projects."""
    projects: dict[str, list[FakeWheel]] = {}
    for wheel in wheels:
        projects.setdefault(normalize(wheel.name), []).append(wheel)
    root.mkdir(parents=True, exist_ok=True)
    for project, files in projects.items():
        folder = root / project
        for wheel in files:
            wheel.write(folder)
        anchors = "".join(f'<a href="{w.filename}">{w.filename}</a>\n' for w in files)
        (folder / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n")
    links = "".join(f'<a href="/{p}/">{p}</a>\n' for p in projects)
    (root / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    return root


class _Handler(SimpleHTTPRequestHandler):
    """Static files, as a simple index is (a missing project's page is a 404); every path asked
    is recorded, so a test can tell an index that was never contacted."""

    asked: list[str]

    def do_GET(self) -> None:
        self.asked.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve_index(root: Path) -> Iterator[SimpleIndex]:
    """Serve ``root`` on 127.0.0.1 (a free port) until the block ends."""
    index = SimpleIndex(url="", root=root)
    handler = type("IndexHandler", (_Handler,), {"asked": index.asked})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    index.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
