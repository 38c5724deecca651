"""`runner doctor`'s two checks of the VM account's pull right agree (issue 19, item 3).

``roles/artifactregistry.reader`` granted on the image's repository alone lets the VM pull: Artifact
Registry roles may be granted per repository ("repository-specific permissions",
https://cloud.google.com/artifact-registry/docs/access-control), and the reader role holds the pull
permissions (https://cloud.google.com/iam/docs/roles-permissions/artifactregistry). The repository check
accepted it; the VM service account check wanted it on the project, so one setup got a ✓ and a
✗ for the same right. `runner init` grants it on the project, which both accept.
"""

from __future__ import annotations

from typing import Any

from runner.cloud.artifact_registry import Repository, artifact_registry
from runner.cloud.build_setup import ensure_repository_role
from runner.cloud.doctor import Check
from tests.standins.artifact_registry import ArtifactRegistryFake, artifact_registry_fake  # noqa: F401 - fixture
from tests.test_build_setup import IMAGE, P, REGION, VM_SA, config, doctor, project  # noqa: F401 - fixture

READER = "roles/artifactregistry.reader"
VM = f"serviceAccount:{VM_SA}"


def _pull_checks(cfg: Any) -> tuple[Check, Check]:
    checks = {c.name: c for c in doctor(cfg)}
    return checks["VM service account roles"], checks["Artifact Registry repository"]


def test_a_reader_grant_on_the_repository_alone_passes_both_checks(project: dict[str, Any]) -> None:  # noqa: F811
    ar: ArtifactRegistryFake = project["ar"]
    ar.add_repository(P, REGION, "runs")
    admin = project["admin"]
    admin.add_service_account(P, "cos-spot-runner")
    for role in ("roles/storage.objectAdmin", "roles/logging.logWriter", "roles/compute.instanceAdmin.v1"):
        admin.grant(P, VM, role)  # every other right the VM account needs, so only the pull right is judged
    cfg = config(project, image=IMAGE, service_account=VM_SA)

    vm_roles, repository = _pull_checks(cfg)
    assert vm_roles.ok is False and repository.ok is False  # no reader anywhere: both say so
    assert f"{READER} on {REGION}-docker.pkg.dev/{P}/runs" in vm_roles.detail
    assert vm_roles.fix == repository.fix == (
        f"gcloud artifacts repositories add-iam-policy-binding runs --location={REGION} --project={P} "
        f"--member={VM} --role={READER}")

    ensure_repository_role(artifact_registry(cfg), Repository(P, REGION, "runs"), VM, READER, sleep=lambda s: None)
    vm_roles, repository = _pull_checks(cfg)
    assert repository.ok is True
    assert vm_roles.ok is True, vm_roles.detail
    assert all(b["role"] != READER for b in admin.policy(P)["bindings"])  # granted on the repository only


def test_a_reader_grant_on_the_project_still_passes_both_checks(project: dict[str, Any]) -> None:  # noqa: F811
    project["ar"].add_repository(P, REGION, "runs")
    admin = project["admin"]
    admin.add_service_account(P, "cos-spot-runner")
    for role in ("roles/storage.objectAdmin", "roles/logging.logWriter", "roles/compute.instanceAdmin.v1", READER):
        admin.grant(P, VM, role)  # READER on the project: what `runner init` grants (PROJECT_ROLES)
    vm_roles, repository = _pull_checks(config(project, image=IMAGE, service_account=VM_SA))
    assert vm_roles.ok is True and repository.ok is True
