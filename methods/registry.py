"""Every algorithm as one ``Method``: aggregation rule + local solver + hyper-parameters +
personalization, with the preset values that make it the named algorithm.

The registry checks each pairing when it is built: the solver must return exactly the records
the rule expects, and need only records the rule sends. A new method is one rule module (if
no existing rule fits), one solver module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from client_app.solvers import SOLVERS
from client_app.solvers.base import Solver
from methods.hyper import (
    ADMMHyper,
    AlternatingHyper,
    BayesHyper,
    DittoHyper,
    FedAvgHyper,
    FedDynHyper,
    FedProxHyper,
    IVONHyper,
    NewtonHyper,
    ScaffoldHyper,
)
from protocol.params import Param, Scalar, params_of
from strategies.admm import ConsensusADMMStrategy
from strategies.base import FederatedStrategy
from strategies.bayes_admm import (
    DiagonalBayesADMM,
    FullCovarianceBayesADMM,
    IsotropicBayesADMM,
    check_full_covariance,
    check_sampling,
)
from strategies.feddyn import FedDynStrategy
from strategies.fedpm import FedPMStrategy, check_fedpm
from strategies.mean import MeanStrategy
from strategies.scaffold import ScaffoldStrategy
from tasks.registry import get_task

ConfigCheck = Callable[[Mapping[str, Any], int], str | None]
"""``(resolved config, number of shared parameters)`` -> what is wrong, or None."""
Preset = Scalar | Callable[[Mapping[str, Scalar]], Scalar]
"""A preset value, or a rule giving it from the keys resolved before the method's own (the
run's keys: task, personalization, ...), for a value that depends on the model."""


class MethodError(ValueError):
    """A rule and a solver that do not fit together, or a preset of an undeclared key."""


ANY_MODE = ("none", "input", "output", "split-input", "paper")
PERSONAL_MODES = ("output", "input", "split-input", "paper")


@dataclass(frozen=True)
class Method:
    """One algorithm. ``personalization[0]`` is its default mode; ``presets`` are the values
    it gives keys left at ``'auto'``; ``check`` an extra config rule (before round 1);
    ``model`` the model kind it is defined for, used where the task offers it (``''``: the
    task's default model).
    """

    name: str
    rule: type[FederatedStrategy]
    solver: Solver
    hyper: type
    personalization: tuple[str, ...]
    summary: str
    presets: Mapping[str, Preset] = field(default_factory=dict)
    check: ConfigCheck | None = None
    model: str = ""

    def __post_init__(self) -> None:
        """Refuse a solver whose messages do not fit the rule, or presets of foreign keys."""
        if SOLVERS.get(self.solver.name) is not self.solver:
            raise MethodError(
                f"method {self.name!r}: solver {self.solver.name!r} is not the one registered "
                "in client_app.solvers.SOLVERS under that name (the client could not run it)"
            )
        if set(self.solver.returns) != set(self.rule.reply_records):
            raise MethodError(
                f"method {self.name!r}: solver {self.solver.name!r} returns records "
                f"{list(self.solver.returns)} but rule {self.rule.__name__} expects "
                f"{list(self.rule.reply_records)}; pair the rule with a solver that replies "
                "what it aggregates"
            )
        unsent = set(self.solver.needs) - set(self.rule.sends)
        if unsent:
            raise MethodError(
                f"method {self.name!r}: solver {self.solver.name!r} needs records "
                f"{sorted(unsent)} that rule {self.rule.__name__} never sends "
                f"(it sends {list(self.rule.sends)})"
            )
        foreign = sorted(set(self.presets) - set(self.params))
        if foreign:
            raise MethodError(
                f"method {self.name!r} presets {foreign}, which are not among its "
                f"hyper-parameters ({', '.join(self.params)})"
            )

    @property
    def params(self) -> dict[str, Param]:
        """The method's own keys (its hyper-parameter dataclass), by key."""
        return params_of(self.hyper)

    def value(self, key: str, default: Scalar, run: Mapping[str, Scalar] | None = None) -> Scalar:
        """What ``'auto'`` means for ``key`` in this method: its preset (its first
        personalization mode; its ``model`` where the run's task offers it, else the task's
        first; a rule's value for the run's keys ``run``), else ``default``.
        """
        if key == "personalization":
            return self.personalization[0]
        if key == "model":
            offered = get_task(str((run or {}).get("task", "digits"))).models
            return self.model if self.model in offered else offered[0]
        preset = self.presets.get(key, default)
        return preset(run or {}) if callable(preset) else preset


EXAMPLES = {"client-weighting": "examples"}
"""FedAvg's sample-weighted mean."""

GLOBAL_SGD: Mapping[str, Scalar] = {**EXAMPLES, "lr": 0.1}
"""FedAvg's, FedProx's and Ditto's local step (Ditto's global model is FedAvg's). Plain SGD on
the whole model is averaged into the global model with nothing to damp it (no penalty as in
the ADMM family, no personal head): at the shared default lr 0.2 the global model diverged on
mfeat seed 1 (train loss 0.30 in round 5, 68 in round 6, NaN from round 7, the run stopped in
round 9) for all three. lr grid {0.05, 0.1, 0.2, 0.4}, the same for every method sharing the
default, on digits Dirichlet(0.1) and mfeat, 3 seeds, 20 rounds, stability first
(``benchmarks/personalization/lr_grid.py``, benchmarks/README "The lr grid"): 0.1 is the
largest point without a diverged run (FedAvg mean final accuracy 0.925 over the 6 runs vs
0.511 at 0.4, where every mfeat run diverged, 0.800 at 0.2 and 0.861 at 0.05)."""


def _convex(run: Mapping[str, Scalar]) -> bool:
    """Whether the run's model is convex (a linear model without personal blocks)."""
    task = get_task(str(run.get("task", "digits")))
    model = str(run.get("model", "auto"))
    chosen = model if model in task.models else task.models[0]  # an unoffered one is refused
    return chosen == "convex" and run.get("personalization", "none") in ("none", "auto")


def _by_convexity(convex: Scalar, deep: Scalar) -> Callable[[Mapping[str, Scalar]], Scalar]:
    """A preset that is ``convex`` on a convex model and ``deep`` on a deep network."""
    return lambda run: convex if _convex(run) else deep


PRECONDITIONED: Mapping[str, Preset] = {
    "curvature": _by_convexity("hessian", "foof"),
    "eta": _by_convexity(1.0, 0.1),
    "damping": _by_convexity(0.001, 0.1),
    "newton-steps": _by_convexity(1, 20),
}
"""FedPM's and LocalNewton's preconditioner by model (ALGORITHMS.md §3): exact Hessians, one
full (globalized) Newton step per round on a convex model; on a deep network, whose exact
Hessian is neither affordable nor positive semi-definite, FOOF factors with 20 local steps of
η = 0.1 and damping 0.1 (FedPM on digits Dirichlet(0.1): 0.93 after 5 rounds, benchmarks/README
"FedPM: CNN")."""

FEDREP: Mapping[str, Scalar] = {**EXAMPLES, "personal-epochs": 5, "shared-epochs": 1, "lr": 0.1}
"""FedRep's schedule (many head epochs, one representation epoch) and step. On the lr grid
(``benchmarks/personalization/lr_grid.py``, {0.05, 0.1, 0.2, 0.4}) lr 0.2 scored best on
digits and mfeat (0.4: 0.895, seed 0 of digits ended at 0.66), but the
Fashion-MNIST check diverged on seed 1 (train loss 18 in round 1, 67 in round 3; the body never
recovered: 0.61 at round 20) and, before the stage safeguard, on seed 2 (9.6e5 in round 3);
stability first gives lr 0.1 (Fashion-MNIST 0.937 ± 0.009 on 3 seeds, digits Dirichlet(0.1)
0.902, mfeat 0.902)."""

NEWTON_ADMM: Mapping[str, Scalar] = {"rho": 1.0}
"""``newton-admm``'s ρ. The delta-method client problem in ``m`` has the quadratic part
``S_g + c∇²ℓ_k − V_k/ρ`` (§2.4), and ``∇²ℓ_k → 0`` away from the data for a logistic loss, so it
is bounded below only if ``S_g − V_k/ρ ⪰ 0``. At the fixed point ``S_g = S_0 + Σ_j V_j``
(§2.2), hence ``S_g − V_k/ρ = S_0 + Σ_{j≠k} V_j − (1/ρ − 1) V_k``, which is ``⪰ S_0`` for every
number of clients iff ``ρ ≥ 1`` (with ρ = 0.01 the VON mean step went to 1e32 in round 2).
Grid {0.01, 0.1, 0.5, 1.0} in benchmarks/README "Method defaults (issue 12, partial)"."""

BAYES_ADMM: Mapping[str, Scalar] = {"rho": 10.0}
"""``bayes-admm``'s ρ. Its client stage (§2.3 divided by ``N_k/τ``) is
``f_k + (τ/N_k)[v_kᵀθ + (ρs/2)‖θ − m_g‖²]``: the coupling relative to the data term is
``τρs/N_k`` and each round moves the scaled dual ``τv_k/N_k`` by ``γτρs(θ_k − m_g)/N_k``. With the
key's default ρ = 0.01 that is 1e-4 on digits with 10 clients (``N_k ≈ 115``): the duals never
reach ``−∇f_k(θ*)`` and the server step ``α = 1/(1+Kρ) ≈ 0.9`` keeps pulling ``m_g`` to the prior
mean, so the global model stays at chance. Grid {0.01, 1, 10, 100} in benchmarks/README
"Method defaults"; 100 over-couples (``α ≈ 1e-3``, clients barely move)."""

SCAFFOLD: Mapping[str, Scalar] = {"lr": 0.05}
"""SCAFFOLD's local step. The correction ``c − c_i`` is the drift estimated at the previous
round's iterates; it is a good one only while a round moves the model little, ``K·lr·L ≲ 1``
(the theory's ``η_l ≤ 1/(81 K L η_g)``), with ``K = local-epochs·⌈n_i/B⌉`` steps, so a client
with more data needs a smaller step. At the shared default lr 0.2 (``K·lr ≈ 5`` on digits with 10
clients) the train loss blew up after round 5 (2.4e7) even with iid data, and at lr 0.1 it
rose again from round 15 (Dirichlet(0.1) gives some clients far larger ``K``). Grid
{0.025, 0.05, 0.1, 0.2} in benchmarks/README "Method defaults"."""

IVON_ADMM: Mapping[str, Scalar] = {
    "lr": 1e-3,
    "lr-schedule": "cosine",
    "tau": 1e-3,
    "rho": 0.2,
    "gamma": 1e-3,
}
"""``ivon-admm``'s settings: the authors' FMNIST-heterogeneous ones (ALGORITHMS.md §2.5.6: τ 1e-3,
ρ 0.2, γ 1e-3, h0 1e-3 = the key's default, cosine lr) with ``lr`` chosen on the grid
{3e-4, 1e-3, 3e-3, 1e-2} (benchmarks/README "Method defaults (issue 12, partial)")."""

FEDDYN: Mapping[str, Scalar] = {"lr": 0.05}
"""FedDyn's local step. FedDyn never forgets a local excursion: a client's displacement
``d_k = θ_k − θ^{t−1}`` enters its linear term ``g_k ← g_k − αd_k`` and the server's
``h ← h − α(1/m)Σd_k``, and ``θ^t = mean θ_k − h/α`` re-applies ``Σ_s d̄_s`` every later round
(FedAvg averages an excursion once and forgets it). Near zero local loss the cross-entropy's
gradient vanishes, so the local problem ``L_k − ⟨g_k, θ⟩ + (α/2)‖θ − θ^{t−1}‖²`` is held only by
its α term, whose minimiser lies ``‖g_k‖/α`` away (α = 0.01). At the shared default lr 0.2
(``K = 24`` steps on digits with 10 clients) the local loss spikes once it reaches ≈ 0 (0.04 →
1.03 in round 19), h jumped from 0.035 to 0.46 and the global model fell to chance; lr 0.1 spiked
the same way in round 18 (loss 0 → 5.5, accuracy 0.12). At lr 0.2 a larger α is no cure:
α = 0.1 reached 0.981 on seed 0 but fell to 0.682 in round 20 on seed 2, α = 0.3 diverged
(‖h‖ = 3.5e16 in round 18), α = 1 learns too slowly (0.735). lr 0.05 ended at 0.955 / 0.947 /
0.981 on seeds 0 / 1 / 2 with ‖h‖ ≤ 0.02. Grid {0.025, 0.05, 0.1, 0.2} at α = 0.01 in
benchmarks/README "Method defaults"."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "fedavg",
            MeanStrategy,
            SOLVERS["sgd"],
            FedAvgHyper,
            ANY_MODE,
            "FedAvg: local SGD, sample-weighted mean",
            GLOBAL_SGD,
        ),
        Method(
            "fedprox",
            MeanStrategy,
            SOLVERS["prox-sgd"],
            FedProxHyper,
            ANY_MODE,
            "FedProx: SGD + (mu/2)||u - u^t||^2, sample-weighted mean",
            GLOBAL_SGD,
        ),
        Method(
            "fedper",
            MeanStrategy,
            SOLVERS["sgd"],
            FedAvgHyper,
            PERSONAL_MODES,
            "FedPer: joint SGD on shared and personal blocks, mean of the shared block",
            EXAMPLES,
        ),
        Method(
            "fedsim",
            MeanStrategy,
            SOLVERS["sgd"],
            FedAvgHyper,
            PERSONAL_MODES,
            "FedSim (Pillutla et al.): simultaneous personal+shared SGD (the FedPer update)",
            EXAMPLES,
        ),
        Method(
            "fedalt",
            MeanStrategy,
            SOLVERS["alternating"],
            AlternatingHyper,
            PERSONAL_MODES,
            "FedAlt (Pillutla et al.): personal stage then shared stage, mean of shared",
            EXAMPLES,
        ),
        Method(
            "fedrep",
            MeanStrategy,
            SOLVERS["alternating"],
            AlternatingHyper,
            PERSONAL_MODES,
            "FedRep (Collins et al.): many head epochs, then one representation epoch",
            FEDREP,
        ),
        Method(
            "fedadmm",
            ConsensusADMMStrategy,
            SOLVERS["admm"],
            ADMMHyper,
            ("none",),
            "FedADMM (Gong et al.): augmented-Lagrangian local solve, mean of stale z_i",
        ),
        Method(
            "fedapm",
            ConsensusADMMStrategy,
            SOLVERS["admm"],
            ADMMHyper,
            (*PERSONAL_MODES, "none"),
            "FedAPM: personal stage (sigma), shared ADMM stage (rho, pi), mean of stale z_i",
        ),
        Method(
            "bayes-admm",
            IsotropicBayesADMM,
            SOLVERS["bayes-sgd"],
            BayesHyper,
            ("none",),
            "Bayesian ADMM, isotropic fixed precision (= consensus ADMM with a prior), local SGD",
            BAYES_ADMM,
        ),
        Method(
            "newton-admm",
            FullCovarianceBayesADMM,
            SOLVERS["von"],
            BayesHyper,
            ("none",),
            "Bayesian ADMM, full covariance: VON / closed form on quadratics (small models)",
            NEWTON_ADMM,
            check=check_full_covariance,
            model="convex",
        ),
        Method(
            "ivon-admm",
            DiagonalBayesADMM,
            SOLVERS["ivon"],
            IVONHyper,
            ("none",),
            "IVON-ADMM: Bayesian ADMM with diagonal Gaussians, IVON with prior and duals",
            IVON_ADMM,
            check=check_sampling,
        ),
        Method(
            "fedpm",
            FedPMStrategy,
            SOLVERS["fedpm-newton"],
            NewtonHyper,
            ("none",),
            "FedPM (Ishii et al.): K local preconditioned steps, preconditioned mixing",
            PRECONDITIONED,
            check_fedpm,
        ),
        Method(
            "localnewton",
            MeanStrategy,
            SOLVERS["local-newton"],
            NewtonHyper,
            ("none",),
            "LocalNewton: the FedPM local steps, (client-weighting) mean",
            PRECONDITIONED,
            check_fedpm,
        ),
        Method(
            "fednl",
            FedPMStrategy,
            SOLVERS["fedpm-newton"],
            NewtonHyper,
            ("none",),
            "FedNL-style global Newton (no compression): fedpm with newton-steps=1, hessian",
            {"newton-steps": 1, "curvature": "hessian"},
            check_fedpm,
            model="convex",
        ),
        Method(
            "scaffold",
            ScaffoldStrategy,
            SOLVERS["scaffold"],
            ScaffoldHyper,
            ("none",),
            "SCAFFOLD (Karimireddy et al.): SGD with control variates (option II), server-lr",
            SCAFFOLD,
        ),
        Method(
            "ditto",
            MeanStrategy,
            SOLVERS["ditto"],
            DittoHyper,
            ("none",),
            "Ditto (Li et al.): FedAvg global model; personal v_i by SGD + (λ/2)||v - w^t||^2",
            GLOBAL_SGD,
        ),
        Method(
            "feddyn",
            FedDynStrategy,
            SOLVERS["feddyn"],
            FedDynHyper,
            ("none",),
            "FedDyn (Acar et al.): SGD on f_i - <g_i, θ> + (α/2)||θ - θ^t||^2, server state h",
            FEDDYN,
        ),
    )
}
"""The algorithms, by ``algorithm`` value."""
