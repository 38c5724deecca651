"""``runner ops``: status, list, watch, delete, preempt, serial, events, pull, logs, report; each parses, calls
``runner.ops`` and prints (data to stdout, ``--json`` for scripts)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from runner.cli.common import EXIT_FAILED, EXIT_USAGE, checked_run_id, config_options, fail, guard, load, note


@click.group()
def ops() -> None:
    """Show and control runs: status, list, watch, logs, serial, events, pull, delete, preempt, report.

    Every command takes --json. Exit codes: 0 ok, 1 the run (or the operation) failed,
    2 usage or config error, 3 no such run.
    """


@ops.command()
@click.option("--run-id", required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@guard
def status(run_id: str, as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """State, attempt, heartbeat age, progress, how the current attempt got running (its recovery:
    detect, create, boot, driver, pull, restore, first step) and the last event of one run."""
    from entrypoint.record.timeline import duration
    from runner.ops.runs import ago, run_status, when
    from runner.launch.supervisor_heartbeat import report_lines

    ctx = load(cli_config, config_path)
    s = run_status(ctx.store, checked_run_id(run_id), ctx.backend, price_table=ctx.cfg.price_table, with_cost=True)
    if as_json:
        click.echo(json.dumps(s, indent=1, default=str))
        return
    prog = " ".join(f"{k}={v}" for k, v in s["progress"].items()) or "-"
    if s.get("rate"):
        prog += f"  ({s['rate']:.2f} steps/s" + (f", ETA {duration(s['eta_s'])}" if s.get("eta_s") else "") + ")"
    ev = s["last_event"]
    click.echo(f"run        {s['run_id']}")
    click.echo(f"state      {s['state']}" + (f" ({s['reason']})" if s["reason"] else ""))
    if s.get("queue"):
        q = s["queue"]
        click.echo(f"queue      #{q['position']}: {q['reason']}"
                   + (" (waited past the hold time: what frees up goes to it first)" if q.get("holds") else ""))
    click.echo(f"attempt    {s['attempt']}  instance {s['instance'] or '-'}  zone {s['zone'] or '-'}"
               f"  restarts {s['restarts']}")
    click.echo(f"updated    {when(s['updated_at'], s['updated_age_s'])}")
    click.echo(f"heartbeat  {when(s['heartbeat_at'], s['heartbeat_age_s'])}")
    if s.get("startup_phase"):
        click.echo(f"startup    {s['startup_phase']}")
    click.echo(f"progress   {prog}")
    if s.get("data"):
        from runner.launch.staged_data import progress_text

        click.echo(f"data       {progress_text(s['data'])}")
    from runner.ops.tiers_view import tier_lines

    for line in tier_lines(s.get("checkpoint_tiers") or {}):  # resumed from which tier; the mirror's lag
        click.echo(line)
    if s.get("recovery"):  # how the current attempt got running: "recovery 1m12s: detect 4s · ..."
        click.echo(s["recovery"]["text"])
    click.echo(f"cost       {s['cost_text']}" + _cost_detail(s["cost"]))
    if s["cost"].get("history_note"):
        click.echo(f"           ({s['cost']['history_note']})")
    if s.get("nodes"):
        click.echo(f"nodes      {len(s['nodes'])} (a gang: any node lost restarts all of them)")
        for n in s["nodes"]:
            nprog = " ".join(f"{k}={v}" for k, v in n["progress"].items()) or "-"
            beat = when(n["heartbeat_at"], n["heartbeat_age_s"]) if n["heartbeat_at"] else "no heartbeat yet"
            click.echo(f"  node {n['rank']}   {n['name']}  zone {n['zone'] or '-'}  {n['status'] or '?'}  "
                       f"heartbeat {beat}  {n['phase'] or '-'}  progress {nprog}")
    elif s.get("instances"):
        click.echo("instances  " + ", ".join(f"{i['name']} ({i['status']})" for i in s["instances"]))
    if ev:
        click.echo(f"last event {ev['at']} ({ago(ev['time'])}): {ev['actor']} {ev['from']} -> {ev['to']}"
                   + (f" ({ev['reason']})" if ev.get("reason") else ""))
    if s["stop_requested"]:
        click.echo("stop       requested (.stop): this run is never restarted")
    for d in s.get("damaged", []):
        click.echo(f"damaged    {d} (left out above)")
    for line in report_lines(s["supervisor"]):
        click.echo(line)


@ops.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of runs.")
@click.option("--orphans", is_flag=True, help="Instead: VMs/containers whose run is finished or unknown (still billing).")
@click.option("--sweep", "sweep_id", metavar="ID",
              help="Only this sweep's runs (state, attempt, params, progress, cost, metric) and its summary.")
@config_options
@guard
def list_cmd(as_json: bool, orphans: bool, sweep_id: str | None, cli_config: dict[str, Any],
             config_path: str | None) -> None:
    """All runs in the store, one line each (UPDATED in UTC, and how long ago)."""
    from entrypoint.record.timeline import duration
    from runner.ops.runs import list_runs, when

    if sweep_id is not None and orphans:
        fail("--sweep and --orphans are two different lists: give one", EXIT_USAGE)
    ctx = load(cli_config, config_path)
    if sweep_id is not None:
        from runner.cli.cmd_sweep import print_sweep_list

        print_sweep_list(ctx, checked_run_id(sweep_id), as_json)
        return
    if orphans:
        from runner.ops.runs import orphans as find_orphans

        found = find_orphans(ctx.store, ctx.backend)
        if as_json:
            click.echo(json.dumps(found, indent=1))
        for o in [] if as_json else found:
            click.echo(f"{o['name']:<40} {o['zone']:<16} {o['status']:<11} {o['why']}")
        if not found and not as_json:
            note("no orphans: every instance belongs to a live run")
        return
    rows = list_runs(ctx.store)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        note(f"no runs in {ctx.store.url}")
        return
    click.echo(f"{'RUN':<28} {'STATE':<13} {'ATT':>3} {'RESTARTS':>8}  {'PROGRESS':<16} {'ETA':>6}  UPDATED")
    for r in rows:
        if "error" in r:  # its record cannot be read: say which object, and go on with the others
            click.echo(f"{r['run_id']:<28} {'DAMAGED':<13} {'-':>3} {'-':>8}  {r['error']}"
                       + _mark_text(r.get("supervisor")))
            continue
        queue = r.get("queue") or {}
        state = f"QUEUED #{queue['position']}" if queue.get("position") else r["state"]
        click.echo(f"{r['run_id']:<28} {state:<13} {r['attempt']:>3} {r['restarts']:>8}  "
                   f"{_progress_text(r['progress']):<16} {duration(r['eta_s']):>6}  "
                   f"{when(r['updated_at'], r['updated_age_s'])}"
                   + (f"  {queue.get('reason') or r.get('reason')}" if r["state"] == "QUEUED" else ""))
    from runner.launch.supervisor_heartbeat import unwatched, unwatched_lines

    for line in unwatched_lines(*unwatched(ctx.store, _live_ids(rows))):
        click.echo(line)


def _live_ids(rows: list[dict[str, Any]]) -> list[str]:
    """The runs of ``rows`` that go on, and so need a supervisor (a damaged row's state is unknown:
    its own line says so, and a supervisor marks it)."""
    from entrypoint.record import State

    return [r["run_id"] for r in rows if "error" not in r and r.get("state") in State.__members__
            and not State[r["state"]].terminal]


def _mark_text(mark: dict[str, Any] | None) -> str:
    """What a supervisor marked about a damaged run (``damaged.json``), in a few words."""
    if not mark:
        return ""
    live = mark.get("live_instances") or []
    return (f"  (supervisor: unreadable since {mark.get('since_iso', '?')}"
            + (f"; still running: {', '.join(map(str, live))}" if live else "") + ")")


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
@click.option("--once", is_flag=True, help="Show one frame and exit (for scripts and checks).")
@config_options
@guard
def watch(run_ids: tuple[str, ...], interval: float, as_json: bool, once: bool, cli_config: dict[str, Any],
          config_path: str | None) -> None:
    """A live table of runs: state, attempt, zone, heartbeat, progress, rate, ETA, restarts, cost.

    Redraws in place until Ctrl-C (or until the --run-id runs end). Read-only: watching never
    changes a run; keep `runner supervise` (or an attached submit) running to keep them alive.
    When an attempt that began while watching takes its first step, its recovery line shows
    under the table (and as "recovery" in its --json line).

    \b
      runner ops watch
      runner ops watch --run-id exp-1
      runner ops watch --json | jq 'select(.state == "PREEMPTED")'
    """
    import itertools

    from entrypoint.record import DamagedRecord, RunRecord
    from runner.ops.runs import RunNotFound
    from runner.ops.watch import snapshots, watch_json, watch_table

    if interval <= 0:
        fail("--interval must be a positive number of seconds", EXIT_USAGE)
    ctx = load(cli_config, config_path)
    ids = [checked_run_id(r) for r in run_ids] or None
    for r in ids or []:
        try:
            found = RunRecord(ctx.store, r).read_state() is not None
        except DamagedRecord:
            found = True  # it exists; its row says what cannot be read
        if not found:
            raise RunNotFound(f"no run {r!r} in {ctx.store.url} (see `runner ops list`)")
    frames = snapshots(ctx.store, ids, interval, enrich=lambda row: _add_cost(ctx, row))
    if once:
        frames = itertools.islice(frames, 1)
    try:
        if as_json:
            rows = watch_json(frames, ids, lambda line: click.echo(line))
        else:
            rows = watch_table(frames, ids, ctx.store.url, caption=lambda rows: _supervision_caption(ctx.store, rows))
    except KeyboardInterrupt:
        return
    if ids and not once:
        sys.exit(0 if all(r.get("state") == "SUCCEEDED" for r in rows) else EXIT_FAILED)


def warn_if_unsupervised(store: Any) -> None:
    """submit --detach: a run nobody supervises is not restarted after a preemption; say so now."""
    from runner.launch.supervisor_heartbeat import watchfulness

    w = watchfulness(store)
    if not w.alive:
        note(f"runner: warning: {w.warning}\n    fix: {w.fix}")


def _supervision_caption(store: Any, rows: list[dict[str, Any]]) -> str:
    """Under ``ops watch``'s table: who last supervised, and a warning only while a live run of
    the table is unwatched (``ops list``'s rule), counted, not named: the table names them, and a
    run's name only in its own row keeps each row findable by it."""
    from rich.markup import escape

    from runner.launch.supervisor_heartbeat import unwatched

    w, ids = unwatched(store, _live_ids(rows))
    if not ids:
        return escape(f"supervisor: {w.text}")
    n = f"{len(ids)} live run{'s' if len(ids) > 1 else ''} unwatched"
    return escape(f"supervisor: {w.text}") + f"\n[bold red]{escape(w.warning)} ({n})[/]\nfix: {escape(w.fix)}"


def _run_grace(ctx: Any, run_id: str) -> float:
    """The run's own grace period, pinned in its spec at submit (config's for an older spec that
    did not pin one, or a spec that cannot be read: a stop must never wait on a readable record)."""
    from entrypoint.record import RunRecord

    legacy = ctx.cfg.attempt_settings()
    try:
        spec = RunRecord(ctx.store, checked_run_id(run_id)).read_spec()
    except Exception:  # noqa: BLE001 - any unreadable spec means the same fallback
        spec = None
    return (legacy if spec is None else spec.attempt_settings(legacy)).grace_period


@ops.command()
@click.option("--run-id", help="The run to stop (or --sweep).")
@click.option("--sweep", "sweep_id", metavar="ID", help="Stop every run of this sweep instead (concurrently).")
@click.option("--grace-period", type=float,
              help="Seconds the job gets to checkpoint before it is killed (default: the run's own, pinned at submit).")
@click.option("--purge", is_flag=True,
              help="Also remove the run's whole record (checkpoints, results, logs) so its id can be reused; "
                   "asks first.")
@click.option("--yes", is_flag=True, help="With --purge: do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@guard
def delete(run_id: str | None, sweep_id: str | None, grace_period: float | None, purge: bool, yes: bool,
           as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """Stop a run for good: writes .stop (nothing will restart it), then removes its VM/container.

    The run's record (checkpoints, results, logs) stays in the store; `submit --restart` resumes it.
    With --purge the record is removed too (after a confirmation; --yes skips it) and the run id
    is free for a new run; a run whose VM or container may still be alive is never purged.

    \b
      runner ops delete --run-id exp-1 --purge
      runner ops delete --sweep lr-sweep-3f2a     # every run of a sweep
    """
    from runner.ops.runs import delete_run

    if (run_id is None) == (sweep_id is None):
        fail("give the run to stop with --run-id ID, or a whole sweep with --sweep ID", EXIT_USAGE)
    if yes and not purge:
        fail("--yes only confirms --purge: add --purge to remove the run's record, or drop --yes", EXIT_USAGE)
    if sweep_id is not None and purge:
        fail("--purge removes one run's record: stop the sweep with --sweep first, then purge runs one by one",
             EXIT_USAGE)
    ctx = load(cli_config, config_path)
    if sweep_id is not None:
        from runner.cli.cmd_sweep import print_sweep_delete

        print_sweep_delete(ctx, checked_run_id(sweep_id), grace_period, as_json)
        return
    assert run_id is not None
    g = _run_grace(ctx, run_id) if grace_period is None else grace_period
    if purge:
        _purge(ctx, checked_run_id(run_id), g, yes, as_json)
        return
    out = delete_run(ctx.store, ctx.backend, checked_run_id(run_id), g)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{out['run_id']}: {out['state']}; removed {', '.join(out['removed']) or 'no instance'}")
    if out.get("error"):
        click.echo(f"runner: {out['error']}", err=True)  # a torn record, or a restart that overtook it


def _purge(ctx: Any, run_id: str, grace_period: float, yes: bool, as_json: bool) -> None:
    """``delete --purge``: confirm (unless --yes), stop, then forget the run (runner/ops/purge.py)."""
    from runner.ops.purge import PurgeRefused, purge_run, summarize

    record = summarize(ctx.store, run_id)
    if not yes:
        if not sys.stdin.isatty():
            fail(f"--purge removes {record.objects} objects of run {run_id} ({record.where}) for good and "
                 "nobody is here to confirm: pass --yes to purge without asking", EXIT_USAGE)
        state = record.state or "no readable state"
        click.confirm(f"Stop run {run_id} ({state}) and remove its record, {record.objects} objects under "
                      f"{record.where} (checkpoints, results, logs)? This cannot be undone", abort=True, err=True)
    try:
        out = purge_run(ctx.store, ctx.backend, run_id, grace_period)
    except PurgeRefused as e:
        fail(str(e), EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{run_id}: purged ({out['purged_objects']} objects); removed "
               f"{', '.join(out['removed']) or 'no instance'}; the run id is free for a new run")
    staged = out.get("staged_data")
    if staged and staged["removed"]:
        click.echo(f"{run_id}: removed its staged data ({staged['path']})")
    elif staged:
        click.echo(f"runner: warning: {run_id}'s staged data is left: {staged['error']}", err=True)


@ops.command()
@click.option("--run-id", required=True)
@click.option("--grace-period", type=float,
              help="Seconds between SIGTERM and kill (default: the run's own, pinned at submit).")
@click.option("--node", type=click.IntRange(min=0), metavar="RANK",
              help="A gang: preempt only this node (0 is rank 0); the whole gang restarts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_options
@guard
def preempt(run_id: str, grace_period: float | None, node: int | None, as_json: bool, cli_config: dict[str, Any],
            config_path: str | None) -> None:
    """Simulate a spot preemption: SIGTERM, grace period, kill. The supervisor restarts the run
    (a gang: all its nodes, whichever one was preempted)."""
    from runner.ops.runs import preempt_run

    ctx = load(cli_config, config_path)
    g = _run_grace(ctx, run_id) if grace_period is None else grace_period
    out = preempt_run(ctx.store, ctx.backend, checked_run_id(run_id), g, node=node)
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
@guard
def serial(run_id: str, tail: int, follow: bool, as_json: bool, cli_config: dict[str, Any],
           config_path: str | None) -> None:
    """The current VM's serial console (startup phases, driver install, container output).

    Where to look when a run has no heartbeat and no manifest: it died before its container started.
    """
    from runner.ops.runs import RunNotFound, current_instance

    ctx = load(cli_config, config_path)
    inst = current_instance(ctx.store, ctx.backend, checked_run_id(run_id))
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


def parse_since(text: str | None, now: float) -> float | None:
    """``--since``: a duration back from ``now`` (90s, 10m, 2h, 7d) or an ISO time (UTC unless it
    says otherwise: 2026-12-02T21:00:00Z, 2026-12-02 21:00, 2026-12-02); None for None."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t and t[-1] in units:
        try:
            return now - float(t[:-1]) * units[t[-1]]
        except ValueError:
            pass
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        fail(f"--since {text!r}: use a duration back from now (30m, 2h, 7d) or an ISO time in UTC "
             "(2026-12-02T21:00:00Z)", EXIT_USAGE)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@ops.command()
@click.option("--run-id", required=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show the newest N events (newest last). Older ones are not read at all.")
@click.option("--all", "show_all", is_flag=True, help="Every event of the run, however many (reads them all).")
@click.option("--since", help="Only events from then on: a duration back (10m, 2h, 7d) or an ISO time "
                              "(2026-12-02T21:00:00Z). With --limit, the newest N of those.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, oldest first.")
@config_options
@guard
def events(run_id: str, limit: int, show_all: bool, since: str | None, as_json: bool, cli_config: dict[str, Any],
           config_path: str | None) -> None:
    """Our run events and the provider's operations on the run's VMs (preempted, stop, delete), in time order,
    with one `recovery ...` line per attempt at its first step: where the time between lost and
    training again went (detect, create, boot, driver, pull, restore, first step).

    A run that was preempted hundreds of times has thousands of events; this shows the newest
    --limit of them (50 by default), and reads only those. Go further back with --since or a
    larger --limit, or take everything with --all.

    \b
      runner ops events --run-id exp-1                    # the newest 50
      runner ops events --run-id exp-1 --limit 10         # the newest 10
      runner ops events --run-id exp-1 --since 2h         # the newest 50 of the last two hours
      runner ops events --run-id exp-1 --since 2026-12-02T21:00:00Z --all
    """
    from runner.launch.follow import format_event
    from runner.ops.runs import run_events

    start = parse_since(since, time.time())
    ctx = load(cli_config, config_path)
    n = None if show_all else limit
    evs = run_events(ctx.store, ctx.backend, checked_run_id(run_id), start, n)
    if as_json:
        click.echo(json.dumps(evs, indent=1, default=str))
        return
    if n is not None and len(evs) >= n:
        note(f"(the newest {n} events; older ones: --limit N, --since 2h or --all)")
    for ev in evs:
        click.echo(format_event(ev))


@ops.command()
@click.option("--run-id", required=True)
@click.option("--dest", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Local directory; files land in DEST/RUN_ID, and DEST/latest points there.")
@click.option("--checkpoints", is_flag=True, help="Also pull checkpoints/ (results/ only by default).")
@click.option("--json", "as_json", is_flag=True)
@config_options
@guard
def pull(run_id: str, dest: str, checkpoints: bool, as_json: bool, cli_config: dict[str, Any],
         config_path: str | None) -> None:
    """Copy a run's results (and checkpoints) here; a second pull transfers only what changed."""
    from runner.ops.runs import pull_run

    from runner.ops.progress_bar import transfer_progress

    ctx = load(cli_config, config_path)
    with transfer_progress(f"pulling {run_id}", enabled=not as_json) as (on_plan, on_file):
        out = pull_run(ctx.store, checked_run_id(run_id), dest, checkpoints, on_plan=on_plan, on_file=on_file)
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{run_id}: {len(out['copied'])} file(s) copied ({out['bytes']} bytes), "
               f"{len(out['unchanged'])} unchanged, in {out['dest']}")
    if out.get("why_nothing"):
        click.echo(f"runner: nothing copied: {out['why_nothing']}", err=True)


@ops.command()
@click.option("--run-id", required=True)
@click.option("--attempt", type=int, help="Only this attempt (default: all, with separators).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new output until the run ends (local: within a second; GCE: each heartbeat).")
@click.option("--timestamps", "-t", is_flag=True,
              help="With --follow: start each line with the UTC time it arrived (the stored log keeps no times).")
@click.option("--node", type=click.IntRange(min=0), default=0, metavar="RANK",
              help="A gang: this node's output (default 0, rank 0).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: one object per attempt (with --follow, one line per new chunk).")
@config_options
@guard
def logs(run_id: str, attempt: int | None, follow: bool, timestamps: bool, node: int, as_json: bool,
         cli_config: dict[str, Any], config_path: str | None) -> None:
    """The job's output across attempts, from the store, with a separator per attempt.

    On GCE each attempt starts with its VM's serial console up to the container start (driver
    install, image pull): where to look when a run never got to its first line of output.
    GCE keeps that console only while the VM exists.

    \b
      runner ops logs --run-id exp-1              # every attempt
      runner ops logs --run-id exp-1 --attempt 2  # one attempt
      runner ops logs --run-id exp-1 -f           # follow until the run ends
      runner ops logs --run-id exp-1 -f -t        # ... each line with the time it arrived
      runner ops logs --run-id big-1 --node 1     # a gang's node 1
    """
    from runner.cli.closed_pipe import WholeWrites
    from runner.ops.runs import attempt_logs, follow_logs

    if timestamps and not follow:
        # The store keeps the job's bytes, not when each line was printed: a time made up here
        # would be the time of reading, which only a follower can honestly give.
        fail("--timestamps needs --follow: the stored log keeps no times; "
             f"follow it live with `runner ops logs --run-id {run_id} --follow --timestamps`", EXIT_USAGE)
    if node and follow:
        fail(f"--follow shows rank 0's output; node {node}'s is read from the store: "
             f"`runner ops logs --run-id {run_id} --node {node}` (again for more)", EXIT_USAGE)
    ctx = load(cli_config, config_path)
    run_id = checked_run_id(run_id)
    out = WholeWrites(sys.stdout.buffer)  # a log is megabytes: a short write must not drop its tail

    def separator(a: int, what: str) -> None:
        out.write(f"===== attempt {a}: {what} =====\n".encode())

    if follow:
        from runner.launch.job_output import LineSplitter, clock_text

        shown = None
        split = LineSplitter()

        def stamped(lines: list[bytes]) -> bytes:
            now = clock_text().encode()
            return b"".join(now + b" " + ln for ln in lines)

        for a, kind, chunk in follow_logs(ctx.store, run_id, backend=ctx.backend):
            if as_json:
                doc = {"attempt": a, "kind": kind, "text": chunk.decode("utf-8", "replace")}
                out.write(json.dumps({**doc, "time": clock_text()} if timestamps else doc).encode() + b"\n")
            else:
                if (a, kind) != shown:
                    if timestamps:  # the part line the previous section ended with
                        out.write(stamped(split.flush()))
                    separator(a, "VM startup (serial console)" if kind == "startup" else "job output")
                    shown = (a, kind)
                out.write(stamped(split.feed(chunk)) if timestamps else chunk)
            out.flush()
        if timestamps and not as_json:
            out.write(stamped(split.flush()))
            out.flush()
        return
    parts = attempt_logs(ctx.store, run_id, attempt, backend=ctx.backend, node=node)
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


from runner.cli.cmd_report import report as _report  # noqa: E402 - its own module (issue 24), one command of ops

ops.add_command(_report)
