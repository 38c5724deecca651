"""``runner supervise --deploy | --undeploy | --status``: parse-call-print over ``runner.cloud.hosted``.

Data (the status, ``--json``) goes to stdout; each step of a deploy is a line on stderr as it ends.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runner.config import Config


def _note(msg: str) -> None:
    click.echo(msg, err=True)


def run(cfg: Config, action: str, image: str | None, build: bool, as_json: bool) -> int:
    """Do ``action`` (deploy, undeploy, status); returns the exit code (0, 1 failed, 2 usage)."""
    from runner.cloud.hosted import (PERIOD_S, HostedError, daily_cost, deploy, hosted_clients, hosted_status,
                               target, undeploy)

    try:
        if action == "deploy" and build:
            from runner.build.supervisor_image import build_runner_image

            image = build_runner_image(cfg, image, say=_note)
        t = target(cfg, image, need_image=action == "deploy")
        clients = hosted_clients(cfg)
        if action == "deploy":
            steps = deploy(cfg, t, clients, say=_note)
            _warn_webhook_url_not_passed(cfg)
            if as_json:
                click.echo(json.dumps([s.__dict__ for s in steps], indent=1))
            else:
                cost = daily_cost(t.mode, pass_seconds=3.0)
                click.echo(f"hosted supervisor: {t.job_name} ({t.mode} mode) every {PERIOD_S:g}s, "
                           f"as {t.service_account}; about ${cost:.2f}/day before the free tier. "
                           "Runs are now supervised with no process of yours; check with "
                           "`runner supervise --status`.")
            return 0
        if action == "undeploy":
            steps = undeploy(t, clients, say=_note)
            if as_json:
                click.echo(json.dumps([s.__dict__ for s in steps], indent=1))
            else:
                click.echo("hosted supervisor removed; runs and their VMs are left as they are "
                           "(keep them alive with `runner supervise`)")
            return 0
        from runner.launch.context import make_store

        out = hosted_status(t, clients, make_store(cfg))
        if as_json:
            click.echo(json.dumps(out, indent=1, default=str))
        else:
            _print_status(out)
        return 0 if out["job"] and out["schedule"] and out["supervisor"]["alive"] else 1
    except HostedError as e:
        click.echo(f"runner: {e}", err=True)
        return 1
    except Exception as e:  # noqa: BLE001 - no credentials is the common one; say how to get them
        from google.auth.exceptions import DefaultCredentialsError

        if isinstance(e, DefaultCredentialsError):
            click.echo("runner: no Google credentials for the Cloud Run and Cloud Scheduler APIs: run "
                       "`gcloud auth application-default login`", err=True)
            return 1
        raise


def _warn_webhook_url_not_passed(cfg: Config) -> None:
    """$RUNNER_WEBHOOK_URL notifies from this shell only: a URL in the job's env would be readable
    by anyone who may read the job, so it is never passed. Say so, rather than go quiet."""
    import os

    from runner.ops.notify import WEBHOOK_URL_ENV

    if os.environ.get(WEBHOOK_URL_ENV, "").strip():
        hint = ("the hosted supervisor notifies through webhook_secret" if cfg.webhook_secret else
                "to get them, store the URL in Secret Manager and set webhook_secret (then runner init --hosted)")
        _note(f"runner: note: ${WEBHOOK_URL_ENV} is not passed to the hosted supervisor, so its transitions "
              f"are not posted from there; {hint}")


def _print_status(out: dict[str, Any]) -> None:
    job, sched, sup = out["job"], out["schedule"], out["supervisor"]
    if job:
        click.echo(f"job        {job['name']} (generation {job['generation']})")
        click.echo(f"image      {job['image']}")
        click.echo(f"command    runner {' '.join(job['args'] or [])}  as {job['service_account']}")
        click.echo(f"executions {job['executions']}; last {job['last_execution'] or '-'}"
                   + (f" at {job['last_execution_at']}" if job["last_execution_at"] else ""))
    else:
        click.echo("job        not deployed (runner supervise --deploy)")
    if sched:
        click.echo(f"schedule   '{sched['schedule']}' {sched['time_zone']} {sched['state']}; last attempt "
                   f"{sched['last_attempt_at'] or '-'}" + (f", error: {sched['last_attempt_error']}"
                                                            if sched["last_attempt_error"] else ""))
    else:
        click.echo("schedule   not deployed (runner supervise --deploy)")
    click.echo(f"last pass  {sup['text']}")
    if not sup["alive"]:
        click.echo(f"warning    {sup['warning']}\n    fix: {sup['fix']}")
    sys.stdout.flush()
