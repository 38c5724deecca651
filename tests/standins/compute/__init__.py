"""A local Compute Engine fake that the real ``google-cloud-compute`` REST clients can talk to.

Why a fake server rather than mocks: the supervisor's bugs live in how it *uses* the Compute API
(which filter it sends, how many calls a pass costs, whether it waits on the right operation,
whether it recognises a stockout that arrives as an operation error rather than an exception).
Mocking ``InstancesClient`` methods would test our assumptions about the library instead of the
library. So this module serves the compute v1 REST paths on ``127.0.0.1`` and lets product code
point its real clients at it::

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1

    opts = ClientOptions(api_endpoint=fake.endpoint)          # "http://127.0.0.1:PORT"
    instances = compute_v1.InstancesClient(client_options=opts, credentials=AnonymousCredentials())
    zone_ops = compute_v1.ZoneOperationsClient(client_options=opts, credentials=AnonymousCredentials())

Every response body is a message type of the library itself (``compute_v1.Instance``,
``compute_v1.Operation``, ...) serialized with ``type(msg).to_json``; request bodies are parsed
with ``compute_v1.Instance.from_json``. The fake therefore cannot drift from what the client
parses, and what it stores is exactly what the product sent plus the fields GCE fills in.

Behaviour kept from GCE because product code depends on it:

- Mutations answer with a ``compute#operation``. Insert failures caused by capacity
  (``ZONE_RESOURCE_POOL_EXHAUSTED``) arrive as an *operation error*, the way GCE reports them;
  ``stockout_as_http`` switches to an HTTP 503 instead. ``quota_zones`` forces an HTTP 403
  ``quotaExceeded`` in a zone; real quota accounting is below.
- Rate limits come in Compute's shape: 403 with reason ``rateLimitExceeded`` (or
  ``userRateLimitExceeded``, domain ``usageLimits``) as well as 429 (``fail_next(403, ...)``,
  ``error_codes``, ``queries_per_second``), so a client that reads every 403 as "permission
  denied" is caught.
- A preemption is a timeline, not an event. ``simulateMaintenanceEvent`` (or ``preempt``/
  ``preempt_after``) records a ``compute.instances.preempted`` zone operation (how a supervisor
  tells preemption from a crash), puts the VM in ``STOPPING`` and sends the guest an ACPI soft-off
  (``Guest.on_shutdown``: the shutdown script runs); when the guest has halted, or at the latest
  after the notice, the VM is powered off (``Guest.on_power_off``) and becomes ``TERMINATED``
  (``instanceTerminationAction=STOP``) or is deleted (``DELETE``). ``stop`` and ``delete`` take
  the same path, and their operation is DONE only once the VM is off (``stop``) or gone
  (``delete``). The notice is GCE's: 30 s for spot VMs and 120 s for standard ones between ACPI
  G2 soft off and G3 mechanical off (``Scheduling.skipGuestOsShutdown`` in the compute v1 API
  reference; "preemption process" in the Spot VMs docs), multiplied by ``time_scale``.
  ``STOPPING`` is "a temporary status; the instance moves to TERMINATED once it has stopped"
  (instance lifecycle docs). Without a guest the fake assumes the shutdown script used the whole
  notice. ``time_scale = 0`` (the default) collapses the timeline: the VM is off within the
  request, as before this was modelled; tests of the timeline set e.g. ``time_scale = 0.02``.
- The serial console keeps the last 1 MiB; ``start`` offsets older than that are moved forward
  and the response's ``start`` says so, so log followers can detect the gap.
- Regional quotas are enforced from what ``regions.get`` reports (``region_quotas``: limit and
  usage outside the fake, plus what the fake's own live VMs use). An ``insert`` or ``start`` that
  would exceed ``CPUS`` or ``NVIDIA_*_GPUS`` (spot VMs: ``PREEMPTIBLE_*`` when the project has a
  non-zero preemptible limit, the standard metric otherwise, as the Spot VMs quota docs say)
  fails with the operation error ``QUOTA_EXCEEDED`` "Quota 'M' exceeded.  Limit: L in region R."
  (HTTP status 403 in the operation), the way gcloud shows it. TERMINATED VMs use no CPU/GPU
  quota. A metric the region does not list is not limited (a simplification: GCE has them all).
- ``GPUS_ALL_REGIONS`` (``projects.get``; ``set_project_quota``) caps the GPUs of the project's
  live VMs in every region, spot included: over it every zone answers QUOTA_EXCEEDED "Quota
  'GPUS_ALL_REGIONS' exceeded.  Limit: L globally." with ``errorDetails[].quotaInfo``
  (quotas.py, with sources). Its default here is 64; many real projects have 0.
- List filters with several expressions must have each in parentheses, or the answer is GCE's
  400 "Invalid list filter expression." (filters.py). ``aggregatedList`` honours
  ``returnPartialSuccess``: a zone in ``unreachable_zones`` is left out and named in
  ``unreachables`` and an ``UNREACHABLE`` scope warning; without the flag the call fails.
- A3 Ultra and A4 machine types take Hyperdisk only: a ``pd-*`` disk on them is a 400.
- ``scheduling.maxRunDuration`` must lie between 30 seconds and 120 days and needs an
  ``instanceTerminationAction`` (gcloud ``--max-run-duration``; "Limit the run time of a VM").
  When a VM enters RUNNING, ``resourceStatus.scheduling.terminationTimestamp`` is set; when it
  is reached the VM is stopped or deleted through the usual shutdown. Stopping clears it; a
  start counts afresh. The duration runs scaled by ``time_scale`` (in real seconds when
  ``time_scale`` is 0). Not modelled: ``terminationTime`` (an absolute time limit).
- Disks are resources of their own (``disks.insert/get/list/delete``, ``add_disk``, ``disks()``,
  ``instances.attachDisk/detachDisk``).
  An instance's ``initializeParams`` disk is created with it (409 if a disk of that name exists
  in the zone); a ``source`` disk must exist (404), be in the instance's zone (400), and a
  ``READ_WRITE`` disk attaches to one instance only (400 ``resourceInUseByAnotherResource``),
  as the disks docs say of read-write mode. ``autoDelete`` defaults to false in the API (gcloud
  sets it for boot disks, the API does not): a deleted VM leaves such disks behind, with no
  users, which is what ``disks()`` lets tests assert against. A disk in use cannot be deleted.
- Networks (``networks``): a project has the auto-mode ``default`` network unless it is an
  organisation's (``org_project``: no ``default``, and ``constraints/compute.vmExternalIpAccess``
  denying external IPs); an insert naming a missing network or subnetwork, a custom-mode network
  without a subnetwork, or an external IP the policy forbids is refused with GCE's 400/412.
- ``instances.bulkInsert`` (bulk.py) makes ``count`` VMs of one shape in a zone, or none when
  fewer than ``minCount`` fit (``VM_MIN_COUNT_NOT_REACHED``, 503, in the operation); quota is
  checked up front. ``zone_capacity`` caps what a zone can still take (single inserts too), and
  ``lose_reply(rpc)`` carries a request out and loses its answer.
- ``requestId`` makes mutations idempotent, so retried inserts do not create two VMs. It must
  be a UUID other than the zero UUID, is remembered per method and zone (the same id sent to
  another zone or method is another request) for 60 minutes (``request_id_ttl``, scaled by
  ``time_scale`` when that is set), as the compute v1 reference says of ``requestId``.
- Validation that real GCE does and that catches real bugs (``strict=True``): instance and label
  names, machine/accelerator types given as zonal URLs that exist in that zone, GPUs requiring
  ``onHostMaintenance=TERMINATE``, spot VMs not being auto-restarted, metadata size limits.

Authorization (opt-in: set ``iam``): every request carries an identity, the bearer token of its
``Authorization`` header looked up in ``tokens`` (``mint_token``: e.g. what a VM's metadata
server hands its service account), or ``operator`` when there is none (the product's clients
use anonymous credentials against an http:// endpoint). The identity's roles come from the IAM
policy ``iam.policy(project)`` (the admin fake that ``runner init`` writes to), custom roles
from ``iam.role_permissions``; a request whose permission none of them carries is answered as
GCE does: 403 ``forbidden``, "Required 'compute.instances.delete' permission for 'projects/...'"
(an unknown token: 401 ``authError``). Inserting a VM that runs as a service account also
needs ``iam.serviceAccounts.actAs`` (``roles/iam.serviceAccountUser``). Predefined roles are
modelled by the compute permissions they carry (IAM "basic and predefined roles" reference),
public images (``cos-cloud``) are readable by anyone, and conditions are evaluated for the
subset ``runner init`` writes (``resource.type ==`` and ``resource.name[.extract(...)]
.startsWith(...)`` joined by ``&&``); any other condition grants nothing (a 403 a test sees).

A ``guest`` (see ``Guest``) lets a test run a simulated VM behind each instance: it is told when
the VM enters RUNNING (after insert or start), when the soft-off comes, and when power is cut.
Callbacks run on the fake's own threads, never under its lock, in the order the events happened.

Known simplifications: operations finish instantly unless ``operation_seconds`` is set; GET
echoes ``disks[].initializeParams`` (real GCE drops it); filters implement the common subset
(``=``, ``!=``, ``:``, ``<``/``>``, ``eq``/``ne`` regex, ``AND``/``OR``/``NOT``, parentheses;
several expressions only each in parentheses)
and ``:`` on a string means "contains". Unimplemented paths answer HTTP 501 so gaps are loud.

Where each part lives (split by resource, so each stays readable): ``service`` (state, switches,
one request's dispatch), ``instances``, ``bulk`` (``bulkInsert``: all or nothing down to
``minCount``, per-zone ``zone_capacity``), ``disks``, ``operations``, ``images``, ``quotas``, ``networks``,
``firewalls`` (VPC rules, the default network's four),
``iam``, ``timeline`` (boot, the preemption notice, power-off, the guest), ``catalogue`` (zones,
machine and accelerator types), ``filters``, ``routes``, ``errors``, ``model`` (the records they
share) and ``server`` (HTTP, the clock thread, the ``compute_fake`` fixture). The guard against
real endpoints is ``tests/standins/network_guard.py``, shared by every stand-in.
"""

from __future__ import annotations

from tests.standins.compute.catalogue import ACCELERATOR_TYPES, COS_IMAGES, MACHINE_TYPES, ZONES
from tests.standins.compute.errors import ApiError, to_json
from tests.standins.compute.filters import FilterError, parse_filter
from tests.standins.compute.model import (
    API, MAX_RESULTS, SERIAL_RETAIN_BYTES, SPOT_SHUTDOWN_NOTICE_S, STANDARD_SHUTDOWN_NOTICE_S, Guest,
    IamPolicySource, InstancePredicate, RecordedRequest,
)
from tests.standins.compute.server import compute_fake, run_compute_fake
from tests.standins.compute.service import ComputeFake
from tests.standins.network_guard import ExternalNetworkBlocked, block_external_network

__all__ = [
    "ACCELERATOR_TYPES", "API", "COS_IMAGES", "MACHINE_TYPES", "MAX_RESULTS", "SERIAL_RETAIN_BYTES",
    "SPOT_SHUTDOWN_NOTICE_S", "STANDARD_SHUTDOWN_NOTICE_S", "ZONES", "ApiError", "ComputeFake",
    "ExternalNetworkBlocked", "FilterError", "Guest", "IamPolicySource", "InstancePredicate",
    "RecordedRequest", "block_external_network", "compute_fake", "parse_filter", "run_compute_fake",
    "to_json",
]
