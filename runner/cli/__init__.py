"""The ``runner`` command line: ``main`` holds the group and shared options; one ``cmd_*`` module
per command group, each a thin parse-call-print over the library."""
