"""``python -m cos_spot_runner``: the same command line as the ``runner`` script."""

from cos_spot_runner import main

main()
