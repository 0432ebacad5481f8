"""A federated least-squares task in float64 for exact tests of the ADMM machinery.

Client i holds ``f_i(w) = (1/2n_i)||X_i w − y_i||²``, so ``∇f_i(w) = A_i w − b_i`` with
``A_i = X_iᵀX_i/n_i`` and ``b_i = X_iᵀy_i/n_i``; clients differ in their feature scales and
true weights, so the global optimum ``(Σ α_i A_i)^{-1} Σ α_i b_i`` differs from every local one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData
from tests.conftest import default_config

DIM = 5


def exact_config(tmp_path: Path, algorithm: str) -> dict[str, Any]:
    """Run config for exact float64 tests on ``lsq``: natural clients, full-batch plain steps,
    no local test split, no client evaluation (callers add their own keys on top).
    """
    return default_config() | {
        "algorithm": algorithm,
        "task": "lsq",
        "partitioner": "natural",
        "seed": 3,
        "local-test-fraction": 0.0,
        "batch-size": 10_000,
        "momentum": 0.0,
        "weight-decay": 0.0,
        "fraction-evaluate": 0.0,
        "client-weighting": "uniform",
        "output-dir": str(tmp_path),
    }


def lsq_clients(num: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X_i, y_i) for ``num`` heterogeneous clients."""
    rng = np.random.default_rng([seed, 5])
    out = []
    for i in range(num):
        n = 20 + 7 * i
        x = rng.normal(size=(n, DIM)) * rng.uniform(0.5, 2.0, size=DIM)
        w_true = rng.normal(size=DIM) + i
        out.append((x, x @ w_true + 0.1 * rng.normal(size=n)))
    return out


class LeastSquaresTask(Task):
    """Linear regression without bias, float64, one natural client per partition."""

    name = "lsq"
    natural_clients = True

    def load(self, options: DataOptions) -> TaskData:
        clients = lsq_clients(options.num_partitions, options.seed)
        x = np.concatenate([c[0] for c in clients])
        y = np.concatenate([c[1] for c in clients])
        groups = np.concatenate([np.full(len(c[1]), i) for i, c in enumerate(clients)])
        return TaskData(ArrayData(x, y), None, 1, groups=groups.astype(np.int64))  # type: ignore[arg-type]

    def build_model(self, personalization: str) -> nn.Module:
        return nn.Linear(DIM, 1, bias=False).double()

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((model(x).squeeze(1) - y) ** 2).mean()

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"loss": float(self.objective(model, x, y))}


DIM_U, DIM_V = 3, 2


class SplitLinear(nn.Module):
    """``ŷ = X_u u + X_v v``: a shared map on the first DIM_U features, a personal one on the rest."""

    personal_presets = {"split-input": ("personal",)}  # noqa: RUF012

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(DIM_U, 1, bias=False).double()
        self.personal = nn.Linear(DIM_V, 1, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(x[:, :DIM_U]) + self.personal(x[:, DIM_U:])


class JointQuadraticTask(LeastSquaresTask):
    """Least squares in ``w = [u; v]``: ``f_i`` is the joint quadratic of ALGORITHMS.md §6 M2 with
    ``H_i = X_iᵀX_i/n_i`` and ``[q_i; p_i] = X_iᵀy_i/n_i`` (u first, then v)."""

    name = "joint-quadratic"

    def build_model(self, personalization: str) -> nn.Module:
        return SplitLinear()


def flat_record(record: Any) -> np.ndarray:
    """The arrays of an ArrayRecord as one flat vector, in record order."""
    return np.concatenate([a.numpy().ravel() for a in record.values()])


def train_contents_by_round(grid: Any) -> dict[int, dict[int, Any]]:
    """``{round: {partition: content}}`` of every training message an InProcessGrid sent."""
    from flwr.app import MessageType

    from protocol.records import ROUND

    sent: dict[int, dict[int, Any]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            pid = int(grid.contexts[msg.metadata.dst_node_id].node_config["partition-id"])
            sent.setdefault(int(msg.content[ROUND]["server-round"]), {})[pid] = msg.content
    return sent
