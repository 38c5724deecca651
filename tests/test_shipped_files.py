"""The files the commands build from, found one way in a checkout and in an installed wheel
(runner/shipped_files.py; the wheel itself: tests/test_installed_wheel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner import shipped_files
from runner.build.image import BuildRequest, StagedSource, build_definition
from tests.conftest import ROOT


def test_in_a_checkout_the_shipped_files_are_the_repositorys_own():
    assert shipped_files.root() == ROOT
    assert shipped_files.cloudbuild_yaml() == ROOT / "cloudbuild.yaml"
    assert shipped_files.workload_context() == ROOT
    assert shipped_files.startup_scripts() == ((ROOT / "gcp" / "startup.sh").read_text(),
                                               (ROOT / "gcp" / "shutdown.sh").read_text())


def test_a_missing_shipped_file_says_how_to_repair_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(shipped_files, "root", lambda: tmp_path)
    with pytest.raises(shipped_files.MissingShippedFile, match="reinstall"):
        shipped_files.cloudbuild_yaml()


def test_a_job_folder_without_a_build_definition_builds_with_the_shipped_cloudbuild_yaml(tmp_path: Path):
    """A user's job folder holds a Dockerfile, not a cloudbuild.yaml: Cloud Build runs the runner's own."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    build = build_definition(BuildRequest(str(tmp_path), "us-docker.pkg.dev/p/runs/myjob"),
                             StagedSource("b", "cloudbuild/source/x.tgz", 1, 1), project="p")
    shipped = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert [s.id for s in build.steps] == [s["id"] for s in shipped["steps"]]
    assert build.substitutions["_IMAGE"] == "us-docker.pkg.dev/p/runs/myjob"
    assert build.source.storage_source.object_ == "cloudbuild/source/x.tgz"


def test_a_job_folders_own_cloudbuild_yaml_is_used_when_it_has_one(tmp_path: Path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "cloudbuild.yaml").write_text(
        "steps:\n- id: mine\n  name: gcr.io/cloud-builders/docker\n  args: [build, .]\n"
        "options:\n  logging: CLOUD_LOGGING_ONLY\n")
    build = build_definition(BuildRequest(str(tmp_path), "us-docker.pkg.dev/p/runs/myjob"),
                             StagedSource("b", "o.tgz", 1, 1), project="p")
    assert [s.id for s in build.steps] == ["mine"]


def test_build_workload_lists_the_shipped_context_from_any_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from runner.cli.main import main as cli

    monkeypatch.chdir(tmp_path)  # an empty folder: no Dockerfile here
    out = CliRunner().invoke(cli, ["build", "--workload", "--list-files"])
    assert out.exit_code == 0, out.output
    listed = out.output.split()
    assert {"Dockerfile", "entrypoint/requirements.txt", "entrypoint/agent.py", "examples/trainer.py"} <= set(listed)
    assert not [p for p in listed if p.startswith(("runner/", "tests/", "cos_spot_runner/"))]


@pytest.mark.parametrize("argv, says", [
    (["build", "--workload", "--local"], "--workload needs --image"),
    (["build", "--workload", "--context", "myjob", "--image", "x:dev"], "takes no --context"),
])
def test_build_workload_is_named_by_the_user_and_builds_no_other_folder(argv: list[str], says: str):
    from click.testing import CliRunner

    from runner.cli.main import main as cli

    out = CliRunner().invoke(cli, argv)
    assert out.exit_code == 2 and says in out.output
