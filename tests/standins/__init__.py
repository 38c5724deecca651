"""The worlds the tests run in: stand-ins for the Google services and the COS VM.

A product of their own, kept apart from the tests so a reader tells the two apart. Each stand-in
answers as the real service documents (status timelines, error shapes, quotas, IAM) and says in
its docstring which behaviour it models and which it does not:

- ``compute/``: Compute Engine (instances, operations, disks, catalogue, quotas, IAM, the spot
  preemption timeline), split by resource.
- ``cloudbuild``, ``artifact_registry``, ``gcp_admin`` (Service Usage, Resource Manager, IAM),
  ``cloudrun``, ``scheduler``: the other Google APIs the runner calls; ``storage_iam`` decides
  from their policies whether an account may read a bucket (the Cloud Build stand-in's source).
  All of them answer through one template and one error shape (``google_api``: ``RoutedApi``,
  ``GoogleApiError``); ``rest`` is what the Cloud Run and Scheduler stand-ins add to it,
  ``json_http_server`` the HTTP server under all of them, ``network_guard`` the refusal of every
  host but loopback while they run.
- ``gcs_emulator``, ``gcs_fault_proxy``, ``gcs_fixture``: GCS with enforced preconditions, a proxy
  that loses replies, and their pytest fixtures.
- ``registry``: a loopback image registry; ``cos_sim/``: a simulated COS VM running
  ``gcp/startup.sh`` for real; ``cloud_sim``: the Compute stand-in's VMs booted as such.
- ``memory_backend``: a ``ComputeBackend`` with no I/O, whose preemption goes through STOPPING
  on a clock the test advances; ``supervised_runs``: the ``supervised`` fixture (a local store,
  that backend, supervisors on the test's clock) the ``test_supervisor_*`` files run in.
"""
