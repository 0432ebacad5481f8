"""Alternating personal/shared local updates: FedAlt (Pillutla et al. 2022) and FedRep.

ALGORITHMS.md §5: the personal block ``v_i`` is trained with the received shared block
``u^t`` fixed (``personal-epochs``), then the shared block with ``v_i`` fixed
(``shared-epochs``); the server averages the shared blocks. FedRep (Collins et al. 2021) is the
same schedule with the head personal and more head epochs than body epochs. With no
personal block this is FedAvg. Stage epochs of 0 mean ``local-epochs``.
"""

from __future__ import annotations

from client_app.solvers.admm import stage_epochs
from client_app.solvers.base import Solver, SolverInput, SolverOutput, local_sgd
from protocol.records import SHARED


def alternating(inp: SolverInput) -> SolverOutput:
    """Personal stage, then shared stage, both plain SGD on ``f_i``; reply the shared block."""
    if inp.personal:
        local_sgd(inp, inp.personal, stage_epochs(inp, "personal-epochs"))
    loss = local_sgd(inp, inp.shared, stage_epochs(inp, "shared-epochs"))
    return SolverOutput({SHARED: inp.named(inp.shared)}, {"train-loss": loss})


ALTERNATING = Solver("alternating", alternating, returns=(SHARED,))
"""FedAlt / FedRep client."""
