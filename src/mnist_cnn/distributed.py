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

Clean exit. torch._dynamo, when first imported after the process group exists (torch.optim and
DistributedDataParallel import it lazily), keeps the group alive after destroy_process_group(): its gloo
threads (gloo_tcp_loop, 2 pt_gloo_runloop) then still run while the interpreter shuts down, and a rank could
abort there ("terminate called without an active exception", SIGABRT) after the run had saved everything.
So setup() imports torch._dynamo before joining the group, and teardown() waits for every rank at a barrier,
destroys the group and leaves no process-group thread running (tests/test_scale.py checks the thread list
each rank writes after teardown).

Listening. torchrun's agent hosts the rendezvous store; each worker opens gloo sockets. The agent (torch 2.14)
binds its stores on all interfaces whatever the endpoint (measured with ss; torchrun has no bind option), so on
an untrusted network firewall its port. The workers follow the rendezvous address: when it is a loopback one
(`--standalone`, `--rdzv-endpoint 127.0.0.1:PORT`, `--master-addr 127.0.0.1`), setup() binds gloo to the
loopback interface (GLOO_SOCKET_IFNAME=lo, unless you set it). Across machines give an explicit address on a
trusted network (docs/scaling.md). Ranks exchange only tensors (RNG states as uint8 tensors, never pickles).

Failures. Every collective (and joining the group) gives up after MNIST_CNN_DIST_TIMEOUT seconds (default
below), so a rank whose peer died fails instead of hanging. Under `torchrun --max-restarts N` the restarted
workers continue from the state file beside --out (resume.after_restart); the agent's store outlives a
restart, so each attempt keeps its group's keys under its own prefix (a dead rank's address is never read).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import threading
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


TIMEOUT_S = 300  # joining the group and every collective; MNIST_CNN_DIST_TIMEOUT overrides (seconds)
LOOPBACK = ("127.", "localhost", "::1")


def timeout() -> timedelta:
    raw = os.environ.get("MNIST_CNN_DIST_TIMEOUT", str(TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise ConfigError(f"MNIST_CNN_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def setup(device: torch.device) -> World:
    """Join the process group if torchrun launched us; returns World() for a single process."""
    world = env_world()
    if not launched_by_torchrun() or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    importlib.import_module("torch._dynamo")  # before the group exists: see "Clean exit" above

    if backend == "gloo" and os.environ.get("MASTER_ADDR", "").startswith(LOOPBACK) and has_interface("lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # a loopback rendezvous: gloo stays on loopback too
    # torchrun's store outlives a restart of the workers: keys of the group of an earlier attempt (a dead rank's
    # address) must not be read by this one, so each attempt keeps its keys under its own prefix
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout()))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"mnist-cnn/attempt-{attempt}", store), rank=rank,
                            world_size=size, timeout=timeout())
    return world


def has_interface(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank; CPU stays CPU."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


def teardown(clean: bool = True) -> None:
    """Leave the group. After a clean run wait for every rank first (nobody exits while a peer still talks to it);
    after an error (a peer may be dead) destroy at once. Then no process-group thread is left running."""
    if dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()
    debug_dir = os.environ.get("MNIST_CNN_DEBUG_INDICES")  # tests: which threads outlived the group
    if debug_dir and launched_by_torchrun():
        with open(os.path.join(debug_dir, f"rank{env_world().rank}.threads.txt"), "w") as f:
            f.write("\n".join(sorted(os_threads())) + "\n")


def os_threads() -> list[str]:
    """Names of this process's OS threads (gloo's are gloo_tcp_loop and pt_gloo_runloop); Linux only."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return [t.name for t in threading.enumerate()]
    names = []
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return names


def wrap(model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> torch.nn.Module:
    """Under torchrun: the model in DistributedDataParallel (rank 0's weights everywhere, gradients averaged
    during backward). A single process gets the model back unchanged."""
    if not dist.is_initialized():
        return model
    kill_at = os.environ.get("MNIST_CNN_TEST_KILL_AT")  # tests: "RANK:STEP" (see kill_hook)
    if kill_at:
        opt.register_step_pre_hook(kill_hook(kill_at))
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def kill_hook(spec: str):
    """Tests of elastic recovery: rank RANK SIGKILLs itself just before its STEPth optimizer step (counting from 1
    in this process; epoch e step s of a fresh run is (e - 1) * steps_per_epoch + s), on the first attempt only."""
    rank, step = (int(v) for v in spec.split(":"))
    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if (count[0] == step and env_world().rank == rank
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)  #: no handler, no cleanup, like an OOM kill

    return hook


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


def gather_states(state: torch.Tensor, world: World, device: torch.device) -> list[torch.Tensor]:
    """[state of rank 0, state of rank 1, ...] on every rank, for 1-D uint8 tensors (RNG states) of any length.
    Tensors only: nothing is unpickled from a peer."""
    if not dist.is_initialized():
        return [state]
    n = torch.tensor([state.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world.size)]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:state.numel()] = state.to(device)
    out = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(out, padded)
    return [t[:int(s.item())].cpu() for t, s in zip(out, sizes, strict=True)]
