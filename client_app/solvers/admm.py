"""Consensus-ADMM client (FedADMM, Gong et al. 2022; ALGORITHMS.md §1.2 (b)-(d) with no stages).

Round t, client i holds the multiplier ``π_i`` (state, ``π_i^0 = 0``) and receives ``u^t``:

* inexact local solve, warm-started at ``u^t``: ``local-epochs`` of SGD on
  ``α_i f_i(w) + <π_i, w − u^t> + (ρ/2)||w − u^t||²`` (§1.2 (b)); the step is taken on that
  objective divided by ``α_i``, so ``lr`` is the data-term step as in FedAvg (paper step
  ``lr·α_i``; same iterates up to that reparameterisation, same fixed points);
* dual update ``π_i ← π_i + ρ (u_i − u^t)`` (§1.2 (c));
* reply ``z_i = u_i + π_i/ρ`` (§1.2 (d)).

Personal parameters, if any, are trained jointly with ``w`` on ``f_i`` (no multiplier).
"""

from __future__ import annotations

import torch

from client_app.solvers.base import SolverInput, SolverOutput, local_sgd, sq_norm
from strategies.admm import Z

PI = "pi"
"""State key of the multiplier ``π_i`` (shared-block shape)."""


def admm(inp: SolverInput) -> SolverOutput:
    """One FedADMM client round; returns ``z_i`` and the norms ``||π_i||``, ``||u_i − u^t||``."""
    rho, alpha = float(inp.config["rho"]), inp.alpha
    pi = inp.state.get(PI, inp.u[inp.shared[0]].device) or {
        k: torch.zeros_like(v) for k, v in inp.u.items()
    }

    def lagrangian_grad(name: str, w: torch.Tensor) -> torch.Tensor | None:
        if name not in pi:
            return None
        return (pi[name] + rho * (w.detach() - inp.u[name])) / alpha

    loss = local_sgd(
        inp, inp.shared + inp.personal, int(inp.config["local-epochs"]), lagrangian_grad
    )
    u_i = inp.named(inp.shared)
    drift = {k: u_i[k] - inp.u[k] for k in inp.shared}
    pi = {k: pi[k] + rho * drift[k] for k in inp.shared}
    inp.state.put(PI, pi)
    z = {k: u_i[k] + pi[k] / rho for k in inp.shared}
    return SolverOutput(
        {Z: z}, {"train-loss": loss, "dual-norm": sq_norm(pi), "drift-norm": sq_norm(drift)}
    )
