"""Compute's capacity advice (``advice.capacity``), asked once per region before a create walks
its zones: which of them is likely to have room for this VM (or gang) now.

``advice.capacity`` is a v1 method ("Advice on making real-time decisions (such as choosing zone
or machine types) during deployment to maximize your chances of obtaining capacity",
https://docs.cloud.google.com/compute/docs/reference/rest/v1/advice.md.txt), in
google-cloud-compute as ``AdviceClient.capacity``. Its answer holds one recommendation ("Initially
the API will provide one recommendation which balances the individual scores") whose shards name
the zones to use and whose ``obtainability`` is "the likelihood of successfully obtaining
(provisioning) the requested number of VMs ... 0.0 through 1.0"
(https://documentation.s3ns.fr/php/docs/reference/cloud-compute/latest/V1.CapacityAdviceResponseRecommendationScores).

Advice only: a project that may not call it (403), a region it does not serve, a slow or failing
answer all leave the zone order as it was; each is said once per create in the reasons, never
raised. No retries: advice that comes late is worth less than the create it delays.
"""

from __future__ import annotations

from typing import Any, Sequence

from runner.naming import region_of

ADVICE_TIMEOUT_S = 10.0


def capacity_advice(clients: Any, project: str, zones: Sequence[str], machine_type: str, model: str,
                    size: int, gpu_type: str | None = None, gpu_count: int = 0
                    ) -> tuple[dict[str, float], list[str]]:
    """(zone -> obtainability for the zones the advice recommends, notes on regions it could not
    advise). One call per region of ``zones``."""
    from google.cloud import compute_v1

    advice = getattr(clients, "advice", None)
    if advice is None:
        return {}, []
    by_region: dict[str, list[str]] = {}
    for z in zones:
        by_region.setdefault(region_of(z), []).append(z)
    selection = compute_v1.CapacityAdviceRequestInstanceFlexibilityPolicyInstanceSelection(machine_types=[machine_type])
    if gpu_type and gpu_count:
        selection.guest_accelerators = [compute_v1.AcceleratorConfig(accelerator_type=gpu_type,
                                                                     accelerator_count=gpu_count)]
    advised: dict[str, float] = {}
    notes: list[str] = []
    for region, in_region in by_region.items():
        req = compute_v1.CapacityAdviceRequest(
            distribution_policy=compute_v1.CapacityAdviceRequestDistributionPolicy(
                zones=[compute_v1.CapacityAdviceRequestDistributionPolicyZoneConfiguration(zone=f"zones/{z}")
                       for z in in_region]),
            instance_flexibility_policy=compute_v1.CapacityAdviceRequestInstanceFlexibilityPolicy(
                instance_selections={"runner": selection}),
            instance_properties=compute_v1.CapacityAdviceRequestInstanceProperties(
                scheduling=compute_v1.CapacityAdviceRequestInstancePropertiesScheduling(provisioning_model=model)),
            size=max(1, size))
        try:
            resp = advice.capacity(project=project, region=region, capacity_advice_request_resource=req,
                                   timeout=ADVICE_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - advice only (see the module docstring)
            notes.append(f"no capacity advice for {region} ({getattr(e, 'code', None) or type(e).__name__})")
            continue
        for rec in list(resp.recommendations)[:1]:
            score = float(rec.scores.obtainability) if "scores" in rec else 0.0
            for shard in rec.shards:
                zone = shard.zone.rstrip("/").rsplit("/", 1)[-1]
                if zone in in_region:
                    advised[zone] = max(advised.get(zone, 0.0), score)
    return advised, notes
