"""How long a GCE/COS boot takes, phase by phase: the figures the stand-ins wait out.

Why: a recovery on GCE is minutes (boot, ``cos-extensions install gpu``, a multi-GB image pull),
and stand-ins that make every phase instant hide it from every test and benchmark. Each figure
below names its source; ``[E]`` marks an estimate where nothing is published (a parameter, so a
benchmark can state what it assumed). The full survey, with quotes, is
docs/research/recovery-timeline.md.

Everything is multiplied by ``time_scale`` (0 = instant, the default of every stand-in: tests that
do not look at the timeline stay fast). A benchmark states the scale it ran at and reports
modelled seconds (real seconds / scale).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MB = 1_000_000


@dataclass(frozen=True)
class GceTimings:
    """Modelled seconds (before ``time_scale``) of each phase of a boot."""

    # instances.insert -> RUNNING: ~23 s request-to-SSH for an 8-vCPU VM, steady over days (third
    # party, https://robaboukhalil.medium.com/move-fast-and-break-the-cloud-b55b899e3683); GPU
    # attach and spot placement add time that Google does not publish [E]: 15 s PROVISIONING +
    # 10 s STAGING.
    insert_to_running_s: float = 25.0
    # RUNNING -> google-startup-scripts.service runs the startup script (kernel, systemd,
    # networking; docker.service comes up in parallel) [E]: part of the 23 s above is guest boot.
    guest_boot_s: float = 10.0
    # `cos-extensions install gpu` with nothing on disk, precompiled driver: installer image
    # (262 MB, https://github.com/GoogleCloudPlatform/cos-gpu-installer/pull/60) + the signed
    # runfile from the cos-tools bucket (~3.6 s in https://cos.googlesource.com/cos/tools/+/a19a377b0659e7a2b2690dc3ac8fbfac46363f46)
    # + install and modprobe [E] = ~45 s. (Compiling, no precompiled driver: ~340 s per PR #60.)
    gpu_install_cold_s: float = 45.0
    # The same on a disk that already holds the driver files (/var/lib/nvidia is on the stateful
    # partition: https://cloud.google.com/container-optimized-os/docs/concepts/disks-and-filesystem):
    # the installer finds them and only verifies and loads the modules, which every boot must
    # do (COS forgets them at power-off) [E].
    gpu_install_warm_s: float = 10.0
    # docker pull: layers download 3 at a time (docker's --max-concurrent-downloads default) at
    # ~190 MB/s each, and are extracted one after another at ~40 MB/s of compressed bytes; the
    # extraction dominates ("~1.5GB images ... ~8sec to download but another 35-40sec to
    # extract", https://github.com/moby/moby/issues/21814; sequential extraction:
    # https://github.com/moby/moby/issues/37957). A layer already on the disk costs nothing.
    pull_download_mbps: float = 190.0
    pull_concurrent_downloads: int = 3
    pull_extract_mbps: float = 40.0

    def pull_seconds(self, layer_bytes: list[int]) -> float:
        """Modelled seconds to pull these (missing) layers: the downloads overlap the extraction
        of earlier layers, so it is the longer of the two plus the first layer's download."""
        if not layer_bytes:
            return 0.0
        total = sum(layer_bytes) / MB
        download = total / (self.pull_download_mbps * self.pull_concurrent_downloads)
        extract = total / self.pull_extract_mbps
        return max(download, extract) + layer_bytes[0] / MB / self.pull_download_mbps


@dataclass(frozen=True)
class SimClock:
    """The modelled timings and the one factor that turns them into real seconds, plus how much
    bigger the modelled workload image is than the test image (so a benchmark can model an
    8 GB CUDA image with a 100 MB one: every layer's bytes are multiplied by ``image_factor``)."""

    timings: GceTimings = GceTimings()
    time_scale: float = 0.0
    image_factor: float = 1.0

    def real(self, modelled_s: float) -> float:
        return modelled_s * self.time_scale

    def with_scale(self, time_scale: float) -> "SimClock":
        return replace(self, time_scale=time_scale)

    def guest_env(self) -> dict[str, str]:
        """What the simulated VM's shims read (cos-extensions, the pull model)."""
        t = self.timings
        return {
            "COS_SIM_TIME_SCALE": repr(self.time_scale),
            "COS_SIM_GPU_INSTALL_COLD_S": repr(t.gpu_install_cold_s),
            "COS_SIM_GPU_INSTALL_WARM_S": repr(t.gpu_install_warm_s),
            "COS_SIM_PULL_DOWNLOAD_MBPS": repr(t.pull_download_mbps),
            "COS_SIM_PULL_CONCURRENT": str(t.pull_concurrent_downloads),
            "COS_SIM_PULL_EXTRACT_MBPS": repr(t.pull_extract_mbps),
            "COS_SIM_IMAGE_FACTOR": repr(self.image_factor),
        }


__all__ = ["GceTimings", "SimClock", "MB"]
