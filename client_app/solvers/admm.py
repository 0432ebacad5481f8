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
"""

from __future__ import annotations

import torch

from client_app.solvers.base import (
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

        loss = local_sgd(inp, inp.personal, stage_epochs(inp, "personal-epochs"), proximal)

    def lagrangian(name: str, w: torch.Tensor) -> torch.Tensor:
        return (pi[name] + rho * (w.detach() - inp.u[name])) / alpha

    xi = inp.state.get(XI, device)
    xi_level = float(xi["value"]) if xi is not None else float(cfg["xi0"])

    def accurate_enough() -> bool:  # ||α∇_u f_i + π_i + ρ(w − u^t)||² ≤ ξ_i
        return alpha**2 * full_grad_sq_norm(inp, inp.shared, lagrangian) <= xi_level

    stop = accurate_enough if xi_level > 0 else None
    loss = local_sgd(inp, inp.shared, stage_epochs(inp, "shared-epochs"), lagrangian, stop)  # (b)
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
