"""Which service account a Cloud Build build runs as, and what to tell the user when it may not
read the staged source (docs/architecture.md#projects-and-builds).

Why this needs care: since 2024 a project that runs its first build runs it as the Compute Engine
default service account (``PROJECT_NUMBER-compute@developer.gserviceaccount.com``), older projects
as the legacy ``PROJECT_NUMBER@cloudbuild.gserviceaccount.com``, and an organisation that no
longer grants roles to default accounts leaves the new default with none
(https://cloud.google.com/build/docs/cloud-build-service-account-updates). A fix that names the
wrong account does not fix anything, so the account is read, in this order: from the error text
itself, from the build (``serviceAccount``), from Cloud Build's
``projects.locations.getDefaultServiceAccount``
(https://cloud.google.com/build/docs/api/reference/rest/v1/projects.locations/getDefaultServiceAccount),
and failing all of those the message says how to look it up.

The failure has two observed shapes: Cloud Build refusing the create ("could not resolve source:
... does not have storage.objects.get access") and the build failing in FETCHSOURCE with
"AccessDeniedException: 403 ACCOUNT does not have storage.objects.list access to the Google Cloud
Storage bucket" (reported for the new default account in
https://github.com/GoogleCloudPlatform/bigquery-dlp-remote-function/issues/70 and for the legacy
one in https://github.com/GoogleCloudPlatform/secrets-store-csi-driver-provider-gcp/pull/43).
"""

from __future__ import annotations

import re
from typing import Any, Callable

LEGACY_SUFFIX = "@cloudbuild.gserviceaccount.com"
COMPUTE_DEFAULT_SUFFIX = "-compute@developer.gserviceaccount.com"
SOURCE_ROLE = "roles/storage.objectViewer"  # storage.objects.get and .list: the staged source
# "ACCOUNT does not have storage.objects.list access" / "... storage.objects.get access".
_DENIED = re.compile(r"([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.com) does not have storage\.objects\.(?:get|list) access")


def source_denied(detail: str) -> bool:
    """Whether a create error or a build's failure text says the source could not be read."""
    return ("storage.objects.get" in detail or "storage.objects.list" in detail
            or "could not resolve source" in detail)


def account_in(detail: str) -> str | None:
    """The service account the denial names, when it names one."""
    m = _DENIED.search(detail)
    return m.group(1) if m else None


def account_resource(project: str, email: str) -> str:
    """``Build.serviceAccount`` form: ``projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}``."""
    return f"projects/{project}/serviceAccounts/{email}"


def email_of(resource: str) -> str:
    """``projects/P/serviceAccounts/EMAIL`` (or a bare email) → ``EMAIL``."""
    return resource.rsplit("/", 1)[-1]


def describe(email: str) -> str:
    """The account with what kind it is, so a user knows why that one was used."""
    if email.endswith(COMPUTE_DEFAULT_SUFFIX):
        return f"{email} (the Compute Engine default service account, Cloud Build's default since 2024)"
    if email.endswith(LEGACY_SUFFIX):
        return f"{email} (the legacy Cloud Build service account)"
    return email


def default_build_account(client: Any, project: str, location: str = "global") -> str | None:
    """The account builds run as when they name none; None when the project has no default
    (an organisation policy can leave it empty)."""
    from runner.cloud.gcp_clients import api_retry

    got = client.get_default_service_account(
        name=f"projects/{project}/locations/{location}/defaultServiceAccount", retry=api_retry())
    return email_of(got.service_account_email) if got.service_account_email else None


def source_access_fix(detail: str, what: str, *, project: str, bucket: str | None,
                      build_account: str = "", lookup: Callable[[], str | None] | None = None) -> str:
    """The denial turned into the grant that fixes it, naming the account that really ran.

    ``build_account`` is the build's ``serviceAccount`` when known; ``lookup`` asks Cloud Build
    for the project's default (only called when neither the text nor the build names one).
    """
    email = account_in(detail) or (email_of(build_account) if build_account else None)
    if email is None and lookup is not None:
        try:
            email = lookup()
        except Exception:  # noqa: BLE001 - the lookup is a courtesy; the message says how to do it
            email = None
    gs = f"gs://{bucket}" if bucket else "gs://BUCKET"
    if email is None:
        return (f"{what} ({detail}). The account Cloud Build runs as in {project} may not read "
                f"{gs}: find it with `gcloud builds get-default-service-account --project {project}`, "
                f"then grant it {SOURCE_ROLE}: gcloud storage buckets add-iam-policy-binding {gs} "
                f"--member=serviceAccount:ACCOUNT --role={SOURCE_ROLE}; or run `runner init` and set "
                "build_service_account to the build account it creates")
    return (f"{what} ({detail}). Cloud Build ran as {describe(email)}, which may not read {gs}. "
            f"Grant it {SOURCE_ROLE}: gcloud storage buckets add-iam-policy-binding {gs} "
            f"--member=serviceAccount:{email} --role={SOURCE_ROLE}; or run `runner init` and set "
            "build_service_account to the build account it creates (it holds exactly the roles a "
            "build needs), then `runner doctor` checks it")
