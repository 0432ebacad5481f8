"""``breast-cancer``: scikit-learn's bundled Wisconsin data with logistic regression (convex)."""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData, stratified_holdout
from tasks.models import LogisticRegression


class BreastCancerTask(Task):
    """569 x 30, binary; features standardised with statistics of the training pool only."""

    name = "breast-cancer"
    l2 = 1e-3
    models = ("convex",)

    def load(self, options: DataOptions) -> TaskData:
        """Load, hold out 20 % for the server, standardise."""
        from sklearn.datasets import load_breast_cancer  # lazy: one process per message

        bunch = load_breast_cancer()
        x = np.asarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target, dtype=np.int64)
        keep, held = stratified_holdout(y, 0.2, options.seed)
        mean, std = x[keep].mean(axis=0), x[keep].std(axis=0) + 1e-12
        z = ((x - mean) / std).astype(np.float32)
        return TaskData(ArrayData(z[keep], y[keep]), ArrayData(z[held], y[held]), 2)

    def build_model(self, personalization: str) -> nn.Module:
        """Logistic regression; split-input makes the last 10 features' weights personal."""
        return LogisticRegression(
            30, 2, personal_features=10 if personalization == "split-input" else 0
        )
