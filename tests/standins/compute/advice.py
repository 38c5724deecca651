"""``advice.capacity`` (POST projects/P/regions/R/advice/capacity): Compute's real-time capacity
advice, "Advice on making real-time decisions (such as choosing zone or machine types) during
deployment to maximize your chances of obtaining capacity"
(https://docs.cloud.google.com/compute/docs/reference/rest/v1/advice.md.txt).

The shapes are the v1 reference's: the request names the zones (``distributionPolicy.zones[]``),
the machine types (``instanceFlexibilityPolicy.instanceSelections``), the provisioning model
(``instanceProperties.scheduling.provisioningModel``) and ``size``; the response holds
recommendations, and "Initially the API will provide one recommendation which balances the
individual scores" (CapacityAdviceResponse.recommendations,
https://documentation.s3ns.fr/dotnet/docs/reference/Google.Cloud.Compute.V1/latest/Google.Cloud.Compute.V1.CapacityAdviceResponse),
whose ``shards`` "represent blocks of uniform capacity" (zone, machine type, provisioning model,
instance count) and whose ``scores.obtainability`` is "the likelihood of successfully obtaining
(provisioning) the requested number of VMs ... 0.0 through 1.0. Higher is better"
(https://documentation.s3ns.fr/php/docs/reference/cloud-compute/latest/V1.CapacityAdviceResponseRecommendationScores).

How Google scores is not documented; the fake's rule is its own: the requested zone with the
highest ``capacity_scores`` entry (default 0.5) that has room now (not stocked out for the
model, ``zone_capacity`` >= size, offering the machine type) gets one shard of all ``size`` VMs,
and that score is the obtainability; no zone with room: one recommendation, no shard, 0.0.
``capacity_advice_denied``: the method answers 403, as for a project that may not call it (the
message is the fake's: the permission's name was not found in Google's pages).
"""

from __future__ import annotations

from typing import Any

from google.cloud import compute_v1

from tests.standins.compute.catalogue import ZONES
from tests.standins.compute.errors import ApiError, _invalid
from tests.standins.compute.model import _last


class CapacityAdvice:
    """The capacity advice part of ``ComputeFake``; runs under its lock."""

    def _h_capacity_advice(self, p: str, region: str, body: bytes) -> Any:
        if self.capacity_advice_denied:
            # The fake's own words: the permission's name is not in the pages we could read.
            raise ApiError(403, "forbidden", f"The caller may not ask for capacity advice in "
                           f"'projects/{p}/regions/{region}'")
        try:
            req = compute_v1.CapacityAdviceRequest.from_json(body or b"{}", ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's fault
            raise ApiError(400, "parseError", f"Invalid JSON payload received. {e}") from e
        zones = [_last(z.zone) for z in req.distribution_policy.zones]
        if not zones or any(not z.startswith(region + "-") for z in zones):
            raise _invalid("distributionPolicy.zones", ",".join(zones), f"Zones must be in region {region}.")
        types = [t for sel in req.instance_flexibility_policy.instance_selections.values() for t in sel.machine_types]
        model = req.instance_properties.scheduling.provisioning_model or "STANDARD"
        size = req.size or 1
        best: tuple[float, str, str] | None = None
        for zone in zones:
            mt = next((t for t in types if t in ZONES.get(zone, {}).get("machine_types", ())), None)
            if mt is None or not self._has_room(zone, model, size):
                continue
            score = self.capacity_scores.get(zone, 0.5)
            if best is None or score > best[0]:
                best = (score, zone, mt)
        rec = compute_v1.CapacityAdviceResponseRecommendation(
            scores=compute_v1.CapacityAdviceResponseRecommendationScores(obtainability=best[0] if best else 0.0))
        if best is not None:
            rec.shards = [compute_v1.CapacityAdviceResponseRecommendationShard(
                zone=best[1], machine_type=best[2], provisioning_model=model, instance_count=size)]
        return compute_v1.CapacityAdviceResponse(recommendations=[rec])

    def _has_room(self, zone: str, model: str, size: int) -> bool:
        if zone in self.stockout_zones or (model == "SPOT" and zone in self.spot_stockout_zones):
            return False
        return self.zone_capacity.get(zone, size) >= size
