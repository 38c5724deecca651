"""Progress read from a job's own output, for jobs that do not speak ``RUNNER_PROGRESS``.

A trainer that already prints ``iter 120: loss 2.31`` (nanoGPT does) is run with
``runner submit --progress-regex 'iter (\\d+)' [--progress-total 5000]``; the agent matches each
output line against the pattern and reports the captured number as the step, exactly as if the
job had printed ``RUNNER_PROGRESS step=120 total=5000``. So ``ops status``, the ETA and the stall
watchdog (which watches progress *changes*) work for a job that was not changed at all.

The pattern is pinned in the run's ``spec.json`` (``settings.progress_regex``/``progress_total``)
at submit, and the agent reads it from there: every attempt, whoever restarts the run, matches
the same way. It is checked twice, with the same function: at submit (a usage error there) and
by the agent (a spec written by hand or by another version must not crash the job's wrapper).
"""

from __future__ import annotations

import re
from typing import Any

# Python's own parser of regular expressions (the module behind ``re.compile``): the only way
# to see what a group matches without re-implementing the syntax. Private, so guarded: without
# it the digits check is skipped and a non-numeric capture is simply ignored at match time.
try:
    import re._parser as _sre_parse  # Python >= 3.11
    from re._constants import CATEGORY, CATEGORY_DIGIT, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, RANGE, SUBPATTERN
except ImportError:  # pragma: no cover - other interpreters
    _sre_parse = None

SETTING_REGEX = "progress_regex"
SETTING_TOTAL = "progress_total"
_DIGIT_CODES = range(ord("0"), ord("9") + 1)


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot report progress (said so that the user can fix it), or None.

    It must compile, and have exactly one capturing group (``Pattern.groups``, "the number of
    capturing groups in the pattern": https://www.python.org/pipermail/python-checkins/2008-December/075598.html)
    that matches only digits, e.g. ``(\\d+)`` or ``([0-9]+)``: the step is that number.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        return (f"'{pattern}' is not a valid regular expression ({e}); quote it for your shell, "
                r"e.g. --progress-regex 'iter (\d+)'")
    if compiled.groups != 1:
        return (f"'{pattern}' has {compiled.groups} capturing groups; it needs exactly one, around the "
                r"step number, e.g. 'iter (\d+)' (write other groups as (?:...))")
    return None if _sre_parse is None else _group_problem(pattern)


def _group_problem(pattern: str) -> str | None:
    """Why the one capturing group cannot be read as the step, or None: it must match nothing but
    decimal digits, and not be repeated (``(\\d)+`` keeps only its last repetition: one digit)."""
    found = _capturing_group(_sre_parse.parse(pattern), repeated=False)
    if found is not None and found[1]:
        return (f"the capturing group of '{pattern}' is repeated, so it would keep only its last "
                r"repetition; put the repeat inside the group, e.g. 'iter (\d+)'")
    if found is None or not found[0] or not all(_digits_only(o, a) for o, a in found[0]):
        return (f"the capturing group of '{pattern}' can match more than digits; capture only the step "
                r"number, e.g. 'iter (\d+)' or 'step ([0-9]+)'")
    return None


def _capturing_group(items: Any, repeated: bool) -> tuple[Any, bool] | None:
    """The items of the first capturing group under ``items``, and whether a repeat of more than
    once encloses it (an optional ``(...)?`` is fine: a line without it is just not a step)."""
    for op, av in items:
        if op is SUBPATTERN and av[0] is not None:
            return av[-1], repeated
        more = repeated or (op in (MAX_REPEAT, MIN_REPEAT) and av[1] != 1)
        for child in _children(av):
            found = _capturing_group(child, more)
            if found is not None:
                return found
    return None


def _children(av: Any) -> Any:
    """The nested patterns in an item's argument: a group's, a repeat's, each branch of ``a|b``."""
    for part in av if isinstance(av, (tuple, list)) else ():
        if isinstance(part, _sre_parse.SubPattern):
            yield part
        elif isinstance(part, list):
            yield from (x for x in part if isinstance(x, _sre_parse.SubPattern))


def _digits_only(op: Any, av: Any) -> bool:
    if op is LITERAL:
        return av in _DIGIT_CODES
    if op is IN:
        return all(o is CATEGORY and a is CATEGORY_DIGIT or o is RANGE and a[0] >= ord("0") and a[1] <= ord("9")
                   or o is LITERAL and a in _DIGIT_CODES for o, a in av)
    if op in (MAX_REPEAT, MIN_REPEAT):
        return all(_digits_only(o, a) for o, a in av[2])
    return False


def total_problem(total: int | None) -> str | None:
    """Why ``total`` is not a step count, or None (None itself: no total)."""
    if total is None:
        return None
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        return f"{total!r} is not a positive whole number of steps (e.g. 5000)"
    return None


class ProgressPattern:
    """Turns a job's output line into progress values, as a ``RUNNER_PROGRESS`` line would."""

    def __init__(self, pattern: str, total: int | None = None) -> None:
        problem = regex_problem(pattern) or total_problem(total)
        if problem:
            raise ValueError(problem)
        self.regex = re.compile(pattern)
        self.total = total

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "ProgressPattern | None":
        """The pattern a spec's ``settings`` pin, or None (none pinned). ``ValueError`` for a bad one."""
        pattern = (settings or {}).get(SETTING_REGEX)
        if not pattern:
            return None
        if not isinstance(pattern, str):
            raise ValueError(f"{SETTING_REGEX} {pattern!r} is not a string")
        return cls(pattern, (settings or {}).get(SETTING_TOTAL))

    def values(self, line: str) -> dict[str, Any] | None:
        """``{"step": N[, "total": T]}`` for a line the pattern finds a step in, else None.

        ``search``, not ``match``: a step is usually after a timestamp or a logger's prefix.
        """
        m = self.regex.search(line)
        if m is None or m.group(1) is None:
            return None
        try:
            step = int(m.group(1))
        except ValueError:  # only reachable where the digits check could not run
            return None
        return {"step": step} if self.total is None else {"step": step, "total": self.total}
