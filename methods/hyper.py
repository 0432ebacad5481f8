"""Every run-config key, declared once: the run's own keys and each method's hyper-parameters.

A method's hyper-parameters are a frozen dataclass built from the mixins below (a key shared by
several methods, such as ``rho``, is one field of one mixin). The run-config schema is the union
of ``RunConfig`` and every registered method's dataclass (``methods.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.params import Param, choice, field, flag, num, text
from tasks.data import PARTITIONERS
from tasks.personalization import MODES
from tasks.registry import TASKS

WEIGHTINGS = ("uniform", "examples")
"""Client-weighting policies: ``α_i = 1/m`` or ``n_i/n`` (one policy for every rule)."""


BATCH_SIZE = num("batch-size", int, 16, 1, 1_000_000, "minibatch size")
"""Shared by SGD solvers and the FedPM family's minibatch statistics."""


def _algorithms() -> list[str]:
    from methods.registry import METHODS  # the registry imports this module

    return list(METHODS)


MAX_NAME = 200
"""Longest ``run-name`` / state scope (a directory name; file systems allow 255 bytes)."""


def is_path_component(value: str) -> bool:
    r"""Whether ``value`` names one directory inside its parent: non-empty, at most
    ``MAX_NAME`` characters, not ``.`` or ``..``, without ``/``, ``\`` or control characters.
    ``run-name`` and a checkpoint's state scope must be one, so that nothing is written
    outside ``output-dir`` / ``state-dir``.
    """
    return (
        0 < len(value) <= MAX_NAME
        and value not in (".", "..")
        and all(c not in "/\\" and c.isprintable() for c in value)
    )


def _resume_ok(value: object) -> bool:
    return not value or Path(str(value)).expanduser().exists()


@dataclass(frozen=True)
class RunConfig:
    """Keys of every run, whatever the method: federation, data, sampling, outputs, devices."""

    algorithm: str = field(
        Param(
            "algorithm",
            str,
            "fedapm",
            lambda v: v in _algorithms(),
            lambda: "one of " + ", ".join(map(repr, _algorithms())),
            "the method",
            ("no-such-algorithm", 3),
        )
    )
    task: str = field(choice("task", "digits", TASKS, "dataset and model"))
    model: str = field(
        choice(
            "model",
            "deep",
            ("deep", "convex"),
            "the task's network or its convex model ('auto': the method's, where the task "
            "offers it, else the task's first)",
        )
    )
    num_server_rounds: int = field(num("num-server-rounds", int, 20, 1, 100_000, "rounds"))
    fraction_train: float = field(
        num("fraction-train", float, 1.0, 0.0, 1.0, "share of clients sampled to train", True)
    )
    fraction_evaluate: float = field(
        num("fraction-evaluate", float, 1.0, 0.0, 1.0, "share of clients evaluating")
    )
    min_train_nodes: int = field(
        num("min-train-nodes", int, 1, 1, 1_000_000, "least clients to train")
    )
    seed: int = field(num("seed", int, 0, 0, 2**31 - 1, "drives every random choice"))
    device: str = field(choice("device", "auto", ("auto", "cpu", "cuda"), "where to compute"))
    partitioner: str = field(choice("partitioner", "iid", PARTITIONERS, "how data is split"))
    dirichlet_alpha: float = field(
        num("dirichlet-alpha", float, 0.5, 0.0, doc="Dirichlet concentration", low_open=True)
    )
    classes_per_client: int = field(
        num("classes-per-client", int, 2, 1, 100_000, "pathological partitioner's classes")
    )
    personalization: str = field(
        choice("personalization", "none", MODES, "which parameters stay personal")
    )
    local_test_fraction: float = field(
        num("local-test-fraction", float, 0.2, 0.0, 0.9, "share of a client's data for its tests")
    )
    data_dir: str = field(text("data-dir", "", "a directory path ('' = none)", "dataset root"))
    download: bool = field(flag("download", False, "opt-in dataset download"))
    output_dir: str = field(
        text(
            "output-dir",
            "outputs",
            "a non-empty directory path",
            "where run directories go",
            lambda v: bool(v.strip()),
            ("  ", 3),
        )
    )
    run_name: str = field(
        text(
            "run-name",
            "",
            f"'' (algorithm-task-seed-time) or one directory name of at most {MAX_NAME} "
            "characters: not '.' or '..', no '/', '\\' or control characters",
            "run directory name",
            lambda v: v == "" or is_path_component(v),
            ("../../escaped", "/tmp/escaped", "a/b", "..", 3),
        )
    )
    round_timeout: float = field(
        num("round-timeout", float, 600.0, 0.001, 604_800.0, "seconds to wait for replies")
    )
    state_dir: str = field(
        text("state-dir", "", "a directory path ('' = keep client state in memory only)", "mirror")
    )
    resume_from: str = field(
        text(
            "resume-from",
            "",
            "'' (start fresh) or an existing run directory, its checkpoint/ directory or a "
            "checkpoint/round-<k> directory",
            "continue a run",
            _resume_ok,
            ("/no/such/run", 3),
        )
    )
    max_failed_rounds: int = field(
        num(
            "max-failed-rounds",
            int,
            3,
            1,
            10**6,
            "consecutive rounds without a usable update that stop the run (exit non-zero)",
        )
    )
    min_available_nodes: int = field(
        num("min-available-nodes", int, 1, 1, 1_000_000, "nodes to wait for before each round")
    )
    evaluate_mode: str = field(
        choice(
            "evaluate-mode",
            "fused",
            ("fused", "separate"),
            "personalized evaluation of round t with round t+1's train message (one exchange "
            "per round), or in its own message",
        )
    )
    max_update_norm: float = field(
        num(
            "max-update-norm",
            float,
            0.0,
            0.0,
            1e12,
            "clip each reply's model update to this L2 norm (0 = off)",
        )
    )


# ----------------------------------------------------------------------------- local training
@dataclass(frozen=True)
class Local:
    """Every local solver takes steps of size ``lr`` (after ``lr-schedule``)."""

    lr: float = field(num("lr", float, 0.2, 0.0, doc="local step size", low_open=True))
    lr_schedule: str = field(
        choice("lr-schedule", "constant", ("constant", "cosine"), "lr over rounds")
    )


@dataclass(frozen=True)
class LocalSGD(Local):
    """Minibatch SGD epochs (``client_app.solvers.base.local_sgd``)."""

    local_epochs: int = field(num("local-epochs", int, 3, 1, 1000, "epochs per round"))
    batch_size: int = field(BATCH_SIZE)
    momentum: float = field(num("momentum", float, 0.0, 0.0, 0.999, "SGD momentum"))
    weight_decay: float = field(num("weight-decay", float, 0.0, 0.0, doc="SGD weight decay"))


@dataclass(frozen=True)
class Weighted:
    """Rules that weight clients: ``α_i = 1/m`` (uniform) or ``n_i/n`` (examples), §1.1."""

    client_weighting: str = field(
        choice("client-weighting", "uniform", WEIGHTINGS, "client weights α_i")
    )


@dataclass(frozen=True)
class PersonalStage:
    """A personal stage's epochs (FedAlt / FedRep / FedAPM, Ditto's ``v_i``); 0 = local-epochs."""

    personal_epochs: int = field(num("personal-epochs", int, 0, 0, 1000, "personal-stage epochs"))


@dataclass(frozen=True)
class Stages(PersonalStage):
    """Personal stage, then shared stage (FedAlt / FedRep / FedAPM); 0 = ``local-epochs``."""

    shared_epochs: int = field(num("shared-epochs", int, 0, 0, 1000, "shared-stage epochs"))


@dataclass(frozen=True)
class Penalty:
    """The ADMM penalty ``ρ`` (FedADMM / FedAPM, and Bayesian ADMM's ρ)."""

    rho: float = field(num("rho", float, 0.01, 0.0, doc="ADMM penalty", low_open=True))


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class FedAvgHyper(LocalSGD, Weighted):
    """FedAvg / FedPer / FedSim: local SGD, weighted mean."""


@dataclass(frozen=True)
class FedProxHyper(FedAvgHyper):
    """FedProx: SGD + ``(μ/2)||u − u^t||²``."""

    proximal_mu: float = field(num("proximal-mu", float, 0.01, 0.0, doc="FedProx's μ"))


@dataclass(frozen=True)
class AlternatingHyper(FedAvgHyper, Stages):
    """FedAlt / FedRep: personal stage, then shared stage."""


@dataclass(frozen=True)
class ADMMHyper(LocalSGD, Weighted, Stages, Penalty):
    """FedADMM / FedAPM (ALGORITHMS.md §1.2)."""

    sigma: float = field(num("sigma", float, 0.01, 0.0, doc="personal-stage proximal weight σ"))
    xi0: float = field(num("xi0", float, 0.0, 0.0, doc="initial inexactness ξ0 (0 = fixed epochs)"))
    mu_xi: float = field(num("mu-xi", float, 0.9, 0.0, 1.0, "ξ decay", True))
    warm_start: str = field(
        choice("warm-start", "server", ("server", "local"), "shared stage starts at u or u_i")
    )


@dataclass(frozen=True)
class BayesHyper(LocalSGD, Penalty):
    """Bayesian ADMM, every family (ALGORITHMS.md §2)."""

    gamma: float = field(num("gamma", float, 1.0, 0.0, 1.0, "dual damping γ", True))
    tau: float = field(num("tau", float, 1.0, 0.0, doc="temperature τ", low_open=True))
    prior_precision: float = field(
        num("prior-precision", float, 1.0, 0.0, doc="prior precision", low_open=True)
    )
    server_step: float = field(num("server-step", float, 0.0, 0.0, 1.0, "server step (0 = α)"))
    precision_floor: float = field(
        num("precision-floor", float, 1e-8, 0.0, doc="precision floor", low_open=True)
    )
    mc_samples: int = field(num("mc-samples", int, 1, 0, 1000, "MC samples per step"))
    eval_samples: int = field(num("eval-samples", int, 16, 0, 10_000, "posterior predictive draws"))


@dataclass(frozen=True)
class IVONHyper(BayesHyper):
    """IVON-ADMM: IVON's own settings on top of Bayesian ADMM's (§2.5)."""

    hess_init: float = field(num("hess-init", float, 0.001, 0.0, doc="IVON initial Hessian"))
    beta1: float = field(num("beta1", float, 0.9, 0.0, 0.999, "IVON gradient momentum"))
    beta2: float = field(num("beta2", float, 0.9998, 0.0, 1.0, "IVON Hessian momentum"))


@dataclass(frozen=True)
class NewtonHyper(Local, Weighted):
    """FedPM / LocalNewton / FedNL local preconditioned steps (ALGORITHMS.md §3)."""

    batch_size: int = field(BATCH_SIZE)
    eta: float = field(num("eta", float, 1.0, 0.0, doc="preconditioned step η", low_open=True))
    newton_steps: int = field(num("newton-steps", int, 1, 1, 1000, "local steps K"))
    curvature: str = field(
        choice("curvature", "hessian", ("hessian", "foof", "diagonal"), "preconditioner kind")
    )
    damping: float = field(num("damping", float, 0.001, 0.0, doc="damping λ"))
    globalization: str = field(
        choice(
            "globalization",
            "levenberg-marquardt",
            ("levenberg-marquardt", "none"),
            "server-side damping of the exact-Hessian step, adapted from f's decrease",
        )
    )
    lm_damping: float = field(
        num("lm-damping", float, 1.0, 0.0, doc="initial server (Levenberg-Marquardt) damping μ_0")
    )
    foof_ema: float = field(num("foof-ema", float, 0.95, 0.0, 0.999, "FOOF statistics EMA"))
    foof_refresh: int = field(num("foof-refresh", int, 1, 1, 1_000_000, "FOOF refresh period"))
    curvature_cap_mb: float = field(
        num("curvature-cap-mb", float, 64.0, 0.0, doc="curvature upload cap", low_open=True)
    )


@dataclass(frozen=True)
class ScaffoldHyper(LocalSGD):
    """SCAFFOLD: SGD with control variates, global step ``server-lr``."""

    server_lr: float = field(
        num("server-lr", float, 1.0, 0.0, doc="global step η_g", low_open=True)
    )


@dataclass(frozen=True)
class DittoHyper(FedAvgHyper, PersonalStage):
    """Ditto (Li et al. 2021, Eq. 2): FedAvg for ``w``; personal ``v_i`` by SGD on
    ``F_i(v) + (λ/2)||v − w^t||²`` for ``personal-epochs``.
    """

    ditto_lambda: float = field(
        num("ditto-lambda", float, 0.1, 0.0, doc="Ditto's λ: pull of v_i towards w^t")
    )


@dataclass(frozen=True)
class FedDynHyper(LocalSGD):
    """FedDyn (Acar et al. 2021, Algorithm 1): local SGD on the dynamically regularised loss."""

    alpha: float = field(
        num("alpha", float, 0.01, 0.0, doc="FedDyn's α (dynamic regulariser)", low_open=True)
    )
