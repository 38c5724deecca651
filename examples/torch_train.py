"""A small PyTorch training job that survives preemptions and resumes bit-exact.

Copy it as the starting point of your own job. It trains a small CNN on synthetic data (no
download) on CPU or CUDA, alone or under ``torchrun``, and follows the runner's contract through
``entrypoint.job``:

- ``last.pt`` holds everything the next step depends on: model, optimizer, LR scheduler, AMP
  grad scaler (CUDA), every RNG state (Python, torch CPU, CUDA; one set per rank) and the
  data-loader position (epoch, batch). Resuming from it gives the same weights, bit for bit,
  as never having stopped.
- It is written with ``torch.save`` to ``last.pt.tmp``, flushed, then renamed, every
  ``--checkpoint-every`` steps and when SIGTERM (the preemption notice) arrives; after that
  save the job exits 143, well within the grace period.
- It resumes when ``RUNNER_RESUME_FROM`` is set (the agent restored a checkpoint).
- Under torchrun every rank gets SIGTERM; the ranks agree on the step to stop at (an
  all-reduce of the flag each step), rank 0 saves, and every rank resumes at that step.

    python3 -m examples.torch_train --steps 300
    torchrun --standalone --local-addr 127.0.0.1 --nproc-per-node 2 -m examples.torch_train --steps 300

(``--local-addr 127.0.0.1``: torchrun advertises the hostname otherwise, which a container with
no network, as on the local backend, cannot resolve.)

At the end, rank 0 writes ``$RUNNER_RESULTS_DIR/final.pt`` (model and optimizer state) and
``summary.json``; ``python3 -m examples.torch_equal A B`` compares two final.pt files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from entrypoint.job import Checkpoint, PreemptionNotice, report_progress, results_dir

IMAGE_SIZE = 16
CLASSES = 10


class SmallCNN(nn.Module):
    """Conv, batch norm (buffers to restore too) and dropout (RNG to restore too)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(32 * (IMAGE_SIZE // 2) ** 2, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def synthetic_data(n: int, seed: int) -> TensorDataset:
    """Images and labels from a fixed random "teacher": learnable, identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    teacher = torch.randn(IMAGE_SIZE * IMAGE_SIZE, CLASSES, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return TensorDataset(x, y)


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch), starting at any batch.

    That is what makes the data-loader position two integers: on resume, the same permutation is
    drawn again and the batches already trained on are skipped without being loaded. Each rank
    takes its own slice of every global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch


def rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split across ranks")
    p.add_argument("--dataset-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (and what CUDA needs for it)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="seconds to sleep after each step: gives this toy a real model's pace, so "
                        "that a demo or test can preempt it mid-run (changes no number)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deterministic:
        # cuBLAS needs this before its first handle for deterministic results (CUDA docs).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if args.threads:
        torch.set_num_threads(args.threads)

    notice = PreemptionNotice.install()  # before anything slow, so an early SIGTERM is not lost
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch_train: --device cuda, but torch sees no GPU (is the driver mounted and "
              "LD_LIBRARY_PATH set? see scripts/gpu-check.sh)", file=sys.stderr)
        return 2
    if distributed:
        if os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE"):
            # Every rank on this machine: talk over loopback. Gloo otherwise looks for the
            # interface of the hostname, which a container without a network (the local
            # backend's) cannot resolve.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    def say(msg: str) -> None:
        # One write per line: ranks share the job's output, and print() writes the text and its
        # newline separately when stdout is unbuffered, so two ranks' lines could run together.
        sys.stdout.write(f"torch_train[rank {rank}]: {msg}\n")
        sys.stdout.flush()

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = SmallCNN().to(device)
    train_model: nn.Module = (
        nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if want_cuda else None)
        if distributed else model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, args.steps // 4), gamma=0.5)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    # Each rank draws its own dropout masks and augmentations.
    torch.manual_seed(args.seed + 1 + rank)
    random.seed(args.seed + 1 + rank)

    data = synthetic_data(args.dataset_size, args.seed)
    sampler = ResumableBatchSampler(len(data), args.batch_size, args.seed, rank, world)
    # A generator of its own, so that creating an iterator (which draws a seed for workers)
    # never advances the global RNG: a resumed run creates its iterators at other moments.
    loader = DataLoader(data, batch_sampler=sampler, generator=torch.Generator().manual_seed(args.seed))

    ckpt = Checkpoint("last.pt")
    step, starts = 0, []
    saved = ckpt.load(torch.load, map_location="cpu", weights_only=True)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        step, starts = saved["step"], list(saved["starts"])
        sampler.epoch, sampler.start_batch = saved["position"]["epoch"], saved["position"]["batch"]
        if len(saved["rng"]) != world:
            say(f"checkpoint has RNG states for {len(saved['rng'])} ranks, this run has {world}; "
                "continuing, but not bit-exact")
        set_rng_state(saved["rng"][rank % len(saved["rng"])], device)
        say(f"resuming at step {step} (epoch {sampler.epoch}, batch {sampler.start_batch})")
    else:
        say(f"starting at step 0 of {args.steps} on {device} ({world} rank(s))")
    starts.append(step)

    def save() -> None:
        """Every rank hands its RNG state to rank 0, which writes last.pt atomically."""
        rngs = [rng_state(device)]
        if distributed:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state(device))
        if rank == 0:
            ckpt.save({
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "starts": starts,
                "position": {"epoch": sampler.epoch, "batch": sampler.start_batch},
                "rng": rngs,
            }, torch.save)
        if distributed:
            dist.barrier()  # no rank exits before last.pt is complete

    loss_fn = nn.CrossEntropyLoss()
    loss: torch.Tensor | None = None  # stays None when resuming from the final step's checkpoint
    model.train()
    while step < args.steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if random.random() < 0.5:  # a random augmentation, so that Python's RNG matters too
                x = x.flip(3)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = loss_fn(train_model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            sampler.start_batch += 1
            if rank == 0:
                report_progress(step, args.steps, loss=f"{loss.item():.4f}")
            if args.step_delay:
                time.sleep(args.step_delay)

            stop = notice.requested
            if distributed:  # stop together: the first rank to hear SIGTERM decides the step
                flag = torch.tensor([int(stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop or step % args.checkpoint_every == 0 or step == args.steps:
                save()
            if stop:
                heard = "SIGTERM received" if notice.requested else "no SIGTERM here yet"
                say(f"stopping at step {step} ({heard}); checkpointed by rank 0, exiting")
                if distributed:
                    dist.destroy_process_group()
                return 143
            if step >= args.steps:
                break
        else:
            sampler.epoch, sampler.start_batch = sampler.epoch + 1, 0

    if rank == 0:
        out = results_dir()
        os.makedirs(out, exist_ok=True)
        Checkpoint("final.pt", out).save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, torch.save)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump({"steps": step, "starts": starts, "world_size": world,
                       "device": str(device),
                       "final_loss": None if loss is None else loss.item()}, f)
    say(f"done at step {step} (started at {starts})")
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
