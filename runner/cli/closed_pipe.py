"""When the reader of our stdout leaves early (``runner ops logs … | head``), end quietly, as Unix
tools do: no ``BrokenPipeError`` message, and the exit status a shell shows for ``seq … | head``.

Python ignores SIGPIPE, so a write to a pipe whose reader is gone raises ``BrokenPipeError``
instead of ending the process. Python's own advice
(https://docs.python.org/3/library/signal.html#note-on-sigpipe) is to catch it at the entry
point, point stdout at /dev/null (the interpreter flushes stdout once more at exit, which would
fail again) and exit; and *not* to restore SIGPIPE's default action, which would also kill the
process when a socket to Google or Docker breaks mid-write.

The status is 141 (128 + SIGPIPE): what a shell reports for a producer that SIGPIPE ended
(``seq 1 10000 | head -1; echo ${PIPESTATUS[0]}`` says 141,
https://relentlesscoding.com/posts/prevent-exit-when-sigpipe-received-and-pipefail-set), so
``set -o pipefail`` scripts treat ``runner`` exactly as they treat ``seq`` or ``cat``. It is an
exit, not a death by the signal, so ``atexit`` work (queued webhook notifications) still runs.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NoReturn

import click

EXIT_READER_GONE = 128 + int(getattr(signal, "SIGPIPE", 13))


def end_for_a_reader_that_left() -> NoReturn:
    """Exit quietly with :data:`EXIT_READER_GONE`; stdout goes to /dev/null first, so the
    interpreter's last flush of what is still buffered cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout has no file descriptor (replaced in-process): nothing to flush at exit
    sys.exit(EXIT_READER_GONE)


class QuietOnClosedPipe(click.Group):
    """The ``runner`` group: every command's stdout is flushed inside this guard, so a reader
    that left is noticed here, whether mid-command or at the command's last buffered bytes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                # Flushed here, not by the interpreter at exit, where a closed pipe could only be
                # said as "Exception ignored … BrokenPipeError" with status 120. A SystemExit from
                # the command keeps its code unless this flush finds the reader gone.
                sys.stdout.flush()
        except BrokenPipeError:
            end_for_a_reader_that_left()


class WholeWrites:
    """A binary stdout whose ``write`` sends every byte or raises.

    CPython's buffered stdout hands a chunk larger than its buffer straight to ``write(2)``,
    which may take part of it (POSIX allows a short write; a pipe whose reader leaves mid-write
    gives one), and then returns that short count without an error: measured here, a 6 MB
    ``sys.stdout.buffer.write`` into ``| head -c 10`` returned 65536 and the command exited 0
    having dropped the rest. Looping on the count turns that into the ``BrokenPipeError`` that
    :class:`QuietOnClosedPipe` handles, and never loses bytes a live reader was waiting for.
    """

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = self._out.write(view)
            if not n:  # a blocking stream never does this; looping on it would spin for ever
                raise OSError(f"stdout took no bytes of {len(view)}")
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        self._out.flush()
