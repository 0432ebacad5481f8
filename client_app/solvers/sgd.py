"""Local SGD, optionally with FedProx's proximal term ``(mu/2)||u - u^t||²`` (§5)."""

from __future__ import annotations

from client_app.solvers.base import Solver, SolverInput, SolverOutput, local_sgd, proximal
from protocol.records import SHARED


def sgd(inp: SolverInput) -> SolverOutput:
    """FedAvg / FedPer client: ``local-epochs`` of SGD on ``f_i`` over every parameter."""
    return _train(inp, mu=0.0)


def prox_sgd(inp: SolverInput) -> SolverOutput:
    """FedProx client: SGD on ``f_i(w) + (mu/2)||u - u^t||²``, ``mu = proximal-mu``.

    The proximal term acts on the shared block only (the personal block has no server copy).
    """
    return _train(inp, mu=float(inp.config["proximal-mu"]))


def _train(inp: SolverInput, mu: float) -> SolverOutput:
    prox = proximal(inp.u, mu) if mu else None
    loss = local_sgd(inp, inp.shared + inp.personal, int(inp.config["local-epochs"]), prox)
    return SolverOutput({SHARED: inp.named(inp.shared)}, {"train-loss": loss})


SGD = Solver("sgd", sgd, returns=(SHARED,))
"""FedAvg / FedPer / FedSim client."""
PROX_SGD = Solver("prox-sgd", prox_sgd, returns=(SHARED,))
"""FedProx client."""
