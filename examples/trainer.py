"""A tiny pure-Python "trainer" that behaves like a real one towards the runner.

- resumes from ``$RUNNER_CHECKPOINT_DIR/last.pt`` if it is there,
- checkpoints atomically every ``--checkpoint-every`` steps (write ``last.pt.tmp``, fsync,
  rename), and once more when it gets SIGTERM (the preemption notice), then exits 143,
- reports progress with ``RUNNER_PROGRESS step=N total=T`` lines,
- writes ``$RUNNER_RESULTS_DIR/summary.json`` when done,
- with ``--hold-at STEP``, waits at STEP for the preemption notice (demos and tests: a preemption
  that lands where it was meant to however slow the machine is, instead of racing the job's end).

Run it as ``python -m examples.trainer --steps 200 --checkpoint-every 10``.

The checkpoint format carries its own SHA-256, so a torn file is detected at load rather than
silently resumed from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time

MAGIC = b"RUNNERCKPT1\n"


class CorruptCheckpoint(Exception):
    pass


def encode_checkpoint(state: dict, padding: int = 0) -> bytes:
    payload = json.dumps(state, sort_keys=True).encode() + b"\n" + os.urandom(padding)
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode_checkpoint(data: bytes) -> dict:
    if not data.startswith(MAGIC):
        raise CorruptCheckpoint("bad magic")
    rest = data[len(MAGIC):]
    digest, _, payload = rest.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpoint(f"checksum mismatch ({len(data)} bytes)")
    return json.loads(payload.split(b"\n", 1)[0])


def save_checkpoint(path: str, state: dict, padding: int = 0) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(encode_checkpoint(state, padding))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return decode_checkpoint(f.read())
    except FileNotFoundError:
        return None


def do_work(kind: str, seconds: float) -> None:
    if kind == "sleep":
        time.sleep(seconds)
        return
    # A fixed amount of arithmetic (about `seconds` on an idle core), so contention shows up
    # as longer steps.
    x = 0.0
    for i in range(int(seconds * 8_000_000)):
        x += i * 0.5


def hold(stop: dict, seconds: float) -> None:
    """Wait until SIGTERM sets ``stop['flag']`` (the loop then checkpoints and exits), or ``seconds``."""
    deadline = time.monotonic() + seconds
    while not stop["flag"] and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--step-time", type=float, default=0.1, help="seconds of 'work' per step")
    p.add_argument("--checkpoint-bytes", type=int, default=0, help="padding to make checkpoints big")
    p.add_argument("--fail-at", type=int, default=-1, help="exit 3 at this step (to test failures)")
    p.add_argument("--work", choices=["sleep", "cpu"], default="sleep",
                   help="how a step spends --step-time: sleeping, or computing (for benchmarks)")
    p.add_argument("--hold-at", type=int, action="append", default=[], metavar="STEP",
                   help="on reaching STEP (when this start began below it), wait for SIGTERM before "
                        "going on, up to --hold-for seconds; repeatable")
    p.add_argument("--hold-for", type=float, default=600.0, help="the longest a --hold-at waits")
    args = p.parse_args(argv)

    ckpt_dir = os.environ.get("RUNNER_CHECKPOINT_DIR", "./checkpoints")
    results_dir = os.environ.get("RUNNER_RESULTS_DIR", "./results")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, "last.pt")

    state = load_checkpoint(path) or {"step": 0, "weight": 0.0, "starts": []}
    start = state["step"]
    state["starts"].append(start)
    print(f"trainer: starting at step {start} of {args.steps}", flush=True)

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))

    rng = random.Random(start)
    saving = 0.0  # of the loop's time, how much went to writing checkpoints (benchmarks split it)
    loop_start = time.perf_counter()
    while state["step"] < args.steps:
        if stop["flag"]:
            save_checkpoint(path, state, args.checkpoint_bytes)
            print(f"trainer: SIGTERM at step {state['step']}; checkpointed, exiting", flush=True)
            return 143
        if state["step"] == args.fail_at:
            print(f"trainer: failing on purpose at step {state['step']}", flush=True)
            return 3
        do_work(args.work, args.step_time)
        state["weight"] += rng.uniform(-1, 1) / (1 + state["step"])
        state["step"] += 1
        print(f"RUNNER_PROGRESS step={state['step']} total={args.steps}", flush=True)
        if state["step"] % args.checkpoint_every == 0:
            saved_from = time.perf_counter()
            save_checkpoint(path, state, args.checkpoint_bytes)
            saving += time.perf_counter() - saved_from
        if state["step"] in args.hold_at and start < state["step"]:
            hold(stop, args.hold_for)

    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump({"steps": state["step"], "starts": state["starts"], "weight": state["weight"],
                   "loop_seconds": time.perf_counter() - loop_start, "checkpoint_seconds": saving}, f)
    print(f"trainer: done at step {state['step']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
