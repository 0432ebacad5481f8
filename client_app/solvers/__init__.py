"""Local solvers by name: the ClientApp runs the one the server's round record names."""

from client_app.solvers.admm import ADMM
from client_app.solvers.alternating import ALTERNATING
from client_app.solvers.base import Solver
from client_app.solvers.bayes import BAYES_SGD, IVON_ADMM, VON
from client_app.solvers.ditto import DITTO
from client_app.solvers.feddyn import FEDDYN
from client_app.solvers.preconditioned import FEDPM, LOCAL_NEWTON
from client_app.solvers.scaffold import SCAFFOLD
from client_app.solvers.sgd import PROX_SGD, SGD

SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        SGD,
        PROX_SGD,
        ALTERNATING,
        ADMM,
        BAYES_SGD,
        VON,
        IVON_ADMM,
        FEDPM,
        LOCAL_NEWTON,
        SCAFFOLD,
        DITTO,
        FEDDYN,
    )
}

__all__ = ["SOLVERS", "Solver"]
