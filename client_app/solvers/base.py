"""What every local solver receives and returns, and the one minibatch SGD loop they share."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from client_app.state import ClientState
from tasks.base import Task
from tasks.materialize import Tensors

ExtraGrad = Callable[[str, torch.Tensor], torch.Tensor | None]
"""Gradient of a solver's extra term (proximal, multiplier) for one named parameter."""


@dataclass
class SolverInput:
    """A client's round: its model (already holding ``u^t`` and ``v_i``), data, config, state."""

    task: Task
    model: nn.Module
    shared: list[str]
    personal: list[str]
    u: dict[str, torch.Tensor]
    train: Tensors
    config: Mapping[str, Any]
    state: ClientState
    generator: torch.Generator
    received: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """The message's other ArrayRecords (rule-specific, e.g. a global precision), on device."""

    @property
    def alpha(self) -> float:
        """Client weight ``α_i`` in ``Σ_i α_i f_i`` (sent by the server)."""
        return float(self.config["alpha"])

    def set_params(self, values: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the named parameters in ``values`` (e.g. a warm start)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)

    def named(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Current values of parameters ``names`` (detached copies)."""
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().clone() for n in names}


@dataclass
class SolverOutput:
    """ArrayRecords to reply with (name -> tensors) and the client's metrics."""

    records: dict[str, dict[str, torch.Tensor]]
    metrics: dict[str, float]


Solver = Callable[[SolverInput], SolverOutput]


def local_sgd(
    inp: SolverInput,
    names: list[str],
    epochs: int,
    extra_grad: ExtraGrad | None = None,
    stop: Callable[[], bool] | None = None,
) -> float:
    """Minibatch SGD on ``f_i`` (+ the extra term) over parameters ``names`` only.

    Uses the config's ``lr``, ``momentum``, ``weight-decay`` and ``batch-size``; the batch order
    comes from ``inp.generator``. ``stop`` is asked after every epoch (an inexactness rule).
    Returns the mean training loss of the last epoch.
    """
    model, cfg, data = inp.model, inp.config, inp.train
    params = dict(model.named_parameters())
    trainable = set(names)
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    opt = torch.optim.SGD(
        [params[n] for n in names],
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight-decay"]),
    )
    batch = int(cfg["batch-size"])
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=inp.generator).to(data.y.device)
        total, count = 0.0, 0
        for idx in torch.split(order, batch):
            opt.zero_grad(set_to_none=True)
            loss = inp.task.objective(model, data.x[idx], data.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            if extra_grad is not None:
                for name in names:
                    g = extra_grad(name, params[name])
                    if g is not None:
                        params[name].grad.add_(g)  # type: ignore[union-attr]
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
        if stop is not None and stop():
            break
    for p in params.values():
        p.requires_grad_(True)
    return last


def full_grad_sq_norm(inp: SolverInput, names: list[str], extra_grad: ExtraGrad) -> float:
    """``||∇ (f_i + extra)||²`` over parameters ``names`` on the whole training set."""
    params = dict(inp.model.named_parameters())
    inp.model.zero_grad(set_to_none=True)
    inp.task.objective(inp.model, inp.train.x, inp.train.y).backward()  # type: ignore[no-untyped-call]
    total = 0.0
    for name in names:
        grad = params[name].grad
        g = torch.zeros_like(params[name]) if grad is None else grad.detach().clone()
        extra = extra_grad(name, params[name])
        total += float(((g if extra is None else g + extra) ** 2).sum())
    inp.model.zero_grad(set_to_none=True)
    return total


def sq_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """``||x||`` of a group of tensors seen as one vector."""
    total = sum(float((t.double() ** 2).sum()) for t in tensors.values())
    return math.sqrt(total)
