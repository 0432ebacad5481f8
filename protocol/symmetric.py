"""Symmetric matrices as their upper triangle (row-major): how curvature travels (§3.3)."""

from __future__ import annotations

import math

import torch


def pack_symmetric(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle (diagonal included) of a square ``matrix``, row-major, as a vector."""
    n = matrix.shape[0]
    rows, cols = torch.triu_indices(n, n, device=matrix.device)
    return matrix[rows, cols]


def unpack_symmetric(packed: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle ``pack_symmetric`` returned."""
    n = round((math.sqrt(8 * packed.numel() + 1) - 1) / 2)
    if n * (n + 1) // 2 != packed.numel():
        raise ValueError(f"{packed.numel()} values are not the upper triangle of a square matrix")
    rows, cols = torch.triu_indices(n, n, device=packed.device)
    out = torch.zeros(n, n, dtype=packed.dtype, device=packed.device)
    out[rows, cols] = packed
    out[cols, rows] = packed
    return out


def triu_size(n: int) -> int:
    """Number of values in the upper triangle of an ``n×n`` matrix."""
    return n * (n + 1) // 2
