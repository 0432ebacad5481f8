"""Alternating personal/shared local updates: FedAlt (Pillutla et al. 2022) and FedRep.

ALGORITHMS.md §5: the personal block ``v_i`` is trained with the received shared block
``u^t`` fixed (``personal-epochs``), then the shared block with ``v_i`` fixed
(``shared-epochs``); the server averages the shared blocks. FedRep (Collins et al. 2021) is the
same schedule with the head personal and more head epochs than body epochs. With no
personal block this is FedAvg. Stage epochs of 0 mean ``local-epochs``. Each stage has the
divergence safeguard of the ADMM stages (``run_stage``: a stage whose loss blows up is rerun
from its start with half the step): FedRep at lr 0.2 diverged on Fashion-MNIST (seed 2: train
loss 0.82, then 9.6e5 in round 3) and its body never recovered.
"""

from __future__ import annotations

from client_app.solvers.admm import run_stage, stage_epochs
from client_app.solvers.base import Solver, SolverInput, SolverOutput
from protocol.records import SHARED


def alternating(inp: SolverInput) -> SolverOutput:
    """Personal stage, then shared stage, both safeguarded SGD on ``f_i``; reply the shared
    block.
    """
    if inp.personal:
        run_stage(inp, inp.personal, stage_epochs(inp, "personal-epochs"), None)
    loss = run_stage(inp, inp.shared, stage_epochs(inp, "shared-epochs"), None)
    return SolverOutput({SHARED: inp.named(inp.shared)}, {"train-loss": loss})


ALTERNATING = Solver("alternating", alternating, returns=(SHARED,))
"""FedAlt / FedRep client."""
