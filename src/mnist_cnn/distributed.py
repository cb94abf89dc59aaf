"""Data-parallel training across processes with torch.distributed, launched by `torchrun`.

    torchrun --nproc_per_node=2 -m mnist_cnn train --epochs 2                 # one machine, 2 processes
    torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29500 -m mnist_cnn train --epochs 2         # on each of 2 machines

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT) in each process; when they are present
`train` joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) and wraps the model in
DistributedDataParallel. Without them nothing here runs and training is the plain single-process loop.

How an epoch is split. Every rank draws the same permutation (the generator is seeded identically on all
ranks; with no --seed, rank 0 picks one and broadcasts it). The permutation is cut into global batches of
--batch-size, exactly as a single process would; global batch k is then split into WORLD_SIZE contiguous
pieces and rank r trains on piece r. So --batch-size stays the global batch (per-rank batch = global / world,
it must divide evenly), the ranks see disjoint samples, and together they see the whole epoch. The last,
short global batch is split as evenly as possible (torch.tensor_split); if it has fewer samples than there are
ranks it is dropped (at most WORLD_SIZE - 1 images an epoch), because every rank must take the same number
of optimizer steps for DDP's gradient all-reduce.

Metrics are all-reduced (sums of loss and counts), so every rank holds the same numbers; only rank 0 prints
and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mnist_cnn.errors import ConfigError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1 or dist.is_initialized()


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))


def env_world() -> World:
    """This process's place, from torchrun's environment (World() when not launched by torchrun)."""
    if not launched_by_torchrun():
        return World()
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def setup(device: torch.device) -> World:
    """Join the process group if torchrun launched us; returns World() for a single process."""
    world = env_world()
    if not launched_by_torchrun() or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=timedelta(minutes=10))
    return world


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank; CPU stays CPU."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# splitting an epoch


def per_rank_batch(batch_size: int, world: World) -> int:
    if batch_size % world.size:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must divide evenly among "
                          f"{world.size} processes (per-process batch = global / {world.size}); "
                          f"try {max(world.size, batch_size // world.size * world.size)}")
    return batch_size // world.size


def shard_batches(perm: torch.Tensor, batch_size: int, world: World) -> list[torch.Tensor]:
    """This rank's index tensors, one per optimizer step: piece `rank` of each global batch of the permutation."""
    batches = perm.split(batch_size)  # global batches, as a single process would take them
    if world.size == 1:
        return list(batches)
    pieces = [b.tensor_split(world.size)[world.rank] for b in batches]
    if batches and batches[-1].numel() < world.size:  # some rank would get nothing: drop the tail for all
        pieces.pop()
    return pieces


# -----------------------------------------------------------------------------
# collectives (no-ops in a single process)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each number over all ranks; every rank gets the totals."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (used so that all ranks stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def gather_objects(obj, world: World) -> list:
    """[obj from rank 0, obj from rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
