"""``python -m runner.cli``: the same command line as the ``runner`` script."""

from runner.cli.main import main

main()
