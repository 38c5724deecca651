"""Shared fixtures: the local store here, the GCS emulator in tests/standins/gcs_fixture.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entrypoint.store_local import LocalStore

pytest_plugins = ["tests.standins.gcs_fixture", "tests.standins.compute", "tests.standins.cloudbuild",
                  "tests.standins.gcp_admin", "tests.standins.cloudrun", "tests.standins.scheduler",
                  "tests.standins.registry", "tests.standins.supervised_runs"]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers set COLUMNS=80 and LINES=24 (they have no terminal); the CLIs the tests start
    # would then draw for 80 columns whatever terminal the test gives them (tmux -x 150). Run as
    # `pytest` alone does.
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long variants (marked ``long``) keep `make test` within its budget; `make chaos` runs them.

    Every test that uses Docker joins one xdist group, so under `make test`'s ``-n 2 --dist
    loadgroup`` they run one after another on one worker (local containers are named after their
    run ids, and the images and the registry are shared) while the other worker runs the rest.
    """
    long = os.environ.get("RUNNER_CHAOS") == "long"
    skip = pytest.mark.skip(reason="a long variant: `make chaos` runs it (RUNNER_CHAOS=long)")
    for item in items:
        if item.get_closest_marker("long") and not long:
            item.add_marker(skip)
        if item.get_closest_marker("docker") or "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("docker"))


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """A LocalStore on a fresh directory, so each test starts from an empty bucket."""
    return LocalStore(str(tmp_path))


# ---- real Docker, the workload image, and the runner CLI as a user runs it ----

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "cos-spot-runner/workload:dev")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """The real Docker engine. Missing is a failure, not a skip: `make test` sets it up."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.images.get(IMAGE)
    except Exception as e:  # noqa: BLE001 - any reason means the same fix
        pytest.fail(f"Docker or image {IMAGE} unavailable ({e}); run the tests with `make test`")
    return client


def wait_for(what: Callable[[], Any], timeout: float = 60, desc: str = "", every: float = 0.1) -> Any:
    """Poll ``what`` every ``every`` s until it returns something true, and return that; fail the
    test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {desc or what}")


class Runner:
    """The `runner` CLI in a subprocess, with a private store and fast timings."""

    def __init__(self, store_dir: Path, docker_client: Any) -> None:
        self.store_dir = store_dir
        self.docker = docker_client
        self.env = {
            **os.environ,
            "RUNNER_STORE": f"file://{store_dir}",
            "RUNNER_BACKEND": "local",
            "RUNNER_POLL_INTERVAL": "0.5",
            "RUNNER_HEARTBEAT_INTERVAL": "0.5",
            "RUNNER_SYNC_INTERVAL": "0.5",
            "RUNNER_GRACE_PERIOD": "10",
            "RUNNER_STALL_POLLS": "100000",
            "PYTHONPATH": str(ROOT),
        }
        self.procs: list[subprocess.Popen[str]] = []

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runner.cli", *args]

    def __call__(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout, cwd=self.store_dir)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(self.cmd(*args), env={**self.env, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=self.store_dir)
        self.procs.append(p)
        return p

    def run_dir(self, run_id: str) -> Path:
        return self.store_dir / "runs" / run_id

    def read_json(self, run_id: str, rel: str) -> Any:
        try:
            return json.loads((self.run_dir(run_id) / rel).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def state(self, run_id: str) -> dict[str, Any]:
        return self.read_json(run_id, "state.json") or {}

    def step(self, run_id: str) -> int:
        hb = self.read_json(run_id, "heartbeat.json") or {}
        return int(hb.get("progress", {}).get("step", 0))

    def wait_for(self, what: Callable[[], bool], timeout: float = 60, desc: str = "") -> None:
        wait_for(what, timeout, desc)

    def containers(self, run_id: str) -> list[Any]:
        from runner.naming import label_value

        return self.docker.containers.list(
            all=True, ignore_removed=True,
            filters={"label": [f"run-id={label_value(run_id)}", "runner=cos-spot-runner"]})

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        runs = self.store_dir / "runs"
        from docker.errors import APIError, NotFound

        for run_dir in runs.iterdir() if runs.exists() else []:
            for c in self.containers(run_dir.name):
                try:
                    c.remove(force=True)
                except (NotFound, APIError):  # removed (or being removed) by a delete already under way
                    pass
            for net in self.networks(run_dir.name):  # a gang's, left by a test that failed
                try:
                    net.remove()
                except (NotFound, APIError):
                    pass

    def networks(self, run_id: str) -> list[Any]:
        """A gang's per-attempt Docker networks of ``run_id``."""
        from runner.naming import label_value

        return self.docker.networks.list(filters={"label": [f"run-id={label_value(run_id)}",
                                                            "runner=cos-spot-runner"]})


@pytest.fixture
def runner(tmp_path: Path, docker_client: Any) -> Any:
    store = tmp_path / "store"
    store.mkdir()
    r = Runner(store, docker_client)
    yield r
    r.cleanup()


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    return f"t-{request.node.name[5:30].replace('_', '-')}-{uuid.uuid4().hex[:6]}"


def trainer(steps: int, every: int = 5, step_time: float = 0.1, *extra: str) -> list[str]:
    return ["python3", "-m", "examples.trainer", "--steps", str(steps), "--checkpoint-every",
            str(every), "--step-time", str(step_time), *extra]
