"""A real image registry on loopback: Debian's ``docker-registry`` (distribution/registry 2.8).

Why a real one: the GCE path pins the workload image by the digest a registry answered for a
push, and the VM pulls it by that digest. A stand-in here would test our idea of a registry; the
reference implementation is small, starts in well under a second and is what Artifact Registry's
Docker API mirrors (the distribution spec). ``scripts/setup-test-env.sh`` installs it.

Docker treats ``127.0.0.0/8`` as an insecure registry by default (``docker info``: Insecure
Registries), so pushes and pulls to ``127.0.0.1:PORT`` work over plain HTTP with no daemon
configuration.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# Accept headers a client sends to get the manifest whose digest `docker push` printed.
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT, as image references name it
    root: Path  # where it stores blobs and manifests
    log: Path

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry serves for ``repository:reference`` (tag or digest), or None."""
        req = urllib.request.Request(f"http://{self.host}/v2/{repository}/manifests/{reference}",
                                     method="HEAD", headers={"Accept": MANIFEST_TYPES})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def requests(self) -> list[tuple[str, str, int, str]]:
        """Every request the registry answered (its access log), oldest first, as
        (method, path, status, user agent): proof that a client really talked to it."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("msg") == "response completed":
                out.append((str(doc.get("http.request.method")), str(doc.get("http.request.uri")),
                            int(doc.get("http.response.status", 0) or 0), str(doc.get("http.request.useragent"))))
        return out

    def docker_pulls(self) -> int:
        """How many times a Docker daemon started a pull or push here: each begins by pinging
        ``GET /v2/``; a pull of an image whose digest the host already holds stops there."""
        return sum(1 for m, path, code, agent in self.requests()
                   if m == "GET" and path == "/v2/" and code == 200 and agent.startswith("docker/"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, port: int) -> str:
    # JSON is YAML: no PyYAML needed. No auth, filesystem storage under the test's directory.
    return json.dumps({
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    })


def start_registry(root: Path, timeout: float = 20) -> tuple[Registry, subprocess.Popen[bytes]]:
    """Start ``docker-registry`` on a free loopback port; returns once ``/v2/`` answers."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail("docker-registry is not installed: run scripts/setup-test-env.sh (apt-get install "
                    "docker-registry), or `make test`, which does")
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # the free port can be taken between probing and binding: try another
        port = _free_port()
        cfg = root / "config.yml"
        cfg.write_text(_config(root, port))
        log = root / "registry.log"
        proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                    if r.status == 200:
                        return Registry(f"127.0.0.1:{port}", root, log), proc
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    pytest.fail(f"docker-registry did not answer on 127.0.0.1; see {root / 'registry.log'}")
    raise AssertionError  # unreachable


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for the session; stopped (and its storage dropped with tmp) at the end."""
    reg, proc = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
