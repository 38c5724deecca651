"""The runner as `pip install` leaves it: a wheel built from this tree, installed in a fresh venv,
used from an empty directory with no checkout in sight (issue 20 §15, §16).

The wheel is built offline (``pip wheel --no-build-isolation``, with the test environment's own
setuptools and wheel: an isolated build would fetch them) from a copy of the project's files, so
nothing is left in the checkout. The fresh venv gets its dependencies from this environment's
site-packages through a ``.pth`` path line. A path line adds that folder to ``sys.path`` only: the
``site`` module processes the ``.pth`` files of the site directories it is given, not of folders
that a ``.pth`` names (https://docs.python.org/3.0/library/site.html: "its contents are additional
items ... to be added to sys.path"; only the site directories are inspected for ``.pth`` files), so
the checkout's editable install, itself a ``.pth`` in that folder, does not leak in
(``test_the_wheel_installs_one_top_level_name`` checks it: ``import runner`` fails there).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT

PROJECT = "test-project"
REGISTRY = f"us-central1-docker.pkg.dev/{PROJECT}/runs"
DIGEST = f"{REGISTRY}/trainer@sha256:" + "a" * 64


@dataclass(frozen=True)
class InstalledRunner:
    venv: Path
    site: Path           # the fresh venv's own site-packages
    dist_info: Path
    empty: Path          # a working directory with nothing in it: no checkout, no runner.toml

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell: this venv's bin first, no PYTHONPATH, no runner settings, no Google
        credentials and no metadata server (never the developer's own gcloud setup)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")
               and not k.startswith("RUNNER_")}
        env.update(PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(self.empty),
                   CLOUDSDK_CONFIG=str(self.empty / ".gcloud"), NO_GCE_CHECK="true",
                   GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
        env.update(extra)
        return env

    def run(self, *argv: str, cwd: Path | None = None, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
        """``argv[0]`` from the venv's bin (``runner``, ``python``), in the empty directory."""
        return subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=cwd or self.empty,
                              env=self.env(**env), capture_output=True, text=True, timeout=timeout)


def project_files() -> list[str]:
    """What a source distribution of this tree holds: tracked files plus untracked ones git does
    not ignore (so a new module counts before its commit), never .venv, build output or caches."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return sorted(n for n in set(out.decode().split("\0")) if n and (ROOT / n).is_file())


def dependency_dirs() -> list[str]:
    """This environment's site-packages folders (where the runner's dependencies are)."""
    return [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledRunner]:
    base = tmp_path_factory.mktemp("wheel")
    src, wheels, venv, empty = base / "src", base / "wheels", base / "venv", base / "empty"
    for name in project_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    # A checkout that built a wheel before the one-name layout keeps top-level copies in build/lib
    # (setuptools reuses it): they must not come back into the wheel.
    for stale in ("runner", "entrypoint"):
        (src / "build" / "lib" / stale).mkdir(parents=True)
        (src / "build" / "lib" / stale / "__init__.py").write_text("STALE = True\n")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        pytest.fail("could not build the wheel offline (the test extras bring `wheel`: run `make setup`):\n"
                    + built.stdout[-1500:] + built.stderr[-1500:])
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # Without PYTHONPATH: a checkout on it (its egg-info) would make pip call the wheel "already
    # satisfied" and install nothing.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300,
                          env=clean)
    assert done.returncode == 0, done.stderr
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Written after the install, so pip never sees the checkout's own (editable) distribution.
    (site / "zz-runner-test-dependencies.pth").write_text("\n".join(dependency_dirs()) + "\n")
    empty.mkdir()
    (dist_info,) = site.glob("cos_spot_runner-*.dist-info")
    yield InstalledRunner(venv, site, dist_info, empty)


# ---- §16: one top-level name, and the user's own `runner` is the user's -------------------------

def test_the_wheel_installs_one_top_level_name(installed: InstalledRunner):
    top = set()
    for line in (installed.dist_info / "RECORD").read_text().splitlines():
        path = line.rsplit(",", 2)[0]
        if not path.startswith(("..", installed.dist_info.name + "/")):  # the script in bin/; metadata
            top.add(path.split("/", 1)[0])
    assert top == {"cos_spot_runner"}
    assert (installed.dist_info / "top_level.txt").read_text().split() == ["cos_spot_runner"]
    # Nothing of the project is importable by its folder names; the checkout's editable install
    # (a .pth in the dependency folder) did not leak in either.
    probe = installed.run("python", "-c", "import importlib.util as u, json, cos_spot_runner; print(json.dumps("
                          "[cos_spot_runner.__file__] + [bool(u.find_spec(n)) for n in "
                          "('runner', 'entrypoint', 'examples', 'gcp')]))")
    assert probe.returncode == 0, probe.stderr
    where, *found = json.loads(probe.stdout)
    assert Path(where).is_relative_to(installed.site) and found == [False] * 4


def test_a_users_own_runner_package_is_the_users_and_the_runner_command_is_ours(installed: InstalledRunner,
                                                                              tmp_path: Path):
    """The user's own ``runner`` and ``examples`` packages, installed in the same environment (an
    editable project of theirs: a folder a .pth names), on PYTHONPATH and in the working directory."""
    theirs, project = tmp_path / "their-lib", tmp_path / "their-project"
    for where in (theirs, project):
        for pkg in ("runner", "examples"):
            (where / pkg).mkdir(parents=True)
            (where / pkg / "__init__.py").write_text(f"WHO = 'user:{where.name}'\n")
    pth = installed.site / "their-project.pth"
    pth.write_text(f"{theirs}\n")
    try:
        mine = installed.run("python", "-c", "import runner, examples; print(runner.WHO, examples.WHO)")
        assert mine.returncode == 0, mine.stderr
        assert mine.stdout.split() == ["user:their-lib", "user:their-lib"]
        # Theirs on PYTHONPATH and in the working directory: the command still runs ours.
        for argv in (("runner", "--help"), ("python", "-m", "cos_spot_runner", "--help")):
            ours = installed.run(*argv, cwd=project, PYTHONPATH=str(theirs))
            assert ours.returncode == 0, ours.stderr
            assert "submit" in ours.stdout and "supervise" in ours.stdout
        # A process that already imported their runner is told so, never handed a mix of both.
        mixed = installed.run("python", "-c", "import runner, cos_spot_runner; cos_spot_runner.main()")
        assert mixed.returncode == 1 and "another package named runner" in mixed.stderr
    finally:
        pth.unlink()


# ---- §15: what the README shows, without a checkout -----------------------------------------------

def test_help_and_doctor_run_from_an_empty_directory(installed: InstalledRunner):
    assert installed.run("runner", "--help").returncode == 0
    p = installed.run("runner", "doctor", "--backend", "gce", "--project", PROJECT, "--store", "gs://some-bucket",
                      "--zones", "us-central1-a", "--gpu", "nvidia-tesla-t4")
    lines = p.stdout.splitlines()
    assert p.returncode == 1, p.stderr  # no credentials here: doctor says so and how to fix it
    assert lines[0].startswith("✗ credentials:") and lines[1] == "    fix: gcloud auth application-default login"


def test_the_gce_dry_run_plans_the_vm_with_the_shipped_startup_scripts(installed: InstalledRunner):
    p = installed.run("runner", "submit", "--backend", "gce", "--project", "p", "--store", "gs://no-such-bucket",
                      "--zones", "us-central1-a", "--gpu", "nvidia-tesla-t4", "--run-id", "exp-1",
                      "--image", DIGEST, "--dry-run", "--", "python3", "train.py")
    assert p.returncode == 0, p.stderr
    (plan,) = json.loads(p.stdout)
    metadata = {i["key"]: i["value"] for i in plan["instance"]["metadata"]["items"]}
    assert metadata["startup-script"] == (ROOT / "gcp" / "startup.sh").read_text()
    assert metadata["shutdown-script"] == (ROOT / "gcp" / "shutdown.sh").read_text()


def _staged_files(build) -> dict[str, bytes]:
    """The files of the source tarball a build was given, from the GCS emulator."""
    from entrypoint.store_gcs import GcsStore

    src = build.source.storage_source
    data = GcsStore(f"gs://{src.bucket}").read(src.object_).data
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_the_workload_image_builds_from_the_shipped_files_on_cloud_build(installed: InstalledRunner,
                                                                        cloudbuild_fake, gcs_store, gcs_emulator):
    """`runner build --workload`: the workload image (agent + examples), from the wheel's own
    Dockerfile, requirements and cloudbuild.yaml, staged and built as a checkout would."""
    p = installed.run("runner", "build", "--workload", "--image", f"{REGISTRY}/workload", "--project", PROJECT,
                      "--store", gcs_store.url, STORAGE_EMULATOR_HOST=gcs_emulator,
                      RUNNER_CLOUDBUILD_ENDPOINT=cloudbuild_fake.endpoint)
    assert p.returncode == 0, p.stderr
    (build,) = cloudbuild_fake.builds
    assert p.stdout.strip().startswith(f"{REGISTRY}/workload@sha256:")
    files = _staged_files(build)
    for name in ("Dockerfile", "cloudbuild.yaml", "entrypoint/requirements.txt", "entrypoint/agent.py",
                 "examples/trainer.py"):
        assert files[name] == (ROOT / name).read_bytes(), name
    assert not [n for n in files if n.startswith(("runner/", "gcp/"))]  # the allowlist still holds
    assert build.substitutions["_DOCKERFILE"] == "Dockerfile"
    assert [s.id for s in build.steps] == ["cache", "build", "push", "submit"]  # cloudbuild.yaml's


def test_supervise_deploy_build_builds_the_runner_image_and_deploys_it(installed: InstalledRunner, cloudbuild_fake,
                                                                      gcs_store, gcs_emulator, cloudrun_fake,
                                                                      scheduler_fake):
    (installed.empty / "none.toml").write_text("")
    p = installed.run("runner", "supervise", "--deploy", "--build", "--image", f"{REGISTRY}/runner",
                      STORAGE_EMULATOR_HOST=gcs_emulator, RUNNER_CLOUDBUILD_ENDPOINT=cloudbuild_fake.endpoint,
                      RUNNER_BACKEND="gce", RUNNER_PROJECT=PROJECT, RUNNER_STORE=gcs_store.url,
                      RUNNER_ZONES="us-central1-a", RUNNER_RUN_ENDPOINT=cloudrun_fake.endpoint,
                      RUNNER_SCHEDULER_ENDPOINT=scheduler_fake.endpoint,
                      RUNNER_CONFIG=str(installed.empty / "none.toml"))
    assert p.returncode == 0, p.stderr
    (build,) = cloudbuild_fake.builds
    files = _staged_files(build)
    # The runner image holds the very code that is installed, and the shipped build definition.
    for name in ("runner/cloud/hosted.py", "entrypoint/record/run.py", "gcp/startup.sh", "cloudbuild.yaml"):
        assert files[name] == (ROOT / name).read_bytes(), name
    assert not [n for n in files if n.startswith("cos_spot_runner")]
    (job,) = cloudrun_fake.jobs.values()
    (container,) = job.template.template.containers
    assert container.image.startswith(f"{REGISTRY}/runner@sha256:")


@pytest.mark.docker
def test_the_workload_image_builds_locally_from_the_wheel_and_runs_the_agent(installed: InstalledRunner,
                                                                            docker_client):
    """What `make image` does in a checkout, from the installed wheel: the README's `FROM` base."""
    tag = f"cos-spot-runner/workload:wheel-{uuid.uuid4().hex[:8]}"
    p = installed.run("runner", "build", "--local", "--workload", "--image", tag,
                      "--base-image", "cos-spot-runner/base:bookworm-2", timeout=300)
    try:
        assert p.returncode == 0, p.stderr
        out = docker_client.containers.run(tag, entrypoint=["python3", "-c"], network_mode="none", remove=True,
                                           command=["import entrypoint.agent, examples.trainer; print('ok')"])
        assert out.decode().strip() == "ok"
    finally:
        if p.returncode == 0:
            docker_client.images.remove(tag, noprune=False)
