"""``digits``: scikit-learn's bundled 8x8 handwritten digits with a small CNN (the default) or
multinomial logistic regression (``model='convex'``).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData, stratified_holdout
from tasks.models import LogisticRegression, SmallCNN

CONVEX_L2 = 1e-3
"""L2 strength of the convex model (as ``breast-cancer``'s and ``synthetic``'s)."""


class DigitsTask(Task):
    """1797 images, 10 classes; 20 % (stratified) held out as the server test set."""

    name = "digits"
    models = ("deep", "convex")

    def select_model(self, model: str) -> None:
        """As ``Task.select_model``; the convex model gets the L2 term (strong convexity)."""
        super().select_model(model)
        self.l2 = CONVEX_L2 if self.convex else 0.0

    def load(self, options: DataOptions) -> TaskData:
        """Load the bundled digits, scaled to [0, 1]."""
        from sklearn.datasets import load_digits  # lazy: deployment starts a process per message

        bunch = load_digits()
        x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = np.asarray(bunch.target, dtype=np.int64)
        keep, held = stratified_holdout(y, 0.2, options.seed)
        return TaskData(ArrayData(x[keep], y[keep]), ArrayData(x[held], y[held]), 10)

    def build_model(self, personalization: str) -> nn.Module:
        """SmallCNN for 1x8x8 inputs; the convex model on the 64 pixels (split-input makes the
        weights of the bottom two pixel rows personal).
        """
        if self.convex:
            return LogisticRegression(
                64, 10, personal_features=16 if personalization == "split-input" else 0
            )
        return SmallCNN(1, 8, 10)
