"""TensorBoard event files, so runs can be compared side by side (`tensorboard --logdir`).

`train --log-dir DIR` (RunLog), per epoch (step = epoch number): loss/train, loss/test, accuracy/test, lr (at
the epoch's end), images_per_s (training images over training seconds). At the last epoch: up to 16
misclassified test images, most confident mistakes first, with a text list "test #i: true -> predicted (p)".
`study --log-dir DIR` gives each of its runs a RunLog in DIR/<group>-<variant>/seed<k>.

`bench --log-dir DIR` (write_bench): one run per side, DIR/<side>, with the same tags where they mean the same
thing (accuracy/test and seconds_per_epoch per epoch; images_per_s), and the side's single figures (total
seconds, CPU seconds, inference images/s, latency, peak memory) under bench/ at the last epoch's step.

Written with the `tensorboard` package's event writer (through torch.utils.tensorboard, which needs it:
`pip install 'mnist-cnn[tensorboard]'`); each epoch is flushed, so an interrupted run keeps what it logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mnist_cnn.errors import ConfigError

MISTAKES = 16  # misclassified test images shown


def check(log_dir: str) -> None:
    """Before a long run: the tensorboard package is there and log_dir could be made (nothing is written)."""
    _writer_class()
    p = Path(log_dir).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"--log-dir {log_dir}: cannot write there ({p} is not a writable folder)")


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--log-dir needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'") from None
    return SummaryWriter


def writer(log_dir: str):
    """A SummaryWriter for log_dir, or one line saying why not."""
    SummaryWriter = _writer_class()
    try:
        return SummaryWriter(log_dir=log_dir)
    except OSError as e:
        raise ConfigError(f"--log-dir {log_dir}: cannot write there ({e.strerror or e})") from None


class RunLog:
    def __init__(self, log_dir: str, classes: tuple[str, ...]):
        self.writer = writer(log_dir)
        self.classes = classes

    def epoch(self, row: dict, lr: float, model, data, last: bool = False) -> None:
        """One history row (train.py) as scalars; at the last epoch, the mistakes too."""
        step, w = row["epoch"], self.writer
        w.add_scalar("loss/train", row["train_loss"], step)
        w.add_scalar("loss/test", row["test_loss"], step)
        w.add_scalar("accuracy/test", row["test_accuracy"], step)
        w.add_scalar("lr", lr, step)
        w.add_scalar("images_per_s", row["images"] / max(row["train_seconds"], 1e-9), step)
        if last:
            self.mistakes(model, data, step)
        w.flush()

    def mistakes(self, model, data, step: int) -> None:
        from mnist_cnn.evaluate import logits_of

        probs = torch.softmax(logits_of(model, data.test_images), 1).cpu()  # (N, C)
        labels = data.test_labels.cpu()
        conf, preds = probs.max(1)
        wrong = (preds != labels).nonzero().flatten()
        wrong = wrong[conf[wrong].argsort(descending=True)][:MISTAKES]
        if wrong.numel() == 0:
            return
        images = data.test_images.cpu()[wrong].unsqueeze(1).float() / 255  # (k, 1, 28, 28) in [0, 1]
        self.writer.add_images("mistakes/images", images, step, dataformats="NCHW")
        lines = [f"test #{int(i)}: {self.classes[labels[i]]} -> {self.classes[preds[i]]} ({float(conf[i]):.3f})"
                 for i in wrong]
        self.writer.add_text("mistakes/list", "  \n".join(lines), step)  # two spaces: a Markdown line break

    def close(self) -> None:
        self.writer.close()


BENCH_FIGURES = ("total_seconds", "cpu_seconds", "seconds_to_target", "train_images_per_second",
                 "inference_images_per_second", "latency_ms", "latency_plain_ms", "peak_memory_mib")


def write_bench(log_dir: str, res: dict) -> list[str]:
    """bench's result (perf/bench.py, medians over its repeats) as one TensorBoard run per side; the run folders."""
    runs = []
    for side, s in res["sides"].items():
        run = f"{log_dir}/{side}"
        w = writer(run)
        for epoch, (acc, sec) in enumerate(zip(s["test_accuracy"], s["seconds_per_epoch"], strict=True), 1):
            w.add_scalar("accuracy/test", acc, epoch)
            w.add_scalar("seconds_per_epoch", sec, epoch)
        last = len(s["test_accuracy"])
        w.add_scalar("images_per_s", s["train_images_per_second"], last)
        for key in BENCH_FIGURES:
            if isinstance(s.get(key), int | float):
                w.add_scalar(f"bench/{key}", s[key], last)
        w.add_text("bench/setup", f"dataset {res.get('dataset', 'mnist')}, {s['device']} {s['precision']}, "
                                  f"{s.get('repeats', 1)} repeat(s), quick={res['quick']}", last)
        w.close()
        runs.append(run)
    return runs
