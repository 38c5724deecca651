"""Who may read a bucket's objects, decided from the IAM policies the other stand-ins hold.

The Cloud Build fake asks this (its ``source_readable_by`` hook) before a build fetches its
staged source, so a build runs only if the account it runs as really holds a role that grants
``storage.objects.list`` and ``storage.objects.get`` on the bucket or its project, as Cloud
Build's FETCHSOURCE needs. One policy, two places: the bucket's own IAM policy (the GCS
emulator's) and the project's (the admin fake's), as ``runner init`` writes them.

Roles that grant both permissions: roles/storage.objectViewer, objectUser, objectAdmin and admin
(https://cloud.google.com/storage/docs/access-control/iam-roles); the basic roles/editor and
roles/owner; and roles/cloudbuild.builds.builder, the legacy Cloud Build account's role, which
reads any bucket of its project. Conditions and deny policies are not modelled.
"""

from __future__ import annotations

from typing import Any, Callable

READS_OBJECTS = frozenset({"roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectAdmin",
                           "roles/storage.admin", "roles/editor", "roles/owner", "roles/cloudbuild.builds.builder"})


def object_readers(storage_client: Any, admin: Any, project: str) -> Callable[[str, str], bool]:
    """``(account email, bucket) -> bool`` for the Cloud Build fake's ``source_readable_by``."""

    def may_read(email: str, bucket: str) -> bool:
        member = f"serviceAccount:{email}"
        policy = storage_client.bucket(bucket).get_iam_policy(requested_policy_version=3)
        on_bucket = {b["role"] for b in policy.bindings if member in b.get("members", ())}
        on_project = {b["role"] for b in admin.policy(project)["bindings"]
                      if member in b.get("members", ()) and not b.get("condition")}
        return bool(READS_OBJECTS & (on_bucket | on_project))

    return may_read
