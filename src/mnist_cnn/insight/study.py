"""`mnist-cnn study`: the tutorial's hyperparameter answers, measured instead of asserted.

The tutorial's Q&A argues for kernel 3 over 2 or 6, non-overlapping 2/2 pooling over 3/2 or 4/4, fc1 = 128 over 64,
powers of two for channel counts, and (implicitly) Adam. Each group below changes one of those from the tutorial's
network and keeps everything else; the tutorial's own network appears in every group (trained once per seed and
reused). For each variant: parameters and MACs (from explain.summary), training speed on this device, and test
accuracy as mean ± std over seeds.

    group      variants
    kernel     2, 3 (tutorial), 5, 6
    pooling    2/2 (tutorial), 3/2 overlapping, 4/4
    fc1        32, 64, 128 (tutorial), 256
    channels   16/32, 32/64 (tutorial), 64/128, 30/60 (not powers of two)
    optimizer  Adam lr 1e-3 (tutorial), SGD momentum 0.9 lr 1e-2

`--quick` trains 1 epoch on a fixed 6,000-image subset, one seed, and tests on all 10,000: the table's shape
and the cost columns are right, the accuracies are those of a barely trained network. docs/understanding.md
quotes a full run, with the command and the machine.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mnist_cnn.config import STUDY_GROUPS
from mnist_cnn.data import Data, save_output
from mnist_cnn.errors import ConfigError
from mnist_cnn.insight.explain import new_figure, summary
from mnist_cnn.model import ModelConfig

TUTORIAL_NET = ModelConfig()


@dataclass(frozen=True)
class Variant:
    group: str
    label: str
    model: ModelConfig = TUTORIAL_NET
    optimizer: str = "adam"
    lr: float = 1e-3

    @property
    def key(self):  # the same network and recipe is trained once per seed, whichever group shows it
        return (self.model, self.optimizer, self.lr)


def variants() -> list[Variant]:
    base = "(tutorial)"
    return [
        Variant("kernel", "2", replace(TUTORIAL_NET, kernel_size=2)),
        Variant("kernel", f"3 {base}"),
        Variant("kernel", "5", replace(TUTORIAL_NET, kernel_size=5)),
        Variant("kernel", "6", replace(TUTORIAL_NET, kernel_size=6)),
        Variant("pooling", f"2/2 {base}"),
        Variant("pooling", "3/2 overlap", replace(TUTORIAL_NET, pool_kernel=3, pool_stride=2)),
        Variant("pooling", "4/4", replace(TUTORIAL_NET, pool_kernel=4, pool_stride=4)),
        Variant("fc1", "32", replace(TUTORIAL_NET, fc_units=32)),
        Variant("fc1", "64", replace(TUTORIAL_NET, fc_units=64)),
        Variant("fc1", f"128 {base}"),
        Variant("fc1", "256", replace(TUTORIAL_NET, fc_units=256)),
        Variant("channels", "16/32", replace(TUTORIAL_NET, channels=(16, 32))),
        Variant("channels", f"32/64 {base}"),
        Variant("channels", "64/128", replace(TUTORIAL_NET, channels=(64, 128))),
        Variant("channels", "30/60", replace(TUTORIAL_NET, channels=(30, 60))),
        Variant("optimizer", f"Adam 1e-3 {base}"),
        Variant("optimizer", "SGD 1e-2 m0.9", optimizer="sgd", lr=1e-2),
    ]


GROUPS = STUDY_GROUPS  # their names live in config.py, where the CLI reads them without loading torch


def subset(data: Data, n_train: int | None, n_test: int | None) -> Data:
    """A fixed random n_train of the training set (same for every run) and the first n_test test images."""
    tr = data.train_images.shape[0]
    idx = torch.randperm(tr, generator=torch.Generator().manual_seed(0))[:n_train] if n_train else slice(None)
    te = slice(None, n_test)
    return replace(data, train_images=data.train_images[idx], train_labels=data.train_labels[idx],
                   test_images=data.test_images[te], test_labels=data.test_labels[te])


def run(data: Data, groups=GROUPS, seeds: int = 3, epochs: int = 3, train_subset: int | None = None,
        test_subset: int | None = None, device: str = "auto", log=print, log_dir: str | None = None) -> dict:
    """Train every variant of the chosen groups `seeds` times; returns {"rows": [...], "settings": {...}}.
    With `log_dir`, each run writes TensorBoard event files into LOG_DIR/<group>-<variant>/seed<k>."""
    from mnist_cnn.train import TrainConfig, train

    if seeds < 1 or epochs < 1:
        raise ConfigError("--seeds and --epochs must be at least 1")
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ConfigError(f"unknown group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    if train_subset is not None and not 64 <= train_subset <= data.train_images.shape[0]:
        raise ConfigError(f"--train-subset must be between 64 and {data.train_images.shape[0]}")
    data = subset(data, train_subset, test_subset)
    n_train = data.train_images.shape[0]
    chosen = [v for v in variants() if v.group in groups]

    def cfg(v, seed, n_epochs=epochs, logged=True):
        run_dir = f"{log_dir}/{v.group}-{v.label.split()[0].replace('/', '_')}/seed{seed}" if log_dir and logged \
            else None
        return TrainConfig(epochs=n_epochs, lr=v.lr, optimizer=v.optimizer, seed=seed, device=device, quiet=True,
                           model=v.model, log_dir=run_dir)

    # warm-up: the first run in a process pays for thread pools and kernel selection; keep it out of the timings
    train(cfg(chosen[0], 0, 1, logged=False), subset(data, min(n_train, 512), 512), log=lambda *a: None)
    results: dict = {}  # Variant.key -> list of per-seed histories
    t0 = time.perf_counter()
    todo = list(dict.fromkeys(v.key for v in chosen))
    for i, key in enumerate(todo):
        v = next(v for v in chosen if v.key == key)
        for seed in range(seeds):
            _, hist = train(cfg(v, seed), data, log=lambda *a: None)
            results.setdefault(key, []).append(hist)
        accs = [h[-1]["test_accuracy"] for h in results[key]]
        log(f"[{i + 1}/{len(todo)}] {v.group} {v.label}: test accuracy "
            f"{100 * statistics.mean(accs):.2f}% ({time.perf_counter() - t0:.0f}s elapsed)")
    rows = []
    for v in chosen:
        hists = results[v.key]
        accs = [100 * h[-1]["test_accuracy"] for h in hists]
        train_s = [e["train_seconds"] for h in hists for e in h]
        s = summary(v.model)
        rows.append({"group": v.group, "variant": v.label, "model": v.model.to_dict(), "optimizer": v.optimizer,
                     "lr": v.lr, "params": s["params"], "macs": s["macs"],
                     "images_per_s": n_train / statistics.mean(train_s),
                     "seconds_per_epoch_60k": 60_000 * statistics.mean(train_s) / n_train,
                     "test_accuracy_mean": statistics.mean(accs),
                     "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "test_accuracies": accs})
    from mnist_cnn.train import pick_device, pick_dtype

    dev = pick_device(device)
    settings = {"dataset": data.name,
                "seeds": seeds, "epochs": epochs, "train_images": n_train, "test_images": data.test_images.shape[0],
                "device": str(dev), "dtype": str(pick_dtype("auto", dev)).removeprefix("torch."),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "seconds": time.perf_counter() - t0}
    return {"settings": settings, "rows": rows}


def markdown(study: dict) -> str:
    st = study["settings"]
    head = (f"{st.get('dataset', 'mnist')}: {st['epochs']} epoch(s) on {st['train_images']:,} training images, "
            f"tested on {st['test_images']:,}; "
            f"{st['seeds']} seed(s); {st['device']} {st['dtype']}, torch {st['torch']}, {st['threads']} threads; "
            f"{st['seconds']:.0f} s in all")
    lines = [head, "",
             "| group | variant | params | MACs | img/s | s/epoch (60k) | test accuracy % (mean ± std) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in study["rows"]:
        acc = f"{r['test_accuracy_mean']:.2f}" + (f" ± {r['test_accuracy_std']:.2f}" if st["seeds"] > 1 else "")
        lines.append(f"| {r['group']} | {r['variant']} | {r['params']:,} | {r['macs']:,} | "
                     f"{r['images_per_s']:,.0f} | {r['seconds_per_epoch_60k']:.1f} | {acc} |")
    return "\n".join(lines)


def figure(study: dict, out: Path) -> None:
    rows = study["rows"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig = new_figure(figsize=(3.4 * len(groups) + 1, 7.5), layout="constrained")
    axes = fig.subplots(2, len(groups), squeeze=False, sharey="row")
    st = study["settings"]
    fig.suptitle(f"Hyperparameter study: {st['epochs']} epoch(s), {st['train_images']:,} training images, "
                 f"{st['seeds']} seed(s), {st['device']} ({st['dtype']})", fontsize=13)
    accs = [r["test_accuracy_mean"] for r in rows]
    lo = min(a - r["test_accuracy_std"] for a, r in zip(accs, rows, strict=True))
    for j, g in enumerate(groups):
        rs = [r for r in rows if r["group"] == g]
        x = range(len(rs))
        colors = ["tab:orange" if "(tutorial)" in r["variant"] else "tab:blue" for r in rs]
        ax = axes[0, j]
        ax.bar(x, [r["test_accuracy_mean"] for r in rs], yerr=[r["test_accuracy_std"] for r in rs],
               color=colors, capsize=4)
        ax.set_ylim(max(0, lo - (100 - lo) * 0.15), min(100, max(accs) + (100 - lo) * 0.12))
        for i, r in enumerate(rs):
            ax.annotate(f"{r['test_accuracy_mean']:.2f}\n{r['params'] / 1000:.0f}k p", (i, r["test_accuracy_mean"]),
                        xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
        ax.set_title(g, fontsize=11)
        ax.set_xticks(x, [r["variant"].replace(" (tutorial)", "\n(tutorial)") for r in rs], fontsize=8)
        ax = axes[1, j]
        ax.bar(x, [r["seconds_per_epoch_60k"] for r in rs], color=colors)
        ax.set_xticks(x, [r["variant"].replace(" (tutorial)", "\n(tutorial)") for r in rs], fontsize=8)
        for i, r in enumerate(rs):
            ax.annotate(f"{r['macs'] / 1e6:.1f}M MACs", (i, r["seconds_per_epoch_60k"]), xytext=(0, 3),
                        textcoords="offset points", ha="center", fontsize=8)
    axes[0, 0].set_ylabel("test accuracy (%)\n(mean ± std; k p = thousand params)")
    axes[1, 0].set_ylabel("training seconds per 60k-image epoch")
    save_output(out, fig, dpi=90)


def write(study: dict, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "study.md", "json": out / "study.json", "figure": out / "study.png"}
    save_output(files["markdown"], markdown(study) + "\n")
    save_output(files["json"], json.dumps(study, indent=2) + "\n")
    figure(study, files["figure"])
    return {k: str(v) for k, v in files.items()}
