"""The ``runner`` command line: the group, and one ``cmd_*`` module per command group.

Cloud libraries and Docker are imported inside the commands that use them, so ``runner --help``
stays fast. Data goes to stdout (``--json`` for scripts), progress and errors to stderr.
"""

from __future__ import annotations

import click

from runner.cli.cmd_build import build
from runner.cli.cmd_images import images
from runner.cli.cmd_ops import ops
from runner.cli.cmd_setup import doctor, init
from runner.cli.cmd_submit import submit
from runner.cli.cmd_supervise import supervise
from runner.cli.cmd_sweep import sweep
from runner.cli.closed_pipe import QuietOnClosedPipe


@click.group(cls=QuietOnClosedPipe, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Run containerized jobs on GCE spot VMs (Container-Optimized OS) through preemptions.

    \b
    Quick start (local backend: Docker on this machine, a directory as the bucket):
      make demo                                   # the whole cycle, preemption included
      runner submit --run-id exp-1 --image cos-spot-runner/workload:dev \\
          -- python3 -m examples.trainer --steps 100
      runner ops status --run-id exp-1
    """


for _command in (submit, sweep, build, images, supervise, doctor, init, ops):
    main.add_command(_command)
