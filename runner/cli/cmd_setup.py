"""``runner doctor`` and ``runner init``: check a project is ready for runs, and make it so."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runner.cli.common import EXIT_FAILED, EXIT_USAGE, config_of, config_options, fail


@click.command()
@click.option("--zones", help="GCE: zones whose regions' GPU quota to check (default from config).")
@click.option("--machine-type", help="GCE: the machine type runs will use (default from config).")
@click.option("--gpu", help="GCE: TYPE[:COUNT] runs will attach (default from config).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of checks.")
@config_options
def doctor(zones: str | None, machine_type: str | None, gpu: str | None, as_json: bool,
           cli_config: dict[str, Any], config_path: str | None) -> None:
    """Check that runs can work here, each check with ✓/✗ and the exact fix.

    \b
    Checks: credentials (ADC); the project (config vs gcloud's active one); the compute,
    storage, cloudbuild and artifactregistry APIs; the bucket exists and can be written and
    read; the VM service account's roles; with an Artifact Registry image: its repository (and the
    VM account's reader role on it) and the roles of the account Cloud Build runs as; spot GPU
    quota in the configured zones' regions;
    Docker (local backend); timeouts that work together. Exit 0 when all pass, 1 otherwise.

    \b
      runner doctor --backend gce --project my-proj --store gs://my-bucket
    """
    from dataclasses import asdict

    from runner.cloud.doctor import exit_code, format_check, run_checks

    cfg = config_of({**cli_config, "zones": zones, "machine_type": machine_type, "gpu": gpu}, config_path)
    checks = run_checks(cfg)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        for c in checks:
            click.echo(format_check(c))
    sys.exit(exit_code(checks))


@click.command()
@click.option("--region", help="Bucket location (default: the region of the first configured zone).")
@click.option("--service-account-name", "sa_name", default="cos-spot-runner", show_default=True,
              help="The VM service account to create (NAME@PROJECT.iam.gserviceaccount.com).")
@click.option("--staging-days", type=int, default=7, show_default=True,
              help="Delete Cloud Build's staged sources after this many days (a bucket lifecycle rule).")
@click.option("--hosted", is_flag=True, help="Also the hosted supervisor's service account and its roles.")
@click.option("--no-builds", is_flag=True,
              help="Skip the Artifact Registry repository and the Cloud Build account (images built elsewhere).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of steps.")
@config_options
def init(region: str | None, sa_name: str, staging_days: int, hosted: bool, no_builds: bool, as_json: bool,
         cli_config: dict[str, Any], config_path: str | None) -> None:
    """Create what GCE runs need, idempotently: bucket, lifecycle rule, service account, roles.

    \b
    - the bucket of --store (uniform bucket-level access), if missing;
    - a lifecycle rule deleting staged build sources (cloudbuild/source/) after --staging-days;
    - the VM service account, if missing;
    - least-privilege roles for it: storage.objectAdmin on the bucket only; logging.logWriter,
      monitoring.metricWriter and artifactregistry.reader on the project;
    - the Artifact Registry Docker repository of the configured image (else REGION-docker.pkg.dev/
      PROJECT/runs), which must exist before the first push;
    - the account Cloud Build runs as (build_service_account, else cos-spot-runner-build, created):
      storage.objectViewer on the bucket, logging.logWriter, artifactregistry.writer on the repository.
    Running it again changes nothing. Needs a caller allowed to create buckets, service
    accounts and IAM bindings (e.g. roles/owner, or storage.admin + iam.serviceAccountAdmin +
    resourcemanager.projectIamAdmin).

    \b
      runner init --project my-proj --store gs://my-proj-runs --region us-central1
    """
    from dataclasses import asdict

    from runner.cloud.gcp_rest import ApiError
    from runner.cloud.project_setup import SetupError, init_project

    cfg = config_of(cli_config, config_path)
    from runner.naming import region_of

    region = region or (region_of(cfg.zones[0]) if cfg.zones else None)
    if not region:
        fail("no region for the bucket: pass --region (e.g. us-central1) or set zones in runner.toml", EXIT_USAGE)
    try:
        say = (lambda _: None) if as_json else click.echo
        steps = init_project(cfg, region=region, sa_name=sa_name, staging_days=staging_days, hosted=hosted,
                             say=say)
        if not no_builds:
            from runner.cloud.build_setup import init_builds_in

            steps += init_builds_in(cfg, region=region, say=say)
    except SetupError as e:
        fail(str(e), EXIT_USAGE)
    except ApiError as e:
        fail(str(e), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps([asdict(st) for st in steps], indent=1))
