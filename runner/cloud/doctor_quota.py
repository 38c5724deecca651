"""`runner doctor`'s GPU quota check: the regional GPU quota of each configured region, and the
project-wide ``GPUS_ALL_REGIONS``.

Why both: a spot GPU VM draws on its region's ``PREEMPTIBLE_<GPU>`` quota (or the standard one)
*and* on ``GPUS_ALL_REGIONS``, which many projects have at 0 ("Quota 'GPUS_ALL_REGIONS' exceeded.
Limit: 0.0 globally", https://github.com/fastai/course-v3/pull/165; ``Quota.Metric`` lists it in
the compute v1 reference). With that at 0 every zone refuses, whatever the regional quota says,
so the check names it with the request to file. The GPU count of a built-in-GPU machine type is
read from ``machineTypes.get`` (``accelerators[].guestAcceleratorCount``), as submit does.
"""

from __future__ import annotations

from typing import Any

from runner.cloud.doctor import QUOTA_CONSOLE, Check, _skip
from runner.launch.backends.gce import GLOBAL_GPU_QUOTA, global_quota_request
from runner.naming import region_of

NAME = "GPU quota"


def gpu_quota_check(doctor: Any) -> Check:
    """The ``GPU quota`` line of the report (``doctor`` is doctor.py's ``_Doctor``)."""
    from runner.launch.backends.gce_shapes import ShapeError, gpu_quota_metric, resolve_gpu

    cfg = doctor.cfg
    if cfg.backend != "gce":
        return _skip(NAME, "quota applies to GCE runs only")
    try:
        req = resolve_gpu(cfg.machine_type, cfg.gpu, cfg.no_gpu)
    except ShapeError as e:
        return Check(NAME, False, str(e), "fix machine_type / gpu in runner.toml or the flags")
    if req.count == 0:
        return _skip(NAME, f"no GPU on {cfg.machine_type}")
    if not cfg.project:
        return _skip(NAME, "no project configured")
    if not cfg.zones:
        return _skip(NAME, "no zones configured, so no region to check")
    count = _built_in_count(cfg) if req.built_in else req.count
    gpu, metric = gpu_quota_metric(cfg.machine_type, cfg.gpu)
    console = QUOTA_CONSOLE.format(project=cfg.project)
    ok_parts: list[str] = []
    short: list[str] = []
    fixes: list[str] = []
    if metric is None:
        ok_parts.append(f"no known regional quota metric for {gpu}")
    else:
        client = doctor.client("regions")
        short_regions = []
        for region in sorted({region_of(z) for z in cfg.zones}):
            quotas = {q.metric: q for q in client.get(project=cfg.project, region=region).quotas}
            spot = quotas.get("PREEMPTIBLE_" + metric)
            used = spot if spot is not None and spot.limit > 0 else quotas.get(metric)
            free = (used.limit - used.usage) if used is not None else 0.0
            label = used.metric if used is not None else "PREEMPTIBLE_" + metric
            text = f"{region}: {label} {free:g} free of {used.limit if used else 0:g}"
            if free >= count:
                ok_parts.append(text)
            else:
                short.append(text)
                short_regions.append(region)
        if short_regions:
            fixes.append(f"request PREEMPTIBLE_{metric} >= {count} in {', '.join(short_regions)} at {console}")
    global_text, global_short = _global_quota(cfg, count)
    if global_short:
        short.append(global_text)
        fixes.append(global_quota_request(cfg.project, count))
    elif global_text:
        ok_parts.append(global_text)
    if short:
        return Check(NAME, False, f"{count} x {gpu} needed per VM; " + "; ".join(short + ok_parts),
                     "\n".join(fixes))
    return Check(NAME, True, f"{count} x {gpu} per VM fits: " + "; ".join(ok_parts))


def _built_in_count(cfg: Any) -> int:
    """The machine type's GPUs per ``machineTypes.get`` in the first zone, else the offline count."""
    from google.api_core import exceptions as gexc

    from runner.cloud.gcp_clients import api_retry, machine_types_client
    from runner.launch.backends.gce_shapes import offline_gpu_count

    try:
        mt = machine_types_client(cfg.compute_endpoint).get(
            project=cfg.project, zone=cfg.zones[0], machine_type=cfg.machine_type, retry=api_retry())
    except gexc.NotFound:
        return offline_gpu_count(cfg.machine_type)
    total = sum(a.guest_accelerator_count for a in mt.accelerators)
    return total or offline_gpu_count(cfg.machine_type)


def _global_quota(cfg: Any, count: int) -> tuple[str, bool]:
    """(what GPUS_ALL_REGIONS allows, whether it is short of one VM's GPUs)."""
    from runner.cloud.gcp_clients import api_retry, projects_client

    project = projects_client(cfg.compute_endpoint).get(project=cfg.project, retry=api_retry())
    quota = next((q for q in project.quotas if q.metric == GLOBAL_GPU_QUOTA), None)
    if quota is None:
        return f"no {GLOBAL_GPU_QUOTA} quota in {cfg.project} (not limited)", False
    free = quota.limit - quota.usage
    text = f"project-wide {GLOBAL_GPU_QUOTA} {free:g} free of {quota.limit:g}"
    return text, free < count
