"""Classification metrics: accuracy, macro-F1, one-vs-rest AUC, and the probabilistic ones used
for uncertainty: negative log-likelihood and expected calibration error.

Macro-F1 and AUC are computed in NumPy with scikit-learn's arithmetic (the same operations in
the same order, so the same floats; ``tests/test_cold_start.py`` compares them): importing
``sklearn.metrics`` (with scipy and pandas) costs ≈ 1 s of every ClientApp process start.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray


def classification_metrics(
    y_true: NDArray[np.int64], probs: NDArray[np.float64], loss: float
) -> dict[str, float]:
    """Accuracy, macro-F1 and macro one-vs-rest AUC of predicted class probabilities.

    AUC averages the binary AUC of every class that has both positives and negatives in
    ``y_true`` (a client's local test split often lacks classes under label skew); it is NaN
    when no class qualifies. Rows with non-finite probabilities (a diverged model) count as
    wrong predictions and are left out of the AUC, instead of failing the evaluation.
    """
    finite = np.isfinite(probs).all(axis=1)
    y_pred = np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)
    y_ok, p_ok = y_true[finite], probs[finite]
    aucs = [
        binary_auc(y_ok == c, p_ok[:, c])
        for c in range(probs.shape[1])
        if 0 < int((y_ok == c).sum()) < len(y_ok)
    ]
    return {
        "loss": float(loss),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else math.nan,
        "macro-f1": macro_f1(y_true, y_pred),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
    }


def macro_f1(y_true: NDArray[np.int64], y_pred: NDArray[np.int64]) -> float:
    """Unweighted mean over every label in ``y_true`` or ``y_pred`` of ``2 tp / (true + pred)``
    (``sklearn.metrics.f1_score(average="macro", zero_division=0)``); NaN for no samples.
    """
    labels = np.union1d(y_true, y_pred)
    if len(labels) == 0:
        return math.nan
    true_sum = (y_true[:, None] == labels).sum(axis=0)
    pred_sum = (y_pred[:, None] == labels).sum(axis=0)
    tp_sum = ((y_true == y_pred)[:, None] & (y_true[:, None] == labels)).sum(axis=0)
    f1 = 2.0 * tp_sum.astype(np.float64) / (true_sum.astype(np.float64) + pred_sum)
    return float(np.mean(f1))


def binary_auc(positive: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    """ROC AUC of ``score`` for the ``positive`` samples (both classes present), as
    ``sklearn.metrics.roc_auc_score`` computes it: ROC points at the distinct scores (collinear
    ones dropped), then the trapezoidal rule.
    """
    order = np.argsort(score, kind="stable")[::-1]
    score, hits = score[order], positive[order].astype(np.float64)
    ends = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]
    tps = np.cumsum(hits)[ends]
    fps = 1 + ends.astype(np.float64) - tps
    if len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    tpr = np.r_[0.0, tps] / tps[-1]
    fpr = np.r_[0.0, fps] / fps[-1]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def expected_calibration_error(
    y_true: NDArray[np.int64], probs: NDArray[np.float64], num_bins: int = 15
) -> float:
    """ECE with ``num_bins`` equal-width confidence bins (Guo et al. 2017):
    ``Σ_b (|B_b|/n) |accuracy(B_b) − mean confidence(B_b)|``, confidence = max probability.
    """
    if len(y_true) == 0:
        return math.nan
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.minimum((confidence * num_bins).astype(np.int64), num_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(y_true))


def probabilistic_metrics(
    y_true: NDArray[np.int64], probs: NDArray[np.float64]
) -> dict[str, float]:
    """Accuracy, mean negative log-likelihood and ECE of predicted class probabilities."""
    if len(y_true) == 0:
        return {"accuracy": math.nan, "nll": math.nan, "ece": math.nan}
    picked = np.clip(probs[np.arange(len(y_true)), y_true], 1e-300, None)
    return {
        "accuracy": float((probs.argmax(axis=1) == y_true).mean()),
        "nll": float(-np.log(picked).mean()),
        "ece": expected_calibration_error(y_true, probs),
    }
