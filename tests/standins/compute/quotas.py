"""Regional quotas (CPUs, GPUs, spot and standard) checked on insert and start, as ``regions.get``
serves them, the project-wide ``GPUS_ALL_REGIONS`` (``projects.get``), and zone stockouts
(ZONE_RESOURCE_POOL_EXHAUSTED).

``GPUS_ALL_REGIONS`` caps the GPUs of every live VM of the project, in all regions, spot VMs
included ("SPOT does NOT bypass GPUS_ALL_REGIONS", observed across 11 zones in a public report;
``gcloud compute project-info describe`` shows it as ``{'limit': 0.0, 'metric':
'GPUS_ALL_REGIONS', 'usage': 0.0}`` in a new project). Over it, every zone refuses with the
operation error QUOTA_EXCEEDED "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally." whose
``errorDetails[].quotaInfo`` carries ``metricName`` compute.googleapis.com/gpus_all_regions,
``limitName`` GPUS-ALL-REGIONS-per-project, ``limit`` and ``dimensions`` {global: global}: the
fields gcloud prints under that message (https://github.com/fastai/course-v3/pull/165 for the
message; QuotaExceededInfo in the compute v1 reference,
https://documentation.s3ns.fr/compute/docs/reference/rest/v1/QuotaExceededInfo, for the shape).
The fake's default limit is 64, so tests that do not look at it are not limited by it; a new
project's 0 is ``set_project_quota("GPUS_ALL_REGIONS", 0)``.
"""

from __future__ import annotations

from typing import Any, Optional

from google.cloud import compute_v1

from tests.standins.compute.catalogue import MACHINE_TYPES, ZONES, _QUOTA_METRICS
from tests.standins.compute.errors import ApiError, _not_found
from tests.standins.compute.model import API, _is_spot, _last, _region


class QuotaRules:
    """The quota and stockout part of ``ComputeFake``; runs under its lock."""

    def set_quota(self, region: str, metric: str, limit: float, usage: float = 0.0) -> None:
        with self.lock:
            self.region_quotas.setdefault(region, {})[metric] = (limit, usage)

    def set_project_quota(self, metric: str, limit: float, usage: float = 0.0) -> None:
        """A project-wide quota (``GPUS_ALL_REGIONS``), as ``projects.get`` reports it."""
        with self.lock:
            self.project_quotas[metric] = (limit, usage)

    def _project_gpus(self, project: str) -> float:
        return sum(amount for vm in self._vms.values()
                   if vm.project == project and vm.instance.status not in ("TERMINATED", "SUSPENDED")
                   for metric, amount in self._quota_needs(vm.instance).items() if metric != "CPUS")

    def _global_gpu_refusal(self, project: str, inst: compute_v1.Instance
                            ) -> Optional[tuple[str, list[compute_v1.ErrorDetails]]]:
        """(message, errorDetails) when ``inst``'s GPUs would pass GPUS_ALL_REGIONS, else None."""
        if "GPUS_ALL_REGIONS" not in self.project_quotas:
            return None
        wanted = sum(a for m, a in self._quota_needs(inst).items() if m != "CPUS")
        limit, usage = self.project_quotas["GPUS_ALL_REGIONS"]
        if not wanted or usage + self._project_gpus(project) + wanted <= limit:
            return None
        info = compute_v1.QuotaExceededInfo(
            metric_name="compute.googleapis.com/gpus_all_regions",
            limit_name="GPUS-ALL-REGIONS-per-project", limit=limit,
            dimensions={"global": "global"})
        return (f"Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: {limit:.1f} globally.",
                [compute_v1.ErrorDetails(quota_info=info)])

    def _h_project(self, p: str) -> Any:
        """``projects.get``: the project-wide quotas, with the fake's own live GPUs as usage."""
        quotas = []
        for metric, (limit, usage) in sorted(self.project_quotas.items()):
            live = self._project_gpus(p) if metric == "GPUS_ALL_REGIONS" else 0.0
            quotas.append(compute_v1.Quota(metric=metric, limit=limit, usage=usage + live))
        return compute_v1.Project(kind="compute#project", name=p, id=abs(hash(p)) % 10**12,
                                  quotas=quotas, self_link=f"{API}/projects/{p}")

    def _quota_error(self, zone: str, inst: compute_v1.Instance) -> ApiError:
        types = [_last(a.accelerator_type) for a in inst.guest_accelerators]
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        if spec and spec.accelerator:
            types.append(spec.accelerator[0])
        metric = next((_QUOTA_METRICS[t] for t in types if t in _QUOTA_METRICS), self.quota_metric)
        region = zone.rsplit("-", 1)[0]
        return ApiError(403, "quotaExceeded",
                        f"Quota '{metric}' exceeded.  Limit: 0.0 in region {region}.",
                        domain="usageLimits")

    def _quota_needs(self, inst: compute_v1.Instance) -> dict[str, float]:
        """The quota metrics (unprefixed) and amounts a running ``inst`` uses."""
        spec = MACHINE_TYPES.get(_last(inst.machine_type))
        needs: dict[str, float] = {"CPUS": float(spec.cpus if spec else 1)}
        gpus = [(_last(a.accelerator_type), a.accelerator_count) for a in inst.guest_accelerators]
        if spec and spec.accelerator and not gpus:
            gpus.append(spec.accelerator)
        for kind, count in gpus:
            metric = _QUOTA_METRICS.get(kind)
            if metric:
                needs[metric] = needs.get(metric, 0.0) + count
        return needs

    def _metric_for(self, region: str, metric: str, spot: bool) -> str:
        """Spot VMs draw on PREEMPTIBLE_<metric> when the project has a limit there."""
        pre = f"PREEMPTIBLE_{metric}"
        if spot and self.region_quotas.get(region, {}).get(pre, (0.0, 0.0))[0] > 0:
            return pre
        return metric

    def _live_usage(self, project: str, region: str) -> dict[str, float]:
        used: dict[str, float] = {}
        for vm in self._vms.values():
            if vm.project != project or _region(vm.zone) != region or \
                    vm.instance.status in ("TERMINATED", "SUSPENDED"):
                continue
            for metric, amount in self._quota_needs(vm.instance).items():
                m = self._metric_for(region, metric, _is_spot(vm.instance))
                used[m] = used.get(m, 0.0) + amount
        return used

    def _quota_exceeded(self, project: str, zone: str, inst: compute_v1.Instance
                        ) -> Optional[str]:
        """The message of the first regional quota ``inst`` would exceed, or None."""
        region = _region(zone)
        quotas = self.region_quotas.get(region, {})
        live = self._live_usage(project, region)
        for metric, amount in self._quota_needs(inst).items():
            m = self._metric_for(region, metric, _is_spot(inst))
            if m not in quotas:
                continue
            limit, usage = quotas[m]
            if usage + live.get(m, 0.0) + amount > limit:
                return f"Quota '{m}' exceeded.  Limit: {limit:.1f} in region {region}."
        return None

    def _quota_op(self, project: str, zone: str, target: compute_v1.Instance, op_type: str,
                  message: str, details: Optional[list[compute_v1.ErrorDetails]] = None
                  ) -> compute_v1.Operation:
        return self._new_op(project, zone, op_type, target,
                            error=("QUOTA_EXCEEDED", message, 403, "FORBIDDEN"), error_details=details)

    def _stockout(self, project: str, zone: str, target: compute_v1.Instance,
                  op_type: str) -> compute_v1.Operation:
        message = (f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                   "available to fulfill the request.  Try a different zone, or try again later.")
        if self.stockout_as_http:
            raise ApiError(503, "ZONE_RESOURCE_POOL_EXHAUSTED", message)
        return self._new_op(project, zone, op_type, target, error=(
            "ZONE_RESOURCE_POOL_EXHAUSTED", message, 503, "SERVICE UNAVAILABLE"))

    def _h_region(self, p: str, region: str) -> Any:
        if region not in self.region_quotas:
            raise _not_found(f"projects/{p}/regions/{region}")
        live = self._live_usage(p, region)
        return compute_v1.Region(
            kind="compute#region", id=3000 + sorted(self.region_quotas).index(region),
            name=region, description=region, status="UP",
            zones=[f"{API}/projects/{p}/zones/{z}" for z in sorted(ZONES) if z.startswith(region + "-")],
            quotas=[compute_v1.Quota(metric=m, limit=lim, usage=use + live.get(m, 0.0))
                    for m, (lim, use) in sorted(self.region_quotas[region].items())],
            self_link=f"{API}/projects/{p}/regions/{region}")
