"""Regional quotas (CPUs, GPUs, spot and standard) checked on insert and start, as ``regions.get``
serves them, and zone stockouts (ZONE_RESOURCE_POOL_EXHAUSTED)."""

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
                  message: str) -> compute_v1.Operation:
        return self._new_op(project, zone, op_type, target,
                            error=("QUOTA_EXCEEDED", message, 403, "FORBIDDEN"))

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
