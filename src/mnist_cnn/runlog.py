"""`train --log-dir DIR`: TensorBoard event files, so runs can be compared side by side (`tensorboard --logdir`).

Per epoch (step = epoch number): loss/train, loss/test, accuracy/test, lr (at the epoch's end), images_per_s
(training images over training seconds). At the last epoch: up to 16 misclassified test images, most confident
mistakes first, with a text list "test #i: true -> predicted (p)". Written with the `tensorboard` package's
event writer (through torch.utils.tensorboard, which needs it: `pip install 'mnist-cnn[tensorboard]'`); each
epoch is flushed, so an interrupted run keeps what it logged.
"""

from __future__ import annotations

import torch

from mnist_cnn.errors import ConfigError

MISTAKES = 16  # misclassified test images shown


class RunLog:
    def __init__(self, log_dir: str, classes: tuple[str, ...]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log-dir needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'") from None
        try:
            self.writer = SummaryWriter(log_dir=log_dir)
        except OSError as e:
            raise ConfigError(f"--log-dir {log_dir}: cannot write there ({e.strerror or e})") from None
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
