"""A transfer progress bar on stderr for ``ops pull``: a live bar on a terminal, lines otherwise.

Kept apart from the transfer code (``runner.ops.runs.pull_run`` reports through two callbacks), so
the data path has no idea whether a person or a script is watching.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

OnPlan = Callable[[int, int], None]
OnFile = Callable[[str, int], None]


@contextlib.contextmanager
def transfer_progress(label: str, enabled: bool = True) -> Iterator[tuple[OnPlan, OnFile]]:
    """Yields ``(on_plan, on_file)`` callbacks that draw the bar (or print one line per file)."""
    if not enabled:
        yield (lambda files, size: None), (lambda name, size: None)
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        count = {"done": 0, "files": 0}

        def plan_lines(files: int, size: int) -> None:
            count["files"] = files
            print(f"{label}: {files} file(s) to transfer, {size} bytes", file=sys.stderr)

        def file_line(name: str, size: int) -> None:
            count["done"] += 1
            print(f"[{count['done']}/{count['files']}] {name} ({size} bytes)", file=sys.stderr)

        yield plan_lines, file_line
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def plan(files: int, size: int) -> None:
            bar.update(task, total=size, description=f"{label} ({files} file(s))")

        def advance(name: str, size: int) -> None:
            bar.update(task, advance=size)

        yield plan, advance
