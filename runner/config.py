"""Layered configuration: defaults < runner.toml < RUNNER_<KEY> environment < command-line flags.

Every value remembers where it came from (``Config.source``), so an error can say which file,
variable or flag to fix instead of just which key is wrong. Validation happens once, when the
``Config`` is built, so no later code has to second-guess a value (e.g. a zero poll interval, or
a stall window that would kill a VM still waiting for its GPU driver).

This module is imported by every command, so it imports nothing heavy; the TOML parser and
difflib are loaded only when needed.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from entrypoint.record import AttemptSettings

CONFIG_FILENAME = "runner.toml"
CONFIG_TABLE = "runner"
ENV_PREFIX = "RUNNER_"
# Names the config file; not a config key, so never read as one.
CONFIG_ENV = "RUNNER_CONFIG"
BACKENDS = ("local", "gce")
# GCE sends a spot VM an ACPI shutdown 30 s before it takes it away.
GCE_PREEMPTION_NOTICE = 30.0

_DEFAULT_SOURCE = "default"
_DIRECT_SOURCE = "the Config(...) arguments"


class ConfigError(ValueError):
    """A configuration value is missing, malformed or inconsistent; the message says where."""


def _key(default: Any, kind: str, expected: str) -> Any:
    """A config field: ``kind`` picks the coercion, ``expected`` describes a good value."""
    meta = {"kind": kind, "expected": expected}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """The runner's settings, validated; ``source[key]`` says where each value came from."""

    backend: str = _key("local", "str", "one of: " + ", ".join(BACKENDS))
    store: str | None = _key(None, "optional_str", "gs://BUCKET[/PREFIX], file:///DIR or a path")
    # A second checkpoint tier (entrypoint.mirror): written after the store, read when it cannot be.
    mirror: str | None = _key(None, "optional_str", "gs://OTHER-BUCKET[/PREFIX], file:///DIR or a path")
    image: str | None = _key(None, "optional_str", "a container image reference")
    project: str | None = _key(None, "optional_str", "a GCP project id")
    zones: list[str] = _key([], "list", "zone names, e.g. us-central1-a,us-central1-b")
    machine_type: str = _key("n1-standard-4", "str", "a GCE machine type, e.g. n1-standard-4")
    gpu: str | None = _key(None, "optional_str", "a GPU type, e.g. nvidia-tesla-t4")
    poll_interval: float = _key(3.0, "float", "a positive number of seconds, e.g. 3.0")
    stall_polls: int = _key(200, "int", "a positive whole number of polls, e.g. 200")
    gpu_timeout: float = _key(600.0, "float", "a positive number of seconds, e.g. 600")
    heartbeat_interval: float = _key(5.0, "float", "a positive number of seconds, e.g. 5.0")
    sync_interval: float = _key(10.0, "float", "a positive number of seconds, e.g. 10.0")
    grace_period: float = _key(25.0, "float", "seconds between 0 and 30 (exclusive), e.g. 25")
    max_restarts: int = _key(10, "int", "a whole number >= 0, e.g. 10")
    # A gang: N instances per attempt, created, judged and restarted together (README: Multi-node).
    nodes: int = _key(1, "int", "a whole number of nodes, 1 to 64, e.g. 2")
    retry_on_failure: int = _key(0, "int", "a whole number >= 0, e.g. 0")
    checkpoint_dir: str = _key("/var/lib/runner/checkpoints", "str", "an absolute container path")
    results_dir: str = _key("/var/lib/runner/results", "str", "an absolute container path")
    # Staged data (README: Data and checkpoint tiers): each SRC:/MOUNT copied to local disk before the job.
    data: list[str] = _key([], "list", "SRC:/MOUNT entries, e.g. [\"gs://BUCKET/PREFIX:/data\"]")
    # The local backend's "kept disk" for staged data: one folder per run under it.
    staging_dir: str = _key("~/.cache/cos-spot-runner/staged", "str", "a directory on this machine")
    shm_size: str = _key("2g", "str", "a Docker size such as 512m or 2g")
    recovery: str = _key("in-order", "str", "a recovery strategy: in-order, same-zone-first or next-zone-first")
    # For jobs that print their step but not RUNNER_PROGRESS (entrypoint/progress_pattern.py).
    progress_regex: str | None = _key(None, "optional_str", r"a regex with one group of digits, e.g. 'iter (\d+)'")
    progress_total: int = _key(0, "int", "the job's total number of steps, e.g. 5000 (0 = unknown)")
    # --- GCE only (recorded in spec.json at submit, so restarts recreate the same VM) ---
    compute_endpoint: str | None = _key(None, "optional_str", "a Compute API URL (tests, private endpoints)")
    cloudbuild_endpoint: str | None = _key(None, "optional_str", "a Cloud Build API URL (tests, private endpoints)")
    serviceusage_endpoint: str | None = _key(None, "optional_str", "a Service Usage API URL (tests)")
    resourcemanager_endpoint: str | None = _key(None, "optional_str", "a Resource Manager API URL (tests)")
    iam_endpoint: str | None = _key(None, "optional_str", "an IAM API URL (tests)")
    artifactregistry_endpoint: str | None = _key(None, "optional_str", "an Artifact Registry API URL (tests)")
    secretmanager_endpoint: str | None = _key(None, "optional_str", "a Secret Manager API URL (tests)")
    # --- the hosted supervisor (runner/cloud/hosted.py: Cloud Run job + Cloud Scheduler) ---
    run_endpoint: str | None = _key(None, "optional_str", "a Cloud Run Admin API URL (tests)")
    scheduler_endpoint: str | None = _key(None, "optional_str", "a Cloud Scheduler API URL (tests)")
    supervisor_image: str | None = _key(None, "optional_str", "the runner image for the hosted supervisor, REPO@sha256:...")
    supervisor_region: str | None = _key(None, "optional_str", "the Cloud Run region, e.g. us-central1 (default: the first zone's)")
    scheduler_region: str | None = _key(None, "optional_str", "the Cloud Scheduler location of the every-minute "
                                        "schedule, e.g. europe-west1 (default: the job's region, else a nearby one)")
    supervisor_mode: str = _key("once", "str", "once (a pass per minute) or loop (passes every poll_interval)")
    # --- operations ---
    webhook_secret: str | None = _key(None, "optional_str",
                                      "a Secret Manager secret holding the webhook URL: NAME or projects/P/secrets/NAME")
    price_table: str | None = _key(None, "optional_str", "a JSON spot price table to use instead of the shipped one")
    base_image: str | None = _key(None, "optional_str", "the BASE_IMAGE build arg, e.g. python:3.11-slim")
    vm_image: str = _key("projects/cos-cloud/global/images/family/cos-stable", "str",
                         "a COS image or image family URL, e.g. projects/cos-cloud/global/images/family/cos-stable")
    termination_action: str = _key("DELETE", "str", "DELETE or STOP")
    max_run_duration: float = _key(0.0, "duration", "seconds or a duration (4h, 30m) after which GCE ends the VM (0 = no limit)")
    provisioning: str = _key("spot", "str", "spot, standard, spot-then-standard or flex-start")
    fallback_after: float = _key(1800.0, "duration", "seconds or a duration (30m, 2h): spot-then-standard's wait")
    boot_disk_gb: int = _key(50, "int", "a boot disk size in GB, e.g. 50")
    boot_disk_type: str = _key("pd-balanced", "str", "a disk type, e.g. pd-balanced or pd-ssd")
    data_disk: str | None = _key(None, "optional_str", "the name of an existing zonal disk")
    data_disk_gb: int = _key(0, "int", "size in GB of a per-run data disk (0 = none)")
    data_mount: str = _key("/var/lib/runner/data", "str", "a host path under /var/lib")
    service_account: str | None = _key(None, "optional_str", "a service account email")
    build_service_account: str | None = _key(None, "optional_str",
                                             "the service account email Cloud Build runs as "
                                             "(default: the project's Cloud Build default account)")
    network: str = _key("global/networks/default", "str", "a VPC network URL")
    subnetwork: str | None = _key(None, "optional_str", "a subnetwork URL")
    external_ip: bool = _key(True, "bool", "true or false")
    no_gpu: bool = _key(False, "bool", "true or false")
    gpu_driver_version: str | None = _key(None, "optional_str", "a cos-extensions driver version, e.g. latest")
    warm_images: str = _key("auto", "str", "auto (boot from a baked warm image when one matches) or off")
    source: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            raise ConfigError(f"{len(problems)} config problems:\n- " + "\n- ".join(problems))

    @property
    def stall_window(self) -> float:
        """Seconds without progress after which the supervisor declares a run stalled."""
        return self.poll_interval * self.stall_polls

    def attempt_settings(self) -> "AttemptSettings":
        """What a run submitted with this config pins for every attempt (its spec's ``settings``);
        for a supervisor, what a spec that pinned nothing falls back to."""
        from entrypoint.record import AttemptSettings

        return AttemptSettings(
            grace_period=self.grace_period, heartbeat_interval=self.heartbeat_interval,
            sync_interval=self.sync_interval, shm_size=self.shm_size, stall_window=self.stall_window,
            gpu_timeout=self.gpu_timeout, recovery=self.recovery, progress_regex=self.progress_regex,
            progress_total=self.progress_total or None)

    @property
    def store_url(self) -> str:
        """The store to use: the configured one, else a directory under the user's data dir."""
        return self.store if self.store is not None else default_store_url()


_FIELDS = {f.name: f for f in fields(Config) if f.name != "source"}
KEYS: tuple[str, ...] = tuple(_FIELDS)


def default_store_url(env: Mapping[str, str] | None = None) -> str:
    """``file://`` URL of ``${XDG_DATA_HOME:-~/.local/share}/cos-spot-runner/store``.

    A relative XDG_DATA_HOME is ignored, as the XDG spec requires, so the store does not move
    with the working directory.
    """
    env = os.environ if env is None else env
    data_home = env.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data_home):
        data_home = os.path.join(os.path.expanduser("~"), ".local", "share")
    return "file://" + os.path.join(data_home, "cos-spot-runner", "store")


# --- loading --------------------------------------------------------------------------------


def load_config(
    cli: dict[str, Any] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
    task: tuple[dict[str, tuple[Any, str]], str] | None = None,
) -> Config:
    """Merge defaults, the config file, ``RUNNER_*`` variables, a task file and CLI flags, then validate.

    ``cli`` maps config keys to flag values; None (and an empty tuple, what click passes for
    an unused ``multiple=True`` option) means the flag was not given. ``config_path`` (the
    ``--config`` flag), else ``$RUNNER_CONFIG``, else the first ``runner.toml`` found walking
    up from ``cwd`` is the file layer. ``task`` is a task file's settings (each value with the
    file and line it came from, runner.launch.task_file) and the folder relative paths in it
    mean: more specific than the project's config and environment, overridden by a flag.
    """
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    env = os.environ if env is None else env
    values: dict[str, Any] = {key: _default(key) for key in KEYS}
    source = {key: _DEFAULT_SOURCE for key in KEYS}
    path = _config_file(config_path, env, cwd)
    layers = []
    if path is not None:
        layers.append((_file_layer(path), os.path.dirname(path)))
    layers.append((_env_layer(env), cwd))
    if task is not None:
        layers.append((_table_layer_sourced(task[0]), task[1]))
    layers.append((_cli_layer(cli or {}), cwd))
    for layer, base_dir in layers:
        for key, (raw, where) in layer.items():
            values[key] = _coerce(key, raw, where, base_dir)
            source[key] = where
    return Config(**values, source=source)


def _default(key: str) -> Any:
    f = _FIELDS[key]
    return f.default_factory() if callable(f.default_factory) else f.default


def find_config_file(start: str) -> str | None:
    """The first ``runner.toml`` in ``start`` or one of its parents, like git finds .git."""
    directory = os.path.abspath(start)
    while True:
        candidate = os.path.join(directory, CONFIG_FILENAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _config_file(config_path: str | None, env: Mapping[str, str], cwd: str) -> str | None:
    """The config file to read: explicit path, then $RUNNER_CONFIG, then discovery."""
    if config_path:
        return _existing(config_path, cwd, "--config")
    if env.get(CONFIG_ENV):
        return _existing(env[CONFIG_ENV], cwd, f"environment variable {CONFIG_ENV}")
    return find_config_file(cwd)


def _existing(path: str, cwd: str, given_by: str) -> str:
    """An explicitly named config file must exist: silently using defaults would hide a typo."""
    full = os.path.join(cwd, os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ConfigError(
            f"config file {full} (from {given_by}) does not exist; fix the path, or drop "
            f"{given_by} to use the nearest {CONFIG_FILENAME} above the current directory"
        )
    return full


def _read_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; check its permissions")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML ({e}); fix the syntax there")
    except UnicodeDecodeError as e:
        # TOML is UTF-8 text by definition; a binary or mis-encoded file is not a config.
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.start} is invalid): is it the right "
            "file? Save it as UTF-8 TOML, or point --config at another file"
        ) from None


Layer = dict[str, tuple[Any, str]]


def _file_layer(path: str) -> Layer:
    """Keys at the top level of the file and in its ``[runner]`` table (either place works)."""
    data = _read_toml(path)
    table = data.pop(CONFIG_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(
            f"{CONFIG_TABLE!r} in {path} must be a table ([{CONFIG_TABLE}]) of settings, "
            f"not a {type(table).__name__}; put the keys under a [{CONFIG_TABLE}] header"
        )
    layer = _table_layer(data, path, f"{path} (key {{key}})")
    nested = _table_layer(table, f"the [{CONFIG_TABLE}] table of {path}",
                          f"{path} ([{CONFIG_TABLE}] {{key}})")
    twice = sorted(layer.keys() & nested.keys())
    if twice:
        raise ConfigError(
            f"{', '.join(twice)} set twice in {path}, at the top level and in "
            f"[{CONFIG_TABLE}]; remove one of each"
        )
    return {**layer, **nested}


def _table_layer(table: dict[str, Any], where: str, source_fmt: str) -> Layer:
    for key in table:
        if key not in _FIELDS:
            raise ConfigError(_unknown_key_message(key, where))
    return {key: (value, source_fmt.format(key=key)) for key, value in table.items()}


def _unknown_key_message(key: str, where: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("-", "_").lower(), KEYS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown key {key!r} in {where}{hint} Known keys: {', '.join(KEYS)}"


def _table_layer_sourced(layer: Layer) -> Layer:
    """A layer whose reader already says where each value was written; only the keys are checked."""
    for key, (_, where) in layer.items():
        if key not in _FIELDS:
            raise ConfigError(_unknown_key_message(key, where))
    return dict(layer)


def _env_layer(env: Mapping[str, str]) -> Layer:
    """``RUNNER_<KEY>`` for each key; other RUNNER_* variables belong to someone else."""
    layer = {}
    for key in KEYS:
        name = ENV_PREFIX + key.upper()
        if name in env:
            layer[key] = (env[name], f"environment variable {name}")
    return layer


def _cli_layer(cli: dict[str, Any]) -> Layer:
    layer = {}
    for name, value in cli.items():
        key = name.replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(_unknown_key_message(name, "the command-line options"))
        if value is None or value == ():
            continue
        layer[key] = (value, "--" + key.replace("_", "-"))
    return layer


# --- coercion -------------------------------------------------------------------------------


def _to_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError
    return raw.strip()


def _to_optional_str(raw: Any) -> str | None:
    """An empty string means "not set": TOML has no null, and ``VAR=`` is how env says none."""
    return _to_str(raw) or None


def _to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise TypeError
    value = float(raw.strip() if isinstance(raw, str) else raw)
    if not math.isfinite(value):
        raise ValueError
    return value


_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _to_duration(raw: Any) -> float:
    """Seconds, from a number of seconds or a duration such as ``30m``, ``4h``, ``1.5h``, ``7d``."""
    if isinstance(raw, str):
        m = _DURATION_RE.fullmatch(raw)
        if m is None:
            raise ValueError
        return float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    return _to_float(raw)


def _to_int(raw: Any) -> int:
    if isinstance(raw, bool) or isinstance(raw, float):
        raise TypeError
    return int(raw.strip() if isinstance(raw, str) else raw)


def _to_list(raw: Any) -> list[str]:
    """A list of strings, or one comma-separated string (the only way env can spell a list)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise TypeError
    return [i.strip() for i in items if i.strip()]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "str": _to_str,
    "optional_str": _to_optional_str,
    "float": _to_float,
    "duration": _to_duration,
    "int": _to_int,
    "list": _to_list,
    "bool": _to_bool,
}


def _coerce(key: str, raw: Any, where: str, base_dir: str) -> Any:
    """``raw`` as the key's type; a failure names the source so the user knows what to edit."""
    meta = _FIELDS[key].metadata
    try:
        value = _COERCERS[meta["kind"]](raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"invalid {key} {raw!r} from {where}: expected {meta['expected']}; "
            f"fix it there (the default is {_default(key)!r})"
        ) from None
    if key in ("store", "mirror") and value is not None:
        value = _store_as_url(value, base_dir)
    return value


def _store_as_url(value: str, base_dir: str) -> str:
    """A plain path becomes an absolute ``file://`` URL, relative to where it was written.

    A relative store path in runner.toml means relative to that file, so the project's store
    is the same from any subdirectory.
    """
    if "://" in value:
        return value
    path = os.path.join(base_dir, os.path.expanduser(value))
    return "file://" + os.path.normpath(path)


# --- validation -----------------------------------------------------------------------------

_POSITIVE_SECONDS = ("poll_interval", "gpu_timeout", "heartbeat_interval", "sync_interval",
                     "grace_period")
_NON_NEGATIVE_COUNTS = ("max_restarts", "retry_on_failure")
# A gang's size: each generation is created all or nothing, so a gang bigger than a zone can
# hold would never start; 64 is well above what one zone's spot GPUs usually allow.
MAX_NODES = 64
_ABSOLUTE_PATHS = ("checkpoint_dir", "results_dir")
_SHM_SIZE_RE = re.compile(r"[0-9]+([bkmg]b?)?", re.IGNORECASE)
_ZONE_RE = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "optional_str": (str, type(None)), "float": (int, float), "duration": (int, float), "int": (int,),
    "list": (list,), "bool": (bool,),
}


def _problems(cfg: Config) -> list[str]:
    """Everything wrong with ``cfg``, one self-contained message each."""
    problems = _type_problems(cfg)
    if problems:  # the value checks below assume the types are right
        return problems
    checks: list[Callable[[Config], list[str]]] = [
        _check_backend, _check_positive, _check_counts, _check_grace_period, _check_paths,
        _check_shm_size, _check_zones, _check_store, _check_stall_window, _check_vm, _check_recovery,
        _check_progress_pattern, _check_data, _check_mirror,
    ]
    return [problem for check in checks for problem in check(cfg)]


def _src(cfg: Config, key: str) -> str:
    return cfg.source.get(key, _DIRECT_SOURCE)


def _bad(cfg: Config, key: str, why: str, fix: str) -> str:
    return f"{key} = {getattr(cfg, key)!r} from {_src(cfg, key)} {why}; {fix}"


def _type_problems(cfg: Config) -> list[str]:
    """Only reachable by building a Config directly: load_config coerces every value."""
    problems = []
    for key, f in _FIELDS.items():
        value, kind = getattr(cfg, key), f.metadata["kind"]
        stray_bool = isinstance(value, bool) and kind != "bool"
        if stray_bool or not isinstance(value, _TYPES[kind]):
            problems.append(_bad(cfg, key, "has the wrong type",
                                 f"pass {f.metadata['expected']}"))
    return problems


def _check_backend(cfg: Config) -> list[str]:
    if cfg.backend in BACKENDS:
        return []
    return [_bad(cfg, "backend", "is not a known backend",
                 "use 'local' (Docker on this machine) or 'gce' (spot VMs on Google Cloud)")]


def _check_positive(cfg: Config) -> list[str]:
    return [
        _bad(cfg, key, "must be a positive number of seconds", f"set it to e.g. {_default(key)}")
        for key in _POSITIVE_SECONDS
        if not (math.isfinite(getattr(cfg, key)) and getattr(cfg, key) > 0)
    ]


def _check_counts(cfg: Config) -> list[str]:
    problems = [
        _bad(cfg, key, "must not be negative", f"set it to 0 or more (default {_default(key)})")
        for key in _NON_NEGATIVE_COUNTS
        if getattr(cfg, key) < 0
    ]
    if not 1 <= cfg.nodes <= MAX_NODES:
        problems.append(_bad(cfg, "nodes", f"must be between 1 and {MAX_NODES}",
                             "set it to 1 for a single instance, or the gang's size, e.g. 2"))
    if cfg.stall_polls < 1:
        problems.append(_bad(cfg, "stall_polls", "must be at least 1",
                             f"set it to e.g. {_default('stall_polls')}"))
    return problems


def _check_vm(cfg: Config) -> list[str]:
    problems = []
    if cfg.termination_action not in ("DELETE", "STOP"):
        problems.append(_bad(cfg, "termination_action", "is not DELETE or STOP",
                             "use DELETE (nothing left behind) or STOP (keeps the boot disk: "
                             "a restart skips the driver install and the image pull)"))
    if not cfg.data_mount.startswith("/var/lib/"):
        problems.append(_bad(cfg, "data_mount", "is not under /var/lib",
                             "use e.g. /var/lib/runner/data: on COS / and /mnt are read-only"))
    for key in ("boot_disk_gb", "data_disk_gb"):
        if getattr(cfg, key) < 0:
            problems.append(_bad(cfg, key, "must not be negative", "set a size in GB"))
    if cfg.max_run_duration < 0:
        problems.append(_bad(cfg, "max_run_duration", "must not be negative", "use 0 for no limit"))
    if cfg.provisioning not in ("spot", "standard", "spot-then-standard", "flex-start"):
        problems.append(_bad(cfg, "provisioning", "is not spot, standard, spot-then-standard or flex-start",
                             "use spot (the default), standard (on-demand), spot-then-standard (spot, "
                             "then on-demand once no spot VM came for fallback_after) or flex-start"))
    if cfg.fallback_after <= 0:
        problems.append(_bad(cfg, "fallback_after", "must be positive", "use e.g. 30m"))
    if cfg.warm_images not in ("auto", "off"):
        problems.append(_bad(cfg, "warm_images", "is not auto or off",
                             "use auto (a create boots a READY image made by `runner images bake` when "
                             "one matches the run) or off (always boot the plain COS image)"))
    return problems


def _check_grace_period(cfg: Config) -> list[str]:
    if cfg.grace_period < GCE_PREEMPTION_NOTICE:
        return []
    return [_bad(
        cfg, "grace_period",
        f"must be less than {GCE_PREEMPTION_NOTICE:g} s: GCE gives a spot VM only "
        f"{GCE_PREEMPTION_NOTICE:g} s of notice before preemption, and the last checkpoint sync "
        "must finish inside it",
        f"set it to at most {_default('grace_period'):g}",
    )]


def _check_paths(cfg: Config) -> list[str]:
    return [
        _bad(cfg, key, "must be an absolute path inside the container",
             f"start it with '/', e.g. {_default(key)}")
        for key in _ABSOLUTE_PATHS
        if not getattr(cfg, key).startswith("/")
    ]


def _check_data(cfg: Config) -> list[str]:
    from entrypoint.data_sources import DataSourceError, parse_all

    try:
        parse_all(cfg.data, checkpoint_dir=cfg.checkpoint_dir, results_dir=cfg.results_dir)
    except DataSourceError as e:
        return [f"data from {_src(cfg, 'data')}: {e}"]
    return []


def _check_shm_size(cfg: Config) -> list[str]:
    if _SHM_SIZE_RE.fullmatch(cfg.shm_size):
        return []
    return [_bad(cfg, "shm_size", "is not a size Docker understands",
                 "write a whole number with an optional unit b, k, m or g, e.g. 512m or 2g")]


def _check_recovery(cfg: Config) -> list[str]:
    from runner.launch.recovery import STRATEGIES

    if cfg.recovery in STRATEGIES:
        return []
    return [_bad(cfg, "recovery", "is not a known recovery strategy",
                 "use one of: " + "; ".join(f"{n}: {s.description}" for n, s in STRATEGIES.items()))]


def _check_progress_pattern(cfg: Config) -> list[str]:
    """The pattern the agent will match the job's output with, checked at submit (not on the VM)."""
    from entrypoint.progress_pattern import regex_problem

    if cfg.progress_regex is None:
        if cfg.progress_total:
            return [_bad(cfg, "progress_total", "needs progress_regex",
                         r"set progress_regex too (e.g. --progress-regex 'iter (\d+)'), or drop progress_total "
                         "(a job printing RUNNER_PROGRESS lines says its own total=)")]
        return []
    problems = []
    problem = regex_problem(cfg.progress_regex)
    if problem:
        problems.append(f"progress_regex from {_src(cfg, 'progress_regex')}: {problem}")
    if cfg.progress_total < 0:
        problems.append(_bad(cfg, "progress_total", "must not be negative",
                             "set it to the job's number of steps, or 0 if unknown"))
    return problems


def _check_zones(cfg: Config) -> list[str]:
    bad = [zone for zone in cfg.zones if not _ZONE_RE.fullmatch(zone)]
    if not bad:
        return []
    return [_bad(cfg, "zones", f"contains invalid zone names {bad}",
                 "list GCE zones like us-central1-a (lowercase letters, digits, '-')")]


def _check_store(cfg: Config) -> list[str]:
    store = cfg.store
    if store is None or re.fullmatch(r"gs://[^/]+(/.*)?", store) or store.startswith("file:///"):
        return []
    return [_bad(cfg, "store", "is not a supported store URL",
                 "use gs://BUCKET[/PREFIX], file:///ABSOLUTE/DIR or a plain directory path")]


def _check_mirror(cfg: Config) -> list[str]:
    """The mirror is a store of its own: a supported URL, and not the store itself (a copy in the
    same bucket survives nothing the first one does not)."""
    m = cfg.mirror
    if m is None:
        return []
    if not (re.fullmatch(r"gs://[^/]+(/.*)?", m) or m.startswith("file:///")):
        return [_bad(cfg, "mirror", "is not a supported store URL",
                     "use gs://OTHER-BUCKET[/PREFIX] (another region), file:///ABSOLUTE/DIR or a plain directory path")]
    if cfg.store is not None and m.rstrip("/") == cfg.store.rstrip("/"):
        return [_bad(cfg, "mirror", "is the store itself",
                     "give a bucket in another region (gs://OTHER-BUCKET), or leave mirror unset")]
    return []


def min_stall_polls(poll_interval: float, gpu_timeout: float) -> int:
    """The fewest polls whose window covers ``gpu_timeout`` (tolerating float rounding)."""
    if not (poll_interval > 0 and gpu_timeout > 0):
        raise ValueError("poll_interval and gpu_timeout must be positive")
    n = max(1, math.ceil(gpu_timeout / poll_interval))
    # ceil() of a rounded quotient is off by at most one in either direction.
    if n > 1 and _covers(poll_interval, n - 1, gpu_timeout):
        return n - 1
    return n if _covers(poll_interval, n, gpu_timeout) else n + 1


def _covers(poll_interval: float, stall_polls: int, gpu_timeout: float) -> bool:
    try:
        return poll_interval * stall_polls >= gpu_timeout * (1 - 1e-9)
    except OverflowError:  # a stall_polls too big for a float covers any timeout
        return True


def _check_stall_window(cfg: Config) -> list[str]:
    """A VM waits up to gpu_timeout for its GPU driver before the job can report progress.

    If the supervisor's stall window were shorter, it would restart every GPU VM that is merely
    slow to boot, and a run could loop forever without starting.
    """
    from runner.launch.backends.gce_shapes import waits_for_driver

    if not waits_for_driver(cfg.backend, cfg.machine_type, cfg.gpu, cfg.no_gpu):
        return []  # no GPU wait to cover (the supervisor still covers a GPU run's own wait)
    problem = stall_window_problem(cfg)
    return [problem] if problem else []


def stall_window_problem(cfg: Config) -> str | None:
    """The one rule for the stall window against the GPU wait, whatever the run's shape: why
    ``poll_interval * stall_polls`` does not cover ``gpu_timeout`` and how to fix it, or None.

    Config validation (so ``submit``) applies it to GPU shapes; ``doctor`` reports it through the
    same function, so the two can never disagree about the same numbers.
    """
    p, s, g = cfg.poll_interval, cfg.stall_polls, cfg.gpu_timeout
    if not (math.isfinite(p) and p > 0 and math.isfinite(g) and g > 0 and s >= 1):
        return None  # already reported by _check_positive / _check_counts
    if _covers(p, s, g):
        return None
    try:
        raise_polls = f"raise stall_polls to at least {min_stall_polls(p, g)}"
    except OverflowError:
        raise_polls = "raise poll_interval"
    return (
        f"the stall window poll_interval * stall_polls = {p:g} s * {s} = {p * s:g} s is shorter "
        f"than gpu_timeout = {g:g} s, so a VM still waiting for its GPU driver would be declared "
        f"stalled and restarted (poll_interval from {_src(cfg, 'poll_interval')}, stall_polls "
        f"from {_src(cfg, 'stall_polls')}, gpu_timeout from {_src(cfg, 'gpu_timeout')}); "
        f"{raise_polls} or lower gpu_timeout to at most {p * s:g}"
    )
