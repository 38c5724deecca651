"""Layered config: precedence, discovery, coercion, and validation that points at the fix."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.config import (
    KEYS,
    Config,
    ConfigError,
    _to_bool,
    load_config,
    min_stall_polls,
)


def _write(directory: Path, text: str, name: str = "runner.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def _load(tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None,
          cli: dict | None = None) -> Config:
    """Load with an isolated cwd and environment, so the developer's own setup cannot leak in."""
    if toml is not None:
        _write(tmp_path, toml)
    return load_config(cli=cli, cwd=str(tmp_path), env=env or {})


# --- defaults -------------------------------------------------------------------------------


def test_defaults_pass_validation_and_have_the_documented_values(tmp_path: Path) -> None:
    cfg = _load(tmp_path)
    assert (cfg.backend, cfg.store, cfg.image, cfg.project, cfg.zones, cfg.gpu) == (
        "local", None, None, None, [], None)
    assert cfg.machine_type == "n1-standard-4"
    assert (cfg.poll_interval, cfg.stall_polls, cfg.gpu_timeout) == (3.0, 200, 600.0)
    assert (cfg.heartbeat_interval, cfg.sync_interval, cfg.grace_period) == (5.0, 10.0, 25.0)
    assert (cfg.max_restarts, cfg.retry_on_failure) == (10, 0)
    assert cfg.checkpoint_dir == "/var/lib/runner/checkpoints"
    assert cfg.results_dir == "/var/lib/runner/results"
    assert cfg.shm_size == "2g"
    assert cfg.source == {key: "default" for key in KEYS}


def test_a_bare_config_object_equals_the_loaded_defaults(tmp_path: Path) -> None:
    assert Config() == _load(tmp_path)


def test_the_default_stall_window_covers_the_default_gpu_timeout() -> None:
    assert Config().stall_window == 600.0 >= Config().gpu_timeout


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().backend = "gce"  # type: ignore[misc]


# --- precedence -----------------------------------------------------------------------------


def test_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "poll_interval = 4.0\nstall_polls = 300\nimage = 'img:1'\n")
    assert (cfg.poll_interval, cfg.stall_polls, cfg.image) == (4.0, 300, "img:1")
    assert cfg.source["poll_interval"] == f"{tmp_path / 'runner.toml'} (key poll_interval)"
    assert cfg.source["machine_type"] == "default"


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "poll_interval = 4.0\nimage = 'img:1'\n",
                env={"RUNNER_POLL_INTERVAL": "5"})
    assert cfg.poll_interval == 5.0
    assert cfg.image == "img:1"
    assert cfg.source["poll_interval"] == "environment variable RUNNER_POLL_INTERVAL"


def test_cli_flags_override_the_environment_and_the_file(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "poll_interval = 4.0\nimage = 'img:1'\nmax_restarts = 3\n",
                env={"RUNNER_POLL_INTERVAL": "5", "RUNNER_IMAGE": "img:2"},
                cli={"poll_interval": 6.0, "image": "img:3"})
    assert (cfg.poll_interval, cfg.image, cfg.max_restarts) == (6.0, "img:3", 3)
    assert cfg.source["poll_interval"] == "--poll-interval"
    assert cfg.source["image"] == "--image"
    assert cfg.source["max_restarts"].endswith("(key max_restarts)")


def test_cli_values_that_mean_not_given_do_not_override(tmp_path: Path) -> None:
    # click passes None for an unused option and () for an unused multiple=True option.
    cfg = _load(tmp_path, "zones = ['us-central1-a']\nimage = 'img:1'\n",
                cli={"zones": (), "image": None})
    assert cfg.zones == ["us-central1-a"]
    assert cfg.image == "img:1"


def test_an_unknown_cli_key_is_a_config_error_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'poll_interval'"):
        _load(tmp_path, cli={"poll_intervall": 1.0})


# --- the config file ------------------------------------------------------------------------


def test_keys_may_also_live_in_a_runner_table(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "[runner]\nbackend = 'gce'\nzones = ['us-central1-a', 'us-east1-b']\n")
    assert cfg.backend == "gce"
    assert cfg.zones == ["us-central1-a", "us-east1-b"]
    assert cfg.source["backend"] == f"{tmp_path / 'runner.toml'} ([runner] backend)"


def test_a_key_set_both_at_top_level_and_in_the_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image set twice .* remove one"):
        _load(tmp_path, "image = 'a'\n[runner]\nimage = 'b'\n")


def test_the_config_file_is_found_by_walking_up_from_a_nested_cwd(tmp_path: Path) -> None:
    _write(tmp_path / "project", "image = 'from-project'\n")
    nested = tmp_path / "project" / "src" / "deep"
    nested.mkdir(parents=True)
    cfg = load_config(cwd=str(nested), env={})
    assert cfg.image == "from-project"
    assert str(tmp_path / "project" / "runner.toml") in cfg.source["image"]


def test_the_nearest_config_file_wins(tmp_path: Path) -> None:
    _write(tmp_path / "project", "image = 'outer'\nmax_restarts = 1\n")
    _write(tmp_path / "project" / "sub", "image = 'inner'\n")
    cfg = load_config(cwd=str(tmp_path / "project" / "sub"), env={})
    assert cfg.image == "inner"
    assert cfg.max_restarts == 10  # files are not merged: the first one found is the layer


def test_an_explicit_config_path_replaces_discovery(tmp_path: Path) -> None:
    _write(tmp_path, "image = 'discovered'\n")
    other = _write(tmp_path / "elsewhere", "image = 'explicit'\n", name="custom.toml")
    cfg = load_config(cwd=str(tmp_path), env={}, config_path=str(other))
    assert cfg.image == "explicit"


def test_a_relative_config_path_is_relative_to_cwd(tmp_path: Path) -> None:
    _write(tmp_path / "conf", "image = 'relative'\n", name="x.toml")
    cfg = load_config(cwd=str(tmp_path), env={}, config_path="conf/x.toml")
    assert cfg.image == "relative"


def test_runner_config_env_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    other = _write(tmp_path / "elsewhere", "image = 'from-env-file'\n", name="c.toml")
    cfg = load_config(cwd=str(tmp_path), env={"RUNNER_CONFIG": str(other)})
    assert cfg.image == "from-env-file"


@pytest.mark.parametrize("how", ["--config", "RUNNER_CONFIG"])
def test_a_missing_explicit_config_file_is_an_error_not_silence(tmp_path: Path, how: str) -> None:
    missing = str(tmp_path / "nope.toml")
    kwargs = {"config_path": missing} if how == "--config" else {"env": {"RUNNER_CONFIG": missing}}
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError, match=f"nope.toml \\(from .*{how}\\) does not exist"):
        load_config(cwd=str(tmp_path), **kwargs)


def test_an_unknown_key_in_the_file_is_rejected_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "pol_interval = 2.0\n")
    message = str(err.value)
    assert f"unknown key 'pol_interval' in {tmp_path / 'runner.toml'}" in message
    assert "did you mean 'poll_interval'?" in message
    assert "Known keys: backend, store," in message


def test_an_unknown_key_with_no_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "[runner]\ncolour = 'blue'\n")
    assert "did you mean" not in str(err.value)
    assert "[runner] table of" in str(err.value)
    assert "Known keys:" in str(err.value)


def test_other_tables_in_the_file_are_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'tool'"):
        _load(tmp_path, "[tool.something]\nx = 1\n")


def test_invalid_toml_is_reported_with_the_file_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runner.toml is not valid TOML .*fix the syntax"):
        _load(tmp_path, "poll_interval = = 3\n")


def test_a_binary_config_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "runner.toml").write_bytes(b"poll_interval = 3\n\xff\xfe\x00")
    with pytest.raises(ConfigError, match="runner.toml is not UTF-8 text"):
        _load(tmp_path)


# --- the environment ------------------------------------------------------------------------


def test_env_values_are_coerced_to_the_key_types(tmp_path: Path) -> None:
    cfg = _load(tmp_path, env={
        "RUNNER_GPU_TIMEOUT": " 90 ", "RUNNER_STALL_POLLS": "30",
        "RUNNER_ZONES": "us-a1-b, us-c2-d,",
        "RUNNER_BACKEND": "gce", "RUNNER_PROJECT": "my-proj",
    })
    assert cfg.gpu_timeout == 90.0 and isinstance(cfg.gpu_timeout, float)
    assert cfg.stall_polls == 30 and isinstance(cfg.stall_polls, int)
    assert cfg.zones == ["us-a1-b", "us-c2-d"]
    assert (cfg.backend, cfg.project) == ("gce", "my-proj")


def test_an_empty_env_value_unsets_an_optional_key(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "gpu = 'nvidia-tesla-t4'\nzones = ['us-central1-a']\n",
                env={"RUNNER_GPU": "", "RUNNER_ZONES": ""})
    assert cfg.gpu is None
    assert cfg.zones == []


def test_runner_env_vars_that_are_not_keys_are_ignored(tmp_path: Path) -> None:
    cfg = _load(tmp_path, env={"RUNNER_RUN_ID": "x", "RUNNER_ZONE": "local",
                               "RUNNER_POL_INTERVAL": "oops", "RUNNER_PROGRESS": "1"})
    assert cfg == Config()


@pytest.mark.parametrize("text,expected", [
    ("1", True), ("true", True), ("Yes", True), (" on ", True),
    ("0", False), ("FALSE", False), ("no", False), ("off", False), (True, True),
])
def test_boolean_strings_are_understood(text: object, expected: bool) -> None:
    assert _to_bool(text) is expected


def test_an_unclear_boolean_string_is_refused() -> None:
    with pytest.raises(ValueError):
        _to_bool("maybe")


# --- type errors name their source ----------------------------------------------------------


def test_a_bad_type_in_the_file_names_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "stall_polls = 'many'\n")
    message = str(err.value)
    assert "invalid stall_polls 'many'" in message
    assert f"{tmp_path / 'runner.toml'} (key stall_polls)" in message
    assert "expected a positive whole number" in message


def test_a_bad_type_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid poll_interval 'abc' from environment "
                                          "variable RUNNER_POLL_INTERVAL: expected"):
        _load(tmp_path, env={"RUNNER_POLL_INTERVAL": "abc"})


def test_a_bad_type_on_the_command_line_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid max_restarts 'x' from --max-restarts"):
        _load(tmp_path, cli={"max_restarts": "x"})


def test_a_bad_type_in_a_lower_layer_is_reported_even_if_overridden(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runner.toml"):
        _load(tmp_path, "poll_interval = 'abc'\n", cli={"poll_interval": 3.0})


@pytest.mark.parametrize("toml", [
    "stall_polls = 200.0", "poll_interval = true", "zones = {a = 1}",
    "zones = [1, 2]", "image = 3", "poll_interval = nan", "gpu_timeout = inf",
])
def test_values_of_the_wrong_toml_type_are_rejected(tmp_path: Path, toml: str) -> None:
    with pytest.raises(ConfigError):
        _load(tmp_path, toml + "\n")


def test_a_whole_number_in_the_file_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    assert _load(tmp_path, "poll_interval = 4\nstall_polls = 150\n").poll_interval == 4.0


def test_building_a_config_directly_with_wrong_types_is_rejected() -> None:
    with pytest.raises(ConfigError, match="poll_interval = '3' from the Config"):
        Config(poll_interval="3")  # type: ignore[arg-type]


# --- value validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["poll_interval", "gpu_timeout", "heartbeat_interval", "sync_interval", "grace_period"]
)
@pytest.mark.parametrize("value", ["0", "-1.5"])
def test_non_positive_intervals_are_rejected(tmp_path: Path, key: str, value: str) -> None:
    var = f"RUNNER_{key.upper()}"
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, env={var: value})
    message = str(err.value)
    assert f"{key} = {float(value)!r} from environment variable {var}" in message
    assert "must be a positive number of seconds" in message


@pytest.mark.parametrize("key", ["max_restarts", "retry_on_failure"])
def test_negative_counts_are_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} = -1 from --{key.replace('_', '-')} must not"):
        _load(tmp_path, cli={key: -1})


def test_zero_stall_polls_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stall_polls = 0 .* must be at least 1"):
        _load(tmp_path, cli={"stall_polls": 0})


def test_an_unknown_backend_is_rejected_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend = 'aws' from environment variable "
                                          "RUNNER_BACKEND is not a known backend; use 'local'"):
        _load(tmp_path, env={"RUNNER_BACKEND": "aws"})


@pytest.mark.parametrize("grace", [30.0, 45.0])
def test_a_grace_period_of_30_s_or_more_is_rejected_because_of_the_gce_notice(
    tmp_path: Path, grace: float
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, cli={"grace_period": grace})
    message = str(err.value)
    assert "grace_period" in message and "--grace-period" in message
    assert "30 s of notice before preemption" in message


def test_a_grace_period_just_under_30_s_is_accepted(tmp_path: Path) -> None:
    assert _load(tmp_path, cli={"grace_period": 29.5}).grace_period == 29.5


@pytest.mark.parametrize("key", ["checkpoint_dir", "results_dir"])
def test_container_paths_must_be_absolute(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} = 'data' .* must be an absolute path"):
        _load(tmp_path, cli={key: "data"})


@pytest.mark.parametrize("size", ["2g", "512m", "1GB", "1024", "64k"])
def test_docker_shm_sizes_are_accepted(tmp_path: Path, size: str) -> None:
    assert _load(tmp_path, cli={"shm_size": size}).shm_size == size


@pytest.mark.parametrize("size", ["2 gigs", "", "1.5g", "g"])
def test_malformed_shm_sizes_are_rejected(tmp_path: Path, size: str) -> None:
    with pytest.raises(ConfigError, match="shm_size"):
        _load(tmp_path, cli={"shm_size": size})


def test_malformed_zone_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"zones .* invalid zone names \['US Central'\]"):
        _load(tmp_path, env={"RUNNER_ZONES": "us-central1-a,US Central"})


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, env={"RUNNER_BACKEND": "aws", "RUNNER_SYNC_INTERVAL": "0"})
    message = str(err.value)
    assert message.startswith("2 config problems:")
    assert "backend" in message and "sync_interval" in message


# --- the stall window must cover the GPU timeout --------------------------------------------

GPU_CLI = {"backend": "gce", "gpu": "nvidia-tesla-t4"}  # where a VM waits for its GPU driver
GPU_ENV = {"RUNNER_BACKEND": "gce", "RUNNER_GPU": "nvidia-tesla-t4"}


def test_a_stall_window_shorter_than_the_gpu_timeout_is_rejected_with_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "backend = 'gce'\ngpu = 'nvidia-tesla-t4'\nstall_polls = 40\n")
    message = str(err.value)
    assert "poll_interval * stall_polls = 3 s * 40 = 120 s" in message
    assert "shorter than gpu_timeout = 600 s" in message
    assert "raise stall_polls to at least 200 or lower gpu_timeout to at most 120" in message
    assert "stall_polls from " + str(tmp_path / "runner.toml") in message
    assert "gpu_timeout from default" in message


def test_a_stall_window_exactly_equal_to_the_gpu_timeout_is_accepted(tmp_path: Path) -> None:
    cfg = _load(tmp_path, env={"RUNNER_POLL_INTERVAL": "0.1", "RUNNER_STALL_POLLS": "3",
                               "RUNNER_GPU_TIMEOUT": "0.3", **GPU_ENV})
    assert cfg.stall_window == pytest.approx(0.3)


def test_lowering_the_gpu_timeout_also_satisfies_the_rule(tmp_path: Path) -> None:
    cfg = _load(tmp_path, cli={"stall_polls": 40, "gpu_timeout": 120.0, **GPU_CLI})
    assert cfg.stall_window == 120.0


@pytest.mark.parametrize("where", [
    {},  # the local backend: containers have no GPU wait
    {"backend": "gce", "no_gpu": True},
    {"backend": "gce", "machine_type": "n2-standard-8"},
])
def test_the_stall_rule_applies_only_where_a_gpu_wait_exists(tmp_path: Path, where: dict) -> None:
    cfg = _load(tmp_path, env={"RUNNER_POLL_INTERVAL": "1"}, cli=where)
    assert cfg.stall_window == 200.0 < cfg.gpu_timeout


@pytest.mark.parametrize("gpu", [{"gpu": "nvidia-tesla-t4"}, {"machine_type": "g2-standard-8"}])
def test_the_stall_rule_applies_to_gce_vms_with_attached_or_built_in_gpus(tmp_path: Path, gpu: dict) -> None:
    with pytest.raises(ConfigError, match="shorter than gpu_timeout"):
        _load(tmp_path, env={"RUNNER_POLL_INTERVAL": "1"}, cli={"backend": "gce", **gpu})


_seconds = st.floats(min_value=0.01, max_value=10_000, allow_nan=False)


@given(poll=_seconds, gpu_timeout=_seconds, stall_polls=st.integers(1, 100_000))
def test_the_stall_rule_accepts_exactly_the_windows_that_cover_the_gpu_timeout(
    poll: float, gpu_timeout: float, stall_polls: int
) -> None:
    window_ok = poll * stall_polls >= gpu_timeout * (1 - 1e-9)
    try:
        Config(poll_interval=poll, stall_polls=stall_polls, gpu_timeout=gpu_timeout, **GPU_CLI)
    except ConfigError as err:
        assert not window_ok
        assert f"at least {min_stall_polls(poll, gpu_timeout)}" in str(err)
    else:
        assert window_ok


@given(poll=_seconds, gpu_timeout=_seconds)
def test_the_suggested_stall_polls_is_the_smallest_that_works(
    poll: float, gpu_timeout: float
) -> None:
    n = min_stall_polls(poll, gpu_timeout)
    Config(poll_interval=poll, stall_polls=n, gpu_timeout=gpu_timeout, **GPU_CLI)  # does not raise
    if n > 1:
        with pytest.raises(ConfigError):
            Config(poll_interval=poll, stall_polls=n - 1, gpu_timeout=gpu_timeout, **GPU_CLI)


# --- the store ------------------------------------------------------------------------------


def test_the_default_store_is_under_xdg_data_home(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Config().store_url == f"file://{tmp_path / 'data'}/cos-spot-runner/store"


def test_without_xdg_data_home_the_store_is_under_local_share(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Config().store_url == f"file://{tmp_path}/.local/share/cos-spot-runner/store"


def test_a_relative_xdg_data_home_is_ignored(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Config().store_url.startswith(f"file://{tmp_path}/.local/share/")


def test_a_configured_store_is_used_as_is(tmp_path: Path) -> None:
    cfg = _load(tmp_path, env={"RUNNER_STORE": "gs://bucket/prefix"})
    assert cfg.store == cfg.store_url == "gs://bucket/prefix"


def test_a_relative_store_path_in_the_file_is_relative_to_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "project", "store = 'var/store'\n")
    (tmp_path / "project" / "sub").mkdir()
    cfg = load_config(cwd=str(tmp_path / "project" / "sub"), env={})
    assert cfg.store_url == f"file://{tmp_path / 'project' / 'var' / 'store'}"


def test_a_relative_store_path_from_env_or_cli_is_relative_to_cwd(tmp_path: Path) -> None:
    assert _load(tmp_path, env={"RUNNER_STORE": "s"}).store == f"file://{tmp_path / 's'}"
    assert _load(tmp_path, cli={"store": "./t"}).store == f"file://{tmp_path / 't'}"


def test_an_unsupported_store_url_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store = 's3://b' from --store is not a supported"):
        _load(tmp_path, cli={"store": "s3://b"})


# --- import cost ----------------------------------------------------------------------------


def test_importing_the_config_module_does_not_load_the_toml_parser_or_difflib() -> None:
    code = ("import sys, runner.config; "
            "print(sorted(m for m in ('tomllib', 'tomli', 'difflib') if m in sys.modules))")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    assert out.stdout.strip() == "[]"
