"""Named algorithms as presets of (aggregation rule, local solver, personalization modes).

DESIGN.md: every method is three independent choices. The ServerApp builds the rule from
``aggregation``; the ClientApp runs the solver named by ``solver``; ``personalization``
lists the modes for which the combination is defined (the first is the preset's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from strategies.admm import ConsensusADMMStrategy
from strategies.base import FederatedStrategy
from strategies.bayes_admm import (
    DiagonalBayesADMM,
    FullCovarianceBayesADMM,
    IsotropicBayesADMM,
    check_full_covariance,
    check_sampling,
)
from strategies.fedpm import FedPMStrategy, LocalNewtonStrategy, check_fednl, check_fedpm
from strategies.mean import MeanStrategy
from strategies.scaffold import ScaffoldStrategy

ConfigCheck = Callable[[Mapping[str, Any], int], str | None]
"""``(resolved config, number of shared parameters)`` -> what is wrong, or None."""


@dataclass(frozen=True)
class Algorithm:
    """One preset: the aggregation rule, the client's solver and the allowed personalization."""

    aggregation: type[FederatedStrategy]
    solver: str
    personalization: tuple[str, ...]
    summary: str
    check: ConfigCheck | None = None
    """An extra run-config rule of this preset (checked before round 1)."""


ANY_MODE = ("none", "input", "output", "split-input", "paper")
PERSONAL_MODES = ("output", "input", "split-input", "paper")

ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm(MeanStrategy, "sgd", ANY_MODE, "FedAvg: local SGD, sample-weighted mean"),
    "fedprox": Algorithm(
        MeanStrategy, "prox-sgd", ANY_MODE, "FedProx: SGD + (mu/2)||u - u^t||^2, weighted mean"
    ),
    "fedper": Algorithm(
        MeanStrategy,
        "sgd",
        PERSONAL_MODES,
        "FedPer: joint SGD on shared and personal blocks, mean of the shared block",
    ),
    "fedsim": Algorithm(
        MeanStrategy,
        "sgd",
        PERSONAL_MODES,
        "FedSim (Pillutla et al.): simultaneous personal+shared SGD (the FedPer update)",
    ),
    "fedalt": Algorithm(
        MeanStrategy,
        "alternating",
        PERSONAL_MODES,
        "FedAlt (Pillutla et al.): personal stage then shared stage, mean of shared",
    ),
    "fedrep": Algorithm(
        MeanStrategy,
        "alternating",
        ("output", "input", "split-input", "paper"),
        "FedRep: personal head epochs, then representation epochs, mean of representation",
    ),
    "fedadmm": Algorithm(
        ConsensusADMMStrategy,
        "admm",
        ("none",),
        "FedADMM (Gong et al.): augmented-Lagrangian local solve, mean of stale z_i",
    ),
    "fedapm": Algorithm(
        ConsensusADMMStrategy,
        "admm",
        (*PERSONAL_MODES, "none"),
        "FedAPM: personal stage (sigma), shared ADMM stage (rho, pi), mean of stale z_i",
    ),
    "bayes-admm": Algorithm(
        IsotropicBayesADMM,
        "bayes-sgd",
        ("none",),
        "Bayesian ADMM, isotropic fixed precision (= consensus ADMM with a prior), local SGD",
    ),
    "newton-admm": Algorithm(
        FullCovarianceBayesADMM,
        "von",
        ("none",),
        "Bayesian ADMM, full covariance: VON / closed form on quadratics (small models)",
        check_full_covariance,
    ),
    "ivon-admm": Algorithm(
        DiagonalBayesADMM,
        "ivon",
        ("none",),
        "IVON-ADMM: Bayesian ADMM with diagonal Gaussians, IVON with prior and duals",
        check_sampling,
    ),
    "fedpm": Algorithm(
        FedPMStrategy,
        "newton",
        ("none",),
        "FedPM (Ishii et al.): K local preconditioned steps, preconditioned mixing (curvature)",
        check_fedpm,
    ),
    "localnewton": Algorithm(
        LocalNewtonStrategy,
        "local-newton",
        ("none",),
        "LocalNewton: the FedPM local steps (curvature), simple (client-weighting) mean",
        check_fedpm,
    ),
    "fednl": Algorithm(
        FedPMStrategy,
        "newton",
        ("none",),
        "FedNL-style global Newton (no compression) = fedpm with newton-steps=1, hessian",
        check_fednl,
    ),
    "scaffold": Algorithm(
        ScaffoldStrategy,
        "scaffold",
        ("none",),
        "SCAFFOLD (Karimireddy et al.): SGD with control variates (option II), server-lr",
    ),
}
