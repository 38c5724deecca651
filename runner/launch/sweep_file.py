"""A sweep file, read and expanded into its points; placeholders rendered into each member's argv.

The file is YAML (PyYAML is already a dependency: it reads cloudbuild.yaml), JSON, or TOML by
its extension (``.json``, ``.toml``; anything else is read as YAML, a superset of JSON)::

    grid:               # the cartesian product, in the order written (the last name varies fastest)
      lr: [0.1, 0.01]
      depth: [2, 4]
    list:               # and/or explicit points, which come first
      - {lr: 0.3, depth: 8}
    metric: {name: loss, goal: minimize}   # optional: the key of results/summary.json to rank by

Pure: reads the file and nothing else, so ``runner sweep`` refuses a bad file before it builds,
pins or writes anything.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from typing import Any

# A sane cap: every member is a spec, a state and a listing entry, and ``ops list --sweep`` reads
# each. A 10,000-run sweep is already hours of a supervisor's passes; a typo (a range of 1e6)
# must be refused before anything is written.
MAX_SWEEP_RUNS = 10_000

# ``{name}`` is a placeholder; ``{{`` and ``}}`` are literal braces. Other braces (``{}``, JSON in
# an argument) are left alone, since argv is not a format string.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALARS = (str, int, float, bool)
_TOP_KEYS = {"grid", "list", "metric"}
_GOALS = ("minimize", "maximize")


class SweepFileError(ValueError):
    """The sweep file (or the command against it) cannot make a sweep; the message says why and how."""


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep file asks for: every point (name -> value), in a stable order, and the metric."""

    points: list[dict[str, Any]]
    metric: dict[str, str] | None
    source: str


def read_sweep_file(path: str) -> SweepPlan:
    """The file's points and metric, or ``SweepFileError`` naming the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SweepFileError(f"cannot read sweep file {path}: {e.strerror}") from None
    doc = _parse(path, raw)
    return plan_of(doc, os.path.basename(path))


def _parse(path: str, raw: bytes) -> Any:
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            import tomllib

            return tomllib.loads(raw.decode("utf-8"))
        if ext == ".json":
            import json

            return json.loads(raw)
        import yaml

        return yaml.load(raw, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except Exception as e:  # noqa: BLE001 - each parser has its own error type; all mean "fix the file"
        raise SweepFileError(f"{path} is not valid {ext.lstrip('.').upper() or 'YAML'}: {e}") from None


def _strict_loader() -> type:
    """PyYAML's SafeLoader, refusing a key written twice: by default the later one silently wins
    (https://github.com/yaml/pyyaml/issues/165), which in a grid drops a whole axis."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is written twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Strict


def plan_of(doc: Any, source: str = "sweep") -> SweepPlan:
    """A parsed sweep document's points, checked: ``grid`` and/or ``list``, scalar values, the
    ``MAX_SWEEP_RUNS`` cap (counted before anything is expanded)."""
    if not isinstance(doc, dict):
        raise SweepFileError(f"{source}: expected a mapping with grid: and/or list:, not {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in _TOP_KEYS)
    if unknown:
        raise SweepFileError(f"{source}: unknown key(s) {', '.join(unknown)}; a sweep file has grid:, list: "
                             "and metric: (README: Sweeps and queues)")
    grid = doc.get("grid") or {}
    points_list = doc.get("list") or []
    if not isinstance(grid, dict):
        raise SweepFileError(f"{source}: grid: must map each parameter to a list of values, e.g. grid: {{lr: [0.1, 0.01]}}")
    if not isinstance(points_list, list):
        raise SweepFileError(f"{source}: list: must be a list of points, e.g. list: [{{lr: 0.1, depth: 2}}]")
    axes: list[tuple[str, list[Any]]] = []
    for name, values in grid.items():
        _check_name(source, name)
        if not isinstance(values, list):
            values = [values]  # `seed: 1` is an axis of one value
        if not values:
            raise SweepFileError(f"{source}: grid parameter {name} has no values (an empty axis makes no runs)")
        for v in values:
            _check_value(source, name, v)
        axes.append((name, values))
    size = len(points_list) + (math.prod(len(v) for _, v in axes) if axes else 0)
    if size > MAX_SWEEP_RUNS:
        raise SweepFileError(f"{source}: {size:,} runs is more than a sweep may hold ({MAX_SWEEP_RUNS:,}); "
                             "split it into several sweeps, or sample the grid into a list:")
    points: list[dict[str, Any]] = []
    for i, p in enumerate(points_list):
        if not isinstance(p, dict) or not p:
            raise SweepFileError(f"{source}: list item {i} must be a non-empty mapping of parameters, e.g. {{lr: 0.1}}")
        for name, v in p.items():
            _check_name(source, name)
            _check_value(source, name, v)
        points.append(dict(p))
    if axes:
        names = [n for n, _ in axes]
        points.extend(dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in axes)))
    if not points:
        raise SweepFileError(f"{source}: no runs: give grid: {{NAME: [VALUES...]}} and/or list: [{{NAME: VALUE}}, ...]")
    return SweepPlan(points, _metric(source, doc.get("metric")), source)


def _check_name(source: str, name: Any) -> None:
    # YAML 1.1 reads unquoted yes/no/on/off as booleans, keys too (https://github.com/yaml/pyyaml/issues/52):
    # a parameter named `on` arrives as True. Say so rather than "not a name".
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        hint = " (YAML reads an unquoted on/off/yes/no as a boolean: quote it)" if isinstance(name, bool) else ""
        raise SweepFileError(f"{source}: parameter name {name!r} must be a name (letters, digits, _; not starting "
                             f"with a digit): it becomes {{name}} in the command and SWEEP_NAME in the env{hint}")


def _check_value(source: str, name: str, v: Any) -> None:
    if v is None or not isinstance(v, _SCALARS):
        raise SweepFileError(f"{source}: parameter {name} has the value {v!r}; values must be strings or numbers")


def _metric(source: str, m: Any) -> dict[str, str] | None:
    if m is None:
        return None
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
        raise SweepFileError(f"{source}: metric: must be {{name: KEY, goal: minimize|maximize}} (KEY of results/summary.json)")
    goal = m.get("goal", "minimize")
    if goal not in _GOALS:
        raise SweepFileError(f"{source}: metric goal {goal!r} must be minimize or maximize")
    return {"name": m["name"], "goal": goal}


def value_text(v: Any) -> str:
    """How a parameter value is written into argv and env: YAML's spelling of booleans
    (``true``), numbers as Python writes them (``0.01``, ``1e-05``), strings as they are."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def placeholders(command: list[str]) -> list[str]:
    """The ``{name}`` placeholders of a command template, in order of first use."""
    seen: dict[str, None] = {}
    for word in command:
        for m in _PLACEHOLDER.finditer(word):
            if m.group(1):
                seen.setdefault(m.group(1))
    return list(seen)


def check_command(command: list[str], plan: SweepPlan) -> None:
    """Refuse a placeholder that some point does not give a value (a parameter no placeholder
    uses is fine: it still reaches the job as SWEEP_NAME)."""
    wanted = placeholders(command)
    for i, p in enumerate(plan.points):
        missing = [n for n in wanted if n not in p]
        if missing:
            have = ", ".join(sorted(p)) or "none"
            raise SweepFileError(f"the command uses {', '.join('{' + n + '}' for n in missing)}, which "
                                 f"{'point ' + str(i) + ' of ' if len(plan.points) > 1 else ''}{plan.source} does not "
                                 f"set (its parameters: {have}); add it to the sweep file, or write "
                                 "{{ and }} for literal braces")


def render(command: list[str], params: dict[str, Any]) -> list[str]:
    """The member's argv: each ``{name}`` replaced by its value (a placeholder inside a word,
    ``--lr={lr}``, too); ``{{``/``}}`` become single braces."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return value_text(params[m.group(1)])

    return [_PLACEHOLDER.sub(sub, word) for word in command]


def sweep_env(params: dict[str, Any]) -> dict[str, str]:
    """``SWEEP_<NAME>=value`` for each parameter (names upper-cased), for jobs that read env."""
    return {f"SWEEP_{name.upper()}": value_text(v) for name, v in params.items()}
