"""``runner sweep``: a grid or list of parameters becomes N runs; and what ``ops list/delete --sweep``
print. Parse, call ``runner.launch.sweep`` / ``runner.ops.sweeps``, print (data to stdout)."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import click

from runner.cli.cmd_submit import build_for_submit, env_of, submit
from runner.cli.common import EXIT_FAILED, EXIT_USAGE, config_options, fail, guard, load, note

_COMMAND_FORM = "runner sweep SWEEP.yaml [OPTIONS] -- PROGRAM ARGS... (with {name} placeholders)"

# The options a sweep shares with submit, taken from submit itself so that their spelling, help
# and checks stay one definition. Left out: what names or follows one run (--run-id, -f,
# --restart, --detach, --quiet, --pull) and --poll-interval (a sweep never follows its runs).
_FROM_SUBMIT = ("image", "skip_build", "env_pairs", "max_restarts", "retry_on_failure", "progress_regex",
                "progress_total", "nodes", "zones", "machine_type", "gpu", "no_gpu", "termination_action",
                "provisioning", "fallback_after", "max_run_duration", "data")
# Those that are config keys (checked by the config layer, as submit's are).
_CONFIG_KEYS = ("max_restarts", "retry_on_failure", "progress_regex", "progress_total", "nodes", "zones",
                "machine_type", "gpu", "no_gpu", "termination_action", "provisioning", "fallback_after",
                "max_run_duration", "data")


class SweepCommand(click.Command):
    """The job's own options go after ``--``; an unknown option before it says so."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            raise click.UsageError(f"{e.format_message()}\nThe job's command and its options go after `--`: "
                                   f"{_COMMAND_FORM}", ctx=e.ctx) from None


def _with_submit_options(f: Any) -> Any:
    """Attach submit's own Option objects (``_FROM_SUBMIT``) to this command."""
    by_name = {p.name: p for p in submit.params}
    params = getattr(f, "__click_params__", [])
    params.extend(by_name[n] for n in reversed(_FROM_SUBMIT))
    f.__click_params__ = params
    return f


@click.command(cls=SweepCommand)
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False))
@click.option("--max-concurrent", type=click.IntRange(min=1), metavar="K",
              help="At most K runs of this sweep hold VMs at once (pinned in each spec; the queue enforces it).")
@click.option("--priority", type=int, default=0, show_default=True,
              help="Queue priority of every run of the sweep (higher is admitted first, then submit order).")
@click.option("--sweep-id", metavar="ID",
              help="The sweep's id (default: the file's name and 4 random hex digits); runs are ID-000, ID-001...; "
                   "re-using it creates the missing runs and leaves the others as they are.")
@click.option("--dry-run", is_flag=True, help="Print each run's id, command and SWEEP_* env; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_with_submit_options
@config_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@guard
def sweep(sweep_file: str, max_concurrent: int | None, priority: int, sweep_id: str | None, dry_run: bool,
          as_json: bool, command: tuple[str, ...], cli_config: dict[str, Any], config_path: str | None,
          **shared: Any) -> None:
    """Submit a sweep: every point of a grid and/or list of parameters becomes one run.

    The runs share one image (built or pinned once) and one sweep id, and wait in the queue;
    `runner supervise` starts them, at most --max-concurrent at a time. Each run gets its
    parameters as {name} in the command and as SWEEP_<NAME> in its environment:

    \b
      # sweep.yaml
      grid: {lr: [0.1, 0.01], depth: [2, 4]}
      metric: {name: loss, goal: minimize}    # optional: a key of results/summary.json
    \b
      runner sweep sweep.yaml --max-concurrent 2 -- python train.py --lr {lr} --depth {depth}
      runner ops list --sweep SWEEP_ID
      runner ops delete --sweep SWEEP_ID

    A plain `runner submit` submits one run; this is the only way to submit a sweep.
    """
    from runner.launch.sweep import check_sweep_id, default_sweep_id, member_ids, submit_sweep
    from runner.launch.sweep_file import SweepFileError, check_command, read_sweep_file

    if not command:
        fail(f"no command: {_COMMAND_FORM}", EXIT_USAGE)
    if command[0].startswith("-"):
        fail(f"the job's command starts with {command[0]!r}, an option, not a program: runner options go "
             f"before `--`: {_COMMAND_FORM}", EXIT_USAGE)
    try:
        plan = read_sweep_file(sweep_file)
        check_command(list(command), plan)
    except SweepFileError as e:
        fail(str(e), EXIT_USAGE)
    sweep_id = sweep_id or default_sweep_id(sweep_file)
    check_sweep_id(sweep_id, len(plan.points))
    env = env_of(shared["env_pairs"], {})
    cli_config = {**cli_config, **{k: shared[k] for k in _CONFIG_KEYS}, "data": list(shared["data"]) or None}
    if dry_run:
        _dry_run(sweep_id, plan, list(command), env, as_json)
        return
    ctx = load(cli_config, config_path, create_store=True)
    from entrypoint.record.sweeps import read_sweep

    image = shared["image"]
    found = read_sweep(ctx.store, sweep_id)
    if found is not None:  # a rerun: the sweep keeps what it pinned; say which flags are not used
        kept = found[0]
        if image:
            note(f"sweep {sweep_id} exists: its runs keep the image it pinned; --image {image} is not used")
        if max_concurrent is not None and max_concurrent != kept.max_concurrent:
            note(f"sweep {sweep_id} exists: it keeps --max-concurrent {kept.max_concurrent}")
        if priority != kept.priority:
            note(f"sweep {sweep_id} exists: it keeps --priority {kept.priority}")
        image = None
    elif image is None and not shared["skip_build"]:
        image = build_for_submit(ctx, ".")
    result = submit_sweep(ctx, sweep_id, plan, list(command), image, env=env,
                          max_restarts=ctx.cfg.max_restarts, retry_on_failure=ctx.cfg.retry_on_failure,
                          priority=priority, max_concurrent=max_concurrent)
    doc = result.doc
    if as_json:
        click.echo(json.dumps({"sweep_id": result.sweep_id, "image": result.image, "runs": doc.run_ids if doc else [],
                               "created": result.created, "existing": result.existing, "failed": result.failed,
                               "max_concurrent": doc.max_concurrent if doc else max_concurrent,
                               "priority": doc.priority if doc else priority}, indent=1))
    else:
        click.echo(f"sweep {result.sweep_id}: {len(plan.points)} runs ({len(result.created)} submitted, "
                   f"{len(result.existing)} already there, {len(result.failed)} failed), image {result.image[:19]}"
                   + (f", at most {doc.max_concurrent} at once" if doc and doc.max_concurrent else ""))
    for rid, why in result.failed.items():
        note(f"runner: {rid}: {why}")
    note(f"runs {member_ids(sweep_id, len(plan.points))[0]} .. {member_ids(sweep_id, len(plan.points))[-1]} "
         f"(store {ctx.store.url}, backend {ctx.cfg.backend})\n"
         f"    see them:  runner ops list --sweep {sweep_id}\n"
         f"    stop them: runner ops delete --sweep {sweep_id}")
    if result.failed:
        note(f"runner: {len(result.failed)} run(s) not submitted; run the same command with --sweep-id {sweep_id} "
             "to create them (the others are left as they are)")
        sys.exit(EXIT_FAILED)
    from runner.cli.cmd_ops import warn_if_unsupervised

    warn_if_unsupervised(ctx.store)


def _dry_run(sweep_id: str, plan: Any, command: list[str], env: dict[str, str], as_json: bool) -> None:
    from runner.launch.sweep import member_ids
    from runner.launch.sweep_file import render, sweep_env

    ids = member_ids(sweep_id, len(plan.points))
    members = [{"run_id": rid, "params": p, "command": render(command, p), "env": {**env, **sweep_env(p)}}
               for rid, p in zip(ids, plan.points)]
    if as_json:
        click.echo(json.dumps({"sweep_id": sweep_id, "runs": members}, indent=1))
    else:
        for m in members:
            click.echo(f"{m['run_id']}  {shlex.join(m['command'])}  "
                       + " ".join(f"{k}={v}" for k, v in sorted(m["env"].items()) if k.startswith("SWEEP_")))
    note(f"dry run: {len(members)} runs of sweep {sweep_id}; nothing written, no image built or pinned")


# ---- what `runner ops list --sweep` and `ops delete --sweep` print ----

def print_sweep_list(ctx: Any, sweep_id: str, as_json: bool) -> None:
    """One row per member (state, attempt, params, progress, cost, metric) and a summary line."""
    from runner.ops.cost import cost_text, format_money
    from runner.ops.sweeps import sweep_status

    out = sweep_status(ctx.store, sweep_id, ctx.cfg.price_table)
    if as_json:
        click.echo(json.dumps(out, indent=1, default=str))
        return
    metric = out["metric"]
    mname = metric["name"] if metric else None
    click.echo(f"{'RUN':<28} {'STATE':<13} {'ATT':>3}  {'PROGRESS':<12} {'COST':<10}"
               + (f" {mname.upper()[:10]:>10}" if mname else "") + "  PARAMS")
    for r in out["runs"]:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        if "error" in r:
            click.echo(f"{r['run_id']:<28} {'DAMAGED':<13} {'-':>3}  {r['error']}")
            continue
        p = r.get("progress") or {}
        prog = "-" if p.get("step") is None else (f"{p['step']}/{p['total']}" if p.get("total") else str(p["step"]))
        cost = cost_text(r["cost"]) if r.get("cost") else "-"
        value = "-" if r["metric"] is None else f"{r['metric']:g}"
        m = f" {value:>10}" if mname else ""
        att = "-" if r.get("attempt") is None else r["attempt"]
        click.echo(f"{r['run_id']:<28} {r['state']:<13} {att:>3}  {prog:<12} {cost:<10}{m}  {params}")
    s = out["summary"]
    c = s["counts"]
    parts = [f"{c['queued']} queued", f"{c['running']} running", f"{c['done']} done", f"{c['failed']} failed",
             f"{c['stopped']} stopped"]
    parts += [f"{c[k]} {k.replace('_', ' ')}" for k in ("not_submitted", "damaged") if c[k]]
    cost = format_money(s["cost"]["so_far"], s["cost"]["currency"]) + (
        f" (+{s['cost']['unknown']} unknown)" if s["cost"]["unknown"] else "")
    line = f"sweep {sweep_id}: {s['runs']} runs: " + ", ".join(parts) + f"; cost {cost}"
    if s["best"]:
        b = s["best"]
        line += f"; best {b['name']} {b['value']:g} ({'lowest' if b['goal'] == 'minimize' else 'highest'}): {b['run_id']}"
    elif metric:
        line += f"; no run has reported {metric['name']} yet (results/summary.json)"
    click.echo(line)
    if c["not_submitted"]:
        note(f"runner: {c['not_submitted']} run(s) of the sweep were never created: rerun `runner sweep` with "
             f"--sweep-id {sweep_id} and the same file and command to create them")


def print_sweep_delete(ctx: Any, sweep_id: str, grace_period: float | None, as_json: bool) -> None:
    """Stop every member; say how many were stopped, already ended, never created, or failed."""
    from runner.cli.cmd_ops import _run_grace
    from runner.ops.sweeps import delete_sweep

    out = delete_sweep(ctx.store, ctx.backend, sweep_id,
                       lambda rid: _run_grace(ctx, rid) if grace_period is None else grace_period)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(f"sweep {sweep_id}: stopped {out['stopped']} run(s); {out['already_ended']} had already ended"
                   + (f"; {len(out['not_submitted'])} never created" if out["not_submitted"] else "")
                   + f"; removed {len(out['removed'])} instance(s)")
    for rid, why in out["errors"].items():
        note(f"runner: {rid}: {why}")
    if out["errors"]:
        sys.exit(EXIT_FAILED)
