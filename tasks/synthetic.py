"""``synthetic``: FedProx Synthetic(alpha, beta) with L2-regularised multinomial regression.

Generator of Li et al. (2020), as described in DATASETS.md: user k draws ``u_k ~ N(0, alpha)``,
``W_k, b_k ~ N(u_k, 1)``, ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)``, ``x ~ N(v_k, diag(j^-1.2))``,
``y = argmax(x W_k + b_k)``, with ``n_k = floor(lognormal(4, 2)) + 50`` (alpha, beta used as
standard deviations, as in the original code). One natural client per user.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData
from tasks.models import LogisticRegression

DIM = 60
CLASSES = 10
MAX_SAMPLES_PER_USER = 1000


def generate_synthetic(
    num_users: int, alpha: float, beta: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, user) for ``num_users`` users of Synthetic(alpha, beta); sizes capped at 1000."""
    rng = np.random.default_rng([seed, 31337])
    sizes = np.minimum(rng.lognormal(4, 2, num_users).astype(int) + 50, MAX_SAMPLES_PER_USER)
    cov = np.power(np.arange(1, DIM + 1, dtype=np.float64), -1.2)
    xs, ys, users = [], [], []
    for k in range(num_users):
        u_k = rng.normal(0.0, alpha)
        big_b = rng.normal(0.0, beta)
        w = rng.normal(u_k, 1.0, (DIM, CLASSES))
        b = rng.normal(u_k, 1.0, CLASSES)
        v = rng.normal(big_b, 1.0, DIM)
        x = rng.normal(v, np.sqrt(cov), (int(sizes[k]), DIM))
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int64))
        users.append(np.full(int(sizes[k]), k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(users)


class SyntheticTask(Task):
    """Synthetic(1, 1) by default; one natural client per federation node."""

    name = "synthetic"
    l2 = 1e-3
    models = ("convex",)
    natural_clients = True
    default_partitioner = "natural"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        self.alpha = alpha
        self.beta = beta

    def load(self, options: DataOptions) -> TaskData:
        """Generate one user per partition; no separate server test set."""
        x, y, users = generate_synthetic(
            options.num_partitions, self.alpha, self.beta, options.seed
        )
        return TaskData(ArrayData(x, y), None, CLASSES, groups=users)

    def build_model(self, personalization: str) -> nn.Module:
        """Multinomial logistic regression 60 -> 10."""
        return LogisticRegression(
            DIM, CLASSES, personal_features=20 if personalization == "split-input" else 0
        )
