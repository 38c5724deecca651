"""``runner ops report``: a run (or several, or a sweep) as one self-contained HTML page."""

from __future__ import annotations

import sys
from typing import Any

import click

from runner.cli.common import EXIT_USAGE, checked_run_id, config_options, fail, guard, load, note


@click.command()
@click.option("--run-id", "run_ids", multiple=True, help="The run to report (repeatable: a table of runs).")
@click.option("--sweep", "sweep_id", metavar="ID", help="Every run of this sweep: a table, then each run.")
@click.option("--out", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the page here (- for stdout). Default: report-RUN_ID.html (or report-SWEEP.html).")
@click.option("--open", "open_it", is_flag=True, help="Then open it in the default browser.")
@click.option("--serve", is_flag=True, help="Serve the page instead (read afresh on every load; refreshes "
                                            "itself while a run is live). Ctrl-C to stop.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve: the address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="With --serve: the port (0: any free one; the URL is printed).")
@click.option("--refresh", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="With --serve: seconds between reloads while a run is live.")
@click.option("--json", "as_json", is_flag=True,
              help="Instead of the page: the figures it draws, as JSON (an object; for several runs, an array).")
@config_options
@guard
def report(run_ids: tuple[str, ...], sweep_id: str | None, out: str | None, open_it: bool, serve: bool, host: str,
           port: int, refresh: float, as_json: bool, cli_config: dict[str, Any], config_path: str | None) -> None:
    """A run's story as a picture: attempts as bands per zone (preemptions and stalls marked,
    each recovery's phases), progress against time with the steps redone, spot cost against
    on-demand and the part lost to preemptions, checkpoint sync lag, and the last error.

    One HTML file, no network needed to open it (inline SVG and CSS, no script): attach it to
    a bug report. Times are UTC.

    \b
      runner ops report --run-id exp-1 --open
      runner ops report --run-id exp-1 --run-id exp-2 --out two.html
      runner ops report --sweep lr-sweep-3f2a
      runner ops report --run-id exp-1 --serve      # http://127.0.0.1:PORT/
    """
    from runner.ops.cost import PriceTableError, load_prices
    from runner.ops.report_data import ReportError
    from runner.ops.report_serve import report_page
    from runner.ops.runs import RunNotFound

    if bool(run_ids) == bool(sweep_id):
        fail("give the run with --run-id ID (repeatable), or a sweep with --sweep ID", EXIT_USAGE)
    if serve and (out or open_it):
        fail("--serve serves the page; --out and --open write a file: choose one", EXIT_USAGE)
    if as_json and (serve or out or open_it):
        fail("--json prints the figures instead of a page: drop --out, --open and --serve", EXIT_USAGE)
    ctx = load(cli_config, config_path)
    try:
        prices = load_prices(ctx.cfg.price_table)
    except PriceTableError as e:
        fail(f"{e}; fix it or unset price_table", EXIT_USAGE)
    if sweep_id:
        from runner.ops.sweeps import sweep_of

        sweep_id = checked_run_id(sweep_id)
        ids, title = list(sweep_of(ctx.store, sweep_id).run_ids), f"sweep {sweep_id}"
    else:
        ids = list(dict.fromkeys(checked_run_id(r) for r in run_ids))
        title = f"run {ids[0]}" if len(ids) == 1 else f"{len(ids)} runs"

    def render(refresh_s: float | None) -> str:
        try:
            return report_page(ctx.store, ids, title, prices, refresh_s=refresh_s)[0]
        except ReportError as e:
            raise RunNotFound(str(e)) from None

    if as_json:
        import json
        import time

        from runner.ops.report_data import build_report, build_reports

        now = time.time()
        if len(ids) == 1:
            try:
                click.echo(json.dumps(build_report(ctx.store, ids[0], prices, now).to_dict(), indent=1))
            except ReportError as e:
                raise RunNotFound(str(e)) from None
            return
        click.echo(json.dumps([r.to_dict() if not isinstance(r, ReportError) else {"run_id": rid, "error": str(r)}
                               for rid, r in zip(ids, build_reports(ctx.store, ids, prices, now))], indent=1))
        return
    if serve:
        import time

        from runner.ops.report_serve import start_server

        render(None)  # a run that does not exist is said now, not on the first page load
        server = start_server(lambda: render(refresh), host, port)
        click.echo(server.url)
        note(f"serving {title} at {server.url} (Ctrl-C to stop)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            note(f"runner: warning: listening on {host}, not loopback: whoever reaches this port sees the "
                 "run's VMs, zones and costs (no login); use the default --host 127.0.0.1 and an SSH tunnel")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.shutdown()
        return
    text = render(None)
    if out == "-":
        sys.stdout.write(text)
        return
    path = out or f"report-{sweep_id or ids[0]}.html"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    click.echo(path)
    if open_it:
        import os
        import webbrowser

        if not webbrowser.open("file://" + os.path.abspath(path)):
            note(f"no browser to open here: open {os.path.abspath(path)} yourself")
