"""``runner supervise``: the reconcile loop here, or (``--deploy | --undeploy | --status``) the hosted
supervisor, parse-call-print over ``runner.cloud.hosted``.

Data (the status, ``--json``) goes to stdout; each step of a deploy is a line on stderr as it ends.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from runner.cli.common import EXIT_USAGE, checked_run_id, config_of, config_options, fail, guard, load, note
from runner.config import Config


@click.command()
@click.option("--run-id", help="Supervise only this run (default: every unfinished run).")
@click.option("--once", is_flag=True, help="One reconcile pass, then exit.")
@click.option("--poll-interval", type=float, help="Seconds between passes.")
@click.option("--for", "for_seconds", type=float, help="Pass every poll interval for this many seconds, then exit.")
@click.option("--schedule-period", type=float, hidden=True,
              help="Seconds until the next pass is due when this is not a loop (the hosted schedule's).")
@click.option("--await-notice", type=float, default=0.0,
              help="With --once: then wait up to this many seconds for instances in their shutdown notice "
                   "to go, and step their runs again (the hosted supervisor passes 45).")
@click.option("--deploy", is_flag=True, help="Create or update the hosted supervisor (Cloud Run job + Cloud Scheduler).")
@click.option("--undeploy", is_flag=True, help="Remove the hosted supervisor; runs are left as they are.")
@click.option("--status", "show_status", is_flag=True, help="The hosted supervisor: image, schedule, last pass, last error.")
@click.option("--image", help="--deploy: the runner image, REPO@sha256:... (with --build: REPO/NAME to build and push).")
@click.option("--build", "build_first", is_flag=True, help="--deploy: build the runner image first (`runner build` chain).")
@click.option("--json", "as_json", is_flag=True, help="--deploy/--undeploy/--status: machine-readable output.")
@config_options
@guard
def supervise(run_id: str | None, once: bool, poll_interval: float | None, for_seconds: float | None,
              schedule_period: float | None, await_notice: float, deploy: bool, undeploy: bool, show_status: bool,
              image: str | None, build_first: bool, as_json: bool,
              cli_config: dict[str, Any], config_path: str | None) -> None:
    """Keep runs alive: restart preempted or stalled ones, stop stopped ones, clean up.

    Safe to run more than once at the same time: state changes are compare-and-swap writes.
    With --deploy, the same passes run in Cloud Run every minute, with no process of yours.
    """
    if deploy + undeploy + show_status > 1:
        fail("choose one of --deploy, --undeploy, --status", EXIT_USAGE)
    if deploy or undeploy or show_status:
        action = "deploy" if deploy else "undeploy" if undeploy else "status"
        sys.exit(run_hosted(config_of(cli_config, config_path), action, image, build_first, as_json))
    ctx = load({**cli_config, "poll_interval": poll_interval}, config_path)
    sup = ctx.supervisor()
    sup.pass_every = schedule_period  # hosted: a pass is due at least every schedule period
    if run_id:
        from entrypoint.record import RunRecord
        from runner.launch.follow import follow_run
        from runner.ops.runs import RunNotFound

        if RunRecord(ctx.store, checked_run_id(run_id)).read_state() is None:
            raise RunNotFound(f"no run {run_id!r} in {ctx.store.url} (see `runner ops list`)")
        final = follow_run(sup, run_id, ctx.cfg.poll_interval, note, once=once)
        click.echo(f"{run_id}: {final.state.value}")
        return
    started = time.time()
    while True:
        states = sup.reconcile_all()
        live = {k: v for k, v in states.items() if not v.state.terminal}
        note(f"{time.strftime('%H:%M:%S')} supervised {len(states)} run(s), {len(live)} unfinished")
        if once and await_notice > 0:
            # A preempted VM asked for this pass (gcp/shutdown.sh): replace it here, not a minute on.
            from runner.launch.notice_wait import wait_out_notices

            for stepped in wait_out_notices(sup, states, await_notice):
                note(f"{time.strftime('%H:%M:%S')} {stepped}: its instance left its shutdown notice; stepped again")
        if once or (for_seconds is not None and time.time() - started + ctx.cfg.poll_interval > for_seconds):
            return
        time.sleep(ctx.cfg.poll_interval)


def run_hosted(cfg: Config, action: str, image: str | None, build: bool, as_json: bool) -> int:
    """Do ``action`` (deploy, undeploy, status); returns the exit code (0, 1 failed, 2 usage)."""
    from runner.cloud.hosted import (PERIOD_S, HostedError, daily_cost, deploy, hosted_clients, hosted_status,
                               target, undeploy)

    try:
        if action == "deploy" and build:
            from runner.build.supervisor_image import build_runner_image

            image = build_runner_image(cfg, image, say=note)
        t = target(cfg, image, need_image=action == "deploy")
        clients = hosted_clients(cfg)
        if action == "deploy":
            steps = deploy(cfg, t, clients, say=note, vm_account=_vm_account(cfg))
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
            steps = undeploy(t, clients, say=note)
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


def _vm_account(cfg: Config) -> str | None:
    """The runs' VM account, which deploy lets run the job (a preempted VM asks for a pass); None,
    said, when it cannot be named (the Compute default's needs the project number)."""
    if cfg.service_account:
        return cfg.service_account
    try:
        from runner.cloud.gcp_rest import admin_apis
        from runner.cloud.hosted_setup import vm_service_account

        return vm_service_account(cfg, admin_apis(cfg))
    except Exception as e:  # noqa: BLE001 - the deploy itself does not depend on it
        note(f"runner: could not name the VMs' service account ({type(e).__name__}: {e}); preempted VMs "
             "cannot ask for a pass until `runner init --hosted` grants it roles/run.invoker on the job")
        return None


def _warn_webhook_url_not_passed(cfg: Config) -> None:
    """$RUNNER_WEBHOOK_URL notifies from this shell only: a URL in the job's env would be readable
    by anyone who may read the job, so it is never passed. Say so, rather than go quiet."""
    import os

    from runner.ops.notify import WEBHOOK_URL_ENV

    if os.environ.get(WEBHOOK_URL_ENV, "").strip():
        hint = ("the hosted supervisor notifies through webhook_secret" if cfg.webhook_secret else
                "to get them, store the URL in Secret Manager and set webhook_secret (then runner init --hosted)")
        note(f"runner: note: ${WEBHOOK_URL_ENV} is not passed to the hosted supervisor, so its transitions "
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
