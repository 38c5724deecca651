"""The guest side of the Compute fake: every VM it runs is a simulated COS VM (tests/standins/cos_sim).

Why: the GCE path is only proven when the VM the supervisor created is the one that runs the job.
So a VM here boots **from the metadata the product inserted**, not from metadata a test wrote:
its ``startup-script`` and ``shutdown-script`` must equal ``gcp/``'s files (checked at every
boot), the ``runner-*`` keys are served by a metadata server that is as strict as GCE's, and the
real startup script pulls the pinned image, starts the real agent container and later deletes its
own instance through the Compute fake. The VM's own API calls reach the real stand-ins:
``GCS_API`` is the GCS emulator, ``COMPUTE_API`` the Compute fake.

The guest follows the VM lifecycle GCE documents for spot VMs
(https://cloud.google.com/compute/docs/instances/spot#preemption-process and
https://cloud.google.com/compute/docs/instances/create-use-spot, "Handle preemption with a
shutdown script"): RUNNING boots the guest (startup script on every boot, a STOP/start included);
the preemption notice is an ACPI soft-off that runs the shutdown script; after it the VM is
powered off, which kills whatever still runs, and the GPU driver modules are gone with it (COS
keeps the driver files on the boot disk, but the kernel modules must be loaded again).

Two ways to drive it:

- as the fake's guest hook (``fake.guest = guest``): the fake calls ``on_running``,
  ``on_shutdown`` (within the notice) and ``on_power_off`` at the right points of its timeline;
- by polling (``guest.follow(fake)``) for a fake without the hook: a VM that turns RUNNING is
  booted, one that disappears or stops is shut down, then powered off.

What it does not model: a VM's network identity (every VM shares the host's loopback), disks
beyond the work directory a VM keeps across a STOP/start (its "boot disk"), and the serial
console beyond what the script printed (appended to the fake's console when each boot ends).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tests.standins.cos_sim.fakes import FakeMetadata
from tests.standins.cos_sim.timings import SimClock
from tests.standins.cos_sim.vm import REPO, SIM_PATH, Boot, CosVm

STARTUP_FILE = REPO / "gcp" / "startup.sh"
SHUTDOWN_FILE = REPO / "gcp" / "shutdown.sh"
LIVE = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING")
_REAL_PULL_SHIM = """#!/bin/bash
# docker on a cloud_sim VM: `pull` is real (tests/standins/cloud_sim.py), then takes the modelled
# time of the layers this VM's disk lacks (cos_sim/bin/cos-sim-pull-model); everything else is
# cos_sim's shim.
if [[ ${1:-} == pull ]]; then
  for a in "$@"; do printf "%s\\0" "$a"; done >"$COS_SIM_CALLS/docker.$(date +%s%N).$$"
  /opt/cos-sim/real/docker "$@" || exit
  exec /opt/cos-sim/bin/cos-sim-pull-model "${!#}"
fi
exec /opt/cos-sim/bin/docker "$@"
"""


def _metadata(instance: Any) -> dict[str, str]:
    return {i.key: i.value for i in instance.metadata.items}


def _gpus(instance: Any) -> int:
    return sum(int(a.accelerator_count) for a in instance.guest_accelerators)


@dataclass
class GuestVm:
    """One VM as its guest sees it: the work dir survives a STOP/start (its boot disk)."""

    project: str
    zone: str
    name: str
    cos: CosVm
    run_id: str = ""
    boots: list[Boot] = field(default_factory=list)
    shutdowns: list[Boot] = field(default_factory=list)
    booting: Optional[threading.Thread] = None
    metadata: Optional[FakeMetadata] = None
    powered_off: threading.Event = field(default_factory=threading.Event)
    running_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.booting is not None and self.booting.is_alive()


class CosGuest:
    """Runs the Compute fake's VMs as simulated COS VMs; see the module docstring.

    ``errors`` collects what a test must fail on (a VM booted with scripts that are not gcp/'s,
    a boot that crashed): the hooks run in the fake's threads, where raising would go unseen.
    """

    def __init__(self, work: Path, *, gcs_api: str, compute_api: str, docker_client: Any,
                 vm_env: Optional[dict[str, str]] = None, boot_timeout: float = 600,
                 halt_seconds: float = 2.0, token_for: Optional[Callable[[Any], str]] = None,
                 clock: SimClock = SimClock()) -> None:
        self.work = work
        self.gcs_api, self.compute_api = gcs_api, compute_api
        self.docker = docker_client
        self.vm_env = dict(vm_env or {})
        self.boot_timeout = boot_timeout
        # The OS goes on shutting down after the shutdown script (services stop, disks unmount)
        # before the VM halts; the VM stays STOPPING meanwhile, which a supervisor must wait out.
        self.halt_seconds = halt_seconds
        # The access token the VM's metadata server hands out for the instance's service account
        # (e.g. one the Compute fake maps to that account, to enforce its IAM roles).
        self.token_for = token_for or (lambda _instance: f"ya29.cos-sim-{uuid.uuid4().hex}")
        # Per-boot extras chosen from the VM's metadata (e.g. a driver install that hangs in
        # attempt 1 only): a test sets it, and clears it after.
        self.env_for: Optional[Callable[[dict[str, str]], dict[str, str]]] = None
        # GCE-like durations of the guest's phases (guest boot, Docker, driver install, pull),
        # scaled; SimClock() (scale 0) keeps them instant.
        self.clock = clock
        self.errors: list[str] = []
        self.vms: dict[tuple[str, str, str], GuestVm] = {}
        self.images: dict[str, Path] = {}  # disk image name -> its copy of the source VM's disk
        self.lock = threading.RLock()
        self.max_live_per_run: Counter[str] = Counter()  # most VMs of one run seen booted at once
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None

    # ---- the hook the Compute fake calls ------------------------------------------------------

    def on_running(self, project: str, zone: str, name: str, instance: Any) -> None:
        """The VM entered RUNNING (insert or start): boot it in the background. Never blocks."""
        with self.lock:
            vm = self.vms.get((project, zone, name))
            if vm is None:
                safe = f"{name[:40]}-{uuid.uuid4().hex[:6]}"
                vm = GuestVm(project, zone, name, CosVm(self.work / safe, gpus=_gpus(instance), name=f"cs-{safe}"))
                self.vms[(project, zone, name)] = vm
                source = next((d.initialize_params.source_image for d in instance.disks if d.boot), "")
                if source.rsplit("/", 1)[-1] in self.images:  # a boot disk made from a disk image
                    vm.cos.load_disk(self.images[source.rsplit("/", 1)[-1]])
            if vm.alive:
                self.errors.append(f"{zone}/{name}: RUNNING again while its previous boot still runs")
                return
            attrs = _metadata(instance)
            vm.run_id = attrs.get("runner-run-id", "")
            for key, path in (("startup-script", STARTUP_FILE), ("shutdown-script", SHUTDOWN_FILE)):
                if attrs.get(key) != path.read_text():
                    self.errors.append(f"{zone}/{name}: metadata {key} is not {path.relative_to(REPO)}")
            vm.powered_off.clear()
            vm.metadata = FakeMetadata(attributes=attrs, instance=name, zone=zone, project=project,
                                       token=self.token_for(instance))
            vm.running_at = time.time()  # the kernel starts: what the VM's uptime counts from
            vm.booting = threading.Thread(target=self._boot, args=(vm,), name=f"guest-{name}", daemon=True)
            vm.booting.start()
            self._count_live()

    def on_image_created(self, project: str, image: str, source_disk: str) -> None:
        """``images.insert`` from a VM's boot disk (named after the VM, as GCE names it): keep
        a copy of that disk's state; a VM booted from the image starts with it (``on_running``)."""
        _p, _zones, zone, _disks, disk = source_disk.split("/")[-5:]
        vm = self.vms.get((project, zone, disk))
        if vm is None:
            self.errors.append(f"image {image}: its source disk {source_disk} is no VM's boot disk here")
            return
        dest = self.work / "images" / image
        vm.cos.save_disk(dest)
        self.images[image] = dest

    def on_shutdown(self, project: str, zone: str, name: str, notice_seconds: float) -> None:
        """ACPI soft-off: run the shutdown script, for at most ``notice_seconds`` (blocks)."""
        vm = self.vms.get((project, zone, name))
        if vm is None or not vm.alive or vm.metadata is None:
            return  # never booted, or its job already ended and the boot is over
        deadline = time.monotonic() + notice_seconds
        try:
            shutdown = vm.cos.boot_from_metadata(vm.metadata, self._env(vm), key="shutdown-script",
                                                 timeout=max(notice_seconds, 1))
            vm.shutdowns.append(shutdown)
            self._serial(vm, shutdown.stdout)
        except Exception as e:  # noqa: BLE001 - the notice ran out (or docker failed): GCE powers off anyway
            vm.shutdowns.append(Boot(-1, "", repr(e), [], notice_seconds))
            return
        time.sleep(max(0.0, min(self.halt_seconds, deadline - time.monotonic())))

    def on_power_off(self, project: str, zone: str, name: str) -> None:
        """Hard off: whatever still runs on the VM is killed; the driver modules are unloaded."""
        vm = self.vms.get((project, zone, name))
        if vm is None:
            return
        vm.powered_off.set()
        from docker.errors import APIError, NotFound

        # The startup script's container, the job's, a GPU installer's: everything of this VM.
        named = self.docker.containers.list(all=True, ignore_removed=True, filters={"name": vm.cos.name})
        for c in {c.id: c for c in [*named, *vm.cos.containers()]}.values():
            try:
                c.remove(force=True)
            except NotFound:
                pass  # it ended and was removed on its own meanwhile
            except APIError as e:
                if e.status_code != 409:  # 409: its removal is already in progress
                    raise
        vm.cos.power_cycle()  # the driver's kernel modules are gone; the disk is kept
        if vm.booting is not None:
            vm.booting.join(timeout=10)  # its metadata server stops with it
        self._count_live()

    # ---- booting ------------------------------------------------------------------------------

    def _env(self, vm: GuestVm) -> dict[str, str]:
        assert vm.metadata is not None
        return {
            "PATH": f"{self._pull_shim(vm)}:{SIM_PATH}",
            "METADATA_URL": vm.metadata.url, "GCS_API": self.gcs_api, "COMPUTE_API": self.compute_api,
            # The agent's own google-cloud-storage client reaches GCS here (startup.sh passes it on).
            "STORAGE_EMULATOR_HOST": self.gcs_api,
            # The script waits for the job in the foreground: its container is the VM's lifetime.
            "RUNNER_RELEASE_WAIT": "foreground",
            "PULL_RETRIES": "3", "PULL_BACKOFF": "1", "RUNNER_GPU_POLL": "0.2", "RUNNER_GPU_DIAG_INTERVAL": "2",
            # The VM's own clock of its boot (on COS: now - /proc/uptime; here the container's
            # uptime is the host's).
            "RUNNER_BOOTED_AT": f"{vm.running_at:.3f}",
            **self.clock.guest_env(),
            **self.vm_env,
            **(self.env_for(dict(vm.metadata.attributes)) if self.env_for else {}),
        }

    @staticmethod
    def _pull_shim(vm: GuestVm) -> Path:
        """A ``docker`` found before cos_sim's: ``pull`` really pulls (from the loopback registry
        the image was pushed to), the rest goes to cos_sim's shim. The calls are recorded the way
        cos_sim records them, so ``Boot.argv_of("docker", "pull")`` still sees the pull."""
        bin_dir = vm.cos.work / "bin"
        bin_dir.mkdir(exist_ok=True)
        shim = bin_dir / "docker"
        shim.write_text(_REAL_PULL_SHIM)
        shim.chmod(0o755)
        return bin_dir

    def _boot(self, vm: GuestVm) -> None:
        assert vm.metadata is not None
        # Kernel, systemd, networking: the startup script runs this long after RUNNING.
        if vm.powered_off.wait(self.clock.real(self.clock.timings.guest_boot_s)):
            return
        if self.clock.time_scale:
            with open(vm.cos.ledger, "a") as f:
                f.write(f"guest_boot {self.clock.timings.guest_boot_s} {self.clock.real(self.clock.timings.guest_boot_s)}\n")
        try:
            with vm.metadata:
                boot = vm.cos.boot_from_metadata(vm.metadata, self._env(vm), timeout=self.boot_timeout)
            vm.boots.append(boot)
            self._serial(vm, boot.stdout)
            if boot.exit_code != 0 and not vm.powered_off.is_set():
                self.errors.append(f"{vm.zone}/{vm.name}: startup script exited {boot.exit_code}: "
                                   f"{boot.stdout[-2000:]}\n{boot.stderr[-2000:]}")
        except Exception as e:  # noqa: BLE001 - a power-off kills the container mid-wait
            if not vm.powered_off.is_set():
                self.errors.append(f"{vm.zone}/{vm.name}: boot crashed: {e!r}")

    def _serial(self, vm: GuestVm, text: str) -> None:
        fake = getattr(self, "fake", None)
        if fake is None or not text:
            return
        try:
            fake.append_serial(vm.zone, vm.name, text, project=vm.project)
        except KeyError:
            pass  # the VM is already gone (it deleted itself): its console went with it

    def _count_live(self) -> None:
        with self.lock:
            live = Counter(vm.run_id for vm in self.vms.values() if vm.alive and not vm.powered_off.is_set())
            for run, n in live.items():
                self.max_live_per_run[run] = max(self.max_live_per_run[run], n)

    # ---- polling, for a fake without the guest hook --------------------------------------------

    def follow(self, fake: Any, notice_seconds: float = 10, interval: float = 0.1) -> None:
        """Watch ``fake``'s instances and drive the hooks from what the API shows."""
        self.fake = fake
        if hasattr(fake, "guest"):
            fake.guest = self
            return
        started: dict[tuple[str, str, str], str] = {}

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    seen = {}
                    for inst in fake.instances():
                        key = (fake.project, inst.zone.rsplit("/", 1)[-1], inst.name)
                        seen[key] = inst
                        boot_id = f"{inst.id}/{inst.last_start_timestamp}"
                        if inst.status == "RUNNING" and started.get(key) != boot_id:
                            self._end(key)
                            started[key] = boot_id
                            self.on_running(*key, inst)
                    for key, vm in list(self.vms.items()):
                        inst = seen.get(key)
                        if vm.alive and (inst is None or inst.status not in LIVE
                                         or started.get(key) != f"{inst.id}/{inst.last_start_timestamp}"):
                            self._end(key, notice_seconds)
                except Exception as e:  # noqa: BLE001 - keep following; the test fails on errors
                    self.errors.append(f"guest poller: {e!r}")

        self._poller = threading.Thread(target=loop, name="cos-guest-poller", daemon=True)
        self._poller.start()

    def _end(self, key: tuple[str, str, str], notice_seconds: float = 10) -> None:
        vm = self.vms.get(key)
        if vm is not None and vm.alive:
            self.on_shutdown(*key, notice_seconds)
            self.on_power_off(*key)

    def close(self) -> None:
        """Power off every VM still running (the fake is going away) and stop following."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        for key in list(self.vms):
            self.on_power_off(*key)
        shutil.rmtree(self.work, ignore_errors=True)


class LiveVmSampler:
    """Counts, every 50 ms, the VMs of each run that the Compute API shows alive (any status but
    TERMINATED); keeps the maximum per run. Why sampled and not asserted at the end: two VMs of one
    run that overlap for a second leave no trace once both are gone."""

    def __init__(self, fake: Any, label: str = "run-id", interval: float = 0.05) -> None:
        self.fake, self.label, self.interval = fake, label, interval
        self.api_max: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-vm-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            live = Counter(i.labels.get(self.label, "?") for i in self.fake.instances() if i.status in LIVE)
            for run, n in live.items():
                self.api_max[run] = max(self.api_max[run], n)
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
