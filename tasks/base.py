"""The task abstraction: data loader, model factory, objective and evaluation in one place."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from tasks.data import TaskData
from tasks.metrics import classification_metrics


@dataclass(frozen=True)
class DataOptions:
    """Run-config values a loader may use (``data-dir``, ``download``, ``seed``, clients)."""

    data_dir: str
    download: bool
    seed: int
    num_partitions: int


class Task(ABC):
    """A federated learning task: its data, its model and how a model is scored on it.

    Subclasses give ``load`` and ``build_model``; the objective is the mean cross-entropy
    plus ``(l2/2)·||w||²`` (part of every client's ``f_i``, so it enters every fixed point).
    """

    name: str = ""
    l2: float = 0.0
    natural_clients: bool = False
    models: tuple[str, ...] = ("deep",)
    """The models the task offers, its default first: ``deep`` (a network) or ``convex``
    (multinomial logistic regression with the L2 term: strongly convex, a unique optimum)."""
    model: str = ""
    """The chosen one of ``models`` (``''`` = the default); set by ``select_model``."""
    default_partitioner: str = "iid"

    @property
    def convex(self) -> bool:
        """The objective is convex in the parameters (a unique optimum: ``subopt`` is logged)."""
        return (self.model or self.models[0]) == "convex"

    def select_model(self, model: str) -> None:
        """Use ``model`` (``''`` = the task's default); ValueError names the offered ones."""
        if model and model not in self.models:
            raise ValueError(
                f"task={self.name!r} has no model={model!r}; it offers: "
                + ", ".join(map(repr, self.models))
            )
        self.model = model or self.models[0]

    @abstractmethod
    def load(self, options: DataOptions) -> TaskData:
        """Return the pool to partition and the server test set (reads only local files)."""

    @abstractmethod
    def build_model(self, personalization: str) -> nn.Module:
        """A freshly initialised model (call under a seeded torch generator)."""

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss ``f_i`` of ``model`` on one batch, including the L2 term."""
        loss = nn.functional.cross_entropy(model(x), y)
        if self.l2:
            loss = loss + 0.5 * self.l2 * sum((p * p).sum() for p in model.parameters())
        return loss

    @torch.no_grad()
    def predict_proba(self, model: nn.Module, x: torch.Tensor) -> NDArray[np.float64] | None:
        """Predicted class probabilities (softmax of the logits, float64), for calibration and
        posterior-predictive metrics; tasks that are not classifiers return None.
        """
        model.eval()
        logits = torch.cat([model(xb) for xb in torch.split(x, 4096)])
        model.train()
        probs: NDArray[np.float64] = torch.softmax(logits.double(), dim=1).cpu().numpy()
        return probs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss, accuracy, macro-F1 and AUC of ``model`` on features ``x``, labels ``y``."""
        if len(y) == 0:
            return {"loss": math.nan, "accuracy": math.nan, "macro-f1": math.nan, "auc": math.nan}
        model.eval()
        logits = torch.cat([model(xb) for xb in torch.split(x, 4096)])
        loss = float(nn.functional.cross_entropy(logits, y))
        probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
        model.train()
        return classification_metrics(y.cpu().numpy().astype(np.int64), probs, loss)
