"""The checkpoint mirror as a user runs it: ``runner submit --mirror``, ``runner ops status``,
``runner ops events``, on the local backend (real Docker, the workload image).

The run's checkpoints are lost from the primary store while no VM runs (the bucket's copy is
gone, the mirror's is not); the re-submitted run resumes from the mirror at the mirror's step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from entrypoint import tiers
from tests.conftest import IMAGE, trainer

pytestmark = pytest.mark.docker


def mirror_stamp(mirror: Path, run_id: str) -> tiers.Stamp | None:
    try:
        return tiers.Stamp.from_json((mirror / "runs" / run_id / "checkpoints" / tiers.STAMP).read_bytes())
    except FileNotFoundError:
        return None


def test_a_run_with_a_mirror_resumes_from_it_when_the_store_lost_its_checkpoints(runner, run_id, tmp_path: Path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--mirror", str(mirror), "--detach",
                 "--", *trainer(200, 5, 0.1))
    assert out.returncode == 0, out.stderr
    assert runner.read_json(run_id, "spec.json")["mirror"] == f"file://{mirror}"
    runner.wait_for(lambda: ((s := mirror_stamp(mirror, run_id)) is not None and (s.step or 0) >= 5
                             and ((runner.read_json(run_id, "heartbeat.json") or {}).get("sync", {}).get("mirror")
                                  or {}).get("step") is not None),
                    timeout=90, desc="a checkpoint in the mirror, and the heartbeat saying so")
    status = runner("ops", "status", "--run-id", run_id)
    assert status.returncode == 0, status.stderr
    assert "mirror     file:///var/lib/runner/mirror: at step" in status.stdout, status.stdout

    for c in runner.containers(run_id):
        c.kill()  # the VM vanishes, nobody supervising
    runner.wait_for(lambda: not [c for c in runner.containers(run_id) if c.status == "running"],
                    desc="the killed container to stop")
    assert runner.state(run_id).get("state") != "SUCCEEDED", "the job ended before the kill: give it more steps"
    mirrored = mirror_stamp(mirror, run_id)
    assert mirrored is not None and mirrored.step is not None
    shutil.rmtree(runner.run_dir(run_id) / "checkpoints")  # the primary's copy is gone

    again = runner("submit", "--run-id", run_id, timeout=240)
    assert again.returncode == 0, again.stderr
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2)
    assert runner.read_json(run_id, "results/summary.json")["starts"] == [0, mirrored.step]
    status = runner("ops", "status", "--run-id", run_id)
    assert f"resumed    from the mirror checkpoint tier at step {int(mirrored.step)}" in status.stdout, status.stdout
    events = runner("ops", "events", "--run-id", run_id)
    assert events.returncode == 0, events.stderr
    assert f"resumed from the mirror checkpoint tier at step {mirrored.step}" in events.stdout


def test_a_mirror_that_is_the_store_itself_is_refused(runner, run_id):
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--mirror", str(runner.store_dir),
                 "--", *trainer(5, 5, 0.01))
    assert out.returncode != 0
    assert "mirror" in out.stderr and "is the store itself" in out.stderr
    assert runner.state(run_id) == {}


def test_a_gs_mirror_is_refused_on_the_local_backend_at_submit(runner, run_id):
    """Its containers have no network: every attempt would run without its mirror."""
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--mirror", "gs://other-bucket",
                 "--", *trainer(5, 5, 0.01))
    assert out.returncode != 0
    assert "file:///DIR" in out.stderr and "--backend gce" in out.stderr, out.stderr
    assert runner.state(run_id) == {}
