"""How several modalities travel as one flat float32 row, and how the model splits it again.

Every task keeps the project's single-array pipeline (``ArrayData.x`` is ``N x width``). A
``Layout`` lists the modalities in order; a row is each modality's values, flattened in
C order and concatenated, followed by one length column per sequence modality (the number
of valid steps, stored as an exact float; steps past it are zero padding and masked).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

ENCODERS = {"mlp": 1, "conv-gru": 2, "gru": 2, "cnn": 3}
"""Encoder kind -> rank of the per-sample shape: ``mlp`` a static vector ``(D,)`` (one
token), ``conv-gru``/``gru`` a sequence ``(T, D)`` (one token per encoded step, with a length
column), ``cnn`` an image ``(C, H, W)`` (one token)."""


@dataclass(frozen=True)
class Modality:
    """One input modality: its name (a module name in the model), encoder kind and shape."""

    name: str
    encoder: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"modality name {self.name!r} must be a Python identifier")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder {self.encoder!r} unknown; allowed: {', '.join(ENCODERS)}")
        if len(self.shape) != ENCODERS[self.encoder] or min(self.shape) < 1:
            raise ValueError(
                f"modality {self.name!r}: encoder {self.encoder!r} needs a positive shape of "
                f"rank {ENCODERS[self.encoder]}, got {self.shape}"
            )

    @property
    def sequential(self) -> bool:
        """True for sequences, which carry a length column."""
        return self.encoder in ("conv-gru", "gru")

    @property
    def size(self) -> int:
        """Number of values of one sample of this modality."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """The ordered modalities of a task and the column layout of its flat rows."""

    modalities: tuple[Modality, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a layout needs distinct modality names, got {names}")

    @property
    def width(self) -> int:
        """Columns of one packed row: all values, then the length columns."""
        return sum(m.size for m in self.modalities) + sum(m.sequential for m in self.modalities)

    def pack(
        self, values: Mapping[str, NDArray[np.float32]], lengths: Mapping[str, NDArray[np.int64]]
    ) -> NDArray[np.float32]:
        """One ``N x width`` float32 array from per-modality ``N x *shape`` arrays and lengths.

        ``lengths`` holds the valid steps of every sequence modality (and of no other).
        """
        n = len(next(iter(values.values())))
        blocks: list[NDArray[np.float32]] = []
        for m in self.modalities:
            if values[m.name].shape != (n, *m.shape):
                raise ValueError(
                    f"modality {m.name!r}: values of shape {values[m.name].shape}, "
                    f"expected {(n, *m.shape)}"
                )
            blocks.append(values[m.name].reshape(n, m.size).astype(np.float32, copy=False))
        sequences = [m for m in self.modalities if m.sequential]
        if set(lengths) != {m.name for m in sequences}:
            raise ValueError(
                f"lengths given for {sorted(lengths)}, expected {[m.name for m in sequences]}"
            )
        for m in sequences:
            steps = lengths[m.name]
            if steps.shape != (n,) or np.any((steps < 0) | (steps > m.shape[0])):
                raise ValueError(f"modality {m.name!r}: lengths must be {n} values in 0..T")
            blocks.append(steps.astype(np.float32)[:, None])
        return np.concatenate(blocks, axis=1)

    def unpack(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per modality, in order: ``(B x *shape values, B lengths or None)``."""
        if x.shape[1] != self.width:
            raise ValueError(f"input has {x.shape[1]} columns, this layout has {self.width}")
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        offset = sum(m.size for m in self.modalities)
        start = 0
        for m in self.modalities:
            block = x[:, start : start + m.size].reshape(x.shape[0], *m.shape)
            start += m.size
            steps = None
            if m.sequential:
                steps = x[:, offset].round().long().clamp(0, m.shape[0])
                offset += 1
            out.append((block, steps))
        return out
