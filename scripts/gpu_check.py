"""The Python half of scripts/gpu-check.sh (which checks the machine first and stages the driver):
run examples.torch_train on CUDA through the agent, with the driver wired the COS way, preempt it
once, and check that the resumed run ends bit-exact with an uninterrupted one.

It drives the product's own code (runner.launch.submit, the Supervisor, runner.ops.runs.preempt_run) with a
local backend whose containers get the GPU the way gcp/startup.sh gives it on COS: the driver's
lib64 and bin directories bind-mounted under /usr/local/nvidia, the /dev/nvidia* devices passed
one by one, LD_LIBRARY_PATH prepended; never ``--gpus`` nor ``--runtime=nvidia`` (docs/architecture.md#on-the-vm-cos).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from entrypoint.record import RunRecord  # noqa: E402
from entrypoint.record import RunSpec  # noqa: E402
from runner.launch.backends.base import LaunchContext  # noqa: E402
from runner.launch.backends.local import STORE_MOUNT, ContainerPlan, LocalBackend  # noqa: E402

DRIVER_LIB = "/usr/local/nvidia/lib64"
DRIVER_BIN = "/usr/local/nvidia/bin"


class CosGpuLocalBackend(LocalBackend):
    """The local backend, plus the COS GPU wiring on every container it plans."""

    def __init__(self, nvidia_root: str, devices: list[str], image_ld_path: str = "",
                 client: Any | None = None) -> None:
        super().__init__(client)
        self.nvidia_root = nvidia_root
        self.devices = devices
        self.image_ld_path = image_ld_path

    def plan_instance(self, spec: RunSpec, ctx: LaunchContext, rank: int) -> ContainerPlan:
        p = super().plan_instance(spec, ctx, rank)
        volumes = {**p.volumes,
                   os.path.join(self.nvidia_root, "lib64"): {"bind": DRIVER_LIB, "mode": "ro"},
                   os.path.join(self.nvidia_root, "bin"): {"bind": DRIVER_BIN, "mode": "ro"}}
        # Prepend, never overwrite: the image may need its own library path (docs/architecture.md#on-the-vm-cos).
        ld = DRIVER_LIB + (f":{self.image_ld_path}" if self.image_ld_path else "")
        env = {**p.environment, "LD_LIBRARY_PATH": ld,
               "PATH": f"{DRIVER_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        extra = {**p.extra, "devices": [f"{d}:/dev/{os.path.basename(d)}:rwm" for d in self.devices]}
        return replace(p, volumes=volumes, environment=env, extra=extra)


def train_command(steps: int, device: str, *extra: str) -> list[str]:
    return ["python3", "-m", "examples.torch_train", "--device", device, "--deterministic",
            "--steps", str(steps), "--checkpoint-every", "25", *extra]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="see scripts/gpu-check.sh")
    p.add_argument("--image", required=True)
    p.add_argument("--nvidia-root", required=True)
    p.add_argument("--device", action="append", default=[], dest="devices")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--preempt-at", type=int, required=True)
    p.add_argument("--store", default="")
    p.add_argument("--timeout", type=float, default=480)
    # cpu: the same orchestration without a GPU, so that CI checks this script's own logic.
    p.add_argument("--train-device", choices=["cuda", "cpu"], default="cuda")
    args = p.parse_args(argv)

    from runner.config import load_config
    from runner.launch.context import Context, make_store
    from runner.ops.runs import preempt_run
    from runner.launch.submit import submit

    store_dir = args.store or tempfile.mkdtemp(prefix="gpu-check-store-")
    cfg = load_config(cli={"backend": "local", "store": f"file://{store_dir}", "poll_interval": 1.0,
                           "heartbeat_interval": 1.0, "sync_interval": 1.0, "grace_period": 20.0,
                           "stall_polls": 100000, "image": args.image}, env={})
    import docker

    image_env = docker.from_env().images.get(args.image).attrs["Config"].get("Env") or []
    ld = next((e.split("=", 1)[1] for e in image_env if e.startswith("LD_LIBRARY_PATH=")), "")
    backend = CosGpuLocalBackend(args.nvidia_root, args.devices, ld).bind_store(cfg.store_url)
    ctx = Context(cfg, make_store(cfg), backend)
    sup = ctx.supervisor()
    tag = uuid.uuid4().hex[:6]
    ref, run = f"gpu-ref-{tag}", f"gpu-pre-{tag}"
    say = lambda m: print(f"gpu-check: {m}", file=sys.stderr, flush=True)  # noqa: E731

    def follow(run_id: str, preempt_at: int | None = None) -> RunRecord:
        rec = RunRecord(ctx.store, run_id)
        deadline = time.time() + args.timeout
        preempted = preempt_at is None
        while time.time() < deadline:
            sup.reconcile(run_id)
            cur = rec.read_state()
            st = cur[0] if cur else None
            if st is not None and st.state.terminal:
                return rec
            hb = rec.read_heartbeat()
            step = int(hb.progress.get("step", 0) or 0) if hb else 0
            if not preempted and st is not None and st.state.value == "RUNNING" and step >= preempt_at:
                say(f"{run_id}: preempting at step {step} (runner ops preempt)")
                preempt_run(ctx.store, backend, run_id, cfg.grace_period)
                preempted = True
            time.sleep(cfg.poll_interval)
        raise SystemExit(f"gpu-check: {run_id} did not finish within {args.timeout:.0f} s; "
                         f"see {store_dir}/runs/{run_id}/logs")

    dev = args.train_device
    for run_id, cmd, at in ((ref, train_command(args.steps, dev), None),
                            # The delay leaves the supervisor (1 s heartbeat, 1 s poll) time to
                            # preempt mid-run, even on a loaded machine.
                            (run, train_command(args.steps, dev, "--step-delay", "0.25"), args.preempt_at)):
        res = submit(ctx, run_id, cmd, image=args.image, restart=False)
        say(res.message)
        rec = follow(run_id, at)
        st = rec.read_state()[0]  # type: ignore[index]
        say(f"{run_id}: {st.state.value} after {st.attempt} attempt(s)")
        if st.state.value != "SUCCEEDED":
            return 1

    summary = json.loads(open(f"{store_dir}/runs/{run}/results/summary.json").read())
    client = docker.from_env()
    out = client.containers.run(
        args.image, ["python3", "-m", "examples.torch_equal", f"{STORE_MOUNT}/runs/{ref}/results/final.pt",
                     f"{STORE_MOUNT}/runs/{run}/results/final.pt"],
        entrypoint=[], network_mode="none", remove=True, stderr=True,
        volumes={store_dir: {"bind": STORE_MOUNT, "mode": "ro"}})
    cmp = json.loads(out.decode().strip().splitlines()[-1])
    verdict = {"device": summary["device"], "steps": summary["steps"], "starts": summary["starts"],
               "attempts": RunRecord(ctx.store, run).read_state()[0].attempt,  # type: ignore[index]
               "tensors_compared": cmp["tensors"], "equal": cmp["equal"],
               "mismatches": cmp["mismatches"][:10], "store": store_dir}
    print(json.dumps(verdict))
    ok = cmp["equal"] and len(summary["starts"]) == 2 and summary["device"].startswith(dev)
    say("PASS: the resumed run equals the uninterrupted one, tensor for tensor" if ok
        else "FAIL: see the JSON above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
