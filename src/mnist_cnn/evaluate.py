"""Accuracy, loss, per-class accuracy and the confusion matrix of a model on a labelled set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mnist_cnn.data import normalize


@torch.inference_mode()
def logits_of(model, images_u8: torch.Tensor, batch_size: int = 1000, dtype=torch.float32) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 10) float32 logits, in large batches, the model in eval mode, the images
    normalized as the model was trained (its cfg.mean/std; the tutorial's 0.5/0.5 for a model without a cfg)."""
    model.eval()
    device = next(model.parameters()).device
    cfg = getattr(model, "cfg", None)
    norm = (cfg.mean, cfg.std) if cfg is not None else ()
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = normalize(images_u8[start:start + batch_size].to(device), *norm)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out.append(model(x).float())
    return torch.cat(out)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(C, C) int64: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def analyse(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """(N, C) logits and (N,) labels -> the numbers every command reports: n, loss, accuracy, per-class accuracy,
    confusion (plain Python, for JSON). `report` builds its figures on this."""
    labels = labels.to(logits.device)
    preds = logits.argmax(1)
    cm = confusion_matrix(labels, preds, logits.shape[1]).cpu()
    return {
        "n": int(labels.numel()),
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (preds == labels).float().mean().item(),
        "per_class_accuracy": (cm.diag() / cm.sum(1).clamp(min=1)).tolist(),
        "confusion": cm.tolist(),
    }


def evaluate(model, images_u8, labels, batch_size: int = 1000, dtype=torch.float32) -> dict:
    return analyse(logits_of(model, images_u8, batch_size, dtype), labels)


def format_report(ev: dict, names: list[str] | None = None) -> str:
    """Text for `mnist-cnn evaluate`: accuracy, per-class accuracy (by class name), confusion matrix."""
    names = names or [str(c) for c in range(len(ev["confusion"]))]
    width = max(len(n) for n in names)
    lines = [f"test accuracy {100 * ev['accuracy']:.2f}% ({round(ev['accuracy'] * ev['n'])}/{ev['n']}), "
             f"loss {ev['loss']:.4f}", "", "per-class accuracy:"]
    lines += [f"  {c}: {names[c]:<{width}}  {100 * a:6.2f}%" if names[c] != str(c) else f"  {c}: {100 * a:6.2f}%"
              for c, a in enumerate(ev["per_class_accuracy"])]
    lines += ["", "confusion matrix (rows: true class, columns: predicted; numbered as above):",
              "      " + "".join(f"{c:>6}" for c in range(len(ev["confusion"])))]
    lines += [f"  {r:>2}  " + "".join(f"{v:>6}" for v in row) for r, row in enumerate(ev["confusion"])]
    return "\n".join(lines)
