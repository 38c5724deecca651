"""The runner's own image: its generated context, its build through the unchanged `runner build`
chain (here the Cloud Build route, against the Cloud Build fake), and the layer cache of
``cloudbuild.yaml`` that both images share."""

from __future__ import annotations

from pathlib import Path

import yaml

from runner.config import Config
from runner.build.supervisor_image import DOCKERFILE, build_runner_image, default_repo, requirements, stage_context
from tests.conftest import ROOT


def test_the_context_holds_this_runner_and_its_dependencies(tmp_path: Path):
    ctx = Path(stage_context(str(tmp_path / "ctx")))
    assert (ctx / "runner" / "cloud" / "hosted.py").read_text() == (ROOT / "runner" / "cloud" / "hosted.py").read_text()
    assert (ctx / "entrypoint" / "record" / "run.py").is_file() and (ctx / "gcp" / "startup.sh").is_file()
    assert not list(ctx.rglob("__pycache__"))
    reqs = (ctx / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("google-cloud-run") for r in reqs) and not any("pytest" in r for r in reqs)
    assert reqs == requirements()
    assert (ctx / "Dockerfile").read_text() == DOCKERFILE and (ctx / "cloudbuild.yaml").is_file()


def test_the_runner_image_is_built_through_cloud_build_and_pinned(cloudbuild_fake, gcs_store, gcs_emulator):
    cfg = Config(backend="gce", project="test-project", store=gcs_store.url,
                 cloudbuild_endpoint=cloudbuild_fake.endpoint,
                 image="us-central1-docker.pkg.dev/test-project/runs/workload:dev")
    repo = default_repo(cfg)
    assert repo == "us-central1-docker.pkg.dev/test-project/runs/runner"
    ref = build_runner_image(cfg, None, say=lambda s: None)
    (build,) = cloudbuild_fake.builds
    assert build.substitutions["_IMAGE"] == repo and build.substitutions["_DOCKERFILE"] == "Dockerfile"
    assert ref.startswith(repo + "@sha256:") and len(ref.split("@sha256:")[1]) == 64


def test_the_trigger_layer_cache_is_usable_by_buildkit():
    doc = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    build = next(s for s in doc["steps"] if s.get("id") == "build")
    assert "--cache-from=${_IMAGE}:latest" in build["args"]
    # Without inline cache metadata in the cached image, BuildKit ignores --cache-from entirely.
    assert "--build-arg=BUILDKIT_INLINE_CACHE=1" in build["args"]
    assert "DOCKER_BUILDKIT=1" in build.get("env", [])
