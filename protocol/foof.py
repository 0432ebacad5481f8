"""FOOF layer layout (ALGORITHMS.md §3.4): which layers carry a factor, and a layer as a matrix.

Both sides derive the layout from the task's model and the shared names with ``foof_layers``,
so the client's factors and the server's mixing agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Arrays = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """A FOOF-preconditioned layer (§3.4): its module, weight and bias names, factor side."""

    name: str
    """Module path (``"layer"`` for a model that is itself one layer): the factor's array name."""
    module: str
    """Module path for ``model.get_submodule`` (``""``: the model itself)."""
    weight: str
    bias: str | None
    size: int
    """Side of ``A_l``: ``d_in`` (Conv2d: ``C_in·k_h·k_w``), +1 with a bias."""


def foof_layers(model: nn.Module, shared: Sequence[str]) -> list[Layer]:
    """The Linear and (ungrouped) Conv2d layers whose weight and bias are all in ``shared``.

    Grouped / depthwise convolutions would need per-group factors (§3.4); they, and layers
    only partly in the shared block, are left to the plain step and the weighted mean.
    """
    names = set(shared)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1
            or module.padding_mode != "zeros"
            or not isinstance(module.padding, tuple)
        ):
            continue
        prefix = f"{name}." if name else ""
        weight = f"{prefix}weight"
        bias = f"{prefix}bias" if module.bias is not None else None
        if weight in names and (bias is None or bias in names):
            size = module.weight[0].numel() + (bias is not None)
            out.append(Layer(name or "layer", name, weight, bias, size))
    return out


def layer_matrix(arrays: Mapping[str, torch.Tensor], layer: Layer) -> torch.Tensor:
    """``W = [weight.reshape(d_out, -1) | bias]``: the layer as a ``d_out × size`` matrix."""
    weight = arrays[layer.weight]
    matrix = weight.reshape(weight.shape[0], -1)
    if layer.bias is not None:
        matrix = torch.cat([matrix, arrays[layer.bias].reshape(-1, 1)], dim=1)
    return matrix


def split_layer_matrix(
    matrix: torch.Tensor, layer: Layer, shapes: Mapping[str, tuple[int, ...]]
) -> Arrays:
    """Inverse of ``layer_matrix``: the weight (and bias) tensors in their shapes."""
    shape = shapes[layer.weight]
    out = {layer.weight: matrix[:, : math.prod(shape[1:])].reshape(shape)}
    if layer.bias is not None:
        out[layer.bias] = matrix[:, -1].reshape(shapes[layer.bias])
    return out
