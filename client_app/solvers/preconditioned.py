"""FedPM / LocalNewton clients: ``K`` local preconditioned steps (ALGORITHMS.md §3.2, §3.4, §3.7).

From ``θ^{t,0} = θ^t`` the client takes ``K = newton-steps`` steps

    θ^{t,k+1} = θ^{t,k} − η (P_i^{t,k})^{-1} ∇f_i(θ^{t,k})

with step size ``η = eta`` (a key of its own: ``lr`` stays the SGD learning rate, used here
only for parameters outside the FOOF layers) and damping ``λ = damping``, and replies
``θ_i = θ^{t,K}`` plus, for FedPM, the preconditioner of the last step (``CURVATURE``, §3.3):

* ``hessian``: ``P = ∇²f_i(θ) + λI`` exact, by ``torch.func.hessian`` of ``f_i`` over the flattened
  parameters (convex models), full-batch ``∇f_i``; sent as the upper triangle. The client also
  reports ``f_i(θ^t)`` (``objective``), the value the server's Levenberg–Marquardt
  globalization (``strategies.fedpm``) needs; nothing scales ``P_i``, so one round with
  ``K = 1`` stays the global step ``θ − η (Σ w_i P_i)^{-1} Σ w_i ∇f_i`` (§3.5).
* ``foof`` (Benzing 2022, §3.4): per Linear / Conv2d layer, ``W ← W − η G (A + λI)^{-1}`` with
  ``G = ∂f/∂W`` (``[weight | bias]``) and ``A`` the uncentred second moment of the layer's inputs
  on the step's minibatch (``batch-size``; im2col patches for Conv2d, a 1 appended for the bias).
  ``A`` is recomputed every ``foof-refresh`` steps and smoothed as ``A ← β A + (1−β) A_batch``
  (``β = foof-ema``; the first estimate of a round is the batch's own: statistics reset every
  round, §3.3). Other parameters take plain SGD steps with ``lr``.
* ``diagonal``: as ``foof`` with only the diagonal of ``A`` (element-wise step
  ``G / (diag A + λ)``); other parameters ``p ← p − lr ∇p`` with curvature ``1 + λ``.

Minibatches (foof, diagonal) cycle through seeded permutations of the local data. No state is
kept across rounds (§3.3: recommended default).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.func import grad, hessian

from client_app.solvers.base import Solver, SolverInput, SolverOutput
from client_app.solvers.functional import flat_objective
from protocol.fedpm import OBJECTIVE
from protocol.foof import Layer, foof_layers, layer_matrix, split_layer_matrix
from protocol.records import CURVATURE, SHARED, TRIU
from protocol.symmetric import pack_symmetric
from tasks.functional import flatten, unflatten

Arrays = dict[str, torch.Tensor]


# ----------------------------------------------------------------------- FOOF factors (§3.4)
def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``a`` (float64) whose outer products make the layer's FOOF factor.

    Linear: one row per example (leading dimensions flattened); Conv2d: one im2col patch
    ``p ∈ R^{C_in·k_h·k_w}`` per example and output location (``torch.nn.functional.unfold``
    with the layer's kernel, dilation, padding, stride). A column of ones is appended when
    the layer has a bias (bias folded in as the last input).
    """
    if isinstance(module, nn.Conv2d):
        cols = nn.functional.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    rows = rows.to(torch.float64)
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)
    return rows


def foof_factor(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``A = (1/R) Σ_r a_r a_rᵀ`` over the ``R`` rows of ``layer_inputs`` (§3.4)."""
    rows = layer_inputs(module, x)
    return rows.T @ rows / rows.shape[0]


def foof_diagonal(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``diag A`` without forming ``A``: the mean of the squared rows of ``layer_inputs``."""
    return (layer_inputs(module, x) ** 2).mean(0)


class _InputCapture:
    """Forward pre-hooks that keep each FOOF layer's input while ``active``."""

    def __init__(self, model: nn.Module, layers: list[Layer]) -> None:
        self.active = False
        self.inputs: dict[str, torch.Tensor] = {}
        self.modules = {layer.name: model.get_submodule(layer.module) for layer in layers}
        self.handles = [
            module.register_forward_pre_hook(self._hook(name))
            for name, module in self.modules.items()
        ]

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self.active:
                self.inputs[name] = args[0].detach()

        return hook

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self.handles:
            handle.remove()


def _batches(inp: SolverInput) -> Iterator[torch.Tensor]:
    """Minibatch indices of ``batch-size``, cycling through seeded permutations."""
    batch, n = int(inp.config["batch-size"]), len(inp.train)
    while True:
        order = torch.randperm(n, generator=inp.generator).to(inp.train.y.device)
        yield from torch.split(order, batch)


# ----------------------------------------------------------------------- the local steps
def hessian_steps(inp: SolverInput) -> tuple[Arrays, Arrays, float]:
    """``K`` exact (damped) Newton steps ``θ ← θ − η (∇²f_i + λI)^{-1} ∇f_i`` on the local data.

    Returns ``(θ_i, {TRIU: packed P}, f_i(θ_i))``: the preconditioner of the last step
    (``P`` symmetrised).
    """
    cfg = inp.config
    shapes = {k: tuple(inp.u[k].shape) for k in inp.shared}
    f = flat_objective(inp, shapes)
    dtype = inp.u[inp.shared[0]].dtype
    theta = flatten(inp.named(inp.shared))
    eta, lam = float(cfg["eta"]), float(cfg["damping"])
    eye = torch.eye(theta.numel(), dtype=torch.float64, device=theta.device)
    precond = eye
    for _ in range(int(cfg["newton-steps"])):
        g = grad(f)(theta)
        h = hessian(f)(theta)
        precond = 0.5 * (h + h.T) + lam * eye
        theta = theta - eta * torch.linalg.solve(precond, g)
    named = {k: v.to(dtype) for k, v in unflatten(theta, shapes).items()}
    inp.set_params(named)
    return named, {TRIU: pack_symmetric(precond).to(dtype)}, float(f(theta))


def objectives(inp: SolverInput) -> dict[str, float]:
    """``{OBJECTIVE: f_i(θ^t)}``: the full-batch objective at the received point, for the
    server's globalization (``protocol.fedpm``).
    """
    shapes = {k: tuple(inp.u[k].shape) for k in inp.shared}
    return {
        OBJECTIVE: float(flat_objective(inp, shapes)(flatten({k: inp.u[k] for k in inp.shared})))
    }


def foof_steps(inp: SolverInput, diagonal: bool) -> tuple[Arrays, Arrays, float]:
    """``K`` FOOF (or diagonal-FOOF) minibatch steps (§3.4, §3.7).

    Returns ``(θ_i, damped preconditioner of the last step, mean minibatch loss)``: packed
    ``Ā_l = A_l + λI`` per layer, or (diagonal) vectors in the shared block's layout.
    """
    cfg, model = inp.config, inp.model
    eta, lam, lr = float(cfg["eta"]), float(cfg["damping"]), inp.lr
    ema, refresh = float(cfg["foof-ema"]), int(cfg["foof-refresh"])
    params = dict(model.named_parameters())
    layers = foof_layers(model, inp.shared)
    in_layers = {n for layer in layers for n in (layer.weight, layer.bias) if n is not None}
    others = [n for n in inp.shared if n not in in_layers]
    shapes = {n: tuple(params[n].shape) for n in inp.shared}
    for name, p in params.items():
        p.requires_grad_(name in set(inp.shared))
    capture = _InputCapture(model, layers)
    factors: Arrays = {}
    batches = _batches(inp)
    losses = []
    model.train()
    try:
        for step in range(int(cfg["newton-steps"])):
            idx = next(batches)
            capture.active = step % refresh == 0
            model.zero_grad(set_to_none=True)
            loss = inp.task.objective(model, inp.train.x[idx], inp.train.y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            losses.append(float(loss.detach()))
            if capture.active:
                for layer in layers:
                    module, x = capture.modules[layer.name], capture.inputs[layer.name]
                    new = foof_diagonal(module, x) if diagonal else foof_factor(module, x)
                    old = factors.get(layer.name)
                    factors[layer.name] = new if old is None else ema * old + (1 - ema) * new
                capture.active = False
            with torch.no_grad():
                grads = {n: p.grad for n, p in params.items() if p.grad is not None}
                for layer in layers:
                    g = layer_matrix(grads, layer).to(torch.float64)
                    if diagonal:
                        direction = g / (factors[layer.name] + lam)
                    else:
                        damped = factors[layer.name] + lam * torch.eye(
                            layer.size, dtype=torch.float64, device=g.device
                        )
                        direction = torch.linalg.solve(damped, g.T).T  # G (A + λI)^{-1}
                    current = layer_matrix(params, layer).to(torch.float64)
                    for name, value in split_layer_matrix(
                        current - eta * direction, layer, shapes
                    ).items():
                        params[name].copy_(value)
                for name in others:
                    if params[name].grad is not None:
                        params[name].sub_(lr * params[name].grad)  # type: ignore[operator]
    finally:
        capture.remove()
        for p in params.values():
            p.requires_grad_(True)
    dtype = params[inp.shared[0]].dtype
    curvature: Arrays = {}
    if diagonal:
        for name in inp.shared:
            curvature[name] = torch.full_like(params[name], 1.0 + lam)
        for layer in layers:
            d_out = shapes[layer.weight][0]
            block = (factors[layer.name] + lam).expand(d_out, layer.size)
            curvature.update(split_layer_matrix(block.to(dtype), layer, shapes))
        curvature = {n: curvature[n].contiguous() for n in inp.shared}
    else:
        for layer in layers:
            eye = torch.eye(layer.size, dtype=torch.float64, device=factors[layer.name].device)
            curvature[layer.name] = pack_symmetric(factors[layer.name] + lam * eye).to(dtype)
    return inp.named(inp.shared), curvature, sum(losses) / max(len(losses), 1)


def local_steps(inp: SolverInput) -> tuple[Arrays, Arrays, float]:
    """The ``curvature`` kind's local steps: ``(θ_i, last preconditioner, train loss)``."""
    kind = str(inp.config["curvature"])
    if kind == "hessian":
        return hessian_steps(inp)
    if kind in ("foof", "diagonal"):
        return foof_steps(inp, diagonal=kind == "diagonal")
    raise ValueError(f"curvature={kind!r}; expected 'hessian', 'foof' or 'diagonal'")


def fedpm(inp: SolverInput) -> SolverOutput:
    """FedPM client (§3.7): local preconditioned steps; reply ``θ_i`` and the last ``P_i``
    (exact Hessians: with the ``objectives`` of the server's backtracking).
    """
    values = objectives(inp) if inp.config["curvature"] == "hessian" else {}
    theta, curvature, loss = local_steps(inp)
    drift = flatten(theta) - flatten(inp.u)
    return SolverOutput(
        {SHARED: theta, CURVATURE: curvature},
        {"train-loss": loss, "drift-norm": float(drift.norm()), **values},
    )


def local_newton(inp: SolverInput) -> SolverOutput:
    """LocalNewton client (§5): the same local steps; reply ``θ_i`` only (simple mixing)."""
    theta, _, loss = local_steps(inp)
    drift = flatten(theta) - flatten(inp.u)
    return SolverOutput({SHARED: theta}, {"train-loss": loss, "drift-norm": float(drift.norm())})


FEDPM = Solver("fedpm-newton", fedpm, returns=(SHARED, CURVATURE))
"""FedPM / FedNL client: local preconditioned steps, reply θ_i and P_i."""
LOCAL_NEWTON = Solver("local-newton", local_newton, returns=(SHARED,))
"""LocalNewton client: the same steps, reply θ_i only."""
