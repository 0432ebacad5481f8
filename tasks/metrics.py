"""Classification metrics: accuracy, macro-F1 and one-vs-rest AUC (scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import f1_score, roc_auc_score


def classification_metrics(
    y_true: NDArray[np.int64], probs: NDArray[np.float64], loss: float
) -> dict[str, float]:
    """Accuracy, macro-F1 and macro one-vs-rest AUC of predicted class probabilities.

    AUC averages the binary AUC of every class that has both positives and negatives in
    ``y_true`` (a client's local test split often lacks classes under label skew); it is NaN
    when no class qualifies.
    """
    y_pred = probs.argmax(axis=1)
    aucs = [
        float(roc_auc_score(y_true == c, probs[:, c]))
        for c in range(probs.shape[1])
        if 0 < int((y_true == c).sum()) < len(y_true)
    ]
    return {
        "loss": float(loss),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else math.nan,
        "macro-f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
    }
