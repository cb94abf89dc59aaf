"""`mnist-cnn report`: how a trained model does on the 10,000 test images of its dataset, in numbers and pictures.
Classes are shown by name (MNIST's are its digits; Fashion-MNIST's "Sneaker", "Bag", ...).

Writes into one folder:
    confusion.png     confusion matrix (counts, rows = true digit) beside per-class accuracy
    misclassified.png the test digits it gets wrong, most confident mistakes first, with true/predicted/probability
    curves.png        train/test loss and test accuracy per epoch, from the checkpoint's JSON "history"
    report.txt        the same numbers as text (also printed); report.json for scripts
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mnist_cnn import evaluate as evaluation
from mnist_cnn.data import Data, save_output
from mnist_cnn.evaluate import logits_of
from mnist_cnn.insight.explain import new_figure


def analyse(model, data: Data, top_pairs: int = 10) -> dict:
    """evaluate.analyse on the test set, plus the most confused pairs and the mistakes, most confident first,
    and the dataset's name and class names."""
    logits = logits_of(model, data.test_images)  # (N, 10)
    r = evaluation.analyse(logits, data.test_labels)
    probs = torch.softmax(logits, 1)
    labels = data.test_labels.to(logits.device)
    conf, preds = probs.max(1)
    cm = torch.tensor(r["confusion"])
    off = cm.clone().fill_diagonal_(0)
    order = off.flatten().argsort(descending=True)[:top_pairs]
    pairs = [{"true": int(i) // cm.shape[0], "predicted": int(i) % cm.shape[0], "count": int(off.flatten()[i])}
             for i in order if off.flatten()[i] > 0]
    wrong = (preds != labels).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)]  # most confident mistakes first
    return {
        **r,
        "dataset": data.name,
        "classes": list(data.classes),
        "errors": int(wrong.numel()),
        "most_confused": pairs,
        "misclassified": [{"index": int(i), "true": int(labels[i]), "predicted": int(preds[i]),
                           "probability": float(conf[i]), "p_true": float(probs[i, labels[i]])} for i in wrong],
    }


def format_text(r: dict, history: list) -> str:
    lines = [f"test accuracy {100 * r['accuracy']:.2f}% ({r['n'] - r['errors']}/{r['n']}), {r['errors']} errors",
             "", "per-class accuracy:"]
    cm, names = r["confusion"], r["classes"]
    digits = names == [str(c) for c in range(len(names))]
    lines += [f"  {c}: {'' if digits else names[c] + ' '}{100 * a:6.2f}%  ({cm[c][c]}/{sum(cm[c])})"
              for c, a in enumerate(r["per_class_accuracy"])]
    lines += ["", "most confused pairs (true -> predicted: count):"]
    lines += [f"  {names[p['true']]} -> {names[p['predicted']]}: {p['count']}" for p in r["most_confused"]]
    lines += ["", f"confusion matrix (rows: true {'digit' if digits else 'class'}, columns: predicted):",
              "      " + "".join(f"{c:>6}" for c in range(len(cm)))]
    lines += [f"  {t:>2}  " + "".join(f"{v:>6}" for v in row) for t, row in enumerate(cm)]
    lines += ["", "most confident mistakes (test index: true -> predicted, probability):"]
    lines += [f"  #{m['index']}: {names[m['true']]} -> {names[m['predicted']]} ({m['probability']:.3f})"
              for m in r["misclassified"][:10]]
    if history:
        lines += ["", "training history (from the checkpoint's JSON):",
                  "  epoch  train loss  test loss  test acc  seconds"]
        lines += [f"  {h['epoch']:>5}  {h['train_loss']:>10.4f}  {h['test_loss']:>9.4f}  "
                  f"{100 * h['test_accuracy']:>7.2f}%  {h['seconds']:>7.1f}" for h in history]
    else:
        lines += ["", "training history: none in the checkpoint's JSON (a bare .pth); no curves drawn"]
    return "\n".join(lines)


def figure_confusion(r: dict, out: Path, title: str) -> None:
    cm = torch.tensor(r["confusion"])
    k = cm.shape[0]
    fig = new_figure(figsize=(14, 6.5), layout="constrained")
    ax = fig.subplots(1, 2, width_ratios=[1.25, 1])
    fig.suptitle(f"{title}: test accuracy {100 * r['accuracy']:.2f}% on {r['n']:,} digits "
                 f"({r['errors']} errors)", fontsize=13)
    off = cm.clone().fill_diagonal_(0)
    im = ax[0].imshow(off, cmap="Reds", vmin=0, vmax=max(int(off.max()), 1))
    for t in range(k):
        for p in range(k):
            v = int(cm[t, p])
            if v:
                diag = t == p
                ax[0].text(p, t, str(v), ha="center", va="center", fontsize=8 if diag else 9,
                           color="tab:green" if diag else ("white" if v > off.max() * 0.6 else "black"),
                           weight="bold" if diag else "normal")
    names = r["classes"]
    ax[0].set_xticks(range(k), names, rotation=0 if all(len(n) <= 2 for n in names) else 60)
    ax[0].set_yticks(range(k), names)
    ax[0].set_xlabel("predicted class")
    ax[0].set_ylabel("true class")
    ax[0].set_title("confusion matrix: counts (green diagonal = correct; red shade = errors)", fontsize=10)
    fig.colorbar(im, ax=ax[0], fraction=0.04, label="errors")
    acc = [100 * a for a in r["per_class_accuracy"]]
    bars = ax[1].barh(range(k), acc, color="tab:blue")
    lo = min(acc)
    ax[1].set_xlim(max(0, lo - (100 - lo) * 0.6 - 0.5), 100)
    ax[1].invert_yaxis()
    ax[1].set_yticks(range(k), names)
    ax[1].set_ylabel("true class")
    ax[1].set_xlabel("accuracy (%)")
    ax[1].set_title("per-class accuracy (axis zoomed)", fontsize=10)
    for b, a in zip(bars, acc, strict=True):
        ax[1].text(b.get_width(), b.get_y() + b.get_height() / 2, f" {a:.2f}%", va="center", fontsize=9)
    worst = r["most_confused"][:5]
    if worst:
        ax[1].text(0.02, -0.16, "most confused: " + ", ".join(f"{names[p['true']]}->{names[p['predicted']]} "
                                                             f"({p['count']})"
                                                             for p in worst),
                   transform=ax[1].transAxes, fontsize=9)
    save_output(out, fig, dpi=90)


def figure_misclassified(r: dict, images: torch.Tensor, out: Path, n: int = 40, cols: int = 10) -> None:
    wrong = r["misclassified"][:n]
    rows = max(1, -(-len(wrong) // cols))
    fig = new_figure(figsize=(1.45 * cols, 1.75 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    names = r["classes"]
    fig.suptitle(f"Misclassified test images: the {len(wrong)} most confident of {r['errors']} mistakes\n"
                 "(true -> predicted, probability of the prediction; #test index)", fontsize=12)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[m["index"]], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"{names[m['true']]} -> {names[m['predicted']]}  {m['probability']:.2f}\n#{m['index']}",
                     fontsize=9 if max(len(names[m['true']]), len(names[m['predicted']])) <= 4 else 6,
                     color="tab:red")
    if not wrong:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=12)
    save_output(out, fig, dpi=90)


def figure_curves(history: list, out: Path, title: str) -> None:
    ep = [h["epoch"] for h in history]
    fig = new_figure(figsize=(12, 4.5), layout="constrained")
    ax = fig.subplots(1, 2)
    fig.suptitle(f"Training curves of {title} (from its checkpoint JSON)", fontsize=13)
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (mean over the epoch)")
    ax[0].plot(ep, [h["test_loss"] for h in history], "s-", label="test loss (after the epoch)")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("cross-entropy loss")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    acc = [100 * h["test_accuracy"] for h in history]
    ax[1].plot(ep, acc, "o-", color="tab:green")
    for e, a in zip(ep, acc, strict=True):
        ax[1].annotate(f"{a:.2f}%", (e, a), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=9)
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("test accuracy (%)")
    ax[1].set_title("test accuracy", fontsize=10)
    ax[1].grid(alpha=0.3)
    ax[1].margins(y=0.25)
    for a in ax:
        a.set_xticks(ep)
    save_output(out, fig, dpi=90)


def report(model, meta: dict, data: Data, out_dir: str | Path, title: str = "the model") -> dict:
    """Analyse, write the figures, report.txt and report.json into out_dir; return the numbers and file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = analyse(model, data)
    history = meta.get("history") or []
    files = {"confusion": out / "confusion.png", "misclassified": out / "misclassified.png"}
    figure_confusion(r, files["confusion"], title)
    figure_misclassified(r, data.test_images, files["misclassified"])
    if history:
        files["curves"] = out / "curves.png"
        figure_curves(history, files["curves"], title)
    text = format_text(r, history)
    files["text"] = out / "report.txt"
    save_output(files["text"], text + "\n")
    result = {**r, "history": history, "files": {k: str(v) for k, v in files.items()}}
    files["json"] = out / "report.json"
    result["files"]["json"] = str(files["json"])
    save_output(files["json"], json.dumps(result, indent=2) + "\n")
    return result | {"text": text}
