"""``python -m bench [NAME...]``: run the benchmarks (all by default) and print their ratios."""

from __future__ import annotations

import sys

from bench import (build_times, capacity, cli_startup, gang_restart, gce_supervisor, hosted_schedule, hung_neighbours, ops_history,
                   ops_scale, recovery, report, restart_latency, restore_streams, store_scale, sync_overhead,
                   transfer)

ALL = {"sync_overhead": sync_overhead.main, "restart_latency": restart_latency.main,
       "gang_restart": gang_restart.main,
       "hung_neighbours": hung_neighbours.main,
       "cli_startup": cli_startup.main, "gce_supervisor": gce_supervisor.main,
       "build_times": build_times.main, "ops_scale": ops_scale.main, "hosted_schedule": hosted_schedule.main,
       "ops_history": ops_history.main, "recovery": recovery.main, "restore_streams": restore_streams.main,
       "capacity": capacity.main, "store_scale": store_scale.main,
       "report": report.main, "transfer": transfer.main}


def main(argv: list[str]) -> int:
    names = argv or list(ALL)
    for name in names:
        print(f"== {name}", flush=True)
        ALL[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
