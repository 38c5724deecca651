"""Boot a simulated COS VM: run gcp/startup.sh (or shutdown.sh) for real in a container."""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from entrypoint.markers import PHASE_MARKER

if TYPE_CHECKING:
    from tests.standins.cos_sim.fakes import FakeMetadata

REPO = Path(__file__).resolve().parents[3]
SIM = Path(__file__).resolve().parent
# The bootstrapped Debian base: bash, curl, coreutils and util-linux, the tools COS has.
BASE_IMAGE = os.environ.get("RUNNER_TEST_BASE_IMAGE", "cos-spot-runner/base:bookworm-2")
SIM_PATH = "/opt/cos-sim/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PHASE_RE = re.compile(rf"^{re.escape(PHASE_MARKER)} (\S+)$", re.M)


@dataclass(frozen=True)
class Call:
    tool: str
    argv: list[str]
    time: float


def read_calls(calls_dir: Path) -> list[Call]:
    """Every shim invocation, in order: files named TOOL.EPOCH_NS.PID holding NUL-ended argv."""
    calls = []
    for f in calls_dir.iterdir():
        if f.name.startswith("."):
            continue
        tool, ns, _pid = f.name.rsplit(".", 2)
        data = f.read_bytes()
        argv = [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0")[:-1]]
        calls.append(Call(tool, argv, int(ns) / 1e9))
    return sorted(calls, key=lambda c: c.time)


@dataclass
class Boot:
    """What one run of the script did, as seen from outside the VM."""

    exit_code: int
    stdout: str  # what the guest agent copies to the serial console
    stderr: str
    calls: list[Call]
    seconds: float

    @property
    def phases(self) -> list[str]:
        return PHASE_RE.findall(self.stdout)

    def argv_of(self, tool: str, sub: str | None = None) -> list[list[str]]:
        """The argv of each call of ``tool`` (only ``tool sub ...`` when ``sub`` is given)."""
        return [c.argv for c in self.calls if c.tool == tool and (sub is None or c.argv[:1] == [sub])]


@dataclass
class CosVm:
    """One simulated VM. Its work dir is mounted at the same path inside the script's container,
    because the script passes host paths to the host's Docker (-v, --device).

    What survives what, as on COS: the work dir (the stateful partition: /var/lib/nvidia with the
    installed driver files, /var/lib/runner) and the host's Docker images (the kept boot disk)
    survive a STOP/start; the loaded kernel modules (``kernel/``) do not (``power_cycle``), so
    nvidia-smi fails again until ``cos-extensions install gpu`` runs in the new boot.
    """

    work: Path
    gpus: int = 0
    name: str = field(default_factory=lambda: f"cos-sim-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.calls_dir = self.work / "calls"
        self.calls_dir.mkdir(parents=True, exist_ok=True)
        self.calls_dir.chmod(0o777)
        # Under a plain subdirectory, so the script's `mount --bind` of it really happens.
        self.nvidia_root = self.work / "var-lib-nvidia"
        (self.nvidia_root / "bin").mkdir(parents=True, exist_ok=True)
        (self.nvidia_root / "lib64").mkdir(exist_ok=True)
        shutil.copy(SIM / "nvidia-smi", self.nvidia_root / "bin" / "nvidia-smi")
        self.dev_root = self.work / "dev"
        self.dev_root.mkdir(exist_ok=True)
        # Real character devices (1,3 is /dev/null's): docker --device refuses anything else.
        # nvidia-uvm-tools is a decoy: the script must pass only nvidiaN, nvidiactl, nvidia-uvm.
        names = [f"nvidia{i}" for i in range(self.gpus)] + ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]
        for n in names if self.gpus else []:
            path = self.dev_root / n
            if not path.exists():
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        self.kernel = self.work / "kernel"  # in-memory kernel state: cleared by power_cycle()
        # /var/lib/docker on the VM's disk: which images and layers this VM's Docker holds.
        self.docker_root = self.work / "var-lib-docker"
        # Each modelled wait this VM took ("KIND MODELLED_S REAL_S" lines): a benchmark counts
        # them at their modelled length (tests/standins/cos_sim/timings.py).
        self.ledger = self.work / "ledger"
        # /var/lib/runner on the VM's disk: shared by every boot and shutdown of this VM (the
        # shutdown script's marker must reach the startup script's watcher), kept by power_cycle().
        self.state_dir = self.work / "var-lib-runner"
        self.serial = self.work / "serial.log"
        self.container_name = f"{self.name}-job"
        self.scripts = self.work / "metadata-scripts"

    # What a disk image made from this VM's boot disk carries (COS's stateful partition: the
    # driver files under /var/lib/nvidia, the images under /var/lib/docker), relative to work.
    DISK_FILES = ("var-lib-nvidia/.cos-sim-driver-installed", "var-lib-nvidia/.runner-driver",
                  "var-lib-docker/images", "var-lib-docker/layers")

    def save_disk(self, dest: Path) -> None:
        """Copy this VM's disk state to ``dest`` (what ``images.insert`` from its disk keeps)."""
        for rel in self.DISK_FILES:
            if (self.work / rel).exists():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.work / rel, dest / rel)

    def load_disk(self, src: Path) -> None:
        """Seed this (new) VM's disk from a ``save_disk`` copy: a disk created from an image."""
        for rel in self.DISK_FILES:
            if (src / rel).exists():
                (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / rel, self.work / rel)

    def has_driver_files(self) -> bool:
        return (self.work / self.DISK_FILES[0]).exists()

    def images(self) -> list[str]:
        """The images this VM's Docker holds (pulled on this disk or carried by its image)."""
        path = self.docker_root / "images"
        return path.read_text().split() if path.exists() else []

    def waits(self) -> list[tuple[str, float, float]]:
        """The modelled waits this VM took, oldest first: (kind, modelled s, real s)."""
        if not self.ledger.exists():
            return []
        out = []
        for line in self.ledger.read_text().splitlines():
            kind, modelled, real = line.split()
            out.append((kind, float(modelled), float(real)))
        return out

    def power_cycle(self) -> None:
        """A STOP/start (or preemption with terminationAction=STOP, then start): the kernel
        forgets the loaded driver modules; disks and Docker images are kept."""
        shutil.rmtree(self.kernel, ignore_errors=True)

    def containers(self) -> list[object]:
        """Every container this VM's Docker holds (job, GPU installer), running or not."""
        import docker

        return docker.from_env().containers.list(all=True, ignore_removed=True,
                                                  filters={"label": f"cos-sim.vm={self.name}"})

    def boot_from_metadata(self, metadata: "FakeMetadata", env: dict[str, str] | None = None,
                           key: str = "startup-script", timeout: float = 90) -> Boot:
        """Run the script a GCE guest would: the text of metadata attribute ``key``
        (``startup-script`` or ``shutdown-script``), against that metadata server (already
        entered: ``with metadata: vm.boot_from_metadata(metadata, ...)``)."""
        self.scripts.mkdir(exist_ok=True)
        path = self.scripts / f"{key}.sh"
        path.write_text(metadata.attributes[key])
        return self.boot({"METADATA_URL": metadata.url, **(env or {})}, script=str(path), timeout=timeout)

    def boot(self, env: dict[str, str], script: str = "startup.sh", timeout: float = 90,
             docker_ready_after: float = 0) -> Boot:
        """Run ``gcp/SCRIPT`` (or the file at an absolute path ``script`` under the work dir) as
        the VM's boot would; ``docker_ready_after``: seconds before the Docker daemon answers."""
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        # The reaper image cannot be pulled here (no registry); every container is removed below.
        testcontainers_config.ryuk_disabled = True
        docker_bin = os.path.realpath(shutil.which("docker") or "/usr/bin/docker")
        before = {c.time for c in read_calls(self.calls_dir)}
        container = (
            DockerContainer(BASE_IMAGE)
            .with_name(f"{self.name}-{Path(script).name.split('.')[0]}-{uuid.uuid4().hex[:6]}")
            .with_command(["bash", script if script.startswith("/") else f"/opt/cos-sim/gcp/{script}"])
            .with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
            .with_volume_mapping(docker_bin, "/opt/cos-sim/real/docker", "ro")
            .with_volume_mapping(str(REPO / "gcp"), "/opt/cos-sim/gcp", "ro")
            .with_volume_mapping(str(SIM / "bin"), "/opt/cos-sim/bin", "ro")
            .with_volume_mapping(str(SIM), "/opt/cos-sim/lib", "ro")  # timings.py, for the pull model
            .with_volume_mapping(str(self.work), str(self.work), "rw")
            # Only what the script needs beyond a plain container: SYS_ADMIN for its bind mount of
            # the nvidia root. (--privileged is refused here: this machine's Docker itself runs
            # without CAP_SYS_RESOURCE, so it cannot grant every capability.)
            .with_kwargs(cap_add=["SYS_ADMIN"], network_mode="host")
        )
        base_env = {
            "PATH": SIM_PATH,
            "RUNNER_NVIDIA_ROOT": str(self.nvidia_root),
            "RUNNER_DEV_ROOT": str(self.dev_root),
            "RUNNER_SERIAL": str(self.serial),  # never the host's /dev/console
            "RUNNER_CONTAINER_NAME": self.container_name,
            "COS_SIM_CALLS": str(self.calls_dir),
            "RUNNER_STATE_DIR": str(self.state_dir),
            "COS_SIM_KERNEL": str(self.kernel),
            "COS_SIM_DOCKER_ROOT": str(self.docker_root),
            "COS_SIM_LEDGER": str(self.ledger),
            "COS_SIM_VM": self.name,
            "COS_SIM_BASE_IMAGE": BASE_IMAGE,
        }
        if docker_ready_after:
            base_env["COS_SIM_DOCKER_READY_AT"] = str(int(time.time() + docker_ready_after + 1))
        for k, v in {**base_env, **env}.items():
            container.with_env(k, v)
        t0 = time.monotonic()
        try:
            container.start()
            wrapped = container.get_wrapped_container()
            code = int(wrapped.wait(timeout=timeout)["StatusCode"])
            seconds = time.monotonic() - t0
            out = wrapped.logs(stdout=True, stderr=False).decode("utf-8", "replace")
            err = wrapped.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        finally:
            container.stop()
        calls = [c for c in read_calls(self.calls_dir) if c.time not in before]
        return Boot(code, out, err, calls, seconds)
