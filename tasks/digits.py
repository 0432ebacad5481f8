"""``digits``: scikit-learn's bundled 8x8 handwritten digits with a small CNN (the default)."""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData, stratified_holdout
from tasks.models import SmallCNN


class DigitsTask(Task):
    """1797 images, 10 classes; 20 % (stratified) held out as the server test set."""

    name = "digits"

    def load(self, options: DataOptions) -> TaskData:
        """Load the bundled digits, scaled to [0, 1]."""
        from sklearn.datasets import load_digits  # lazy: deployment starts a process per message

        bunch = load_digits()
        x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = np.asarray(bunch.target, dtype=np.int64)
        keep, held = stratified_holdout(y, 0.2, options.seed)
        return TaskData(ArrayData(x[keep], y[keep]), ArrayData(x[held], y[held]), 10)

    def build_model(self, personalization: str) -> nn.Module:
        """SmallCNN for 1x8x8 inputs."""
        return SmallCNN(1, 8, 10)
