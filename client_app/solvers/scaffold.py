"""SCAFFOLD client (Karimireddy et al. 2020, Algorithm 1, option II; rule: strategies/scaffold.py).

From ``y = x`` (the received shared block) the client runs ``local-epochs`` of minibatch SGD
with the drift correction ``g_i(y) − c_i + c`` (``c``: the server's ``CONTROL``; ``c_i``: its
own control variate, kept in the client state, zero before its first round), i.e. ``K``
steps of ``η_l = lr``. Then (option II; exact for plain SGD, ``momentum = 0``)

    c_i⁺ = c_i − c + (x − y) / (K η_l)

and it replies ``y`` and ``Δc_i = c_i⁺ − c_i``.
"""

from __future__ import annotations

import math

import torch

from client_app.solvers.base import Solver, SolverInput, SolverOutput, local_sgd, sq_norm
from protocol.records import CONTROL, DELTA_CONTROL, SHARED

C_LOCAL = "control-local"
"""State key of the client control variate ``c_i`` (shared-block layout)."""


def local_steps(inp: SolverInput, epochs: int) -> int:
    """``K``: the number of minibatch steps of ``epochs`` passes over the local data."""
    return epochs * math.ceil(len(inp.train) / int(inp.config["batch-size"]))


def scaffold(inp: SolverInput) -> SolverOutput:
    """One SCAFFOLD client round; returns ``y`` and ``Δc_i`` and the norm of ``c_i⁺``."""
    x, c = inp.u, inp.received[CONTROL]
    c_i = inp.state.get(C_LOCAL, x[inp.shared[0]].device) or {
        k: torch.zeros_like(v) for k, v in x.items()
    }

    def correction(name: str, w: torch.Tensor) -> torch.Tensor | None:
        return c[name] - c_i[name] if name in c else None

    epochs = int(inp.config["local-epochs"])
    loss = local_sgd(inp, inp.shared + inp.personal, epochs, correction)
    y = inp.named(inp.shared)
    scale = 1.0 / (local_steps(inp, epochs) * inp.lr)
    c_new = {k: c_i[k] - c[k] + scale * (x[k] - y[k]) for k in inp.shared}
    delta = {k: c_new[k] - c_i[k] for k in inp.shared}
    return SolverOutput(
        {SHARED: y, DELTA_CONTROL: delta},
        {"train-loss": loss, "control-norm": sq_norm(c_new)},
        {C_LOCAL: c_new},
    )


SCAFFOLD = Solver(
    "scaffold", scaffold, returns=(SHARED, DELTA_CONTROL), needs=(CONTROL,), keeps=(C_LOCAL,)
)
"""SCAFFOLD client."""
