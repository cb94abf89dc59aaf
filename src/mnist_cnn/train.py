"""Training: the tutorial's recipe (Adam 1e-3, batch 64, cross-entropy, 5 epochs) on a faster engine.

The engine differs from the tutorial's DataLoader pipeline in how data moves, not in what is learned:
  - the whole dataset is one uint8 tensor on the training device; a batch is an index into it, normalized
    on the fly ((x/255 - 0.5) / 0.5, exactly ToTensor + Normalize((0.5,), (0.5,))). No per-sample PIL work.
  - bf16 autocast and channels_last where the hardware has native bf16 (--precision auto).
  - on the CPU, conv1 + max-pool + ReLU run as one C loop (fused.py); Adam is fused.
  - the running loss is summed on the device; the host syncs once per epoch, not once per step.

Measured on this 2-core AMD EPYC (avx512_bf16), torch 2.14.1, batch 64, n=1 run each, 200 steps:
fp32 4,100 img/s; bf16 + channels_last 7,990 img/s (7.5 s/epoch); a whole step with fused Adam and fused.c,
best of 12 x 60, 4.93 ms (13,000 img/s). See docs/performance.md for whole runs.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache, partial

import torch
import torch.nn.functional as F

from mnist_cnn import calibrate, distributed, negatives, resume
from mnist_cnn.augment import PHOTOGRAPHED, printed_digits
from mnist_cnn.augment import augment as random_distortion
from mnist_cnn.augment import light as light_distortion
from mnist_cnn.config import AUGMENT, RECIPES, TrainConfig, apply_recipe  # noqa: F401  (importers)
from mnist_cnn.data import DIGITS, MEAN, STD, Data, load_dataset, normalize, pixel_stats
from mnist_cnn.errors import CheckpointError, ConfigError, MnistCnnError
from mnist_cnn.evaluate import evaluate, logits_of
from mnist_cnn.model import ModelConfig, Net
from mnist_cnn.runlog import RunLog

HOLDOUT = 5_000  # --augment on digits: the last training images, held out to fit the temperature and threshold
OUTLIER_POOL = 3_000  # --augment on digits: non-digits drawn once per run (~15 ms each), distorted in every batch
OE_WEIGHT = 0.5  # weight of the outlier-exposure term, as in Hendrycks et al. (2019)

# -----------------------------------------------------------------------------
# device and precision


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available here (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple's MPS backend is not available here (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be auto, cpu, cuda or mps, got {name}")
    return torch.device(name)


@cache
def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: bf16 matmuls run in hardware. Elsewhere bf16 autocast is emulated and slower."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision}")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at import (the physical cores), before we change it


def pick_threads(threads: int = 0) -> int:
    """CPU threads for intra-op parallelism. 0 = auto: torch's default (the physical cores), shared among the
    processes torchrun starts on this node. Never derived from the machine's load, so a run is repeatable.

    On a quiet 2-core machine 2 threads are ~1.7x faster than 1. OpenMP threads spin at every barrier and this
    net runs ~40 small ops per step, so on a machine already busy with other work a thread that shares its core
    stalls the whole step: with a load average of ~7 here, 2 threads trained at 296 img/s and 1 thread at
    1,812 img/s (batch 64, bf16; n=1 each). There, pass `--threads 1`.
    """
    if threads > 0:
        return threads
    return max(1, DEFAULT_THREADS // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


# -----------------------------------------------------------------------------
# what a run is made of: optimizer and schedule, the state its steps share, where it stands


def make_optimizer(cfg: TrainConfig, model: Net) -> torch.optim.Optimizer:
    # Adam fused: the whole update in one kernel per parameter group (CPU, CUDA, MPS) instead of foreach's ~10
    # ops over all tensors. Batch 64 bf16 train step, 2 threads, best of 3 x 300: 9.2 ms foreach, 7.9 ms fused.
    wd = cfg.weight_decay
    if cfg.optimizer == "adam":
        adam = torch.optim.AdamW if wd else torch.optim.Adam  # AdamW(weight_decay=0) is Adam; Adam stays the default
        try:
            return adam(model.parameters(), lr=cfg.lr, weight_decay=wd, fused=True)
        except RuntimeError:  # a device without a fused kernel
            return adam(model.parameters(), lr=cfg.lr, weight_decay=wd, foreach=True)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=wd, foreach=True)


def make_scheduler(cfg: TrainConfig, opt, steps_per_epoch: int):
    """None for the tutorial's constant rate; OneCycle: 25% warm-up from lr/25 to lr, cosine down to lr/1e4."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant" or total < 4:  # OneCycle needs a step in each phase (tiny runs: constant)
        return None
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                               pct_start=max(0.25, 2 / total))


NO_CARRY = {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}  # nothing of an interrupted epoch done yet


@dataclass
class Run:
    """What the steps of one run share; built once by `setup`."""

    cfg: TrainConfig
    device: torch.device
    world: distributed.World
    dtype: torch.dtype
    data: Data  # on the device, --train-subset applied
    printed: tuple | None  # --augment: printed digits, (80, 1, 28, 28) normalized and (80,) labels, on the device
    model: Net  # the plain Net: saved and evaluated
    opt: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    criterion: Callable  # (B, 10) logits, (B,) labels -> mean loss
    generator: torch.Generator  # the permutation stream, the same on every rank
    augment_generator: torch.Generator | None  # --augment's draws, one stream per rank
    per_rank: int  # images per step per process
    steps_per_epoch: int
    trained: torch.nn.Module | None = None  # what the steps call: the model, compiled and/or in DDP (for_training)
    distort: Callable = random_distortion  # --augment's distortion (--augment-style)
    runlog: RunLog | None = None  # --log-dir: TensorBoard event files (rank 0)
    pause_at: tuple[int, int, str] | None = None  # tests only: (epoch, step, marker file), see pause_for_test
    outliers: torch.Tensor | None = None  # --augment on digits: non-digits (Q, 1, 28, 28) normalized, on the device
    holdout: tuple | None = None  # --augment on digits: held-out uint8 digits, labels and non-digits (calibrate.py)


@dataclass
class Progress:
    """Where a run stands: the metrics of the epochs done, where to start, and the part of an interrupted epoch
    already done (its loss sum, images and seconds)."""

    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    start_step: int = 0
    carry: dict = field(default_factory=lambda: dict(NO_CARRY))


@dataclass
class Epoch:
    """One epoch: its order, where it starts, and the target checks made in it."""

    number: int
    batches: list[torch.Tensor]  # this rank's index tensors, one per step of the whole epoch
    skip: int  # steps done before a resume
    gen_state: torch.Tensor  # the permutation generator before this epoch: saved if it is interrupted
    checks: list[tuple[int, dict]] = field(default_factory=list)  # (images seen, evaluation) of in-epoch checks


# -----------------------------------------------------------------------------
# setup: seeds, data, model, optimizer; a resumed run's state


def model_for(cfg: TrainConfig, data: Data) -> ModelConfig:
    """cfg.model with the dataset's class count and the input normalisation cfg.normalization asks for."""
    own = cfg.normalization == "dataset" or (cfg.normalization == "auto" and data.name != "mnist")
    mean, std = pixel_stats(data.train_images) if own else (MEAN, STD)
    return replace(cfg.model, num_classes=len(data.classes), mean=mean, std=std)


def setup(cfg: TrainConfig, data: Data | None, device, world: distributed.World, criterion) -> Run:
    dtype = pick_dtype(cfg.precision, device)
    # one seed on every rank, so all ranks draw the same permutation (rank 0 picks it when none is given)
    seed = cfg.seed if cfg.seed is not None else distributed.broadcast_int(torch.seed() % 2**62, device)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + world.rank)  # dropout masks differ between ranks; rank 0's init is used
    generator = torch.Generator().manual_seed(seed)
    # augmentation draws per image, so ranks with different batch sizes would draw differently: its own generator,
    # one per rank, keeps the permutation generator in step on all ranks
    augment_generator = torch.Generator().manual_seed(seed + 7919 * (world.rank + 1)) if cfg.augment else None
    data = data or load_dataset(cfg.dataset, cfg.data_dir, quiet=cfg.quiet or not world.main)
    cfg = replace(cfg, model=model_for(cfg, data))
    data, printed = prepare_data(cfg, data, world, device)
    data, outliers, holdout = trust_material(cfg, data, seed, device)
    steps_per_epoch = len(distributed.shard_batches(torch.arange(data.train_images.shape[0]), cfg.batch_size, world))
    model = Net(cfg.model).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    if criterion is None and outliers is not None:
        def criterion(logits, y):  # outlier exposure: a non-digit (label -1) is pulled towards the uniform softmax
            ce = F.cross_entropy(logits, y.clamp(min=0), label_smoothing=cfg.label_smoothing, reduction="none")
            uniform = -F.log_softmax(logits.float(), dim=1).mean(1)  # (B,) cross-entropy to the uniform
            return torch.where(y >= 0, ce, OE_WEIGHT * uniform).mean()
    if criterion is None:
        def criterion(logits, y):  # label smoothing 0 is the tutorial's plain cross-entropy
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    distort = (random_distortion if cfg.augment_style == "handwriting"
               else partial(light_distortion, photographed=data.name in PHOTOGRAPHED))
    return Run(cfg, device, world, dtype, data, printed, model, opt, make_scheduler(cfg, opt, steps_per_epoch),
               criterion, generator, augment_generator, distributed.per_rank_batch(cfg.batch_size, world),
               steps_per_epoch, pause_at=pause_point_for_tests(), distort=distort,
               runlog=RunLog(cfg.log_dir, data.classes) if cfg.log_dir and world.main else None,
               outliers=outliers, holdout=holdout)


def trust_material(cfg: TrainConfig, data: Data, seed: int, device) -> tuple[Data, torch.Tensor | None, tuple | None]:
    """--augment on digits: the last HOLDOUT training images held out (never trained on), a pool of non-digits to
    train towards a flat softmax (negatives.py), and held-out non-digits from another seed, to calibrate the
    temperature and the "not a digit" threshold after every epoch (calibrate.py). Else (data, None, None)."""
    if not (cfg.augment and cfg.augment_style == "handwriting" and data.classes == DIGITS):
        return data, None, None
    h = min(HOLDOUT, data.train_images.shape[0] // 10)
    kept = replace(data, train_images=data.train_images[:-h], train_labels=data.train_labels[:-h])
    pool = min(OUTLIER_POOL, max(64, kept.train_images.shape[0] // 16))
    outliers = normalize(torch.from_numpy(negatives.make(pool, seed)).to(device), cfg.model.mean, cfg.model.std)
    others = torch.from_numpy(negatives.make(max(64, pool // 6), seed + 1)).to(device)
    return kept, outliers.float(), (data.train_images[-h:], data.train_labels[-h:], others)


def prepare_data(cfg: TrainConfig, data: Data, world, device) -> tuple[Data, tuple | None]:
    """The dataset cut to --train-subset, on the device; --augment's printed digits (digit datasets only)."""
    if cfg.train_subset is not None:
        if cfg.train_subset > data.train_images.shape[0]:
            raise ConfigError(f"--train-subset {cfg.train_subset} is larger than the training set "
                              f"({data.train_images.shape[0]} images)")
        data = replace(data, train_images=data.train_images[:cfg.train_subset],
                       train_labels=data.train_labels[:cfg.train_subset])
    data = data.to(device)
    printed = None
    if cfg.augment and cfg.augment_style == "handwriting" and data.classes == DIGITS:
        images, labels = printed_digits()  # 80 printed digits (augment.py), normalized like the training images
        printed = (normalize(images.to(device), cfg.model.mean, cfg.model.std).float(), labels.to(device))
    n = data.train_images.shape[0]
    if cfg.batch_size > n:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set ({n} images)")
    return data, printed


def restore(run: Run, state: dict | None) -> Progress:
    """A resumed run's weights, optimizer moments, schedule, RNG streams and position; a new run starts at 1."""
    if state is None:
        return Progress()
    where = resume.state_path(run.cfg.out)
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(f"{where}: weights do not fit the architecture {run.cfg.model.to_dict()}") from None
    try:
        run.opt.load_state_dict(state["optimizer"])  # after the schedule was made: the saved learning rate stays
    except (ValueError, KeyError, TypeError, RuntimeError):
        raise CheckpointError(f"{where}: optimizer state does not fit") from None
    if run.scheduler is not None and isinstance(state.get("scheduler"), dict):
        run.scheduler.load_state_dict(state["scheduler"])
    rank = run.world.rank
    run.generator.set_state(state["generator"])
    if state["torch_rng"]:
        torch.set_rng_state(state["torch_rng"][rank % len(state["torch_rng"])])
    augment_rngs = state.get("augment_rng") or []
    if run.augment_generator is not None and augment_rngs:
        run.augment_generator.set_state(augment_rngs[rank % len(augment_rngs)])
    if run.device.type == "cuda" and isinstance(state.get("cuda_rng"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    progress = Progress(list(state["history"]), state["epoch"] + 1, state["step"],
                        {k: state["partial"].get(k, v) for k, v in NO_CARRY.items()})
    if progress.start_epoch > run.cfg.epochs:
        raise ConfigError(f"{where}: this run already finished its {run.cfg.epochs} epochs")
    return progress


def for_training(run: Run) -> torch.nn.Module:
    """The module the steps call: the same parameters as run.model, compiled (--compile), in DDP under torchrun."""
    trained = torch.compile(run.model) if run.cfg.compile else run.model
    return distributed.wrap(trained, run.opt, run.device)


# -----------------------------------------------------------------------------
# one epoch: its order, its steps, the checks between them


def new_epoch(run: Run, number: int, progress: Progress) -> Epoch:
    gen_state = run.generator.get_state()  # saved if this epoch is interrupted: the same permutation again
    perm = torch.randperm(run.data.train_images.shape[0], generator=run.generator)
    batches = distributed.shard_batches(perm, run.cfg.batch_size, run.world)
    return Epoch(number, batches, progress.start_step if number == progress.start_epoch else 0, gen_state)


def gathered(images, labels, order):
    """The images of one epoch (this rank's part of it) in training order, still uint8: (N, 28, 28) and (N,)
    labels. One gather per epoch; a batch is then a slice (a view) normalized as it is drawn. Measured per
    epoch on this 2-core CPU: gather 34 ms + 938 batch normalizes 25 ms, against 34 + 71 ms normalizing the
    whole epoch at once (+33 ms casting it to bf16, +10 ms casting the batches back for fused.c)."""
    order = order.to(images.device, non_blocking=True)
    return images[order], labels[order]


def train_epoch(run: Run, epoch: Epoch, flag: resume.StopFlag) -> tuple[torch.Tensor, int, int]:
    """Train on the epoch's batches from epoch.skip on; returns (loss sum as a 0-d tensor, images, steps).

    The loss sum stays on the device (no host sync per step). Before each step a signal may end the epoch early
    (the caller saves the position); after each step a due target check may end it (the target was reached).
    """
    from tqdm import tqdm

    batches = epoch.batches[epoch.skip:]
    order = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
    xs, ys = gathered(run.data.train_images, run.data.train_labels, order)
    loss_sum, seen = torch.zeros((), device=run.device), 0
    run.trained.train()
    with tqdm(total=sum(b.numel() for b in epoch.batches), initial=sum(b.numel() for b in epoch.batches[:epoch.skip]),
              desc=f"epoch {epoch.number}/{run.cfg.epochs}", unit="img", leave=False,
              disable=run.cfg.quiet or not run.world.main or not sys.stderr.isatty()) as bar:
        for step, idx in enumerate(batches):
            if stop_requested(run, epoch, step, flag):
                return loss_sum, seen, step
            x = normalize(xs[seen:seen + idx.numel()], run.cfg.model.mean, run.cfg.model.std)  # (B, 1, 28, 28)
            y = ys[seen:seen + idx.numel()]  # (B,)
            loss, n = train_step(run, x, y)
            loss_sum += loss.detach() * n
            seen += n
            bar.update(n)
            if target_check(run, epoch, seen):
                return loss_sum, seen, step + 1
    return loss_sum, seen, len(batches)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One optimizer step on (B, 1, 28, 28) normalized images and (B,) labels; returns (mean loss, B). With --augment
    the batch is randomly distorted first (augment.py, --augment-style) and a share of it swapped for printed digits."""
    if run.augment_generator is not None:
        more = {"outliers": run.outliers} if run.outliers is not None else {}  # non-digits, label -1
        x, y = run.distort(x, y, run.augment_generator, run.printed, norm=(run.cfg.model.mean, run.cfg.model.std),
                           **more)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
        loss = run.criterion(run.trained(x), y)
    run.opt.zero_grad(set_to_none=True)  # gradients accumulate unless cleared; weights are untouched
    loss.backward()
    run.opt.step()
    if run.scheduler is not None:
        run.scheduler.step()
    return loss, y.shape[0]


def stop_requested(run: Run, epoch: Epoch, step: int, flag: resume.StopFlag) -> bool:
    """Asked before step `step` (counted from epoch.skip): did a SIGINT or SIGTERM arrive? Under torchrun every 16
    steps, and all ranks stop together."""
    if run.pause_at is not None and run.pause_at[:2] == (epoch.number, epoch.skip + step):
        pause_for_test(run.pause_at[2], flag)
    if run.world.size == 1:
        return bool(flag.signum)
    return step % 16 == 0 and distributed.any_rank(bool(flag.signum), run.device)


def target_check(run: Run, epoch: Epoch, seen: int) -> bool:
    """With a target and --eval-every: every eval_every steps in the second half of the run, test the model;
    True when it reached the target (the same answer on all ranks)."""
    cfg = run.cfg
    if cfg.target_accuracy is None or not cfg.eval_every:
        return False
    step = (epoch.number - 1) * run.steps_per_epoch + epoch.skip + math.ceil(seen / run.per_rank)
    if step % cfg.eval_every or step < cfg.epochs * run.steps_per_epoch // 2:
        return False
    epoch.checks.append((seen, evaluate_shared(run)))
    run.trained.train()  # evaluate switched it to eval mode
    return reached(run, epoch.checks[-1][1])


def reached(run: Run, ev: dict) -> bool:
    return run.cfg.target_accuracy is not None and ev["accuracy"] >= run.cfg.target_accuracy / 100


def evaluate_shared(run: Run) -> dict:
    """Test loss and accuracy; under torchrun each rank scores a slice of the test set and the sums are reduced."""
    data, world = run.data, run.world
    if world.size == 1:
        ev = evaluate(run.model, data.test_images, data.test_labels, dtype=run.dtype)
        return {"loss": ev["loss"], "accuracy": ev["accuracy"]}
    ev = evaluate(run.model, data.test_images[world.rank::world.size], data.test_labels[world.rank::world.size],
                  dtype=run.dtype)
    loss_sum, correct, n = distributed.all_reduce_sum([ev["loss"] * ev["n"], round(ev["accuracy"] * ev["n"]),
                                                       ev["n"]], run.device)
    return {"loss": loss_sum / n, "accuracy": correct / n}


# -----------------------------------------------------------------------------
# after an epoch: its loss over all ranks, saving, stopping on a signal


def epoch_loss(run: Run, progress: Progress, loss_sum: torch.Tensor, seen: int) -> tuple[float, float, float]:
    """(loss sum, images, seconds before) of the whole epoch on all ranks, with the part done before an
    interruption (which is then used up). A non-finite loss stops the run: it diverged."""
    loss_sum, seen = distributed.all_reduce_sum([loss_sum.item(), seen], run.device)
    carry, progress.carry = progress.carry, dict(NO_CARRY)
    loss_sum, seen = loss_sum + carry["loss_sum"], seen + carry["seen"]
    if not math.isfinite(loss_sum / max(seen, 1)):
        epoch = len(progress.history) + 1
        last = f"; the last good checkpoint (epoch {epoch - 1}) is untouched" if run.cfg.save and epoch > 1 else ""
        raise MnistCnnError(f"epoch {epoch}: training loss became {loss_sum / max(seen, 1)} (diverged); "
                            f"try a lower --lr than {run.cfg.lr:g}{last}")
    return loss_sum, seen, carry["seconds"]


def save(run: Run, progress: Progress, epoch_done: int, step: int, gen_state: torch.Tensor, partial: dict):
    """After a finished epoch (step 0) the checkpoint and the resume state, inside one the resume state only.
    Every rank takes part (the RNG states are gathered); rank 0 writes, with cfg.save."""
    from mnist_cnn import checkpoint

    cfg, world = run.cfg, run.world
    rngs = distributed.gather_states(torch.get_rng_state(), world, run.device)  # collective: every rank takes part
    augment_rngs = (distributed.gather_states(run.augment_generator.get_state(), world, run.device) if cfg.augment
                    else [])
    if not (cfg.save and world.main):
        return
    if step == 0:  # a finished epoch: the plain checkpoint too, with its calibration if it has held-out data
        trust = {}
        if run.holdout is not None:
            images, labels, others = run.holdout
            trust = {"trust": calibrate.calibrate(logits_of(run.model, images).cpu(), labels.cpu(),
                                                  logits_of(run.model, others).cpu())}
        checkpoint.save(cfg.out, run.model, train_args(cfg), progress.history, dataset=run.data.describe(),
                        **trust)
    resume.save_state(resume.state_path(cfg.out), {
        "model": {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()},
        "model_config": cfg.model.to_dict(), "train_args": train_args(cfg),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "epoch": epoch_done, "step": step, "generator": gen_state, "torch_rng": rngs,
        "augment_rng": augment_rngs,
        **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),
        "history": progress.history, "partial": partial, "world_size": world.size,
    })


def save_and_stop(run: Run, progress: Progress, epoch: Epoch, steps: int, partial: dict, flag: resume.StopFlag):
    """A signal arrived mid-epoch: save the position (the epoch's generator state, its step, the part done) and
    raise resume.Interrupted with the line that says how to go on."""
    save(run, progress, epoch.number - 1, epoch.skip + steps, epoch.gen_state, partial)
    signum = flag.signum or signal.SIGTERM
    cfg = run.cfg
    saved = (f"saved {resume.state_path(cfg.out)}; resume with: {resume_command(cfg, run.world)}"
             if cfg.save else "nothing saved")
    raise resume.Interrupted(signum, f"interrupted by {signal.Signals(signum).name} in epoch {epoch.number}/"
                                     f"{cfg.epochs} at step {epoch.skip + steps}/{len(epoch.batches)}; {saved}")


RESUME_KEEPS = {"out", "data_dir", "device", "quiet", "resume", "save"}  # the only settings a resume may change


def resumed_config(cfg: TrainConfig, state: dict) -> TrainConfig:
    """The run's own settings from its state file; a flag given now that contradicts them is refused. The
    restored settings count as given, so the recipe does not overwrite them again."""
    saved, given, changes = state["train_args"], cfg.given_fields(), {}
    for f in fields(TrainConfig):
        if f.name in ("model", "given") or f.name in RESUME_KEEPS or f.name not in saved:
            continue
        mine = getattr(cfg, f.name)
        if f.name in given and mine != saved[f.name]:
            raise ConfigError(f"--{f.name.replace('_', '-')} {mine} differs from the run being resumed "
                              f"({saved[f.name]}); drop the flag, or start a new run without --resume")
        changes[f.name] = saved[f.name]
    try:
        model_cfg = ModelConfig.from_dict(state["model_config"])
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{resume.state_path(cfg.out)}: invalid model description ({e})") from None
    if any(getattr(cfg.model, f.name) != getattr(model_cfg, f.name) for f in fields(ModelConfig)
           if f"model.{f.name}" in given):
        raise ConfigError(f"the model flags differ from the run being resumed ({model_cfg.to_dict()}); drop them")
    return replace(cfg, **changes, model=model_cfg, given=frozenset(given | changes.keys()))


def resume_command(cfg: TrainConfig, world: distributed.World) -> str:
    launcher = f"torchrun --nproc_per_node={world.size} -m mnist_cnn" if world.size > 1 else "mnist-cnn"
    extra = f" --data-dir {shlex.quote(cfg.data_dir)}" if cfg.data_dir != "data" else ""
    return f"{launcher} train --resume --out {shlex.quote(cfg.out)}{extra}"


# -----------------------------------------------------------------------------
# hooks for tests (environment variables a user never sets)


def pause_point_for_tests() -> tuple[int, int, str] | None:
    """MNIST_CNN_PAUSE_AT="EPOCH:STEP:MARKER": before that step the run writes the file MARKER and waits for a
    signal, so a test's SIGINT or SIGKILL lands at a known step, not wherever the loop happens to be."""
    spec = os.environ.get("MNIST_CNN_PAUSE_AT")
    if not spec:
        return None
    epoch, step, marker = spec.split(":", 2)
    return int(epoch), int(step), marker


def pause_for_test(marker: str, flag: resume.StopFlag, patience: float = 120.0):
    """Write `marker`, then wait until a signal arrives (or `patience` seconds pass: then go on)."""
    with open(marker, "w") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + patience
    while not flag.signum and time.monotonic() < deadline:
        time.sleep(0.01)


def record_indices(run: Run, epoch: Epoch, steps: int):
    """MNIST_CNN_DEBUG_INDICES=FOLDER: each rank appends the indices it trained on (tests check the shards)."""
    folder = os.environ.get("MNIST_CNN_DEBUG_INDICES")
    if folder:
        with open(os.path.join(folder, f"rank{run.world.rank}.txt"), "a") as f:
            f.write(" ".join(map(str, torch.cat(epoch.batches[epoch.skip:epoch.skip + steps]).tolist())) + "\n")


# -----------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, data: Data | None = None, log=print, criterion=None) -> tuple[Net, list[dict]]:
    """Train a Net per cfg; returns the model (on the training device) and one metrics dict per epoch.

    Under torchrun this is one rank of a DDP run (distributed.py); with cfg.save it writes the checkpoint and
    the resume state after every epoch (resume.py); with cfg.resume it continues the run saved beside cfg.out.
    `criterion(logits (B, 10), labels (B,)) -> mean loss` replaces the cross-entropy (with cfg.label_smoothing).
    The process-wide settings it changes (threads, determinism, cuDNN, cuBLAS) are put back when it returns.
    """
    cfg.validate()
    cfg = resume.after_restart(cfg)  # torchrun restarted the workers after a failure: continue the saved run
    state = None
    if cfg.resume:
        state = resume.load_state(resume.state_path(cfg.out))
        cfg = resumed_config(cfg, state)
        cfg.validate()
    cfg = apply_recipe(cfg)
    if cfg.deterministic and cfg.seed is None:
        cfg = replace(cfg, seed=0)
    device = pick_device(cfg.device)
    world = distributed.setup(device)
    device = distributed.device_for(device, world)
    try:
        with engine_settings(cfg, device):
            return _train(cfg, state, data, device, world, log if world.main else (lambda *a, **k: None), criterion)
    finally:
        distributed.teardown(clean=sys.exc_info()[0] is None)  # after an error a peer may be gone: no barrier


@contextmanager
def engine_settings(cfg: TrainConfig, device: torch.device):
    """CPU threads, deterministic algorithms, cuDNN autotuning and cuBLAS' workspace for one run; put back after."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if device.type == "cpu":
            torch.set_num_threads(pick_threads(cfg.threads))
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' condition for determinism
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        yield
    finally:
        threads, deterministic, benchmark, cublas = before
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _train(cfg, state, data, device, world, log, criterion) -> tuple[Net, list[dict]]:
    # setup: seeds, data, model, optimizer and schedule; then a resumed run's weights, moments, RNGs and position
    run = setup(cfg, data, device, world, criterion)
    progress = restore(run, state)
    run.trained = for_training(run)
    flag = resume.StopFlag()
    with flag:  # from here on a Ctrl-C or SIGTERM ends training with a save
        log(start_line(run, progress, resuming=state is not None))
        for number in range(progress.start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            # train: the epoch's order, then its steps until the end, a signal, or the target
            epoch = new_epoch(run, number, progress)
            loss_sum, seen, steps = train_epoch(run, epoch, flag)
            record_indices(run, epoch, steps)
            loss_sum, seen, seconds_before = epoch_loss(run, progress, loss_sum, seen)
            stopped = bool(epoch.checks) and reached(run, epoch.checks[-1][1])  # the target, mid-epoch
            # a signal: save the position, say how to go on
            if epoch.skip + steps < len(epoch.batches) and not stopped:
                save_and_stop(run, progress, epoch, steps, flag=flag, partial={
                    "loss_sum": loss_sum, "seen": seen, "seconds": seconds_before + time.perf_counter() - t0})
            # evaluate and log
            train_seconds = seconds_before + time.perf_counter() - t0
            ev = epoch.checks[-1][1] if stopped else evaluate_shared(run)
            seconds = seconds_before + time.perf_counter() - t0
            progress.history.append({"epoch": number, "train_loss": loss_sum / max(seen, 1), "test_loss": ev["loss"],
                                     "test_accuracy": ev["accuracy"], "seconds": seconds,
                                     "train_seconds": train_seconds, "images": int(seen),
                                     "target_checks": len(epoch.checks)})
            part = f" (stopped after {int(seen):,} images)" if stopped else ""
            if run.runlog is not None:
                run.runlog.epoch(progress.history[-1], run.opt.param_groups[0]["lr"], run.model, run.data,
                                 last=number == cfg.epochs or reached(run, ev))
            log(f"epoch {number}/{cfg.epochs}  train loss {loss_sum / max(seen, 1):.4f}  test loss {ev['loss']:.4f}  "
                f"test accuracy {100 * ev['accuracy']:.2f}%  {seconds:.1f}s{part}")
            # save; stop once the target is reached
            save(run, progress, number, 0, run.generator.get_state(), dict(NO_CARRY))
            if reached(run, ev):
                log(f"reached the target {cfg.target_accuracy:g}% after "
                    f"{sum(h['seconds'] for h in progress.history):.1f}s")
                break
    if run.runlog is not None:
        run.runlog.close()
    return run.model, progress.history


def start_line(run: Run, progress: Progress, resuming: bool) -> str:
    """The run's first log line: device, precision, threads, the fused kernel, data, recipe, where it starts."""
    cfg, world = run.cfg, run.world
    where = f"{world.size} processes ({run.per_rank} per process), " if world.size > 1 else ""
    threads = ""
    if run.device.type == "cpu":
        threads = f", {torch.get_num_threads()} threads, fused conv1 kernel {run.model.fused_reason or 'on'}"
    return (f"training on {run.device} ({str(run.dtype).removeprefix('torch.')}{threads}), "
            f"{run.data.train_images.shape[0]:,} images, {where}"
            f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, {cfg.epochs} epochs"
            + (f", weight decay {cfg.weight_decay:g}" if cfg.weight_decay else "")
            + (f", recipe {cfg.recipe}" if cfg.recipe != "tutorial" else "")
            + (f", stop at {cfg.target_accuracy:g}%" if cfg.target_accuracy is not None else "")
            + (f", resuming at epoch {progress.start_epoch} step {progress.start_step}" if resuming else ""))


def train_args(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d.pop("model")
    d.pop("given")  # how the settings were chosen, not what they are
    return d
