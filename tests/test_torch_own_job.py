"""The README's "Package your own job", done as a user does it: a directory with a Dockerfile
`FROM` the torch workload image and a train.py that imports entrypoint.job, built with
`runner build --local --context DIR`, submitted through `sh -c` (`&&` and a variable), preempted
once, resumed from its own last.pt, its results on disk."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

from tests.test_torch_resume import torch_image  # noqa: F401 - the fixture

pytestmark = [pytest.mark.docker, pytest.mark.torch]

TRAIN = '''\
import os, sys, time
import torch
print("results go to", sys.argv[1], flush=True)
from entrypoint.job import Checkpoint, PreemptionNotice, report_progress, results_dir

notice = PreemptionNotice.install()
ckpt = Checkpoint("last.pt")
state = ckpt.load(torch.load, weights_only=True) or {"step": 0, "w": torch.zeros(3), "starts": []}
state["starts"].append(state["step"])
while state["step"] < 40:
    state["w"] += 1
    state["step"] += 1
    report_progress(state["step"], 40)
    time.sleep(0.1)
    if notice.requested:
        ckpt.save(state, torch.save)
        sys.exit(143)
os.makedirs(results_dir(), exist_ok=True)
with open(os.path.join(results_dir(), "out.json"), "w") as f:
    f.write('{"w": %d, "starts": %s}' % (int(state["w"][0]), state["starts"]))
'''


def test_your_own_torch_job_builds_from_the_workload_image_and_resumes(runner, run_id, torch_image, tmp_path):
    job = tmp_path / "myjob"
    job.mkdir()
    (job / "train.py").write_text(TRAIN)
    (job / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {torch_image}
        COPY train.py /opt/job/train.py
        """))
    tag = f"cos-spot-runner/test-own-job:{uuid.uuid4().hex[:8]}"
    try:
        built = runner("build", "--local", "--context", str(job), "--image", tag, timeout=300)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip().startswith("sha256:")
        # Not run through a shell by the runner: the job asks for one, for `&&` and a variable.
        cmd = 'cd /opt/job && exec python3 train.py "$RUNNER_RESULTS_DIR"'
        out = runner("submit", "--run-id", run_id, "--image", tag, "--detach", "--", "sh", "-c", cmd)
        assert out.returncode == 0, out.stderr
        sup = runner.popen("supervise", "--run-id", run_id)
        runner.wait_for(lambda: runner.step(run_id) >= 10, timeout=120, desc="progress")
        assert runner("ops", "preempt", "--run-id", run_id).returncode == 0
        sup.wait(timeout=180)
        st = runner.state(run_id)
        assert (st["state"], st["attempt"]) == ("SUCCEEDED", 2), st
        results = runner.run_dir(run_id) / "results"
        doc = json.loads((results / "out.json").read_text())
        assert doc["w"] == 40 and doc["starts"][0] == 0 and 10 <= doc["starts"][1] < 40, doc
        log = (runner.run_dir(run_id) / "logs" / "1.log").read_text()
        assert "results go to /" in log and "$RUNNER" not in log
    finally:
        runner.cleanup()
        try:
            runner.docker.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
