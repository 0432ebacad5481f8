"""Consensus-ADMM client with partial personalization: FedAPM (ALGORITHMS.md §1.2, Algorithm 1).

Round t, client i holds ``v_i`` (personal block), ``π_i`` (multiplier, ``π_i^0 = 0``), its
last shared copy ``u_i`` and the inexactness level ``ξ_i``; it receives ``u^t``:

(a) personal stage: ``personal-epochs`` of SGD on ``α_i f_i(v, w_u) + (σ/2)||v − v_i^t||²``;
(b) shared stage (inexact): ``shared-epochs`` of SGD on
    ``α_i f_i(v_i^{t+1}, w) + <π_i, w − u^t> + (ρ/2)||w − u^t||²``, warm-started at ``u^t``
    (``warm-start='server'``, the official code) or ``u_i^t`` (``'local'``, the paper; with
    ``u_i^0 = u^0`` at a client's first participation, whatever the round); with
    ``xi0 > 0`` it stops after the first epoch at which
    ``||α_i ∇_u f_i + π_i + ρ(w − u^t)||² ≤ ξ_i`` (full-batch), then ``ξ_i ← mu-xi · ξ_i``;
(c) ``π_i ← π_i + ρ (u_i^{t+1} − u^t)``;
(d) reply ``z_i = u_i^{t+1} + π_i/ρ``.

Every step is taken on the stage objective divided by ``α_i``, so ``lr`` is the data-term step
as in FedAvg (the paper's step is ``lr·α_i``), and the stage's quadratic (penalty and
multiplier, or ``σ``) is taken by its exact proximal map (``run_stage``), so that the stable
step range ``lr < 2/L_i`` does not depend on the number of clients or their weights; same
fixed points as the paper's gradient steps. With no personal block, stage (a) is empty and this
is exactly FedADMM (Gong et al. 2022, server step 1; §1.9). ``personal-epochs`` /
``shared-epochs`` of 0 mean ``local-epochs``.

Each stage is safeguarded (``run_stage``): a stage whose objective diverges is rerun from its
start with half the step. This is a step-size rule only, so the fixed points are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from client_app.solvers.base import (
    Groups,
    Quadratic,
    Solver,
    SolverInput,
    SolverOutput,
    full_grad_sq_norm,
    local_sgd,
    sq_norm,
)
from protocol.records import Z
from tasks.materialize import build_skeleton

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


def stage_objective(
    inp: SolverInput, names: list[str], term: Quadratic | None
) -> tuple[float, float]:
    """``(f_i, Φ = f_i + q)`` at the current parameters (``q = 0`` without a term), full-batch,
    in eval mode (no dropout, so no draw from torch's RNG and no gradient), the model's mode
    restored afterwards.
    """
    training = inp.model.training
    inp.model.eval()
    with torch.no_grad():
        data = float(inp.task.objective(inp.model, inp.train.x, inp.train.y))
    inp.model.train(training)
    return data, data + (0.0 if term is None else term.value(inp.named(names)))


def run_stage(
    inp: SolverInput,
    names: list[str],
    epochs: int,
    term: Quadratic | None,
    stop: Callable[[], bool] | None = None,
) -> float:
    """Proximal-gradient SGD (``local_sgd`` with ``quadratic=term``) on the stage objective
    ``Φ(w) = f_i(w) + q(w)``, with a divergence safeguard; returns the last epoch's mean loss.
    Without a term (FedAlt's and FedRep's stages) it is plain SGD on ``f_i``, safeguarded the
    same way.

    Step range. The stage term ``q`` is the quadratic ``(ρ/α_i)/2‖w − u^t‖² + ⟨π_i/α_i, w − u^t⟩``
    (shared stage) or ``(σ/α_i)/2‖v − v_i^t‖²`` (personal stage): its curvature ``κ = ρ/α_i`` (or
    ``σ/α_i``) is ``ρ·m`` with uniform weights and ``ρ·n/n_i`` with ``examples``. A gradient step
    on ``Φ`` is stable only while ``lr·(L_i + κ) < 2`` (``L_i``: smoothness of ``f_i`` along the
    block), which fails once ``m > 2/(lr·ρ)`` (1,000 clients at lr 0.2, ρ 0.01). The stage
    therefore takes ``q`` by its exact proximal map (``Quadratic.prox``)

        w ← u^t + (w − lr·ĝ_i − u^t − lr·π_i/α_i)/(1 + lr·ρ/α_i),

    stable for ``lr < 2/L_i`` whatever ``m`` and the weighting (``local_sgd``), with the same
    stationary points ``α_i∇f_i + π_i + ρ(u_i − u^t) = 0`` (§1.1).

    Safeguard. ``L_i`` is not known and changes with the other block: after a round of ADMM
    the shared block ``u^{t+1} = mean_i z_i`` is extrapolated (``z_i = u_i + π_i/ρ``), so a
    personal head sees larger features and a larger ``L_i`` (FedAPM with 2 clients at
    ``lr = 0.2`` diverged in round 2 this way). The stage is declared divergent when, from its
    start ``w_0`` to its end ``w_E``,

        Φ(w_E) is not finite   or   Φ(w_E) − Φ(w_0) > f_i(w_0)

    (its objective rose by more than its whole data loss; SGD noise near a stationary point
    moves ``Φ`` by ``O(lr)``, far less). It is then rerun from ``w_0`` with ``lr/2``, at most
    ``MAX_HALVINGS`` times. Step sizes only: the fixed points are those of §1.1.
    """
    start = inp.named(names)
    data0, phi0 = stage_objective(inp, names, term)
    attempt = inp
    for halving in range(1, MAX_HALVINGS + 1):
        loss = local_sgd(attempt, names, epochs, None, stop, term)
        phi = stage_objective(inp, names, term)[1]
        if math.isfinite(phi) and phi - phi0 <= data0:
            return loss
        inp.set_params(start)
        attempt = replace(inp, round=replace(inp.round, lr=inp.lr / 2**halving))
    return local_sgd(attempt, names, epochs, None, stop, term)


def initial_shared(inp: SolverInput) -> dict[str, torch.Tensor]:
    """``u^0``: the shared block of the seeded initial model (``build_skeleton``, the model the
    server starts from), rebuilt here so that no extra array travels (§1.6).
    """
    init = build_skeleton(inp.task, str(inp.config["personalization"]), int(inp.config["seed"]))
    return {k: init.init[k].to(inp.u[k]) for k in inp.shared}


def warm_start(inp: SolverInput) -> dict[str, torch.Tensor]:
    """Where the shared block starts (§1.7): ``u^t`` (``warm-start='server'``) or ``u_i^t``
    (``'local'``), with ``u_i^0 = u^0`` (§1.6) for a client that has not trained yet — also when
    it is first sampled in a round ``t > 1`` (partial participation).
    """
    if inp.config["warm-start"] != "local":
        return inp.u
    return inp.state.get(U_LOCAL, inp.u[inp.shared[0]].device) or initial_shared(inp)


def admm(inp: SolverInput) -> SolverOutput:
    """One FedAPM / FedADMM client round; returns ``z_i`` and ``||π_i||``, ``||u_i − u^t||``."""
    cfg, alpha = inp.config, inp.alpha
    rho, sigma = float(cfg["rho"]), float(cfg["sigma"])
    device = inp.u[inp.shared[0]].device
    pi = inp.state.get(PI, device) or {k: torch.zeros_like(v) for k, v in inp.u.items()}
    inp.set_params(warm_start(inp))

    loss = 0.0
    if inp.personal:  # stage (a): f_i + (σ/α_i)/2 ||v − v_i^t||²
        proximal = Quadratic(sigma / alpha, inp.named(inp.personal))
        loss = run_stage(inp, inp.personal, stage_epochs(inp, "personal-epochs"), proximal)

    # stage (b): f_i + [<π_i, w − u^t> + (ρ/2)||w − u^t||²]/α_i
    lagrangian = Quadratic(rho / alpha, inp.u, {k: v / alpha for k, v in pi.items()})
    xi = inp.state.get(XI, device)
    xi_level = float(xi["value"]) if xi is not None else float(cfg["xi0"])

    def accurate_enough() -> bool:  # ||α∇_u f_i + π_i + ρ(w − u^t)||² ≤ ξ_i
        return alpha**2 * full_grad_sq_norm(inp, inp.shared, lagrangian.grad) <= xi_level

    stop = accurate_enough if xi_level > 0 else None
    loss = run_stage(inp, inp.shared, stage_epochs(inp, "shared-epochs"), lagrangian, stop)
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
