"""What every local solver receives and returns, its declaration, and the one SGD loop they share.

A solver is a pure step over explicit state: ``Solver.step(SolverInput) -> SolverOutput``, where
the input carries the client's saved state (read-only) and the output the complete new state.
Only the ClientApp handler loads, stores and commits state (``client_app.state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from protocol.round import RoundValues
from tasks.base import Task
from tasks.materialize import Tensors

Groups = dict[str, dict[str, torch.Tensor]]
"""Solver state: group name -> array name -> tensor."""

ExtraGrad = Callable[[str, torch.Tensor], torch.Tensor | None]
"""Gradient of a solver's extra term (proximal, multiplier) for one named parameter."""


@dataclass(frozen=True)
class SavedState:
    """The client's state as the solver finds it: groups from its last round (read-only)."""

    groups: Mapping[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)

    def get(self, key: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Copies of group ``key`` on ``device``, or None if the client never stored it."""
        group = self.groups.get(key)
        if group is None:
            return None
        return {k: v.to(device).clone() for k, v in group.items()}


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
    round: RoundValues
    state: SavedState
    generator: torch.Generator
    received: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """The message's other ArrayRecords (rule-specific, e.g. a global precision), on device."""

    @property
    def alpha(self) -> float:
        """Client weight ``α_i`` in ``Σ_i α_i f_i`` (sent by the server in the round record)."""
        return self.round.weight

    @property
    def lr(self) -> float:
        """This round's learning rate (``lr`` after ``lr-schedule``, sent by the server)."""
        return self.round.lr

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
    """ArrayRecords to reply with (name -> tensors), the client's metrics and its new state
    (every group the client keeps; groups not returned are dropped).
    """

    records: dict[str, dict[str, torch.Tensor]]
    metrics: dict[str, float]
    state: Groups = field(default_factory=dict)


@dataclass(frozen=True)
class Solver:
    """A local solver and its message declaration, checked against the rule by the registry.

    ``returns``: the ArrayRecords every reply carries; ``needs``: the records (besides the
    shared block) it requires in the training message; ``keeps``: its state groups;
    ``evaluates``: the state group (one of ``keeps``) whose parameter values the client's
    personalized evaluation loads over ``u^t`` and the personal block (e.g. Ditto's personal
    model ``v_i``), or ``""`` to evaluate ``u^t`` plus the personal block.
    """

    name: str
    step: Callable[[SolverInput], SolverOutput]
    returns: tuple[str, ...]
    needs: tuple[str, ...] = ()
    keeps: tuple[str, ...] = ()
    evaluates: str = ""

    def __post_init__(self) -> None:
        """Refuse an evaluation group the solver does not keep."""
        if self.evaluates and self.evaluates not in self.keeps:
            raise ValueError(
                f"solver {self.name!r} evaluates state group {self.evaluates!r}, which it does "
                f"not keep (keeps: {list(self.keeps)})"
            )

    def __call__(self, inp: SolverInput) -> SolverOutput:
        """Run one client round."""
        return self.step(inp)


@dataclass(frozen=True)
class Quadratic:
    """A separable quadratic stage term over named tensors (ADMM penalties, priors).

        q(w) = Σ_k ⟨g_k, w_k − c_k⟩ + (κ/2)‖w_k − c_k‖²

    With curvature ``κ ≥ 0``, centre ``c`` and linear part ``g`` (zero if None). ``local_sgd``
    takes it by its exact proximal map instead of a gradient step (``prox``), so its curvature
    never limits the step size.
    """

    curvature: float
    center: Mapping[str, torch.Tensor]
    linear: Mapping[str, torch.Tensor] | None = None

    def grad(self, name: str, w: torch.Tensor) -> torch.Tensor | None:
        """``∇q = g + κ(w − c)`` for a parameter of the term (None for the others)."""
        if name not in self.center:
            return None
        out = self.curvature * (w.detach() - self.center[name])
        return out if self.linear is None else out + self.linear[name]

    def value(self, params: Mapping[str, torch.Tensor]) -> float:
        """``q(w)`` in float64 over the term's parameters in ``params``."""
        total = 0.0
        for name, w in params.items():
            if name in self.center:
                diff = (w - self.center[name]).double()
                total += self.curvature / 2 * float((diff**2).sum())
                if self.linear is not None:
                    total += float((self.linear[name].double() * diff).sum())
        return total

    def prox(self, name: str, y: torch.Tensor, step: float) -> torch.Tensor:
        """``argmin_x step·q(x) + ½‖x − y‖² = c + (y − c − step·g)/(1 + step·κ)``."""
        c = self.center[name]
        shifted = y - c if self.linear is None else y - c - step * self.linear[name]
        return c + shifted / (1.0 + step * self.curvature)


class SGDStep:
    """Heavy-ball SGD with coupled weight decay, the update of ``torch.optim.SGD`` (dampening 0,
    no Nesterov) op for op, so its iterates are bit for bit the same:
    ``d = g + wd·w``; ``b = d`` at the first step, then ``b ← μ·b + d``; ``w ← w − lr·b``.

    Hand-written because ``torch.optim`` imports ``torch._dynamo`` at its first step, 2-3 s of
    every training message in a deployed ClientApp (a fresh process per message).
    """

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float) -> None:
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update of every parameter that has a gradient."""
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = torch.clone(grad).detach()
                    self.buffers[i] = buf
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            param.add_(grad, alpha=-lr)


def local_sgd(
    inp: SolverInput,
    names: list[str],
    epochs: int,
    extra_grad: ExtraGrad | None = None,
    stop: Callable[[], bool] | None = None,
    quadratic: Quadratic | None = None,
) -> float:
    """Minibatch SGD on ``f_i`` (+ the extra term) over parameters ``names`` only.

    With ``quadratic`` each step is the proximal-gradient (forward-backward) step

        w ← prox_{lr·q}(w − lr·[ĝ_i(w) + extra(w)]) = c + (w − lr·ĝ − c − lr·g)/(1 + lr·κ).

    On ``f_i + q`` with ``f_i`` convex and ``L_i``-smooth it is stable for ``lr < 2/L_i``
    whatever ``κ`` (on a quadratic ``f_i`` with curvature ``a`` the error contracts by
    ``|1 − lr·a|/(1 + lr·κ)``), whereas the gradient step on ``f_i + q`` needs
    ``lr·(L_i + κ) < 2``. The stationary points are those of ``f_i + q``.

    Uses the round's ``lr`` and the config's ``momentum``, ``weight-decay`` and ``batch-size``;
    the batch order comes from ``inp.generator``. ``stop`` is asked after every epoch (an
    inexactness rule).
    Returns the mean training loss of the last epoch.
    """
    model, cfg, data = inp.model, inp.config, inp.train
    params = dict(model.named_parameters())
    trainable = set(names)
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    opt = SGDStep([params[n] for n in names], float(cfg["momentum"]), float(cfg["weight-decay"]))
    batch = int(cfg["batch-size"])
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=inp.generator).to(data.y.device)
        total, count = 0.0, 0
        for idx in torch.split(order, batch):
            for name in names:
                params[name].grad = None
            loss = inp.task.objective(model, data.x[idx], data.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            if extra_grad is not None:
                for name in names:
                    g = extra_grad(name, params[name])
                    if g is not None:
                        params[name].grad.add_(g)  # type: ignore[union-attr]
            opt.step(inp.lr)
            if quadratic is not None:
                with torch.no_grad():
                    for name in names:
                        if name in quadratic.center:
                            params[name].copy_(quadratic.prox(name, params[name], inp.lr))
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
        if stop is not None and stop():
            break
    for p in params.values():
        p.requires_grad_(True)
    return last


def proximal(center: Mapping[str, torch.Tensor], weight: float) -> ExtraGrad:
    """Gradient ``weight·(w − center)`` of ``(weight/2)||w − center||²`` for the parameters in
    ``center`` (None for the others): FedProx's and Ditto's proximal term, FedDyn's quadratic.
    """

    def grad(name: str, w: torch.Tensor) -> torch.Tensor | None:
        return weight * (w.detach() - center[name]) if name in center else None

    return grad


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
