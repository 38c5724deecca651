"""The ``runner`` command line.

Cloud libraries and Docker are imported inside the commands that use them, so ``runner --help``
stays fast. Data goes to stdout (``--json`` for scripts), progress and errors to stderr.
Exit codes: 0 ok, 1 the run failed (or an operation failed), 2 usage or config error, 3 not found.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Any, Callable

import click

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


def _err(msg: str, code: int) -> None:
    click.echo(f"runner: {msg}", err=True)
    sys.exit(code)


def _note(msg: str) -> None:
    click.echo(msg, err=True)


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--config/--store/--backend, shared by every command that touches runs."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="runner.toml to use (default: found by walking up from the current directory).")
    @click.option("--store", help="Where run records live: gs://BUCKET[/PREFIX] or file:///DIR.")
    @click.option("--backend", type=click.Choice(["local", "gce"]),
                  help="Where runs execute (default from config: local).")
    @click.option("--project", help="GCE: the project (always explicit; gcloud's active project is never assumed).")
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, store: str | None, backend: str | None,
                project: str | None, **kw: Any) -> Any:
        return f(*args, cli_config={"store": store, "backend": backend, "project": project},
                 config_path=config_path, **kw)

    return wrapper


def _config(cli_config: dict[str, Any], config_path: str | None):  # type: ignore[no-untyped-def]
    """The layered config with these flags on top (None = not given); a bad one exits 2."""
    from runner.config import ConfigError, load_config

    try:
        return load_config(cli={k: v for k, v in cli_config.items() if v is not None}, config_path=config_path)
    except ConfigError as e:
        _err(str(e), EXIT_USAGE)


def _load(cli_config: dict[str, Any], config_path: str | None, create_store: bool = False):  # type: ignore[no-untyped-def]
    """Config, store and backend; every user error becomes a one-line message and exit 2/1."""
    from entrypoint.store import StoreError
    from runner.launch.backends.base import BackendError
    from runner.launch.context import make_context

    cfg = _config(cli_config, config_path)
    try:
        return make_context(cfg, create_default_store=create_store)
    except StoreError as e:
        _err(str(e), EXIT_USAGE)
    except BackendError as e:
        _err(str(e), EXIT_FAILED)


def _guard(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the product's own exceptions into one-line errors with the right exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        from entrypoint.store import StoreError
        from runner.launch.backends.base import BackendError
        from runner.naming import InvalidRunId
        from runner.ops.runs import RunNotFound
        from runner.launch.submit import SubmitRefused

        try:
            return f(*args, **kw)
        except InvalidRunId as e:
            _err(str(e), EXIT_USAGE)
        except SubmitRefused as e:
            _err(str(e), EXIT_USAGE)
        except RunNotFound as e:
            _err(str(e), EXIT_NOT_FOUND)
        except (BackendError, StoreError) as e:
            _err(str(e), EXIT_FAILED)
        except OSError as e:
            # A file we write refused us (a read-only or full store, no permission): one line,
            # not a traceback. Other OSErrors (network, pipes) are said as they are.
            import errno

            where = f" ({e.filename})" if e.filename else ""
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                _err(f"{e.strerror}{where}: this command writes to the store; make it writable "
                     "(or free space), or use a read-only command (ops status/list/logs)", EXIT_FAILED)
            _err(f"{type(e).__name__}: {e}", EXIT_FAILED)

    return wrapper


def _run_id(value: str) -> str:
    from runner.naming import validate_run_id

    return validate_run_id(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Run containerized jobs on GCE spot VMs (Container-Optimized OS) through preemptions.

    \b
    Quick start (local backend: Docker on this machine, a directory as the bucket):
      make demo                                   # the whole cycle, preemption included
      runner submit --run-id exp-1 --image cos-spot-runner/workload:dev \\
          -- python3 -m examples.trainer --steps 100
      runner ops status --run-id exp-1
    """


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--run-id", required=True, help="Your name for the run; re-using it resumes the run.")
@click.option("--image", help="Image to run (local: a Docker image name; pinned to its id/digest).")
@click.option("--restart", is_flag=True, help="Run a finished, failed or stopped run again (resumes from its last checkpoint).")
@click.option("--detach", is_flag=True, help="Return after submitting; `runner supervise` keeps it going.")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be created, and create nothing.")
@click.option("--skip-build", is_flag=True, help="Without --image: use the configured image as is, do not build it first.")
@click.option("--pull", "pull_dest", metavar="DIR", type=click.Path(file_okay=False),
              help="When the run succeeds, copy its results/ here (as `runner ops pull --dest DIR`).")
@click.option("--max-restarts", type=int, help="Preemption/stall restarts before giving up (default 10).")
@click.option("--retry-on-failure", type=int, help="Re-run a job that exits non-zero up to N times (default 0).")
@click.option("--poll-interval", type=float, help="Seconds between supervisor checks.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Environment for the job (not for secrets).")
@click.option("--zones", help="GCE: zones to try in order, comma-separated (next zone on stockout/quota).")
@click.option("--machine-type", help="GCE: e.g. n1-standard-8, g2-standard-8 (g2/a2/a3 carry their GPUs).")
@click.option("--gpu", help="GCE: TYPE[:COUNT] for N1 machines, e.g. nvidia-tesla-t4:1.")
@click.option("--no-gpu", is_flag=True, default=None, help="GCE: CPU only; skips the driver install entirely.")
@click.option("--termination-action", type=click.Choice(["DELETE", "STOP"]),
              help="GCE: what preemption does to the VM (default DELETE).")
@config_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_guard
def submit(run_id: str, image: str | None, restart: bool, detach: bool, dry_run: bool, skip_build: bool,
           pull_dest: str | None, max_restarts: int | None, retry_on_failure: int | None, poll_interval: float | None,
           env_pairs: tuple[str, ...], zones: str | None, machine_type: str | None,
           gpu: str | None, no_gpu: bool | None, termination_action: str | None,
           command: tuple[str, ...], cli_config: dict[str, Any], config_path: str | None) -> None:
    """Submit a run and follow it until it ends (unless --detach).

    The job's command comes after `--` and is passed as an argument list, never re-parsed by a
    shell:

        runner submit --run-id exp-1 --image cos-spot-runner/workload:dev -- python3 -m examples.trainer --steps 100

    Re-submitting an existing run id resumes it from its last checkpoint.
    """
    from runner.launch import submit as submit_mod

    run_id = _run_id(run_id)
    if pull_dest is not None and detach:
        _err("--pull needs the run followed to its end: drop --detach, or pull later with "
             f"`runner ops pull --run-id {run_id} --dest {pull_dest}`", EXIT_USAGE)
    env = {}
    for pair in env_pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            _err(f"--env {pair!r} is not KEY=VALUE", EXIT_USAGE)
        env[k] = v
    # The counts go through the config layer like every other setting, so a flag is checked
    # exactly as the same key in runner.toml or RUNNER_* would be (negative values refused).
    cli_config = {**cli_config, "poll_interval": poll_interval, "zones": zones,
                  "machine_type": machine_type, "gpu": gpu, "no_gpu": no_gpu,
                  "termination_action": termination_action, "max_restarts": max_restarts,
                  "retry_on_failure": retry_on_failure}
    if dry_run:
        _dry_run(_config(cli_config, config_path), run_id, list(command), image)
        return
    ctx = _load(cli_config, config_path, create_store=True)
    from entrypoint.record import RunRecord

    if image is None and not skip_build and command and RunRecord(ctx.store, run_id).read_state() is None:
        image = _build_for_submit(ctx)
    result = submit_mod.submit(ctx, run_id, list(command), image=image, restart=restart,
                               max_restarts=ctx.cfg.max_restarts, retry_on_failure=ctx.cfg.retry_on_failure,
                               env=env)
    _note(f"{result.message} (store {ctx.store.url}, backend {ctx.cfg.backend}, image {result.spec.image[:19]})")
    sup = ctx.supervisor()
    if detach:
        sup.reconcile(run_id)
        _note(f"detached; keep it supervised with: runner supervise   (status: runner ops status --run-id {run_id})")
        _warn_if_unsupervised(ctx.store)
        return
    from runner.launch.follow import follow_run

    final = follow_run(sup, run_id, ctx.cfg.poll_interval, _note)
    click.echo(f"{run_id}: {final.state.value} after {final.attempt} attempt(s)"
               + (f" — {final.reason}" if final.reason else ""))
    if final.state.value != "SUCCEEDED":
        sys.exit(EXIT_FAILED)
    if pull_dest is not None:
        from runner.ops.runs import pull_run
        from runner.ops.progress_bar import transfer_progress

        with transfer_progress(f"pulling {run_id}", enabled=True) as (on_plan, on_file):
            out = pull_run(ctx.store, run_id, pull_dest, False, on_plan=on_plan, on_file=on_file)
        _note(f"pulled {len(out['copied'])} file(s) ({out['bytes']} bytes) into {out['dest']}")


@main.command()
@click.option("--context", "context_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Directory to build; .gcloudignore decides what is uploaded.")
@click.option("--image", help="REPO/NAME[:TAG] to push (default: image from config).")
@click.option("--dockerfile", default="Dockerfile", show_default=True)
@click.option("--base-image", help="BASE_IMAGE build arg (default: the Dockerfile's, python:3.11-slim).")
@click.option("--local", "local_only", is_flag=True, help="Build with the local Docker daemon only, no push.")
@click.option("--list-files", is_flag=True, help="Print exactly what would be uploaded, and stop.")
@config_options
@_guard
def build(context_dir: str, image: str | None, dockerfile: str, base_image: str | None, local_only: bool,
          list_files: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Build the workload image and print its pinned reference (REPO@sha256:...).

    Routes, each tried when the one before fails, with the reason kept: Cloud Build from the
    staged context; Cloud Build from a re-staged tarball; local `docker buildx --push`.

    \b
      runner build --project my-proj --store gs://my-bucket --image us-docker.pkg.dev/my-proj/runs/trainer
      runner build --local --image cos-spot-runner/workload:dev     # for the local backend
      runner build --list-files                                    # what would be uploaded
    """
    from runner.build.image import BuildError, BuildRequest, list_files as files_of
    from runner.build.build_context import IgnoreFileError

    if list_files:
        try:
            for path in files_of(context_dir):
                click.echo(path)
        except IgnoreFileError as e:
            _err(str(e), EXIT_USAGE)
        return
    cfg = _config({**cli_config, "base_image": base_image}, config_path)
    ref = image or cfg.image
    if not ref:
        _err("no image name: pass --image REPO/NAME[:TAG] or set image in runner.toml", EXIT_USAGE)
    try:
        result = _build(cfg, BuildRequest(context_dir, ref, dockerfile, cfg.base_image), local_only)
    except (BuildError, IgnoreFileError) as e:
        _err(str(e), EXIT_FAILED)
    click.echo(result.image)


def _build(cfg: Any, req: Any, local_only: bool) -> Any:
    from runner.build.image import build_image
    from runner.cloud.gcp_clients import cloudbuild_client

    from entrypoint.store_gcs import parse_gs_url

    store = cfg.store_url
    bucket = parse_gs_url(store)[0] if store.startswith("gs://") else None
    result = build_image(req, local_only=local_only, project=cfg.project, bucket=bucket,
                         client_factory=lambda: cloudbuild_client(cfg.cloudbuild_endpoint), say=_note)
    _note(f"built {result.image} via {result.route}")
    return result


def _dry_run(cfg: Any, run_id: str, command: list[str], image: str | None) -> None:
    """Print the exact first request (stdout) and what was left unchecked (stderr)."""
    from runner.launch import submit as submit_mod

    plan, skipped = submit_mod.dry_run(cfg, run_id, command, image, max_restarts=cfg.max_restarts,
                                       retry_on_failure=cfg.retry_on_failure)
    cli = getattr(plan, "docker_cli", None)
    click.echo(" ".join(cli()) if cli else json.dumps(plan.to_dict(), default=str, indent=1))
    _note("dry run: nothing written or created; not checked: " + "; ".join(skipped))


def _build_for_submit(ctx: Any) -> str:
    """No --image: build the configured image from the current directory, as `runner build` would."""
    from runner.build.image import BuildError, BuildRequest

    name = ctx.cfg.image or ("cos-spot-runner/workload:dev" if ctx.cfg.backend == "local" else None)
    if not name:
        _err("no image: pass --image, set image in runner.toml, or --skip-build", EXIT_USAGE)
    _note(f"building {name} first (--skip-build to use it as it is)")
    try:
        return _build(ctx.cfg, BuildRequest(".", name, base_image=ctx.cfg.base_image),
                      local_only=ctx.cfg.backend == "local").image
    except BuildError as e:
        _err(str(e), EXIT_FAILED)
    raise AssertionError


@main.command()
@click.option("--run-id", help="Supervise only this run (default: every unfinished run).")
@click.option("--once", is_flag=True, help="One reconcile pass, then exit.")
@click.option("--poll-interval", type=float, help="Seconds between passes.")
@click.option("--for", "for_seconds", type=float, help="Pass every poll interval for this many seconds, then exit.")
@click.option("--schedule-period", type=float, hidden=True,
              help="Seconds until the next pass is due when this is not a loop (the hosted schedule's).")
@click.option("--deploy", is_flag=True, help="Create or update the hosted supervisor (Cloud Run job + Cloud Scheduler).")
@click.option("--undeploy", is_flag=True, help="Remove the hosted supervisor; runs are left as they are.")
@click.option("--status", "show_status", is_flag=True, help="The hosted supervisor: image, schedule, last pass, last error.")
@click.option("--image", help="--deploy: the runner image, REPO@sha256:... (with --build: REPO/NAME to build and push).")
@click.option("--build", "build_first", is_flag=True, help="--deploy: build the runner image first (`runner build` chain).")
@click.option("--json", "as_json", is_flag=True, help="--deploy/--undeploy/--status: machine-readable output.")
@config_options
@_guard
def supervise(run_id: str | None, once: bool, poll_interval: float | None, for_seconds: float | None,
              schedule_period: float | None, deploy: bool, undeploy: bool, show_status: bool,
              image: str | None, build_first: bool, as_json: bool,
              cli_config: dict[str, Any], config_path: str | None) -> None:
    """Keep runs alive: restart preempted or stalled ones, stop stopped ones, clean up.

    Safe to run more than once at the same time: state changes are compare-and-swap writes.
    With --deploy, the same passes run in Cloud Run every minute, with no process of yours.
    """
    if deploy + undeploy + show_status > 1:
        _err("choose one of --deploy, --undeploy, --status", EXIT_USAGE)
    if deploy or undeploy or show_status:
        from runner.cli import cmd_supervise as hosted_command

        action = "deploy" if deploy else "undeploy" if undeploy else "status"
        sys.exit(hosted_command.run(_config(cli_config, config_path), action, image, build_first, as_json))
    ctx = _load({**cli_config, "poll_interval": poll_interval}, config_path)
    sup = ctx.supervisor()
    sup.pass_every = schedule_period  # hosted: a pass is due at least every schedule period
    if run_id:
        from entrypoint.record import RunRecord
        from runner.launch.follow import follow_run
        from runner.ops.runs import RunNotFound

        if RunRecord(ctx.store, _run_id(run_id)).read_state() is None:
            raise RunNotFound(f"no run {run_id!r} in {ctx.store.url} (see `runner ops list`)")
        final = follow_run(sup, run_id, ctx.cfg.poll_interval, _note, once=once)
        click.echo(f"{run_id}: {final.state.value}")
        return
    started = time.time()
    while True:
        states = sup.reconcile_all()
        live = {k: v for k, v in states.items() if not v.state.terminal}
        _note(f"{time.strftime('%H:%M:%S')} supervised {len(states)} run(s), {len(live)} unfinished")
        if once or (for_seconds is not None and time.time() - started + ctx.cfg.poll_interval > for_seconds):
            return
        time.sleep(ctx.cfg.poll_interval)


@main.command()
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
    read; the VM service account's roles; spot GPU quota in the configured zones' regions;
    Docker (local backend); timeouts that work together. Exit 0 when all pass, 1 otherwise.

    \b
      runner doctor --backend gce --project my-proj --store gs://my-bucket
    """
    from dataclasses import asdict

    from runner.cloud.doctor import exit_code, format_check, run_checks

    cfg = _config({**cli_config, "zones": zones, "machine_type": machine_type, "gpu": gpu}, config_path)
    checks = run_checks(cfg)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        for c in checks:
            click.echo(format_check(c))
    sys.exit(exit_code(checks))


@main.command()
@click.option("--region", help="Bucket location (default: the region of the first configured zone).")
@click.option("--service-account-name", "sa_name", default="cos-spot-runner", show_default=True,
              help="The VM service account to create (NAME@PROJECT.iam.gserviceaccount.com).")
@click.option("--staging-days", type=int, default=7, show_default=True,
              help="Delete Cloud Build's staged sources after this many days (a bucket lifecycle rule).")
@click.option("--hosted", is_flag=True, help="Also the hosted supervisor's service account and its roles.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of steps.")
@config_options
def init(region: str | None, sa_name: str, staging_days: int, hosted: bool, as_json: bool,
         cli_config: dict[str, Any], config_path: str | None) -> None:
    """Create what GCE runs need, idempotently: bucket, lifecycle rule, service account, roles.

    \b
    - the bucket of --store (uniform bucket-level access), if missing;
    - a lifecycle rule deleting staged build sources (cloudbuild/source/) after --staging-days;
    - the VM service account, if missing;
    - least-privilege roles for it: storage.objectAdmin on the bucket only; logging.logWriter,
      monitoring.metricWriter and artifactregistry.reader on the project.
    Running it again changes nothing. Needs a caller allowed to create buckets, service
    accounts and IAM bindings (e.g. roles/owner, or storage.admin + iam.serviceAccountAdmin +
    resourcemanager.projectIamAdmin).

    \b
      runner init --project my-proj --store gs://my-proj-runs --region us-central1
    """
    from dataclasses import asdict

    from runner.cloud.gcp_rest import ApiError
    from runner.cloud.project_setup import SetupError, init_project

    cfg = _config(cli_config, config_path)
    from runner.naming import region_of

    region = region or (region_of(cfg.zones[0]) if cfg.zones else None)
    if not region:
        _err("no region for the bucket: pass --region (e.g. us-central1) or set zones in runner.toml", EXIT_USAGE)
    try:
        steps = init_project(cfg, region=region, sa_name=sa_name, staging_days=staging_days, hosted=hosted,
                             say=(lambda _: None) if as_json else click.echo)
    except SetupError as e:
        _err(str(e), EXIT_USAGE)
    except ApiError as e:
        _err(str(e), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps([asdict(st) for st in steps], indent=1))


@main.group()
def ops() -> None:
    """Show and control runs: status, list, watch, logs, serial, events, pull, delete, preempt.

    Every command takes --json. Exit codes: 0 ok, 1 the run (or the operation) failed,
    2 usage or config error, 3 no such run.
    """


@ops.command()
@click.option("--run-id", required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@_guard
def status(run_id: str, as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """State, attempt, heartbeat age, progress and the last event of one run."""
    from runner.ops.runs import ago, duration, run_status, when
    from runner.launch.supervisor_heartbeat import report_lines

    ctx = _load(cli_config, config_path)
    s = run_status(ctx.store, _run_id(run_id), ctx.backend)
    _add_cost(ctx, s)
    if as_json:
        click.echo(json.dumps(s, indent=1, default=str))
        return
    prog = " ".join(f"{k}={v}" for k, v in s["progress"].items()) or "-"
    if s.get("rate"):
        prog += f"  ({s['rate']:.2f} steps/s" + (f", ETA {duration(s['eta_s'])}" if s.get("eta_s") else "") + ")"
    ev = s["last_event"]
    click.echo(f"run        {s['run_id']}")
    click.echo(f"state      {s['state']}" + (f" ({s['reason']})" if s["reason"] else ""))
    click.echo(f"attempt    {s['attempt']}  instance {s['instance'] or '-'}  zone {s['zone'] or '-'}"
               f"  restarts {s['restarts']}")
    click.echo(f"updated    {when(s['updated_at'], s['updated_age_s'])}")
    click.echo(f"heartbeat  {when(s['heartbeat_at'], s['heartbeat_age_s'])}")
    if s.get("startup_phase"):
        click.echo(f"startup    {s['startup_phase']}")
    click.echo(f"progress   {prog}")
    click.echo(f"cost       {s['cost_text']}" + _cost_detail(s["cost"]))
    if s.get("instances"):
        click.echo("instances  " + ", ".join(f"{i['name']} ({i['status']})" for i in s["instances"]))
    if ev:
        click.echo(f"last event {ev['at']} ({ago(ev['time'])}): {ev['actor']} {ev['from']} -> {ev['to']}"
                   + (f" ({ev['reason']})" if ev.get("reason") else ""))
    if s["stop_requested"]:
        click.echo("stop       requested (.stop): this run is never restarted")
    for line in report_lines(s["supervisor"]):
        click.echo(line)


@ops.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs.")
@click.option("--orphans", is_flag=True, help="Instead: VMs/containers whose run is finished or unknown (still billing).")
@config_options
@_guard
def list_cmd(as_json: bool, orphans: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """All runs in the store, one line each (UPDATED in UTC, and how long ago)."""
    from runner.ops.runs import duration, list_runs, when

    ctx = _load(cli_config, config_path)
    if orphans:
        from runner.ops.runs import orphans as find_orphans

        found = find_orphans(ctx.store, ctx.backend)
        if as_json:
            click.echo(json.dumps(found, indent=1))
        for o in [] if as_json else found:
            click.echo(f"{o['name']:<40} {o['zone']:<16} {o['status']:<11} {o['why']}")
        if not found and not as_json:
            _note("no orphans: every instance belongs to a live run")
        return
    rows = list_runs(ctx.store)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        _note(f"no runs in {ctx.store.url}")
        return
    click.echo(f"{'RUN':<28} {'STATE':<13} {'ATT':>3} {'RESTARTS':>8}  {'PROGRESS':<16} {'ETA':>6}  UPDATED")
    for r in rows:
        click.echo(f"{r['run_id']:<28} {r['state']:<13} {r['attempt']:>3} {r['restarts']:>8}  "
                   f"{_progress_text(r['progress']):<16} {duration(r['eta_s']):>6}  "
                   f"{when(r['updated_at'], r['updated_age_s'])}")
    from runner.launch.supervisor_heartbeat import report_lines, watchfulness

    for line in report_lines(watchfulness(ctx.store).to_dict()):
        click.echo(line)


def _cost_detail(c: dict[str, Any]) -> str:
    """The small print under a cost: where the prices come from, or why there is no figure."""
    if c.get("why_unknown"):
        return f"  ({c['why_unknown']})"
    if c.get("note"):
        return f"  ({c['note']})"
    return f"  (spot prices as of {c.get('as_of')}; an estimate: set price_table to use your own)"


def _progress_text(p: dict[str, Any]) -> str:
    if not p or p.get("step") is None:
        return "-"
    return f"{p['step']}/{p['total']}" if p.get("total") else str(p["step"])


def _add_cost(ctx: Any, row: dict[str, Any]) -> None:
    from runner.ops.cost import annotate_row

    annotate_row(row, ctx.store, ctx.cfg.price_table)


@ops.command()
@click.option("--run-id", "run_ids", multiple=True,
              help="Watch only this run (repeatable); then watch ends when they do, exit 0 if all succeeded.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Instead of the table: one JSON line per run per change.")
@config_options
@_guard
def watch(run_ids: tuple[str, ...], interval: float, as_json: bool, cli_config: dict[str, Any],
          config_path: str | None) -> None:
    """A live table of runs: state, attempt, zone, heartbeat, progress, rate, ETA, restarts, cost.

    Redraws in place until Ctrl-C (or until the --run-id runs end). Read-only: watching never
    changes a run; keep `runner supervise` (or an attached submit) running to keep them alive.

    \b
      runner ops watch
      runner ops watch --run-id exp-1
      runner ops watch --json | jq 'select(.state == "PREEMPTED")'
    """
    from entrypoint.record import RunRecord
    from runner.ops.runs import RunNotFound
    from runner.ops.watch import snapshots, watch_json, watch_table

    if interval <= 0:
        _err("--interval must be a positive number of seconds", EXIT_USAGE)
    ctx = _load(cli_config, config_path)
    ids = [_run_id(r) for r in run_ids] or None
    for r in ids or []:
        if RunRecord(ctx.store, r).read_state() is None:
            raise RunNotFound(f"no run {r!r} in {ctx.store.url} (see `runner ops list`)")
    frames = snapshots(ctx.store, ids, interval, enrich=lambda row: _add_cost(ctx, row))
    try:
        if as_json:
            rows = watch_json(frames, ids, lambda line: click.echo(line))
        else:
            rows = watch_table(frames, ids, ctx.store.url, caption=lambda: _supervision_caption(ctx.store))
    except KeyboardInterrupt:
        return
    if ids:
        sys.exit(0 if all(r["state"] == "SUCCEEDED" for r in rows) else EXIT_FAILED)


def _warn_if_unsupervised(store: Any) -> None:
    """submit --detach: a run nobody supervises is not restarted after a preemption; say so now."""
    from runner.launch.supervisor_heartbeat import watchfulness

    w = watchfulness(store)
    if not w.alive:
        _note(f"runner: warning: {w.warning}\n    fix: {w.fix}")


def _supervision_caption(store: Any) -> str:
    from runner.launch.supervisor_heartbeat import watchfulness

    w = watchfulness(store)
    return f"supervisor: {w.text}" + ("" if w.alive else f"\n[bold red]{w.warning}[/]\nfix: {w.fix}")


@ops.command()
@click.option("--run-id", required=True)
@click.option("--grace-period", type=float, help="Seconds the job gets to checkpoint before it is killed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@_guard
def delete(run_id: str, grace_period: float | None, as_json: bool, cli_config: dict[str, Any],
           config_path: str | None) -> None:
    """Stop a run for good: writes .stop (nothing will restart it), then removes its VM/container.

    The run's record (checkpoints, results, logs) stays in the store; `submit --restart` resumes it.
    """
    from runner.ops.runs import delete_run

    ctx = _load(cli_config, config_path)
    g = ctx.cfg.grace_period if grace_period is None else grace_period
    out = delete_run(ctx.store, ctx.backend, _run_id(run_id), g)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{out['run_id']}: {out['state']}; removed {', '.join(out['removed']) or 'no instance'}")


@ops.command()
@click.option("--run-id", required=True)
@click.option("--grace-period", type=float, help="Seconds between SIGTERM and kill (default: config grace_period).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@_guard
def preempt(run_id: str, grace_period: float | None, as_json: bool, cli_config: dict[str, Any],
            config_path: str | None) -> None:
    """Simulate a spot preemption: SIGTERM, grace period, kill. The supervisor restarts the run."""
    from runner.ops.runs import preempt_run

    ctx = _load(cli_config, config_path)
    g = ctx.cfg.grace_period if grace_period is None else grace_period
    out = preempt_run(ctx.store, ctx.backend, _run_id(run_id), g)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{run_id}: preempted {', '.join(out['preempted'])}")


@ops.command()
@click.option("--run-id", required=True)
@click.option("--tail", type=int, default=100, show_default=True, help="Lines to show first.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the console grows.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: {instance, zone, text}; with --follow, one line per new chunk.")
@config_options
@_guard
def serial(run_id: str, tail: int, follow: bool, as_json: bool, cli_config: dict[str, Any],
           config_path: str | None) -> None:
    """The current VM's serial console (startup phases, driver install, container output).

    Where to look when a run has no heartbeat and no manifest: it died before its container started.
    """
    from runner.ops.runs import RunNotFound, current_instance

    ctx = _load(cli_config, config_path)
    inst = current_instance(ctx.store, ctx.backend, _run_id(run_id))
    if inst is None:
        raise RunNotFound(f"run {run_id} has no VM right now (see `runner ops events --run-id {run_id}`)")
    def show(text: str, first: bool) -> None:
        if as_json:
            click.echo(json.dumps({"instance": inst.name, "zone": inst.zone, "text": text},
                                  indent=None if follow else 1))
        elif text:
            click.echo(text, nl=first)  # a followed chunk carries its own newlines

    text, offset = ctx.backend.console(inst, 0)
    show("\n".join(text.splitlines()[-tail:]), True)
    while follow:
        time.sleep(2)
        more, offset = ctx.backend.console(inst, offset)
        if more:
            show(more, False)


@ops.command()
@click.option("--run-id", required=True)
@click.option("--since", default="24h", show_default=True, help="How far back: 30m, 24h, 7d.")
@click.option("--json", "as_json", is_flag=True)
@config_options
@_guard
def events(run_id: str, since: str, as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Our run events and the provider's operations on the run's VMs (preempted, stop, delete), in time order."""
    from runner.launch.follow import format_event
    from runner.ops.runs import run_events

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(since[:-1]) * units[since[-1]]
    except (KeyError, ValueError, IndexError):
        _err(f"--since {since!r}: use a number and a unit, as in 30m, 24h or 7d", EXIT_USAGE)
    ctx = _load(cli_config, config_path)
    evs = run_events(ctx.store, ctx.backend, _run_id(run_id), time.time() - seconds)
    if as_json:
        click.echo(json.dumps(evs, indent=1, default=str))
        return
    for ev in evs:
        click.echo(format_event(ev))


@ops.command()
@click.option("--run-id", required=True)
@click.option("--dest", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Local directory; files land in DEST/RUN_ID, and DEST/latest points there.")
@click.option("--checkpoints", is_flag=True, help="Also pull checkpoints/ (results/ only by default).")
@click.option("--json", "as_json", is_flag=True)
@config_options
@_guard
def pull(run_id: str, dest: str, checkpoints: bool, as_json: bool, cli_config: dict[str, Any],
         config_path: str | None) -> None:
    """Copy a run's results (and checkpoints) here; a second pull transfers only what changed."""
    from runner.ops.runs import pull_run

    from runner.ops.progress_bar import transfer_progress

    ctx = _load(cli_config, config_path)
    with transfer_progress(f"pulling {run_id}", enabled=not as_json) as (on_plan, on_file):
        out = pull_run(ctx.store, _run_id(run_id), dest, checkpoints, on_plan=on_plan, on_file=on_file)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{run_id}: {len(out['copied'])} file(s) copied ({out['bytes']} bytes), "
               f"{len(out['unchanged'])} unchanged, in {out['dest']}")


@ops.command()
@click.option("--run-id", required=True)
@click.option("--attempt", type=int, help="Only this attempt (default: all, with separators).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the run ends.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: one object per attempt (with --follow, one line per new chunk).")
@config_options
@_guard
def logs(run_id: str, attempt: int | None, follow: bool, as_json: bool, cli_config: dict[str, Any],
         config_path: str | None) -> None:
    """The job's output across attempts, from the store, with a separator per attempt.

    On GCE each attempt starts with its VM's serial console up to the container start (driver
    install, image pull): where to look when a run never got to its first line of output.
    GCE keeps that console only while the VM exists.

    \b
      runner ops logs --run-id exp-1              # every attempt
      runner ops logs --run-id exp-1 --attempt 2  # one attempt
      runner ops logs --run-id exp-1 -f           # follow until the run ends
    """
    from runner.ops.runs import attempt_logs, follow_logs

    ctx = _load(cli_config, config_path)
    run_id = _run_id(run_id)
    out = sys.stdout.buffer

    def separator(a: int, what: str) -> None:
        out.write(f"===== attempt {a}: {what} =====\n".encode())

    if follow:
        shown = None
        for a, kind, chunk in follow_logs(ctx.store, run_id, backend=ctx.backend):
            if as_json:
                out.write(json.dumps({"attempt": a, "kind": kind, "text": chunk.decode("utf-8", "replace")}).encode()
                          + b"\n")
            else:
                if (a, kind) != shown:
                    separator(a, "VM startup (serial console)" if kind == "startup" else "job output")
                    shown = (a, kind)
                out.write(chunk)
            out.flush()
        return
    parts = attempt_logs(ctx.store, run_id, attempt, backend=ctx.backend)
    if as_json:
        click.echo(json.dumps([{**p, "output": p["output"].decode("utf-8", "replace")} for p in parts], indent=1))
        return
    for p in parts:
        if p["startup"]:
            separator(p["attempt"], f"VM startup (serial console of {p['instance']})")
            out.write(p["startup"].encode())
        separator(p["attempt"], "job output")
        out.write(p["output"] if p["output"] or p["startup"] else b"(no output stored for this attempt)\n")
    out.flush()

