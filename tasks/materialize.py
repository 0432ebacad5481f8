"""A task made concrete on a device: data as tensors, and its seeded initial model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tasks.base import Task
from tasks.data import ArrayData
from tasks.personalization import split_names


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Tensors:
    """A dataset as tensors on the training device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def as_tensors(data: ArrayData, device: torch.device, dtype: torch.dtype) -> Tensors:
    """Move ``data`` to ``device`` with features in ``dtype``."""
    return Tensors(
        torch.as_tensor(data.x, device=device).to(dtype), torch.as_tensor(data.y, device=device)
    )


@dataclass(frozen=True)
class Skeleton:
    """A model instance with its initial values and its shared/personal split."""

    model: nn.Module
    init: dict[str, torch.Tensor]
    shared: list[str]
    personal: list[str]


def build_skeleton(task: Task, personalization: str, seed: int) -> Skeleton:
    """The task's model initialised from ``seed`` (identical on server and every client)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build_model(personalization)
    shared, personal = split_names(model, personalization)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Skeleton(model, init, shared, personal)
