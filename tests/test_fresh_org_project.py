"""Issue 19's "Done when": a first user with a fresh project of a 2024+ organisation runs
`runner init`, then `runner doctor` until it passes, doing exactly what each ✗ says, and their
first run then gets its VM.

The organisation, as the stand-ins model it: no ``default`` network
(``constraints/compute.skipDefaultNetworkCreation``), no external IPs for any VM
(``constraints/compute.vmExternalIpAccess``, denied in the admin fake, which the Compute fake
enforces), and a project policy that gives the Compute default service account no role. The
user is the project's owner.

The user is literal: ``follow`` turns each fix line into the call the command makes (gcloud's
REST request, a runner.toml edit, `runner init`), and a fix line it cannot follow fails the test:
every missing piece must be named with a fix a user can act on. Other items of issue 19 add
their pieces (the build service account, the Artifact Registry repository, ``GPUS_ALL_REGIONS``)
to the organisation in ``org_project`` and the commands their fixes print to ``COMMANDS``.
"""

from __future__ import annotations

import re
import shlex
import uuid
from typing import Any, Callable

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1, storage

from entrypoint.record import RunRecord, State
from runner.config import Config
from runner.cloud.doctor import Check, exit_code, format_check, run_checks
from runner.cloud.project_setup import init_project
from runner.launch.context import make_context
from tests.standins.gcp_admin import GcpAdminFake

P = "org-project"
IMAGE = "us-docker.pkg.dev/org-project/runs/trainer@sha256:" + "d" * 64


class User:
    """The runner.toml a user edits, and the project they act on through the stand-ins."""

    def __init__(self, admin: GcpAdminFake, compute: Any) -> None:
        self.admin, self.compute = admin, compute
        self.toml: dict[str, Any] = dict(
            backend="gce", project=P, store=f"gs://org-{uuid.uuid4().hex[:8]}/runs", zones=["us-central1-a"],
            machine_type="n1-standard-4", gpu="nvidia-tesla-t4", compute_endpoint=compute.endpoint,
            serviceusage_endpoint=admin.endpoint, resourcemanager_endpoint=admin.endpoint,
            iam_endpoint=admin.endpoint)
        self.followed: list[str] = []

    def config(self) -> Config:
        return Config(**self.toml)

    def init(self) -> None:
        said: list[str] = []
        init_project(self.config(), region="us-central1", say=said.append, sleep=lambda s: None)
        for line in said:  # "next: set service_account = "..." in runner.toml so VMs run as it"
            m = re.match(r'next: set (\w+) = "([^"]+)" in runner.toml', line)
            if m:
                self.toml[m.group(1)] = m.group(2)

    def doctor(self) -> list[Check]:
        return run_checks(self.config(), active_project=lambda: P, docker_ping=lambda: True)

    def follow(self, check: Check) -> None:
        for line in check.fix.splitlines():
            handler = next((h for prefix, h in COMMANDS.items() if line.startswith(prefix)), None)
            if handler is None:
                pytest.fail(f"{check.name}: a user cannot act on the fix line {line!r}\n{format_check(check)}")
            handler(self, line)
            self.followed.append(line)


def _flags(line: str) -> tuple[list[str], dict[str, str]]:
    """Positional words and --flags (``--a b``, ``--a=b``, ``--switch`` → "") of a command line."""
    words, flags = [], {}
    parts = shlex.split(line)
    i = 0
    while i < len(parts):
        w = parts[i]
        if w.startswith("--"):
            key, eq, value = w[2:].partition("=")
            if not eq and i + 1 < len(parts) and not parts[i + 1].startswith("--"):
                value, i = parts[i + 1], i + 1
            flags[key] = value
        else:
            words.append(w)
        i += 1
    return words, flags


def _toml(user: User, line: str) -> None:
    for key, value in re.findall(r'(\w+) = ("[^"]*"|true|false)', line.split(":", 1)[1]):
        user.toml[key] = value.strip('"') if value.startswith('"') else value == "true"


def _runner_init(user: User, line: str) -> None:
    user.init()


def _networks_create(user: User, line: str) -> None:
    words, f = _flags(line)
    assert f["subnet-mode"] in ("custom", "auto"), line
    compute_v1.NetworksClient(**user.compute.client_kwargs()).insert_unary(
        project=f["project"], network_resource=compute_v1.Network(
            name=words[4], auto_create_subnetworks=f["subnet-mode"] == "auto"))


def _subnets_create(user: User, line: str) -> None:
    words, f = _flags(line)
    compute_v1.SubnetworksClient(**user.compute.client_kwargs()).insert_unary(
        project=f["project"], region=f["region"], subnetwork_resource=compute_v1.Subnetwork(
            name=words[5], network=f"projects/{f['project']}/global/networks/{f['network']}",
            ip_cidr_range=f["range"], private_ip_google_access="enable-private-ip-google-access" in f))


def _subnets_update(user: User, line: str) -> None:
    words, f = _flags(line)
    assert "enable-private-ip-google-access" in f, line
    compute_v1.SubnetworksClient(**user.compute.client_kwargs()).set_private_ip_google_access_unary(
        project=f["project"], region=f["region"], subnetwork=words[5],
        subnetworks_set_private_ip_google_access_request_resource=compute_v1.SubnetworksSetPrivateIpGoogleAccessRequest(
            private_ip_google_access=True))


def _project_binding(user: User, line: str) -> None:
    words, f = _flags(line)
    user.admin.grant(words[3], f["member"], f["role"])


def _bucket_create(user: User, line: str) -> None:
    words, f = _flags(line)
    client = storage.Client(project=f["project"], credentials=AnonymousCredentials())
    client.create_bucket(words[4].removeprefix("gs://"), location=f["location"])


def _bucket_binding(user: User, line: str) -> None:
    words, f = _flags(line)
    bucket = storage.Client(project=P, credentials=AnonymousCredentials()).bucket(words[4].removeprefix("gs://"))
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": f["role"], "members": {f["member"]}})
    bucket.set_iam_policy(policy)


# What a fix line asks, by how it starts. Other items of issue 19 add the commands their fixes
# print (the build service account's grants, `gcloud artifacts repositories create`, a quota
# request) here.
COMMANDS: dict[str, Callable[[User, str], None]] = {
    "runner.toml:": _toml,
    "runner init": _runner_init,
    "gcloud compute networks create ": _networks_create,
    "gcloud compute networks subnets create ": _subnets_create,
    "gcloud compute networks subnets update ": _subnets_update,
    "gcloud projects add-iam-policy-binding ": _project_binding,
    "gcloud storage buckets create ": _bucket_create,
    "gcloud storage buckets add-iam-policy-binding ": _bucket_binding,
}


@pytest.fixture
def org_project(gcp_admin_fake: GcpAdminFake, compute_fake: Any, gcs_emulator: str) -> User:
    """A fresh project of a 2024+ organisation, its creator the owner; other items add theirs."""
    admin = gcp_admin_fake
    admin.add_project(P)
    admin.set_org_policy(P, "constraints/compute.vmExternalIpAccess", {"listPolicy": {"allValues": "DENY"}})
    compute_fake.org_project(P)  # no `default` network
    compute_fake.project = P
    admin.grant(P, compute_fake.operator, "roles/owner")
    compute_fake.iam = admin
    return User(admin, compute_fake)


def test_init_and_doctor_walk_an_organisation_project_to_its_first_vm(org_project: User) -> None:
    user = org_project
    user.init()
    rounds: list[dict[str, str]] = []
    for _ in range(4):
        checks = user.doctor()
        failed = {c.name: c.fix for c in checks if c.ok is False}
        if not failed:
            break
        rounds.append(failed)
        for check in checks:
            if check.ok is False:
                user.follow(check)
    assert exit_code(user.doctor()) == 0, "\n".join(format_check(c) for c in user.doctor())
    # What this organisation lacked after `runner init`, each named once with its fix.
    assert list(rounds[0]) == ["network"], rounds
    assert len(rounds) == 1, rounds
    assert user.toml["external_ip"] is False
    assert user.toml["network"] == user.toml["subnetwork"] == "cos-spot-runner"

    # The first run: its VM is created, without an external IP, on the subnetwork made above.
    from runner.launch.submit import submit

    ctx = make_context(user.config())
    submit(ctx, "first", ["python3", "-c", "pass"], image=IMAGE, restart=False)
    ctx.supervisor().reconcile("first")
    (vm,) = user.compute.instances(project=P)
    nic = vm.network_interfaces[0]
    assert nic.subnetwork.endswith(f"projects/{P}/regions/us-central1/subnetworks/cos-spot-runner")
    assert not nic.access_configs
    assert vm.service_accounts[0].email == f"cos-spot-runner@{P}.iam.gserviceaccount.com"
    assert RunRecord(ctx.store, "first").read_state()[0].state == State.PROVISIONING
    sub = user.compute.subnetwork("us-central1", "cos-spot-runner", project=P)
    assert sub is not None and sub.private_ip_google_access
