"""Classification metrics: accuracy, macro-F1, one-vs-rest AUC (scikit-learn), and the
probabilistic ones used for uncertainty: negative log-likelihood and expected calibration error.
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
    from sklearn.metrics import f1_score, roc_auc_score  # lazy: 2 s of every ClientApp start

    finite = np.isfinite(probs).all(axis=1)
    y_pred = np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)
    y_ok, p_ok = y_true[finite], probs[finite]
    aucs = [
        float(roc_auc_score(y_ok == c, p_ok[:, c]))
        for c in range(probs.shape[1])
        if 0 < int((y_ok == c).sum()) < len(y_ok)
    ]
    return {
        "loss": float(loss),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else math.nan,
        "macro-f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
    }


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
