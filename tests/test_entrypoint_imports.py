"""The agent must travel into any image: standard library plus google-cloud-storage, nothing else."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

ALLOWED_THIRD_PARTY = {"google"}  # google.cloud.storage, google_crc32c comes with it
# google_crc32c and requests are google-cloud-storage's own dependencies.
ALLOWED_TOP = {"entrypoint", "google_crc32c", "requests"}


def imported_top_level_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_entrypoint_imports_only_the_standard_library_and_google_cloud_storage():
    offenders = {}
    for path in sorted((ROOT / "entrypoint").rglob("*.py")):  # the record package included
        bad = {m for m in imported_top_level_modules(path)
               if m not in sys.stdlib_module_names and m not in ALLOWED_THIRD_PARTY | ALLOWED_TOP}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_entrypoint_does_not_import_the_runner_package():
    code = "import sys, entrypoint.agent, entrypoint.record; print('runner' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_requirements_name_only_google_cloud_storage():
    reqs = [ln.split(">")[0].split("=")[0].strip() for ln in (ROOT / "entrypoint/requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert reqs == ["google-cloud-storage"]
