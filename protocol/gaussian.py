"""Gaussian families and natural-parameter algebra shared by Bayesian ADMM's server and clients
(ALGORITHMS.md §2.1, §2.3-2.5, §2.9).
"""

from __future__ import annotations

from enum import Enum

import torch


class Family(Enum):
    """Which Gaussians the rule works with (§2.3, §2.5, §2.4)."""

    ISOTROPIC = "isotropic"
    DIAGONAL = "diagonal"
    FULL = "full"


def precision_times(family: Family, precision: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``S x``: element-wise for vector precisions, a matrix product for the full family."""
    return precision @ x if family is Family.FULL else precision * x


def mean_from_natural(family: Family, precision: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """``m = S^{-1} η`` (§2.1)."""
    if family is Family.FULL:
        solved: torch.Tensor = torch.linalg.solve(precision, eta)
        return solved
    return eta / precision


def floor_precision(
    family: Family, precision: torch.Tensor, floor: float
) -> tuple[torch.Tensor, int]:
    """``S`` with every entry (full family: eigenvalue of the symmetrised matrix) below ``floor``
    raised to it, and how many were raised (ALGORITHMS.md §2.9 pitfall).
    """
    if family is not Family.FULL:
        low = int((precision < floor).sum())
        return (precision.clamp(min=floor) if low else precision), low
    sym = 0.5 * (precision + precision.T)
    eigvals, eigvecs = torch.linalg.eigh(sym)
    low = int((eigvals < floor).sum())
    if not low:
        return sym, 0
    return (eigvecs * eigvals.clamp(min=floor)) @ eigvecs.T, low


def sample_gaussian(
    family: Family, mean: torch.Tensor, precision: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One draw from ``N(mean, S^{-1})``: ``m + ε/√S`` or ``m + L^{-T} ε`` with ``S = L Lᵀ``."""
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float64).to(mean.device)
    if family is not Family.FULL:
        return mean + eps / precision.sqrt()
    chol = torch.linalg.cholesky(precision)
    noise: torch.Tensor = torch.linalg.solve_triangular(chol.T, eps.unsqueeze(1), upper=True)
    return mean + noise.squeeze(1)
