"""How far the softmax can be trusted: temperature scaling, the "not a digit" threshold, ECE, AUROC.

A network trained with cross-entropy is usually over-confident: of the digits it calls 99% sure, fewer than
99% are right. Temperature scaling (Guo et al., 2017) divides the logits by one number T, fitted to minimise
the negative log-likelihood on held-out digits (a slice of the training set that training never saw, not the
test set); the argmax does not change, the probabilities become honest. ECE (expected calibration error) says
how honest: the mean gap between confidence and accuracy over 15 confidence bins, weighted by bin size.

"Not a digit": the score is the largest probability of softmax(z / T_reject) (max-softmax). A model trained
with outlier exposure (negatives.py) gives a flat softmax to non-digits, so a threshold separates them. The
threshold is the DIGIT_REJECT quantile of the held-out digits' scores: at most that share of real MNIST-style
digits is rejected. T_reject is the calibration temperature T times the factor in REJECT_FACTORS that rejects
the most held-out non-digits at that threshold: a model trained with label smoothing needs T < 1 to be
calibrated, and so sharpened, its confident digits all score ~1.0 and lose their order, which a softer
temperature keeps (measured in docs/trust.md). The result goes into the checkpoint's JSON sidecar under "trust".
"""

from __future__ import annotations

import numpy as np
import torch

BINS = 15  # confidence bins for ECE and the reliability diagram (Guo et al. use 15)
DIGIT_REJECT = 0.003  # the operating point: the share of held-out MNIST digits the threshold may reject
DEFAULT_THRESHOLD = 0.5  # a checkpoint with no "trust" (not trained with --augment): uncalibrated max-softmax
REJECT_FACTORS = (1.0, 1.5, 2.0, 3.0, 5.0, 8.0)  # T_reject = T * one of these (1.0 wins ties: plain max-softmax)
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 401))  # the grid T is fitted on (fine: ~0.9% steps)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """(N, C) logits, (N,) labels -> the T in TEMPERATURES minimising the NLL of softmax(logits / T)."""
    logits, labels = logits.float().cpu(), labels.cpu()
    nll = [torch.nn.functional.cross_entropy(logits / t, labels).item() for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict:
    """(N, C) probabilities, (N,) labels -> per-bin confidence, accuracy, count, and ECE (a fraction)."""
    conf, pred = probs.max(1)
    right = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.clamp(torch.bucketize(conf, edges[1:-1], right=True), 0, bins - 1)  # (N,) bin of each
    count = torch.bincount(which, minlength=bins).float()
    mean_conf = torch.bincount(which, conf, minlength=bins) / count.clamp(min=1)
    acc = torch.bincount(which, right, minlength=bins) / count.clamp(min=1)
    ece = float(((mean_conf - acc).abs() * count).sum() / max(len(labels), 1))
    return {"ece": ece, "confidence": mean_conf.tolist(), "accuracy": acc.tolist(), "count": count.int().tolist(),
            "edges": edges.tolist()}


def auroc(digits: np.ndarray, others: np.ndarray) -> float:
    """Probability that a random digit scores higher than a random non-digit (ties count half)."""
    digits, others = np.asarray(digits, float), np.asarray(others, float)
    both = np.concatenate([digits, others])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        tie = both == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[:len(digits)].sum() - len(digits) * (len(digits) + 1) / 2) / (len(digits) * len(others)))


def scores(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, C) logits -> (N,) max-softmax after temperature scaling."""
    return torch.softmax(logits.float() / temperature, dim=1).max(1).values


def rejected(digit_logits: torch.Tensor, outlier_logits: torch.Tensor, temperature: float) -> float:
    """The share of outliers under the DIGIT_REJECT quantile of the digits' max-softmax at this temperature."""
    threshold = torch.quantile(scores(digit_logits, temperature), DIGIT_REJECT)
    return float((scores(outlier_logits, temperature) < threshold).float().mean())


def calibrate(digit_logits: torch.Tensor, labels: torch.Tensor, outlier_logits: torch.Tensor | None = None) -> dict:
    """Held-out digits' logits (N, C) and labels (N,), optionally held-out non-digits' logits (M, C) -> the
    "trust" entry of a checkpoint's sidecar: temperature, threshold and what they give on these sets."""
    t = fit_temperature(digit_logits, labels)
    has_outliers = outlier_logits is not None and len(outlier_logits) > 0
    t_reject = t * max(REJECT_FACTORS, key=lambda f: (rejected(digit_logits, outlier_logits, t * f), -f)) \
        if has_outliers else t
    s = scores(digit_logits, t_reject)
    threshold = float(torch.quantile(s, DIGIT_REJECT))
    trust = {"method": "outlier exposure + max-softmax", "temperature": t, "threshold": threshold,
             "reject_temperature": t_reject, "digit_reject_target": DIGIT_REJECT, "holdout_n": len(labels),
             "holdout_ece_before": reliability(torch.softmax(digit_logits.float(), 1), labels)["ece"],
             "holdout_ece_after": reliability(torch.softmax(digit_logits.float() / t, 1), labels)["ece"],
             "holdout_digits_rejected": float((s < threshold).float().mean())}
    if has_outliers:
        o = scores(outlier_logits, t_reject)
        trust.update({"holdout_outliers_n": len(o), "holdout_outliers_rejected": float((o < threshold).float().mean()),
                      "holdout_auroc": auroc(s.numpy(), o.numpy())})
    return trust
