"""The task file: one YAML document that says everything ``runner submit``'s flags say.

``runner submit -f task.yaml`` reads it; flags given on the command line override it key by key
(``--env`` per variable, the words after ``--`` the whole command). The schema (README, "Task
files"):

    run_id: exp-1
    image: cos-spot-runner/workload:dev     # or  build: .   (a folder with a Dockerfile)
    command: [python3, -m, examples.trainer, --steps, 100]
    env: {LR: "3e-4"}
    resources: {machine_type: g2-standard-8, gpu: null, no_gpu: false, zones: [us-central1-a],
                termination_action: DELETE, nodes: 1}
    checkpoint_dir / results_dir / data_disk / data_disk_gb / data_mount   (runner.toml's keys)
    max_restarts / retry_on_failure / progress_regex / progress_total

Why YAML with PyYAML's node tree rather than ``yaml.safe_load``: every problem must name its
line, so the file is composed into nodes (each carries ``start_mark``, the position PyYAML's
own errors report) and walked here. Two PyYAML behaviours are refused instead of inherited:
a repeated key, which PyYAML silently resolves to the last one
(https://github.com/yaml/pyyaml/issues/165), and YAML 1.1's implicit types inside the job's
words and environment: ``no``, ``1e3`` or ``010`` there are taken as the text written, because
a job's argv and environment are strings and nothing in between should reinterpret them
(PyYAML implements YAML 1.1, where ``no`` is False: https://github.com/yaml/pyyaml/issues/613).
Flags over the file is the field's convention too: SkyPilot's ``--env`` "takes precedence over"
a task YAML's ``envs`` (https://docs.skypilot.co/en/stable/running-jobs/environment-variables.html).

Settings that runner.toml also knows (machine type, zones, restarts, paths) are returned as a
config layer whose sources name the file and line, so ``runner.config`` checks them with the
same rules and messages as every other source ("... from task.yaml line 7 (resources.zones)").
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: Top-level keys that go straight to the config layer under the same name (runner.toml's).
_SETTINGS = ("checkpoint_dir", "results_dir", "data_disk", "data_disk_gb", "data_mount", "data",
             "max_restarts", "retry_on_failure", "progress_regex", "progress_total")
#: ``resources:`` keys that are config keys of the same name.
_RESOURCE_SETTINGS = ("machine_type", "gpu", "no_gpu", "zones", "termination_action", "nodes")
_TOP_KEYS = ("run_id", "image", "build", "command", "env", "resources", *_SETTINGS)
_RESOURCE_KEYS = _RESOURCE_SETTINGS
_NULL_TAG = "tag:yaml.org,2002:null"

#: ``{config key: (value, where it was written)}``: the shape ``runner.config`` layers have.
Layer = dict[str, tuple[Any, str]]


class TaskFileError(ValueError):
    """The task file cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class TaskFile:
    """What a task file asks for. ``None``/empty means the file does not say (the flags or the
    config decide). ``build`` is absolute: relative to the file's folder, so the file means the
    same thing from any working directory (as a relative store path in runner.toml does)."""

    path: str
    run_id: str | None = None
    image: str | None = None
    build: str | None = None
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    settings: Layer = field(default_factory=dict)


def read_task_file(path: str) -> TaskFile:
    """Read and check ``path``; raise :class:`TaskFileError` naming the line of the first problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TaskFileError(f"cannot read task file {path}: {e.strerror}; check the path given to -f") from None
    except UnicodeDecodeError as e:
        raise TaskFileError(f"task file {path} is not UTF-8 text (byte {e.start}); is it the right file?") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise TaskFileError(f"{path}{line}: not valid YAML: {e.problem or e.context}; fix the syntax there") from None
    except yaml.YAMLError as e:
        raise TaskFileError(f"{path}: not valid YAML: {e}") from None
    return _TaskReader(path, loader).task(root)


class _TaskReader:
    """Walks the composed document; every error it raises starts with ``PATH line N``."""

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader

    def at(self, node: Node) -> str:
        return f"{self.path} line {node.start_mark.line + 1}"

    def error(self, node: Node, what: str) -> TaskFileError:
        return TaskFileError(f"{self.at(node)}: {what}")

    def task(self, root: Node | None) -> TaskFile:
        if root is None:
            raise TaskFileError(f"{self.path} is empty; see the README's \"Task files\" for a complete example")
        top = self.mapping(root, "the task file", _TOP_KEYS)
        settings: Layer = {}
        for key in _SETTINGS:
            if key in top:
                settings[key] = (self.value(top[key]), f"{self.at(top[key])} ({key})")
        if "resources" in top:
            resources = self.mapping(top["resources"], "resources", _RESOURCE_KEYS)
            for key in _RESOURCE_SETTINGS:
                if key in resources:
                    node = resources[key]
                    settings[key] = (self.value(node), f"{self.at(node)} (resources.{key})")
        image, build = self.text(top.get("image"), "image"), self.text(top.get("build"), "build")
        if image and build:
            raise self.error(top["build"], "both image and build are set; keep image to run that image "
                                           "as it is, or build to build this folder into an image first")
        if build:
            build = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(self.path)), build))
            if not os.path.isfile(os.path.join(build, "Dockerfile")):
                raise self.error(top["build"], f"build: {build} has no Dockerfile; point build at the "
                                               "folder that holds one (relative to this file)")
        return TaskFile(path=self.path, run_id=self.text(top.get("run_id"), "run_id"), image=image,
                        build=build, command=self.command(top.get("command")),
                        env=self.env(top.get("env")), settings=settings)

    def mapping(self, node: Node, what: str, known: tuple[str, ...]) -> dict[str, Node]:
        """A mapping's value nodes by key: keys must be known, written once, plain words."""
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{what} must be a mapping of key: value lines")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.error(key_node, f"unknown key {key!r} in {what}; {hint}known keys: {', '.join(known)}")
            if key in out:  # PyYAML would keep the last one without a word (yaml/pyyaml#165)
                raise self.error(key_node, f"{key!r} is set twice in {what} (first on line "
                                           f"{out[key].start_mark.line + 1}); remove one")
            out[key] = value_node
        return out

    def value(self, node: Node) -> Any:
        """A setting's value as YAML types it (runner.config checks it against the key's type)."""
        if isinstance(node, MappingNode):
            raise self.error(node, "expected a value or a list here, not a mapping")
        value = self.loader.construct_object(node, deep=True)
        return "" if value is None else value  # runner.config reads "" as "not set" (TOML has no null)

    def text(self, node: Node | None, key: str) -> str | None:
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
            return None
        if not isinstance(node, ScalarNode) or not node.value.strip():
            raise self.error(node, f"{key} must be one non-empty word")
        return node.value.strip()

    def command(self, node: Node | None) -> list[str]:
        """The job's argv, word for word as written: never split by a shell, never retyped by YAML."""
        if node is None:
            return []
        if isinstance(node, ScalarNode):
            raise self.error(node, "command must be a list of words, e.g. [python3, train.py, --steps, 100] "
                                   "(never split by a shell; for a shell line write [bash, -c, 'a && b'])")
        if not isinstance(node, SequenceNode) or not node.value:
            raise self.error(node, "command must be a non-empty list of words, e.g. [python3, train.py]")
        words = []
        for item in node.value:
            if not isinstance(item, ScalarNode):
                raise self.error(item, "each word of command must be a plain value, not a list or mapping")
            words.append(item.value)
        if words[0].startswith("-"):
            raise self.error(node.value[0], f"command starts with {words[0]!r}, an option, not a program; "
                                            "the first word is the program to run")
        return words

    def env(self, node: Node | None) -> dict[str, str]:
        if node is None:
            return {}
        if not isinstance(node, MappingNode):
            raise self.error(node, "env must be a mapping of NAME: value lines")
        out: dict[str, str] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or not key_node.value or "=" in key_node.value:
                raise self.error(key_node, "each env name must be a plain word without '='")
            if key_node.value in out:
                raise self.error(key_node, f"env {key_node.value!r} is set twice (first on line "
                                           f"{lines[key_node.value]}); remove one")
            if not isinstance(value_node, ScalarNode):
                raise self.error(value_node, f"env {key_node.value} must be a plain value, not a list or mapping")
            if value_node.tag == _NULL_TAG:  # `A:` or `A: ~`: no value written, and no default to guess
                raise self.error(value_node, f"env {key_node.value} has no value; write one (\"\" for empty, "
                                             f"quoted \"null\" for that word) or drop it and pass --env "
                                             f"{key_node.value}=VALUE")
            out[key_node.value] = value_node.value  # as written: `no` stays "no", 010 stays "010"
            lines[key_node.value] = key_node.start_mark.line + 1
        return out


__all__ = ["Layer", "TaskFile", "TaskFileError", "read_task_file"]
