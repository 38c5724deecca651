"""Where the hosted supervisor's every-minute schedule lives: a Cloud Scheduler location, which
need not be the Cloud Run job's region.

Why: Cloud Scheduler is offered in fewer regions than Cloud Run, and came to them one by one (its
release notes add europe-west4 and the me-* regions on 2026-04-17, asia-south2, europe-west12 and
northamerica-northeast2 on 2026-09-24: https://docs.cloud.google.com/scheduler/docs/release-notes);
europe-west9 runs Cloud Run jobs and has no Cloud Scheduler
(github.com/GoogleCloudPlatform/terraform-google-cloud-workflows/pull/37 moves a schedule out of
it). A schedule elsewhere still runs the job: its target is the job's ``:run`` URL on the global
endpoint (``https://run.googleapis.com/v2/projects/P/locations/REGION/jobs/J:run``, the region in
the path), which any HTTP target may call, and Cloud Run's own guide names the schedule's
``SCHEDULER_REGION`` apart from the job's (https://cloud.google.com/run/docs/execute/jobs-on-schedule).

Which locations exist is asked of Cloud Scheduler (``projects.locations.list``), never read from
a list of ours that would age. A location it does not offer is refused here, naming the ones
near: Cloud Scheduler itself answers a job call there with 403 "lacks IAM permission
cloudscheduler.jobs.create ... (or the resource may not exist)"
(github.com/hashicorp/terraform-provider-google/issues/7001), which reads as a missing role.

The default (``scheduler_region`` unset) is the job's own region when offered; else the offered
location nearest by name (the longest shared prefix: europe-west9 -> europe-west1...), among those
of the same geography first (``us-``, ``europe-``, ``asia-``...), preferring the area's oldest
Cloud Scheduler region on a tie (``AREA_DEFAULT``); else us-central1. One POST a minute crosses
the distance, so any location works; a near one only keeps the schedule in the user's geography.
"""

from __future__ import annotations

import os
from typing import Any

# The region each geography's ties go to: the App Engine-era Cloud Scheduler region of that
# area, offered the longest (its overview: "available in all regions App Engine supports").
AREA_DEFAULT = {"us": "us-central1", "northamerica": "northamerica-northeast1",
                "southamerica": "southamerica-east1", "europe": "europe-west1", "asia": "asia-northeast1",
                "australia": "australia-southeast1", "me": "me-west1"}
LAST_RESORT = "us-central1"


class ScheduleLocationError(RuntimeError):
    """The configured schedule location is not offered; the message names offered ones."""


def offered_locations(scheduler: Any, project: str) -> list[str]:
    """Every location Cloud Scheduler offers to ``project``, all pages read (sorted)."""
    from google.cloud.location import locations_pb2

    from runner.cloud.gcp_clients import api_retry

    found: list[str] = []
    token = ""
    while True:
        page = scheduler.list_locations(
            request=locations_pb2.ListLocationsRequest(name=f"projects/{project}", page_token=token),
            retry=api_retry())
        found += [loc.location_id or loc.name.rsplit("/", 1)[-1] for loc in page.locations]
        token = page.next_page_token
        if not token:
            return sorted(set(found))


def _area(region: str) -> str:
    return region.split("-", 1)[0]


def nearest(region: str, offered: list[str]) -> str:
    """The offered location nearest ``region`` by the rule in the module docstring."""
    if region in offered:
        return region
    same_area = [o for o in offered if _area(o) == _area(region)]
    if not same_area:
        return LAST_RESORT if LAST_RESORT in offered or not offered else offered[0]
    shared = max(len(os.path.commonprefix([region, o])) for o in same_area)
    closest = [o for o in same_area if len(os.path.commonprefix([region, o])) == shared]
    preferred = AREA_DEFAULT.get(_area(region))
    return preferred if preferred in closest else sorted(closest)[0]


def choose(job_region: str, offered: list[str], configured: str | None = None,
           configured_from: str = "config") -> str:
    """The schedule's location: ``configured`` when offered (else refused, naming nearby ones),
    otherwise the job's region or the nearest offered one."""
    if configured:
        if configured not in offered:
            near = sorted({nearest(configured, offered), nearest(job_region, offered)})
            raise ScheduleLocationError(
                f"scheduler_region {configured!r} (from {configured_from}) is not a Cloud Scheduler location "
                f"(it offers {len(offered)}: `gcloud scheduler locations list`); use one near it, e.g. "
                f"{' or '.join(near)}, or leave scheduler_region unset to pick one")
        return configured
    return nearest(job_region, offered)
