"""`mnist-cnn bench`: the tutorial's pipeline and ours, side by side, in one sitting on one device.

Three sides, each in its own child process (so each has its own peak memory and thread settings), one after
the other, `--repeats` times in turn, every other time in reverse order (so `--repeats 2` is an ABBA
comparison); every figure is the median over the repeats:

  tutorial   the tutorial's pipeline (`perf/reference.py`), faithful: DataLoader, per-sample ToTensor +
             Normalize, batch 64, Adam 1e-3, fp32, test accuracy after every epoch.
  ours       the same recipe on our engine (`train --recipe tutorial`, the default).
  fast       ours, `train --recipe fast`: one epoch of one-cycle Adam with label smoothing, stopping when
             the test accuracy reaches the target (its checks' time counts).

For each side: seconds per epoch (training + the test pass, as the tutorial times it), total seconds, test
accuracy after each epoch, seconds until the test accuracy first reaches the target, training images/s,
inference images/s at a large batch, the latency of one image through the predict path (PNG decode,
preprocess, forward; ours is `Classifier.predict`, whose MNIST-style crop and centring the tutorial does not
have, so a second row times ours on the tutorial's short path: decode, normalize, forward), peak memory, and
ours/tutorial ratios. The final accuracy is also re-measured in fp32
so a bf16 evaluation can't flatter a recipe. Nothing here asserts a timing.

On a machine other processes are loading, wall seconds measure the share of the cores a side got as much
as its work; "total CPU s" (the child's CPU time over the span of "total s": training and the test passes;
the tutorial's DataLoader has no worker processes) is the steadier figure there when every side runs with one
thread (OMP_NUM_THREADS=1), and about threads x wall seconds on a quiet machine.

Peak memory is the child's peak RSS on CPU (data, model, framework: everything), torch.cuda's peak
allocation on CUDA. Setup (imports, reading MNIST) is outside the timed seconds on both sides.

`--dataset` benches on another dataset (ours: any, a folder included; the tutorial side reads it with
torchvision, which knows mnist and fashion-mnist, so for others leave it out with --sides ours fast).
`--log-dir DIR` also writes each side's figures as TensorBoard event files (runlog.write_bench).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mnist_cnn.config import BENCH_SIDES

SIDES = BENCH_SIDES  # their names live in config.py, where the CLI reads them without loading torch
QUICK_BATCHES = 20  # --quick: 20 batches of training per epoch and of testing, per side


# -----------------------------------------------------------------------------
# in the child: run one side, print one JSON object


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def inference_rate(model, images_u8, device, dtype, reference: bool, batch: int, seconds: float = 2.0) -> float:
    """Images/s classifying `batch` test images at a time, model already loaded, data already in memory.

    reference: the tutorial's way, fp32 under no_grad on normalized contiguous tensors; ours: `logits_of`
    (inference_mode, channels_last, bf16 where native).
    """
    import torch

    from mnist_cnn.data import normalize
    from mnist_cnn.evaluate import logits_of

    x_u8 = images_u8[:batch].to(device)
    if reference:
        x = normalize(x_u8)

        def once():
            with torch.no_grad():
                model(x).argmax(1)
    else:
        def once():
            logits_of(model, x_u8, batch_size=batch, dtype=dtype).argmax(1)
    once()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        once()
        n += 1
        if device.type == "cuda" and n % 10:  # sync every 10 batches only: keep the queue full
            continue
        _sync(device)
    _sync(device)
    return n * x_u8.shape[0] / (time.perf_counter() - t0)


def latency_ms(predict_one, png: Path, n: int = 100) -> float:
    """Median milliseconds of predict_one(png) over n calls, after 5 warm-up calls."""
    for _ in range(5):
        predict_one(png)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        predict_one(png)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _quiet(*a, **k):
    pass


def train_tutorial_side(data_dir: str, epochs: int, device, quick: bool, dataset: str = "mnist"):
    """The tutorial's pipeline (reference.py) -> (model, history, CPU seconds of training, dtype, the tutorial's
    one-image path: PIL, ToTensor + Normalize, forward, softmax)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from mnist_cnn.perf import reference

    cpu0 = time.process_time()
    model, history = reference.run(data_dir, epochs, log=_quiet, device=str(device),
                                   max_batches=QUICK_BATCHES if quick else None, dataset=dataset)
    cpu_seconds = time.process_time() - cpu0
    tutorial_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def predict_one(path):
        with torch.no_grad():
            x = tutorial_transform(Image.open(path).convert("L")).unsqueeze(0).to(device)
            return int(torch.softmax(model(x), 1).argmax())
    model.eval()
    return model, history, cpu_seconds, torch.float32, predict_one


def train_our_side(side: str, data, epochs: int, device_name: str, device, target: float, quick: bool, tmp: Path):
    """`train` with the side's recipe -> (model, history, CPU seconds of training, dtype, Classifier.predict (decode,
    MNIST-style preprocess, forward, softmax), the tutorial's short path on our model (decode, normalize, forward))."""
    import numpy as np
    import torch
    from PIL import Image

    from mnist_cnn import checkpoint
    from mnist_cnn.data import normalize
    from mnist_cnn.predict.classifier import Classifier
    from mnist_cnn.train import TrainConfig, pick_dtype, train

    if quick:  # the same 20 batches of 64 the reference sees, and 1,280 test images
        n = QUICK_BATCHES * 64
        data = replace(data, train_images=data.train_images[:n], train_labels=data.train_labels[:n],
                       test_images=data.test_images[:n], test_labels=data.test_labels[:n])
    recipe = "tutorial" if side == "ours" else side
    cfg = TrainConfig(recipe=recipe, epochs=epochs if side == "ours" else TrainConfig.epochs, device=device_name,
                      quiet=True, target_accuracy=target if side == "fast" else None)
    if quick and side == "fast":
        cfg.eval_every = 4  # 20 steps: check at 12, 16, 20
    cpu0 = time.process_time()
    model, history = train(cfg, data, log=_quiet)
    cpu_seconds = time.process_time() - cpu0
    checkpoint.save(tmp / "model.pth", model, dataset=data.describe())  # its classes pick predict's preparation
    clf = Classifier.load(tmp / "model.pth", device)
    model.eval()

    def plain_one(path):
        with torch.inference_mode():
            x = normalize(torch.from_numpy(np.array(Image.open(path).convert("L")))[None].to(device))
            return int(torch.softmax(model(x.contiguous(memory_format=torch.channels_last)), 1).argmax())
    return model, history, cpu_seconds, pick_dtype(cfg.precision, device), clf.predict, plain_one


def run_side(side: str, data_dir: str, epochs: int, device_name: str, target: float, quick: bool,
             dataset: str = "mnist") -> dict:
    with tempfile.TemporaryDirectory(prefix="mnist-cnn-bench-") as tmp:
        return _run_side(side, data_dir, epochs, device_name, target, quick, dataset, Path(tmp))


def _run_side(side, data_dir, epochs, device_name, target, quick, dataset, tmp: Path) -> dict:
    import torch
    from PIL import Image

    from mnist_cnn.data import load_dataset
    from mnist_cnn.evaluate import evaluate
    from mnist_cnn.train import pick_device

    device = pick_device(device_name)
    data = load_dataset(dataset, data_dir, quiet=True, fetch=False)
    png = tmp / "digit.png"
    Image.fromarray(data.test_images[0].numpy()).save(png)  # a real test image, 28x28 grayscale PNG
    if side == "tutorial":
        model, history, cpu_seconds, dtype, predict_one = train_tutorial_side(data_dir, epochs, device, quick, dataset)
        latency_path = "tutorial transform + forward"
    else:
        model, history, cpu_seconds, dtype, predict_one, plain_one = train_our_side(
            side, data, epochs, device_name, device, target, quick, tmp)
        latency_path = "Classifier.predict"

    k = QUICK_BATCHES * 64
    test = data if not quick else replace(data, test_images=data.test_images[:k], test_labels=data.test_labels[:k])
    fp32_acc = evaluate(model.float(), test.test_images, test.test_labels)["accuracy"]
    big = 16384 if device.type == "cuda" else 1024
    infer = inference_rate(model, data.test_images, device, dtype, side == "tutorial", big,
                           seconds=0.5 if quick else 2.0)
    lat = latency_ms(predict_one, png, n=20 if quick else 200)
    lat_plain = lat if side == "tutorial" else latency_ms(plain_one, png, n=20 if quick else 200)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB

    seconds = [h["seconds"] for h in history]
    cum = [sum(seconds[:i + 1]) for i in range(len(seconds))]
    hit = next((c for c, h in zip(cum, history, strict=True) if h["test_accuracy"] >= target / 100), None)
    n_images = sum(h.get("images", 0) for h in history)
    return {
        "side": side, "device": str(device), "precision": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "fused_conv1": None if side == "tutorial" or device.type != "cpu" else model.fused_reason or "on",
        "epochs": len(history), "seconds_per_epoch": seconds, "total_seconds": cum[-1], "cpu_seconds": cpu_seconds,
        "test_accuracy": [h["test_accuracy"] for h in history], "final_accuracy": history[-1]["test_accuracy"],
        "final_accuracy_fp32": fp32_acc, "seconds_to_target": hit,
        "train_images_per_second": n_images / sum(h["train_seconds"] for h in history),
        "inference_batch": big, "inference_images_per_second": infer,
        "latency_ms": lat, "latency_plain_ms": lat_plain,
        "latency_path": latency_path,
        "peak_memory_mib": peak, "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "RSS",
    }


# -----------------------------------------------------------------------------
# in the parent: run the sides, take medians, print the table


def run_child(side, args) -> dict:
    cmd = [sys.executable, "-m", "mnist_cnn.perf.bench", side, args.data_dir, str(args.epochs), args.device,
           str(args.target), "1" if args.quick else "0", args.dataset]
    from mnist_cnn import GOMP_SPINCOUNT

    env = os.environ.copy()
    if side == "tutorial":  # the tutorial's script never sets it: libgomp's own default (mnist_cnn/__init__.py)
        env["GOMP_SPINCOUNT"] = "300000"
    else:  # what `mnist-cnn train` runs with
        env.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        from mnist_cnn.errors import MnistCnnError

        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MnistCnnError(f"the {side} run failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Per-field median over repeats (lists element-wise); non-numbers from the first run. seconds_to_target
    counts a run that never got there as infinitely late (None when the median run did not); each run's own
    total, final accuracy and time to target are kept under "per_run"."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        vals = [r[k] for r in runs]
        if k == "seconds_to_target":
            m = statistics.median(math.inf if x is None else x for x in vals)
            out[k] = None if math.isinf(m) else m
        elif isinstance(v, int) and not isinstance(v, bool) and all(type(x) is int for x in vals):
            out[k] = vals[0] if len(set(vals)) == 1 else statistics.median(vals)  # threads, epochs, batch stay ints
        elif isinstance(v, float | int) and not isinstance(v, bool) and all(isinstance(x, float | int) for x in vals):
            out[k] = statistics.median(vals)
        elif isinstance(v, list) and all(isinstance(x, list) and len(x) == len(v) for x in vals):
            out[k] = [statistics.median(col) for col in zip(*vals, strict=True)]
    out["repeats"] = len(runs)
    out["per_run"] = {k: [r.get(k) for r in runs] for k in ("total_seconds", "final_accuracy", "seconds_to_target")}
    return out


def check_data(args) -> None:
    """The dataset is there and verified (a known one fetched if absent), and every side can read it: one line
    otherwise, before any child starts."""
    from mnist_cnn import data
    from mnist_cnn.errors import ConfigError
    from mnist_cnn.perf.reference import TORCHVISION

    if "tutorial" in args.sides and args.dataset not in TORCHVISION:
        raise ConfigError(f"--dataset {args.dataset}: the tutorial side reads with torchvision, which knows "
                          f"{' and '.join(TORCHVISION)}; leave it out with --sides ours fast")
    if args.dataset in data.SOURCES:
        data.ensure(data.SOURCES[args.dataset], args.data_dir, quiet=True, repair=False)
    else:
        data.load_dataset(args.dataset, args.data_dir, quiet=True)  # a folder: checked here, read in each child


def bench(args, log=print) -> dict:
    check_data(args)
    results = {side: [] for side in args.sides}
    for r in range(args.repeats):
        # every other repeat in reverse order: after minutes of full load this VM runs up to ~25% slower (our
        # 5 epochs: 25 s alone, 32 s right after the reference), so a fixed order favours whichever side goes first
        for side in (args.sides if r % 2 == 0 else args.sides[::-1]):
            log(f"bench: run {r + 1}/{args.repeats}: {side} ...")
            results[side].append(run_child(side, args))
    sides = {side: median_of(runs) for side, runs in results.items()}
    ref = sides.get("tutorial")
    ratios = {}
    if ref is not None:
        for side, s in sides.items():
            if side != "tutorial":
                ratios[side] = {k: ratio(s[k], ref[k]) for k in RATIO_KEYS}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"dataset": args.dataset, "epochs": args.epochs, "target": args.target, "quick": args.quick,
            "cpu_count": os.cpu_count(),
            "load_average_at_end": load, "sides": sides, "ratios_ours_over_tutorial": ratios}


RATIO_KEYS = ("total_seconds", "cpu_seconds", "seconds_to_target", "train_images_per_second",
              "inference_images_per_second", "latency_ms", "latency_plain_ms", "peak_memory_mib")


def ratio(a, b):
    return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None


def format_table(res: dict) -> str:
    sides = res["sides"]
    names = list(sides)
    ref = sides.get("tutorial")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    rows = [
        ("device, precision, threads", lambda s: f"{s['device']} {s['precision']} {s['threads'] or ''}".strip()),
        ("fused conv1 kernel (fused.c)", lambda s: "-" if not s.get("fused_conv1") else
         "on" if s["fused_conv1"] == "on" else f"off: {s['fused_conv1'][:40]}"),
        ("epochs run", lambda s: str(s["epochs"])),
        ("s/epoch (train + test)", lambda s: " ".join(f"{x:.1f}" for x in s["seconds_per_epoch"])),
        ("total s", lambda s: fmt(s["total_seconds"], ".1f")),
        ("total CPU s (all threads)", lambda s: fmt(s.get("cpu_seconds"), ".1f")),
        ("test acc % per epoch", lambda s: " ".join(f"{100 * x:.2f}" for x in s["test_accuracy"])),
        ("final acc % (fp32 eval)", lambda s: f"{100 * s['final_accuracy_fp32']:.2f}"),
        (f"s to {res['target']:g}%", lambda s: fmt(s["seconds_to_target"], ".1f")),
        ("train img/s", lambda s: f"{s['train_images_per_second']:,.0f}"),
        (f"infer img/s (batch {sides[names[-1]]['inference_batch']})",
         lambda s: f"{s['inference_images_per_second']:,.0f}"),
        ("1-image latency ms", lambda s: fmt(s["latency_ms"], ".2f")),
        ("1-image ms, decode+forward", lambda s: fmt(s.get("latency_plain_ms"), ".2f")),
        (f"peak memory MiB ({sides[names[-1]]['peak_memory_kind']})", lambda s: f"{s['peak_memory_mib']:,.0f}"),
    ]
    header = ["", *names] + [f"{n}/tutorial" for n in names if ref is not None and n != "tutorial"]
    lines = []
    for label, get in rows:
        cells = [label] + [get(sides[n]) for n in names]
        if ref is not None:
            key = {"total s": "total_seconds", "total CPU s (all threads)": "cpu_seconds",
                   f"s to {res['target']:g}%": "seconds_to_target",
                   "train img/s": "train_images_per_second", "1-image latency ms": "latency_ms",
                   "1-image ms, decode+forward": "latency_plain_ms"}.get(label)
            key = key or ("inference_images_per_second" if label.startswith("infer") else
                          "peak_memory_mib" if label.startswith("peak") else None)
            for n in names:
                if n != "tutorial":
                    r = res["ratios_ours_over_tutorial"][n].get(key) if key else None
                    cells.append(fmt(r, ".3g") if r is not None else "")
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
           for row in [header, *lines]]
    return "\n".join(out)


if __name__ == "__main__":  # child: python -m mnist_cnn.perf.bench SIDE DATA_DIR EPOCHS DEVICE TARGET QUICK DATASET
    side, data_dir, epochs, device, target, quick, dataset = sys.argv[1:8]
    print(json.dumps(run_side(side, data_dir, int(epochs), device, float(target), quick == "1", dataset)))
