"""What one attempt of a GCE run takes from the project's quotas, and what the project has free.

The queue (runner.launch.admission) asks this once per pass: ``regions.get`` for each region a
waiting run may use (its ``quotas[]``: metric, limit, usage) and ``projects.get`` for the
project-wide ``GPUS_ALL_REGIONS``; two calls for a one-region project, whatever the number of
waiting runs.

Which quota a VM draws on (https://docs.cloud.google.com/compute/docs/instances/create-use-spot:
"To prevent Spot VMs from consuming your quotas for standard VMs' CPUs, GPUs, and disks, consider
requesting preemptible quota for Spot VMs"):
a spot VM uses the region's preemptible quota (``PREEMPTIBLE_CPUS``,
``PREEMPTIBLE_NVIDIA_<GPU>_GPUS``) where the project has one, else the standard quota
(``CPUS``, ``NVIDIA_<GPU>_GPUS``); a standard VM always the standard one. Every GPU, spot or
not, also counts against ``GPUS_ALL_REGIONS`` ("SPOT does NOT bypass GPUS_ALL_REGIONS";
tests/standins/compute/quotas.py has the sources). A metric the region does not report is not
counted here: the insert's own refusal stays the backstop.
"""

from __future__ import annotations

from typing import Any, Iterable

from entrypoint.record import RunSpec
from runner.launch.admission import Need, Pool, Quotas

GLOBAL = "global"
PREEMPTIBLE = "PREEMPTIBLE_"


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def attempt_needs(spec: RunSpec, gpu_metric: str | None, gpu_count: int) -> tuple[Need, ...]:
    """One attempt's quota use (every node of a gang), per region of ``spec.zones`` in order.

    Spot metrics are named PREEMPTIBLE_*; ``read`` points them at the standard pool in a region
    without preemptible quota. vCPUs count when submit pinned them (``vm["vcpus"]``, from
    ``machineTypes.get``); an older spec is counted by its GPUs only.
    """
    vm = spec.vm or {}
    nodes = max(1, spec.nodes)
    spot = str(vm.get("provisioning") or "spot") != "standard"
    prefix = PREEMPTIBLE if spot else ""
    metric = gpu_metric if gpu_count else None
    out = []
    for region in dict.fromkeys(region_of(z) for z in spec.zones):
        need: dict[str, float] = {}
        if vm.get("vcpus"):
            need[f"{region}/{prefix}CPUS"] = float(vm["vcpus"]) * nodes
        if metric:
            need[f"{region}/{prefix}{metric}"] = float(gpu_count) * nodes
        if gpu_count:
            need[f"{GLOBAL}/GPUS_ALL_REGIONS"] = float(gpu_count) * nodes
        if need:
            out.append(need)
    return tuple(out)


def read(client: Any, project: str, keys: Iterable[str], retry: Any = None) -> Quotas:
    """The pools behind ``keys`` as the API reports them now (one call per scope)."""
    keys = set(keys)
    scopes = sorted({k.split("/", 1)[0] for k in keys})
    pools: dict[str, Pool] = {}
    for scope in scopes:
        if (client.projects if scope == GLOBAL else client.regions) is None:
            continue  # a client set without that API (older callers): not counted here
        if scope == GLOBAL:
            quotas = client.projects.get(project=project, retry=retry).quotas
        else:
            quotas = client.regions.get(project=project, region=scope, retry=retry).quotas
        reported = {q.metric: Pool(f"{scope}/{q.metric}", float(q.limit), float(q.usage)) for q in quotas}
        for key in keys:
            s, metric = key.split("/", 1)
            if s != scope:
                continue
            pool = reported.get(metric)
            if metric.startswith(PREEMPTIBLE) and (pool is None or pool.limit <= 0):
                pool = reported.get(metric[len(PREEMPTIBLE):])  # no preemptible quota: the standard one
            if pool is not None:
                pools[key] = pool
    return Quotas(pools)
