"""The client's objective over its flattened parameters, for ``torch.func`` derivatives.

Shared by the solvers that need exact derivatives of ``f_i`` over the whole local training set:
the Bayesian-ADMM VON step (``bayes.newton``, ALGORITHMS.md §2.4) and the FedPM / LocalNewton
exact-Hessian steps (``newton``, §3.2). The function itself is ``tasks.functional``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from client_app.solvers.base import SolverInput
from tasks import functional


def flat_objective(
    inp: SolverInput, shapes: dict[str, tuple[int, ...]], scale: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``θ ↦ scale · f_k(θ)`` (float64) on the whole local training set, ``θ`` the flat block."""
    return functional.flat_objective(inp.task, inp.model, inp.train.x, inp.train.y, shapes, scale)


def sum_loss(
    inp: SolverInput, shapes: dict[str, tuple[int, ...]]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``θ ↦ ℓ_k(θ) = N_k f_k(θ)`` on the whole local training set, ``θ`` the flat block."""
    return flat_objective(inp, shapes, float(len(inp.train)))
