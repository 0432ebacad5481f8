"""FedDyn client (Acar et al., ICLR 2021, Algorithm 1; rule: strategies/feddyn.py).

Client ``k``, sampled in round ``t`` with the server model ``θ^{t−1}`` (the received shared
block), approximately solves the dynamically regularised problem of Algorithm 1

    θ_k^t = argmin_θ  L_k(θ) − ⟨∇L_k(θ_k^{t−1}), θ⟩ + (α/2)||θ − θ^{t−1}||²

by ``local-epochs`` of minibatch SGD from ``θ^{t−1}`` (the extra gradient is
``−g_k + α(θ − θ^{t−1})``), then updates its linear term

    g_k ← g_k − α (θ_k^t − θ^{t−1})

(the paper's ``∇L_k(θ_k^t) = ∇L_k(θ_k^{t−1}) − α(θ_k^t − θ^{t−1})``, the first-order optimality
condition of the problem above) and replies ``θ_k^t``. ``g_k = ∇L_k(θ_k^{t−1})`` is kept in
the client state (``LINEAR``), zero before the client's first round; ``α = alpha``.
"""

from __future__ import annotations

import torch

from client_app.solvers.base import (
    Solver,
    SolverInput,
    SolverOutput,
    local_sgd,
    proximal,
    sq_norm,
)
from protocol.records import SHARED

LINEAR = "feddyn-linear"
"""State key of the client's linear term ``g_k = ∇L_k(θ_k^{t−1})`` (shared-block layout)."""


def feddyn(inp: SolverInput) -> SolverOutput:
    """One FedDyn client round; replies ``θ_k^t``, keeps ``g_k``, reports ``||g_k||``."""
    theta_prev, alpha = inp.u, float(inp.config["alpha"])
    g = inp.state.get(LINEAR, theta_prev[inp.shared[0]].device) or {
        k: torch.zeros_like(v) for k, v in theta_prev.items()
    }
    quadratic = proximal(theta_prev, alpha)

    def dynamic(name: str, w: torch.Tensor) -> torch.Tensor | None:
        grad = quadratic(name, w)
        return None if grad is None else grad - g[name]

    loss = local_sgd(inp, inp.shared, int(inp.config["local-epochs"]), dynamic)
    theta = inp.named(inp.shared)
    g_new = {k: g[k] - alpha * (theta[k] - theta_prev[k]) for k in inp.shared}
    return SolverOutput(
        {SHARED: theta}, {"train-loss": loss, "linear-norm": sq_norm(g_new)}, {LINEAR: g_new}
    )


FEDDYN = Solver("feddyn", feddyn, returns=(SHARED,), keeps=(LINEAR,))
"""FedDyn client."""
