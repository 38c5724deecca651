"""A local store named explicitly is created on first write, as the default one is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from entrypoint.store import StoreNotFound
from runner.config import Config
from runner.launch.context import make_store
from tests.conftest import ROOT


def test_a_named_file_store_is_created_by_a_command_that_writes(tmp_path):
    store = make_store(Config(store=f"file://{tmp_path}/runs"), create_default=True)
    assert (tmp_path / "runs").is_dir() and store.url == f"file://{tmp_path}/runs"


def test_a_named_file_store_whose_parent_is_missing_is_still_refused_with_the_fix(tmp_path):
    with pytest.raises(StoreNotFound, match="mkdir -p"):
        make_store(Config(store=f"file://{tmp_path}/typo/runs"), create_default=True)
    assert not (tmp_path / "typo").exists()


def test_read_only_commands_never_create_a_store(tmp_path):
    env = {**os.environ, "RUNNER_STORE": f"file://{tmp_path}/runs", "RUNNER_BACKEND": "local",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "runner.cli", "ops", "list"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "runs").exists()
