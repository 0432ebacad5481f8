"""Local solvers by name (the ``solver`` of an algorithm preset)."""

from client_app.solvers.admm import admm
from client_app.solvers.alternating import alternating
from client_app.solvers.base import Solver
from client_app.solvers.bayes import isotropic, ivon, newton
from client_app.solvers.preconditioned import fedpm, local_newton
from client_app.solvers.scaffold import scaffold
from client_app.solvers.sgd import prox_sgd, sgd

SOLVERS: dict[str, Solver] = {
    "sgd": sgd,
    "prox-sgd": prox_sgd,
    "admm": admm,
    "alternating": alternating,
    "bayes-sgd": isotropic,
    "von": newton,
    "ivon": ivon,
    "newton": fedpm,
    "local-newton": local_newton,
    "scaffold": scaffold,
}

__all__ = ["SOLVERS", "Solver"]
