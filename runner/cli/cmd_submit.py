"""``runner submit``: parse, submit (building the image first unless told not to), follow or detach, print."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from runner.cli.common import EXIT_FAILED, EXIT_USAGE, checked_run_id, config_of, config_options, fail, guard, load, note
from runner.cli.cmd_build import run_build, unnamed_build_image
from runner.cli.cmd_ops import warn_if_unsupervised

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class SubmitCommand(click.Command):
    """``submit``, whose arguments are a job's argv: options end at the job's first word.

    Parsing stops at the first word that is not a runner option: click's context setting
    ``allow_interspersed_args`` is optparse's ("If this flag were false ... we stop processing
    options as soon as we see the first non-option argument",
    https://docs.huihoo.com/pydoc/python/2.5/stdlib/optparse.OptionParser-class.html), so the job's
    own ``--max-restarts 3`` reaches the job instead of the runner. ``ignore_unknown_options``
    (click's pattern for forwarding options, https://click.palletsprojects.com/en/latest/advanced/)
    is what turned ``--detatch`` into the job's command, and is gone: before the first word an
    unknown option is click's usage error (exit 2) with its "Did you mean"
    (https://github.com/pallets/click/issues/2764), to which this adds where a job's own options go.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            raise click.UsageError(f"{e.format_message()}\nA job's own options go after its program "
                                   f"(or after `--`): {_COMMAND_FORM}", ctx=e.ctx) from None


_COMMAND_FORM = "runner submit --run-id ID [OPTIONS] -- PROGRAM ARGS..."


@click.command(cls=SubmitCommand, context_settings={"allow_interspersed_args": False})
@click.option("-f", "--file", "task_path", metavar="TASK.yaml", type=click.Path(dir_okay=False),
              help="A task file saying what the flags say (README: Task files); flags given override it.")
@click.option("--run-id", help="Your name for the run; re-using it resumes the run (required unless the task file sets run_id).")
@click.option("--image", help="Image to run (local: a Docker image name; pinned to its id/digest).")
@click.option("--restart", is_flag=True, help="Run a finished, failed or stopped run again (resumes from its last checkpoint).")
@click.option("--detach", is_flag=True, help="Return after submitting; `runner supervise` keeps it going.")
@click.option("--quiet", "-q", is_flag=True, help="Attached: show the transitions only, not the job's output.")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be created, and create nothing.")
@click.option("--skip-build", is_flag=True, help="Without --image: run the configured image as is; otherwise "
              "the current folder is built first, tagged FOLDER:dev (never over the configured image).")
@click.option("--pull", "pull_dest", metavar="DIR", type=click.Path(file_okay=False),
              help="When the run succeeds, copy its results/ here (as `runner ops pull --dest DIR`).")
@click.option("--priority", type=int, default=0, show_default=True,
              help="The queue's order when the quota is full: higher first, then first come (README: Sweeps and queues).")
@click.option("--max-restarts", type=int, help="Preemption/stall restarts before giving up (default 10).")
@click.option("--retry-on-failure", type=int, help="Re-run a job that exits non-zero up to N times (default 0).")
@click.option("--poll-interval", type=float, help="Seconds between supervisor checks.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Environment for the job (not for secrets).")
@click.option("--data", "data", multiple=True, metavar="SRC:/MOUNT",
              help="Stage SRC (gs://BUCKET/PREFIX, or file:///DIR on the local backend) to local disk before the "
                   "job starts; the job reads it read-only at /MOUNT. Repeatable (README: Data and checkpoint tiers).")
@click.option("--progress-regex", metavar="REGEX",
              help=r"For a job that prints its step but not RUNNER_PROGRESS: a regex with one group of digits "
              r"matched against each output line, e.g. 'iter (\d+)'; status, ETA and the stall watchdog then work.")
@click.option("--progress-total", type=click.IntRange(min=1), metavar="N",
              help="With --progress-regex: the job's total number of steps (for the ETA).")
@click.option("--nodes", type=int, metavar="N",
              help="A gang of N instances per attempt (default 1): any node lost restarts all N; "
                   "each gets RUNNER_NODE_RANK, RUNNER_NNODES, RUNNER_MASTER_ADDR (README: Multi-node).")
@click.option("--zones", help="GCE: zones to try in order, comma-separated (next zone on stockout/quota).")
@click.option("--machine-type", help="GCE: e.g. n1-standard-8, g2-standard-8 (g2/a2/a3 carry their GPUs).")
@click.option("--gpu", help="GCE: TYPE[:COUNT] for N1 machines, e.g. nvidia-tesla-t4:1.")
@click.option("--no-gpu", is_flag=True, default=None, help="GCE: CPU only; skips the driver install entirely.")
@click.option("--termination-action", type=click.Choice(["DELETE", "STOP"]),
              help="GCE: what preemption does to the VM (default DELETE).")
@click.option("--provisioning", type=click.Choice(["spot", "standard", "spot-then-standard", "flex-start"]),
              help="GCE: spot (default), standard (on-demand), spot-then-standard (on-demand once no spot VM "
                   "came for --fallback-after), flex-start (needs --max-run-duration; README: When spot runs dry).")
@click.option("--fallback-after", metavar="DURATION",
              help="GCE, spot-then-standard: how long an attempt waits for a spot VM, e.g. 30m (default).")
@click.option("--max-run-duration", metavar="DURATION",
              help="GCE: GCE ends the VM after this long, e.g. 4h (flex-start needs it; at most 7d there).")
@click.option("--mirror", metavar="URL",
              help="A second checkpoint store, e.g. gs://OTHER-BUCKET in another region: written after the "
                   "store, resumed from when the store cannot be read (README: Data and checkpoint tiers).")
@config_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@guard
def submit(task_path: str | None, run_id: str | None, image: str | None, restart: bool, detach: bool,
           quiet: bool, dry_run: bool, skip_build: bool,
           pull_dest: str | None, priority: int, max_restarts: int | None, retry_on_failure: int | None, poll_interval: float | None,
           env_pairs: tuple[str, ...], data: tuple[str, ...], progress_regex: str | None, progress_total: int | None,
           nodes: int | None, zones: str | None, machine_type: str | None,
           gpu: str | None, no_gpu: bool | None, termination_action: str | None,
           provisioning: str | None, fallback_after: str | None, max_run_duration: str | None,
           mirror: str | None, command: tuple[str, ...], cli_config: dict[str, Any], config_path: str | None) -> None:
    """Submit a run and follow it until it ends (unless --detach).

    The job's command comes after `--` (runner options before it) and is passed as an argument
    list, never re-parsed by a shell; everything after the job's first word is the job's:

        runner submit --run-id exp-1 --image cos-spot-runner/workload:dev -- python3 -m examples.trainer --steps 100

    Or from a task file (README: Task files), flags given overriding it:

        runner submit -f task.yaml --run-id exp-2

    Re-submitting an existing run id resumes it from its last checkpoint (with no command, or
    the same one; another command needs another --run-id).
    """
    from runner.launch import submit as submit_mod

    task = _task_file(task_path, command)
    run_id = run_id or (task.run_id if task is not None else None)
    if not run_id:
        fail("no run id: pass --run-id ID" + (f" or set run_id in {task_path}" if task_path else ""), EXIT_USAGE)
    run_id = checked_run_id(run_id)
    if task is not None:  # a flag overrides the file: the command after `--` replaces the file's
        command = command or tuple(task.command)
        image = image or task.image
    if command and command[0].startswith("-"):
        # Only `--` lets a word starting with `-` through, and no program is named like that: a
        # runner option written after `--`, or the job's arguments without their program.
        fail(f"the job's command starts with {command[0]!r}, which is an option, not a program: runner "
             f"options go before `--`, the program and its arguments after it: {_COMMAND_FORM}", EXIT_USAGE)
    if pull_dest is not None and detach:
        fail("--pull needs the run followed to its end: drop --detach, or pull later with "
             f"`runner ops pull --run-id {run_id} --dest {pull_dest}`", EXIT_USAGE)
    env = env_of(env_pairs, dict(task.env) if task is not None else {})  # --env overrides the file's
    # The counts go through the config layer like every other setting, so a flag is checked
    # exactly as the same key in runner.toml or RUNNER_* would be (negative values refused).
    cli_config = {**cli_config, "poll_interval": poll_interval, "zones": zones, "nodes": nodes,
                  "machine_type": machine_type, "gpu": gpu, "no_gpu": no_gpu,
                  "termination_action": termination_action, "max_restarts": max_restarts,
                  "retry_on_failure": retry_on_failure, "progress_regex": progress_regex,
                  "progress_total": progress_total, "provisioning": provisioning,
                  "fallback_after": fallback_after, "max_run_duration": max_run_duration,
                  "data": list(data) or None, "mirror": mirror}
    task_layer = (task.settings, os.path.dirname(os.path.abspath(task.path))) if task is not None else None
    if dry_run:
        _dry_run(config_of(cli_config, config_path, task_layer), run_id, list(command), image, env)
        return
    ctx = load(cli_config, config_path, create_store=True, task=task_layer)
    from entrypoint.record import RunRecord

    if image is None and not skip_build and command and RunRecord(ctx.store, run_id).read_state() is None:
        image = build_for_submit(ctx, task.build if task is not None and task.build else ".")
    result = submit_mod.submit(ctx, run_id, list(command), image=image, restart=restart,
                               max_restarts=ctx.cfg.max_restarts, retry_on_failure=ctx.cfg.retry_on_failure,
                               env=env, priority=priority)
    message = result.message
    if result.joined:  # the run is live: join it as a re-submit of a live run would
        message += "; detached from it" if detach else "; following it"
    note(f"{message} (store {ctx.store.url}, backend {ctx.cfg.backend}, image {result.spec.image[:19]})")
    sup = ctx.supervisor()
    if detach:
        sup.reconcile(run_id)
        note(f"detached; keep it supervised with: runner supervise   (status: runner ops status --run-id {run_id})")
        warn_if_unsupervised(ctx.store)
        return
    from runner.launch.follow import follow_run

    try:
        final = follow_run(sup, run_id, ctx.cfg.poll_interval, note,
                           show_output=None if quiet else lambda a, line: note(f"{run_id}[{a}] | {line}"))
    except KeyboardInterrupt:
        _stopped_following(ctx, sup, run_id, _flags(cli_config, config_path))
    click.echo(f"{run_id}: {final.state.value} after {final.attempt} attempt(s)"
               + (f" — {final.reason}" if final.reason else ""))
    if final.state.value != "SUCCEEDED":
        _say_how_it_ended(ctx, run_id, final.attempt, _flags(cli_config, config_path))
        sys.exit(EXIT_FAILED)
    if pull_dest is not None:
        from runner.ops.runs import pull_run
        from runner.ops.progress_bar import transfer_progress

        with transfer_progress(f"pulling {run_id}", enabled=True) as (on_plan, on_file):
            out = pull_run(ctx.store, run_id, pull_dest, False, on_plan=on_plan, on_file=on_file)
        note(f"pulled {len(out['copied'])} file(s) ({out['bytes']} bytes) into {out['dest']}"
             + (f": nothing copied, {out['why_nothing']}" if out.get("why_nothing") else ""))


def env_of(pairs: tuple[str, ...], base: dict[str, str]) -> dict[str, str]:
    """``base`` with each ``--env KEY=VALUE`` over it, name by name (exit 2 for a malformed one)."""
    env = dict(base)
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            fail(f"--env {pair!r} is not KEY=VALUE", EXIT_USAGE)
        env[k] = v
    return env


def _say_how_it_ended(ctx: Any, run_id: str, attempt: int, flags: str) -> None:
    """A run that did not succeed: its last lines (usually the traceback) and where the rest is,
    so the user need not go looking (even with --quiet, which hid them while it ran)."""
    from runner.launch.job_output import last_lines

    tail = last_lines(ctx.store, run_id, attempt)
    if tail:
        note(f"last {len(tail)} line(s) of attempt {attempt}'s output:")
        for line in tail:
            note(f"    {line}")
    else:
        note(f"attempt {attempt} printed nothing")
    note(f"all its output: runner ops logs --run-id {run_id}{flags}")


def _flags(cli_config: dict[str, Any], config_path: str | None) -> str:
    """The config flags this command was given, for the commands it suggests (same store, same backend)."""
    import shlex

    given = [("--config", config_path)] + [(f"--{k}", cli_config.get(k)) for k in ("store", "backend", "project")]
    return "".join(f" {flag} {shlex.quote(str(v))}" for flag, v in given if v)


def _stopped_following(ctx: Any, sup: Any, run_id: str, flags: str) -> NoReturn:
    """Ctrl-C on an attached submit: only the following stops, never the run (its instance keeps
    running, and a claim or attempt in progress is the supervisors' to finish). Says so, with how
    to follow and stop it, and whether anything else supervises it; exits 130 (128 + SIGINT), not
    click's "Aborted!"."""
    from entrypoint.record import RunRecord
    from runner.launch.supervisor_heartbeat import watchfulness

    try:
        cur = RunRecord(ctx.store, run_id).read_state()
    except Exception:  # noqa: BLE001 - the message matters more than the state it shows
        cur = None
    where = f" ({cur[0].state.value}, attempt {cur[0].attempt})" if cur is not None else ""
    if cur is not None and cur[0].state.terminal:
        note(f"runner: stopped following {run_id}; it had already ended{where}: "
             f"runner ops status --run-id {run_id}{flags}")
    else:
        note(f"runner: stopped following {run_id}{where}; the run goes on without this submit.\n"
             f"    follow it: runner ops watch --run-id {run_id}{flags}\n"
             f"    stop it:   runner ops delete --run-id {run_id}{flags}")
        try:
            w = watchfulness(ctx.store)
        except Exception:  # noqa: BLE001 - unknown: say nothing rather than guess
            w = None
        if w is not None and w.alive:
            note(f"    supervisor: {w.text}")
        elif w is not None:
            note(f"runner: warning: this submit was its only supervisor; {w.warning}\n"
                 f"    fix: {w.fix}   (or follow it attached again: runner submit --run-id {run_id}{flags})")
    _finish_deletes(sup)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(EXIT_INTERRUPTED)


def _finish_deletes(sup: Any) -> None:
    """Wait for the deletes this submit began (an instance left billing otherwise, until some
    supervisor's pass finds it), saying so; a second Ctrl-C leaves them, said too."""
    import os

    left = sup.reaper.pending()
    if not left:
        return
    note(f"runner: finishing {len(left)} delete(s) this submit began ({', '.join(left)}); "
         "Ctrl-C again to leave them")
    try:
        sup.drain()
    except KeyboardInterrupt:
        left = sup.reaper.pending()
        note(f"runner: left {len(left)} delete(s) unfinished ({', '.join(left)}): the next pass of "
             "`runner supervise` removes those instances")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)  # sys.exit would wait for the delete workers at interpreter exit


def _task_file(task_path: str | None, command: tuple[str, ...]) -> Any:
    """The task file given with -f (None without), or exit 2 naming its line.

    ``runner submit task.yaml`` is not a second spelling: after item 1's parsing the first word
    is always the job's program, so a lone .yaml/.yml word that is a file and not a program is
    refused with the -f spelling instead of being run as one.
    """
    from runner.launch.task_file import TaskFileError, read_task_file

    if task_path is None:
        word = command[0] if len(command) == 1 else ""
        if word.endswith((".yaml", ".yml")) and os.path.isfile(word) and not os.access(word, os.X_OK):
            fail(f"{word!r} is a file, not a program: to submit a task file, pass it with -f: "
                 f"runner submit -f {word}", EXIT_USAGE)
        return None
    try:
        return read_task_file(task_path)
    except TaskFileError as e:
        fail(str(e), EXIT_USAGE)


def _dry_run(cfg: Any, run_id: str, command: list[str], image: str | None, env: dict[str, str]) -> None:
    """Print the exact first request (stdout) and what was left unchecked (stderr)."""
    from runner.launch import submit as submit_mod

    plan, skipped = submit_mod.dry_run(cfg, run_id, command, image, max_restarts=cfg.max_restarts,
                                       retry_on_failure=cfg.retry_on_failure, env=env)
    network = getattr(plan.nodes[0], "network_cli", lambda: [])() if plan.nodes else []
    if network:  # a local gang's private network, made before its nodes
        click.echo(" ".join(network))
    gang = getattr(plan, "gang", None)  # GCE: a gang is one bulkInsert per zone, not N inserts
    if gang is not None:
        click.echo(json.dumps(gang.to_dict(), default=str, indent=1))
    for node in () if gang is not None else plan.nodes:  # one request per instance of the attempt
        cli = getattr(node, "docker_cli", None)
        click.echo(" ".join(cli()) if cli else json.dumps(node.to_dict(), default=str, indent=1))
    note("dry run: nothing written or created; not checked: " + "; ".join(skipped))


def build_for_submit(ctx: Any, context: str) -> str:
    """No --image: build the current directory first, as `runner build` without --image would:
    named after the folder, never over the configured image (what --skip-build runs) or the base
    image, which a job's Dockerfile builds FROM (issue 20 §2)."""
    from runner.build.image import BuildError, BuildRequest

    local_only = ctx.cfg.backend == "local"
    name = unnamed_build_image(ctx.cfg, context, local_only)
    note(f"building {name} first (--image NAME to run an image as it is, --skip-build to run the "
         "configured one)")
    try:
        return run_build(ctx.cfg, BuildRequest(context, name, base_image=ctx.cfg.base_image),
                         local_only=local_only).image
    except BuildError as e:
        fail(str(e), EXIT_FAILED)
    raise AssertionError
