"""`runner submit --backend gce --dry-run` prints the exact plan with no credentials at all,
and says which checks against the API it skipped (the plan is pure: docs/architecture.md#plan-then-act)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

DIGEST = "us-docker.pkg.dev/p/runs/trainer@sha256:" + "a" * 64


def _no_credentials_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    # Never look for a real metadata server or the developer's gcloud setup.
    env.update(NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
               HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), PYTHONPATH=str(ROOT))
    return env


def _dry_run(tmp_path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "submit", "--backend", "gce", "--project", "p",
         "--store", "gs://no-such-bucket", "--zones", "us-central1-a,us-central1-b",
         "--gpu", "nvidia-tesla-t4", "--run-id", "exp-1", *extra, "--dry-run", "--", "python3", "train.py"],
        env=_no_credentials_env(tmp_path), capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_a_gce_dry_run_needs_no_credentials_and_prints_the_whole_plan(tmp_path):
    p = _dry_run(tmp_path, "--image", DIGEST)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert [c["zone"] for c in plan] == ["us-central1-a", "us-central1-b"]
    inst = plan[0]["instance"]
    assert inst["name"] == "runner-exp-1-a1"
    assert inst["scheduling"]["provisioning_model"] == "SPOT"
    assert inst["guest_accelerators"][0]["accelerator_type"].endswith("nvidia-tesla-t4")
    metadata = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert metadata["runner-store"] == "gs://no-such-bucket"
    assert "not checked" in p.stderr and "Compute API" in p.stderr and "not pinned to a concrete image" in p.stderr
    assert "credentials" not in p.stderr


def test_a_gce_dry_run_says_that_submit_would_refuse_an_unpinned_image(tmp_path):
    p = _dry_run(tmp_path, "--image", "us-docker.pkg.dev/p/runs/trainer:latest")
    assert p.returncode == 0, p.stderr
    assert "not pinned by digest, which submit refuses" in p.stderr


def test_a_gce_dry_run_of_a_gang_prints_one_bulk_insert_per_zone_not_n_inserts(tmp_path):
    p = _dry_run(tmp_path, "--image", DIGEST, "--nodes", "2")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)  # one JSON document: the gang's requests, zone by zone
    assert [c["zone"] for c in plan] == ["us-central1-a", "us-central1-b"]
    bulk = plan[0]["bulk_insert"]
    assert bulk["zone"] == "us-central1-a" and bulk["project"] == "p"
    res = bulk["bulk_insert_instance_resource_resource"]
    assert (int(res["count"]), int(res["min_count"])) == (2, 2)  # all or nothing
    assert sorted(res["per_instance_properties"]) == ["runner-exp-1-a1-n0", "runner-exp-1-a1-n1"]
    props = res["instance_properties"]
    assert props["scheduling"]["provisioning_model"] == "SPOT"
    metadata = {i["key"]: i["value"] for i in props["metadata"]["items"]}
    assert metadata["runner-nnodes"] == "2"
    assert "rank" not in props["labels"]  # one bulkInsert labels every node alike: the rank is in the name


def test_a_gce_dry_run_refuses_a_gang_larger_than_gce_takes(tmp_path):
    p = _dry_run(tmp_path, "--image", DIGEST, "--nodes", "65")
    assert p.returncode != 0 and p.stdout == ""
    assert "nodes" in p.stderr and "64" in p.stderr
