"""A task's objective as a function of flattened parameters, for ``torch.func`` derivatives.

The flat layout (``flatten`` / ``unflatten``: named arrays in order, one float64 vector) is
the coordinate system of full-matrix curvature: Bayesian ADMM's full precisions (§2.4), FedPM's
exact Hessians (§3.3) and the server's centralized optimum for ``subopt``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from tasks.base import Task


def flatten(arrays: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The arrays, in order, as one float64 vector (the flat layout of a block)."""
    return torch.cat([a.reshape(-1).to(torch.float64) for a in arrays.values()])


def unflatten(flat: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten`` for arrays of ``shapes`` (views of ``flat``, in its dtype)."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out


class _Objective(nn.Module):
    """``(x, y) ↦ task.objective(model, x, y)`` as a module, for ``torch.func.functional_call``."""

    def __init__(self, task: Task, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's mean loss on ``(x, y)``."""
        return self.task.objective(self.model, x, y)


def flat_objective(
    task: Task,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    shapes: Mapping[str, tuple[int, ...]],
    scale: float = 1.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``θ ↦ scale · task.objective(model_θ, x, y)`` in float64, ``θ`` the flat parameters.

    The objective is the task's mean loss with its L2 term; ``θ`` is cast to the model's dtype
    inside, so ``torch.func.grad`` / ``hessian`` come back in float64 over ``shapes``' layout.
    """
    wrapper = _Objective(task, model)
    dtype = next(model.parameters()).dtype

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {f"model.{k}": v.to(dtype) for k, v in unflatten(theta, shapes).items()}
        value: torch.Tensor = functional_call(wrapper, params, (x, y))
        return scale * value.to(torch.float64)

    return loss
