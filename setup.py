"""The wheel's layout (issue 20 §16): one top-level package, ``cos_spot_runner``.

The repository's source folders stay where the design card puts them and keep importing each
other as ``runner.…``/``entrypoint.…``; here they are mapped, unchanged, to
``cos_spot_runner/_lib/<folder>`` (setuptools ``package_dir``: no import is rewritten), and the
files the commands build from are copied beside them, so that ``_lib`` is laid out like the
checkout's root (``runner/shipped_files.py`` finds them the same way in both). Everything else
(metadata, dependencies, the ``runner`` script) is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SOURCES = ("runner", "entrypoint", "examples", "gcp")
# What the workload image's build (Dockerfile + its allowlists) and the runner image's Cloud
# Build (cloudbuild.yaml) read besides the packages; entrypoint/requirements.txt is package data.
SHIPPED = ("Dockerfile", "cloudbuild.yaml", ".gcloudignore", ".dockerignore")
TOP = "cos_spot_runner"
LIB = f"{TOP}._lib"  # cos_spot_runner.PRIVATE_FOLDER
HERE = Path(__file__).resolve().parent


def mapped_packages() -> tuple[list[str], dict[str, str]]:
    """Every package under SOURCES, renamed under LIB, and where each source folder is (a
    subpackage follows its mapped parent: ``package_dir``,
    distutils "Listing whole packages",
    https://docs.python.org/2.4/dist/listing-packages.html)."""
    packages, dirs = [TOP], {TOP: TOP}
    for src in SOURCES:
        packages += [f"{LIB}.{p}" for p in find_packages(where=str(HERE), include=[src, f"{src}.*"])]
        dirs[f"{LIB}.{src}"] = src
    return packages, dirs


class BuildWithShippedFiles(build_py):
    """``build_py`` that also copies SHIPPED into ``_lib`` (files outside any package, which
    ``package_data`` cannot name).

    An editable install (``make setup``) sets ``editable_mode`` before ``run()`` (setuptools'
    build sub-command protocol, https://github.com/pypa/setuptools/blob/main/setuptools/command/build.py)
    and then reads the checkout itself, where these files already are: nothing to copy."""

    def shipped_outputs(self) -> list[Path]:
        if self.editable_mode:
            return []
        lib = Path(self.build_lib, *LIB.split("."))
        return [lib / name for name in SHIPPED]

    def run(self) -> None:
        if not self.editable_mode:
            # A checkout built before this layout has top-level copies of SOURCES in its build
            # folder (setuptools reuses build/lib), and bdist_wheel packs all of build/lib: they
            # would come back as colliding top-level packages. Only SOURCES' top-level copies go.
            for src in SOURCES:
                shutil.rmtree(Path(self.build_lib, src), ignore_errors=True)
        super().run()
        for out in self.shipped_outputs():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HERE / out.name, out)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *map(str, self.shipped_outputs())]


PACKAGES, PACKAGE_DIR = mapped_packages()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={f"{LIB}.gcp": ["*.sh"], f"{LIB}.runner.data": ["*.json"],
                  f"{LIB}.entrypoint": ["requirements.txt"]},
    cmdclass={"build_py": BuildWithShippedFiles},
)
