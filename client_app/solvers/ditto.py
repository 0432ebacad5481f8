"""Ditto client (Li, Hu, Beirami, Smith, ICML 2021, Algorithm 1; rule: the mean, FedAvg).

Ditto solves, for every client ``k``, the bi-level problem of its Eq. (2)

    min_{v_k} h_k(v_k; w*) = F_k(v_k) + (λ/2)||v_k − w*||²,   w* ∈ argmin_w G(F_1(w), …, F_K(w))

with ``G`` FedAvg's objective. In a round with global model ``w^t`` (the received shared
block) a sampled client

1. updates the global model as FedAvg does: ``local-epochs`` of minibatch SGD on ``F_k`` from
   ``w^t``, and replies the result ``w_k^t`` (the server averages them);
2. updates its personal model by SGD on ``h_k(·; w^t)`` (Algorithm 1, line 7)

       v_k ← v_k − η (∇F_k(v_k) + λ (v_k − w^t))

   for ``personal-epochs`` epochs (0 = ``local-epochs``), ``λ = ditto-lambda``, ``η = lr``.

``v_k`` is a full copy of the model, kept in the client state (``PERSONAL_MODEL``) and used by
the client's personalized evaluation (``Solver.evaluates``). A client's ``v_k^0`` is the first
global model it receives (``w^0`` for the clients of round 1; a client that has not trained
yet evaluates the global model).
"""

from __future__ import annotations

from client_app.solvers.admm import stage_epochs
from client_app.solvers.base import (
    Solver,
    SolverInput,
    SolverOutput,
    local_sgd,
    proximal,
    sq_norm,
)
from protocol.records import SHARED

PERSONAL_MODEL = "ditto-personal-model"
"""State key of the personal model ``v_k`` (every parameter, shared-block layout)."""


def ditto(inp: SolverInput) -> SolverOutput:
    """One Ditto client round: FedAvg's local update of ``w``, then ``v_k`` by SGD on
    ``F_k(v) + (λ/2)||v − w^t||²``; replies ``w_k^t``, keeps ``v_k``.
    """
    names = inp.shared
    loss = local_sgd(inp, names, int(inp.config["local-epochs"]))
    w_k = inp.named(names)
    v_k = inp.state.get(PERSONAL_MODEL, inp.u[names[0]].device) or inp.u
    inp.set_params(v_k)
    lam = float(inp.config["ditto-lambda"])
    personal_loss = local_sgd(
        inp, names, stage_epochs(inp, "personal-epochs"), proximal(inp.u, lam)
    )
    v_new = inp.named(names)
    gap = sq_norm({k: v_new[k] - inp.u[k] for k in names})
    return SolverOutput(
        {SHARED: w_k},
        {"train-loss": loss, "personal-train-loss": personal_loss, "personal-gap-norm": gap},
        {PERSONAL_MODEL: v_new},
    )


DITTO = Solver(
    "ditto",
    ditto,
    returns=(SHARED,),
    keeps=(PERSONAL_MODEL,),
    evaluates=PERSONAL_MODEL,
)
"""Ditto client: replies the FedAvg update, evaluates the personal model."""
