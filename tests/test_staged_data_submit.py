"""``--data`` at submit, as the CLI sees it: the plan each backend would send (dry runs, no
server), the sources a backend cannot read refused, and runner.toml / task files saying it too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_gce_dry_run import DIGEST, _dry_run, _no_credentials_env


def test_a_gce_plan_carries_the_mount_paths_as_one_scalar_and_the_spec_the_sources(tmp_path: Path) -> None:
    p = _dry_run(tmp_path, "--image", DIGEST, "--data", "gs://my-sets/imagenet:/data",
                 "--data", "gs://my-sets/tokenizer:/models/tok")
    assert p.returncode == 0, p.stderr
    metadata = {i["key"]: i["value"] for i in json.loads(p.stdout)[0]["instance"]["metadata"]["items"]}
    assert metadata["runner-data-mounts"] == "/data /models/tok"
    assert not any("my-sets" in v for k, v in metadata.items() if not k.endswith("-script"))


def test_a_file_source_is_refused_for_gce_with_the_upload_to_do(tmp_path: Path) -> None:
    p = _dry_run(tmp_path, "--image", DIGEST, "--data", "file:///srv/sets/x:/data")
    assert p.returncode != 0
    assert "gcloud storage cp -r /srv/sets/x gs://BUCKET/PREFIX" in p.stderr


def _local_dry_run(tmp_path: Path, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "store").mkdir(exist_ok=True)
    env = {**_no_credentials_env(tmp_path), "RUNNER_STAGING_DIR": str(tmp_path / "staged")}
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "submit", "--backend", "local", "--store", str(tmp_path / "store"),
         "--run-id", "exp-1", "--image", "img", *extra, "--dry-run", "--", "python3", "train.py"],
        env=env, capture_output=True, text=True, timeout=60, cwd=cwd or tmp_path)


def test_a_local_plan_mounts_the_staged_folder_read_only_where_the_job_asked(tmp_path: Path) -> None:
    (tmp_path / "sets").mkdir()
    p = _local_dry_run(tmp_path, "--data", f"file://{tmp_path}/sets:/data")
    assert p.returncode == 0, p.stderr
    assert f"-v {tmp_path}/staged/exp-1/0:/data:ro" in p.stdout
    assert f"-v {tmp_path}/staged/exp-1:/var/lib/runner/staged:rw" in p.stdout
    assert f"-v {tmp_path}/sets:/var/lib/runner/sources/0:ro" in p.stdout
    assert "-e RUNNER_DATA_SOURCE_0=file:///var/lib/runner/sources/0" in p.stdout


def test_runner_toml_and_a_task_file_say_data_too_and_the_flag_wins(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    (tmp_path / "runner.toml").write_text(f'data = ["file://{tmp_path}/a:/data"]\n')
    p = _local_dry_run(tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"-v {tmp_path}/a:/var/lib/runner/sources/0:ro" in p.stdout
    (tmp_path / "task.yaml").write_text(f"data: [\"file://{tmp_path}/b:/data\"]\n")
    p = _local_dry_run(tmp_path, "-f", "task.yaml")
    assert p.returncode == 0, p.stderr
    assert f"-v {tmp_path}/b:/var/lib/runner/sources/0:ro" in p.stdout
    p = _local_dry_run(tmp_path, "-f", "task.yaml", "--data", f"file://{tmp_path}/c:/data")
    assert f"-v {tmp_path}/c:/var/lib/runner/sources/0:ro" in p.stdout and f"{tmp_path}/b:" not in p.stdout


def test_a_local_source_that_is_not_there_is_refused_at_submit(tmp_path: Path) -> None:
    p = _local_dry_run(tmp_path, "--data", f"file://{tmp_path}/nothere:/data")
    assert p.returncode != 0
    assert f"{tmp_path}/nothere is not a directory on this machine" in p.stderr
    assert not (tmp_path / "nothere").exists()


def test_a_bad_entry_in_runner_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "runner.toml").write_text('data = ["gs://bucket/x:/proc"]\n')
    p = _local_dry_run(tmp_path)
    assert p.returncode == 2
    assert "runner.toml" in p.stderr and "/proc" in p.stderr
