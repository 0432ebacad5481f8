"""Consensus-ADMM client with partial personalization: FedAPM (ALGORITHMS.md §1.2, Algorithm 1).

Round t, client i holds ``v_i`` (personal block), ``π_i`` (multiplier, ``π_i^0 = 0``), its
last shared copy ``u_i`` and the inexactness level ``ξ_i``; it receives ``u^t``:

(a) personal stage: ``personal-epochs`` of SGD on ``α_i f_i(v, w_u) + (σ/2)||v − v_i^t||²``;
(b) shared stage (inexact): ``shared-epochs`` of SGD on
    ``α_i f_i(v_i^{t+1}, w) + <π_i, w − u^t> + (ρ/2)||w − u^t||²``, warm-started at ``u^t``
    (``warm-start='server'``, the official code) or ``u_i^t`` (``'local'``, the paper); with
    ``xi0 > 0`` it stops after the first epoch at which
    ``||α_i ∇_u f_i + π_i + ρ(w − u^t)||² ≤ ξ_i`` (full-batch), then ``ξ_i ← mu-xi · ξ_i``;
(c) ``π_i ← π_i + ρ (u_i^{t+1} − u^t)``;
(d) reply ``z_i = u_i^{t+1} + π_i/ρ``.

Every step is taken on the stage objective divided by ``α_i``, so ``lr`` is the data-term step
as in FedAvg (the paper's step is ``lr·α_i``: same iterates up to that reparameterisation,
same fixed points). With no personal block, stage (a) is empty and this is exactly FedADMM
(Gong et al. 2022, server step 1; §1.9). ``personal-epochs`` / ``shared-epochs`` of 0 mean
``local-epochs``.

Each stage is safeguarded (``run_stage``): a stage whose objective diverges is rerun from its
start with half the step. This is a step-size rule only, so the fixed points are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from client_app.solvers.base import (
    ExtraGrad,
    Groups,
    Solver,
    SolverInput,
    SolverOutput,
    full_grad_sq_norm,
    local_sgd,
    sq_norm,
)
from protocol.records import Z

PI = "pi"
"""State key of the multiplier ``π_i`` (shared-block shape)."""
U_LOCAL = "u-local"
"""State key of the client's last shared copy ``u_i`` (for ``warm-start='local'``)."""
XI = "xi"
"""State key of the inexactness level ``ξ_i`` (one-element tensor)."""


def stage_epochs(inp: SolverInput, key: str) -> int:
    """Epochs of one stage: the stage's own key, or ``local-epochs`` when it is 0."""
    return int(inp.config[key]) or int(inp.config["local-epochs"])


MAX_HALVINGS = 6
"""Most step halvings of one stage (``run_stage``): ``lr·2^-6`` at the last attempt."""

Penalty = Callable[[dict[str, torch.Tensor]], float]
"""A stage's penalty ``P(w)`` over the stage's parameters, divided by ``α_i`` like its gradient."""


def stage_objective(inp: SolverInput, names: list[str], penalty: Penalty) -> tuple[float, float]:
    """``(f_i, Φ = f_i + P)`` at the current parameters, full-batch, in eval mode (no dropout,
    so no draw from torch's RNG and no gradient), the model's mode restored afterwards.
    """
    training = inp.model.training
    inp.model.eval()
    with torch.no_grad():
        data = float(inp.task.objective(inp.model, inp.train.x, inp.train.y))
    inp.model.train(training)
    return data, data + penalty(inp.named(names))


def run_stage(
    inp: SolverInput,
    names: list[str],
    epochs: int,
    extra_grad: ExtraGrad,
    penalty: Penalty,
    stop: Callable[[], bool] | None = None,
) -> float:
    """``local_sgd`` on the stage objective ``Φ(w) = f_i(w) + P(w)``, with a divergence
    safeguard on the step; returns the last epoch's mean loss.

    SGD with step ``lr`` is stable on ``Φ`` only while ``lr·L_Φ < 2``, ``L_Φ = L_i + ρ/α_i``
    (shared stage) or ``L_i + σ/α_i`` (personal stage), where ``L_i`` is the smoothness of
    ``f_i`` along the stage's block. ``L_i`` is not known and changes with the other block:
    after a round of ADMM the shared block ``u^{t+1} = mean_i z_i`` is extrapolated
    (``z_i = u_i + π_i/ρ``), so a personal head sees larger features and a larger ``L_i``
    (FedAPM with 2 clients at ``lr = 0.2`` diverged in round 2 this way). The stage is declared
    divergent when, from its start ``w_0`` to its end ``w_E``,

        Φ(w_E) is not finite   or   Φ(w_E) − Φ(w_0) > f_i(w_0)

    (its objective rose by more than its whole data loss; SGD noise near a stationary point
    moves ``Φ`` by ``O(lr)``, far less). It is then rerun from ``w_0`` with ``lr/2``, at most
    ``MAX_HALVINGS`` times. The rule changes step sizes only, never the stationarity conditions
    of §1.1, so the fixed points are those of the unguarded method; the number of clients
    enters only through ``α_i`` inside ``Φ``, not through the rule.
    """
    start = inp.named(names)
    data0, phi0 = stage_objective(inp, names, penalty)
    attempt = inp
    for halving in range(1, MAX_HALVINGS + 1):
        loss = local_sgd(attempt, names, epochs, extra_grad, stop)
        phi = stage_objective(inp, names, penalty)[1]
        if math.isfinite(phi) and phi - phi0 <= data0:
            return loss
        inp.set_params(start)
        attempt = replace(inp, round=replace(inp.round, lr=inp.lr / 2**halving))
    return local_sgd(attempt, names, epochs, extra_grad, stop)


def admm(inp: SolverInput) -> SolverOutput:
    """One FedAPM / FedADMM client round; returns ``z_i`` and ``||π_i||``, ``||u_i − u^t||``."""
    cfg, alpha = inp.config, inp.alpha
    rho, sigma = float(cfg["rho"]), float(cfg["sigma"])
    device = inp.u[inp.shared[0]].device
    pi = inp.state.get(PI, device) or {k: torch.zeros_like(v) for k, v in inp.u.items()}
    if cfg["warm-start"] == "local":
        start = inp.state.get(U_LOCAL, device) or inp.u
        inp.set_params(start)

    loss = 0.0
    if inp.personal:  # stage (a)
        v_prev = inp.named(inp.personal)

        def proximal(name: str, v: torch.Tensor) -> torch.Tensor:
            return (sigma / alpha) * (v.detach() - v_prev[name])

        def proximal_value(v: dict[str, torch.Tensor]) -> float:  # (σ/2α)||v − v_i^t||²
            return sigma / (2 * alpha) * sq_norm({k: v[k] - v_prev[k] for k in v}) ** 2

        epochs = stage_epochs(inp, "personal-epochs")
        loss = run_stage(inp, inp.personal, epochs, proximal, proximal_value)

    def lagrangian(name: str, w: torch.Tensor) -> torch.Tensor:
        return (pi[name] + rho * (w.detach() - inp.u[name])) / alpha

    def lagrangian_value(w: dict[str, torch.Tensor]) -> float:  # [<π, w−u> + (ρ/2)||w−u||²]/α
        diff = {k: w[k] - inp.u[k] for k in w}
        inner = sum(float((pi[k].double() * diff[k].double()).sum()) for k in w)
        return (inner + rho / 2 * sq_norm(diff) ** 2) / alpha

    xi = inp.state.get(XI, device)
    xi_level = float(xi["value"]) if xi is not None else float(cfg["xi0"])

    def accurate_enough() -> bool:  # ||α∇_u f_i + π_i + ρ(w − u^t)||² ≤ ξ_i
        return alpha**2 * full_grad_sq_norm(inp, inp.shared, lagrangian) <= xi_level

    stop = accurate_enough if xi_level > 0 else None
    epochs = stage_epochs(inp, "shared-epochs")
    loss = run_stage(inp, inp.shared, epochs, lagrangian, lagrangian_value, stop)  # (b)
    state: Groups = {}
    if xi_level > 0:
        state[XI] = {"value": torch.tensor([xi_level * float(cfg["mu-xi"])])}
    u_i = inp.named(inp.shared)
    drift = {k: u_i[k] - inp.u[k] for k in inp.shared}
    pi = {k: pi[k] + rho * drift[k] for k in inp.shared}  # (c)
    state[PI] = pi
    if cfg["warm-start"] == "local":
        state[U_LOCAL] = u_i
    z = {k: u_i[k] + pi[k] / rho for k in inp.shared}  # (d)
    return SolverOutput(
        {Z: z},
        {"train-loss": loss, "dual-norm": sq_norm(pi), "drift-norm": sq_norm(drift)},
        state,
    )


ADMM = Solver("admm", admm, returns=(Z,), keeps=(PI, U_LOCAL, XI))
"""FedADMM / FedAPM client."""
