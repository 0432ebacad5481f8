"""Bayesian ADMM clients (ALGORITHMS.md §2): one round skeleton, three local solvers.

Every family receives ``q_g = (m_g, S_g)`` and solves, from its own state, the §2.2 problem

    q_k = argmin_q (1/τ) E_q[ℓ_k(θ)] + E_q[v_kᵀθ − ½ θᵀV_kθ] + ρ KL(q ‖ q_g),   ℓ_k = N_k f_k

(``f_k`` = the task's mean loss, so ``ℓ_k`` is the sum over the client's ``N_k`` examples), then
takes the dual step (§2.2, §2.5.4, w.r.t. the ``q_g`` it started from)

    v_k ← v_k + γρ (S_k m_k − S_g m_g),      V_k ← V_k + γρ (S_k − S_g)

and replies ``(m_k, S_k, v_k, V_k)`` (§2.7; the isotropic family only ``(m_k, v_k)``). The
duals (and IVON's momentum and step counter) live in the client state. The solvers:

* ``isotropic`` (``bayes-admm``, §2.3): ``S = s I`` fixed, ``E_q[ℓ_k] → ℓ_k(m)``; local SGD on
  ``f_k(θ) + (τ/N_k)[v_kᵀθ + (ρ s/2)‖θ − m_g‖²]`` (the §2.3 problem divided by ``N_k/τ``).
* ``newton`` (``newton-admm``, §2.4): full-batch variational online Newton, ``local-epochs``
  iterations with step ``r_t = lr/(1 + 0.1 t)`` (decay of the official toy code) for both ``m``
  and ``S``; expectations at the mean (``mc-samples = 0``, delta method) or by Monte Carlo.
  With ``lr = 1`` one iteration on a quadratic is the §2.4 closed form.
* ``ivon`` (``ivon-admm``, §2.5): ivon-opt's IVON extended by the prior mean, per-coordinate
  prior precision and dual terms (``IVONWithPrior``), ``ess = λ_k = N_k/(τρ)``.

Round 1 starts local training at the received ``SHARED`` block (the seeded initial weights)
and centres the KL on ``GLOBAL_MEAN`` (the prior mean); later rounds start at ``m_g``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from ivon import IVON
from torch import nn
from torch.func import grad, hessian

from client_app.solvers.base import (
    Groups,
    Quadratic,
    Solver,
    SolverInput,
    SolverOutput,
    local_sgd,
)
from client_app.solvers.functional import sum_loss
from protocol.gaussian import (
    Family,
    floor_precision,
    mean_from_natural,
    precision_times,
    sample_gaussian,
)
from protocol.records import (
    DUAL_MEAN,
    DUAL_PRECISION,
    FLOORED,
    GLOBAL_MEAN,
    GLOBAL_PRECISION,
    MATRIX,
    MEAN,
    PRECISION,
)
from tasks.functional import flatten, unflatten

V_STATE = "dual-mean"
"""State key of the dual ``v_k`` (float64, shared-block layout; the same values the reply's
``DUAL_MEAN`` record carries in the model's dtype)."""
BIG_V_STATE = "dual-precision"
"""State key of the dual ``V_k`` (float64, family layout)."""
IVON_STATE = "ivon"
"""State key of IVON's persistent buffers: ``momentum`` (flat) and ``step`` (one element)."""
VON_DECAY = 0.1
"""Step-size decay ``r_t = lr/(1 + VON_DECAY·t)`` of the VON iterations (official toy code)."""


@dataclass
class GaussianRound:
    """One client round of Bayesian ADMM: ``q_g``, the duals and the hyper-parameters (§2.2).

    Vectors are the flattened shared block in float64 on the training device; precisions are
    vectors (isotropic, diagonal) or ``d×d`` matrices (full).
    """

    inp: SolverInput
    family: Family
    shapes: dict[str, tuple[int, ...]]
    rho: float
    gamma: float
    tau: float
    floor: float
    num_examples: int
    start: torch.Tensor
    mean_g: torch.Tensor
    precision_g: torch.Tensor
    dual_mean: torch.Tensor
    dual_precision: torch.Tensor
    floored: int = 0

    @classmethod
    def begin(cls, inp: SolverInput, family: Family) -> GaussianRound:
        """Read ``q_g`` from the message and ``(v_k, V_k)`` from the state (zero at first)."""
        cfg = inp.config
        device = inp.u[inp.shared[0]].device
        start = flatten(inp.u)
        mean_g = flatten(inp.received[GLOBAL_MEAN]) if GLOBAL_MEAN in inp.received else start
        if family is Family.ISOTROPIC:
            precision_g = float(cfg["prior-precision"]) * torch.ones_like(start)
        else:
            if GLOBAL_PRECISION not in inp.received:
                raise ValueError(f"no {GLOBAL_PRECISION!r} record in the training message")
            precision_g = cls.precision_of(family, inp.received[GLOBAL_PRECISION])
        v = inp.state.get(V_STATE, device)
        big_v = inp.state.get(BIG_V_STATE, device)
        return cls(
            inp,
            family,
            {k: tuple(inp.u[k].shape) for k in inp.shared},
            float(cfg["rho"]),
            float(cfg["gamma"]),
            float(cfg["tau"]),
            float(cfg["precision-floor"]),
            len(inp.train),
            start,
            mean_g,
            precision_g,
            flatten(v) if v is not None else torch.zeros_like(start),
            cls.precision_of(family, big_v) if big_v is not None else torch.zeros_like(precision_g),
        )

    @staticmethod
    def precision_of(family: Family, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
        """A precision-layout record as float64: the ``MATRIX`` or the flattened vector."""
        return arrays[MATRIX].to(torch.float64) if family is Family.FULL else flatten(arrays)

    def named(
        self, flat: torch.Tensor, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """``flat`` as the shared block's named tensors (in ``dtype``, default the model's)."""
        dtype = dtype or self.inp.u[self.inp.shared[0]].dtype
        return {k: v.to(dtype) for k, v in unflatten(flat, self.shapes).items()}

    def _precision_arrays(self, precision: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
        if self.family is Family.FULL:
            return {MATRIX: precision.to(dtype)}
        return self.named(precision, dtype)

    def finish(self, mean: torch.Tensor, precision: torch.Tensor, loss: float) -> SolverOutput:
        """Dual step (§2.2 / §2.5.4), state update and the reply ``(m_k, S_k, v_k, V_k)``.

        ``S_k m_k − S_g m_g`` is evaluated as ``S_g (m_k − m_g) + (S_k − S_g) m_k`` (same value,
        no cancellation of two large products; exact ``s (m_k − m_g)`` when ``S_k = S_g``).
        """
        delta = precision - self.precision_g
        step = self.gamma * self.rho
        self.dual_mean = self.dual_mean + step * (
            precision_times(self.family, self.precision_g, mean - self.mean_g)
            + precision_times(self.family, delta, mean)
        )
        self.dual_precision = self.dual_precision + step * delta
        state: Groups = {V_STATE: self.named(self.dual_mean, torch.float64)}
        dtype = self.inp.u[self.inp.shared[0]].dtype
        records = {MEAN: self.named(mean), DUAL_MEAN: self.named(self.dual_mean)}
        metrics = {
            "train-loss": loss,
            "dual-norm": float(self.dual_mean.norm()),
            "drift-norm": float((mean - self.mean_g).norm()),
            FLOORED: float(self.floored),
        }
        if self.family is not Family.ISOTROPIC:
            state[BIG_V_STATE] = self._precision_arrays(self.dual_precision, torch.float64)
            records[PRECISION] = self._precision_arrays(precision, dtype)
            records[DUAL_PRECISION] = self._precision_arrays(self.dual_precision, dtype)
            metrics["dual-precision-norm"] = float(self.dual_precision.norm())
        return SolverOutput(records, metrics, state)


# ----------------------------------------------------------------------- bayes-admm (§2.3)
def isotropic(inp: SolverInput) -> SolverOutput:
    """``bayes-admm`` client: SGD on ``f_k + (τ/N_k)[v_kᵀθ + (ρ s/2)‖θ − m_g‖²]`` (§2.3).

    This is the consensus-ADMM client ``argmin ℓ_k + y_kᵀθ + (ρ_ADMM/2)‖θ − θ_g‖²`` with
    ``ρ_ADMM = τρs`` and ``y_k = τ v_k``, divided by ``N_k`` (so ``lr`` is a FedAvg-scale step).
    The quadratic has curvature ``κ = τρs/N_k``, which grows as clients get smaller
    (``N_k = n/K`` for ``K`` equal clients); it is taken by its exact proximal map
    (``local_sgd`` with a ``Quadratic``),

        θ ← m_g + (θ − lr·∇f_k − m_g − lr·(τ/N_k)v_k)/(1 + lr·κ),

    stable for ``lr < 2/L_k`` whatever ``K``, ``N_k`` and ``ρ`` (a gradient step needs
    ``lr·(L_k + κ) < 2``); same stationary points.
    """
    rnd = GaussianRound.begin(inp, Family.ISOTROPIC)
    scale = rnd.tau / rnd.num_examples
    s = float(inp.config["prior-precision"])
    v, m_g = rnd.named(rnd.dual_mean), rnd.named(rnd.mean_g)
    prior = Quadratic(scale * rnd.rho * s, m_g, {k: scale * t for k, t in v.items()})
    loss = local_sgd(inp, inp.shared, int(inp.config["local-epochs"]), quadratic=prior)
    return rnd.finish(flatten(inp.named(inp.shared)), rnd.precision_g, loss)


# ----------------------------------------------------------------------- newton-admm (§2.4)
def newton(inp: SolverInput) -> SolverOutput:
    """``newton-admm`` client: VON iterations (§2.4) from ``(m, S) = (start, S_g)``.

    With ``c = 1/(τρ)`` and ``r = lr/(1 + 0.1 t)`` at iteration ``t``:

        S ← (1 − r) S + r [S_g + c E_q∇²ℓ_k − V_k/ρ]
        m ← m − r S^{-1} [c E_q∇ℓ_k + (v_k − V_k m)/ρ + S_g (m − m_g)]

    ``S`` is floored (eigenvalues) after every update. On a quadratic ``ℓ_k`` with ``lr = 1``
    and the delta method the first iteration gives the closed form
    ``S_k = S_g + (A_k − τV_k)/(τρ)``, ``S_k m_k = S_g m_g + (b_k − τv_k)/(τρ)``.

    Step range: both updates are preconditioned by the stage's own curvature ``S``, which holds
    the penalty's ``S_g`` and the data's ``c∇²ℓ_k``, so on a quadratic the errors contract by
    ``|1 − r|`` whatever ``K``, ``N_k`` or ``ρ``: stable for ``0 < lr < 2`` (exact at 1).
    """
    rnd = GaussianRound.begin(inp, Family.FULL)
    cfg = inp.config
    loss = sum_loss(inp, rnd.shapes)
    c = 1.0 / (rnd.tau * rnd.rho)
    samples = int(cfg["mc-samples"])
    mean, precision = rnd.start.clone(), rnd.precision_g.clone()
    for it in range(int(cfg["local-epochs"])):
        r = inp.lr / (1.0 + VON_DECAY * it)
        points = (
            [mean]
            if samples == 0
            else [
                sample_gaussian(Family.FULL, mean, precision, inp.generator) for _ in range(samples)
            ]
        )
        g = torch.stack([grad(loss)(p) for p in points]).mean(0)
        h = torch.stack([hessian(loss)(p) for p in points]).mean(0)
        target = rnd.precision_g + c * h - rnd.dual_precision / rnd.rho
        precision, low = floor_precision(Family.FULL, (1 - r) * precision + r * target, rnd.floor)
        rnd.floored += low
        direction = (
            c * g
            + (rnd.dual_mean - rnd.dual_precision @ mean) / rnd.rho
            + rnd.precision_g @ (mean - rnd.mean_g)
        )
        mean = mean - r * mean_from_natural(Family.FULL, precision, direction)
    inp.set_params(rnd.named(mean))
    return rnd.finish(mean, precision, float(loss(mean)) / max(rnd.num_examples, 1))


# ----------------------------------------------------------------------- ivon-admm (§2.5)
class IVONWithPrior(IVON):  # type: ignore[misc]
    """ivon-opt 0.1.3's IVON with the IVON-ADMM terms of §2.5.2 (``ivonwithprior.py``).

    IVON's scalar ``weight_decay`` δ becomes the per-coordinate prior precision ``δ̄ = S_g/λ``
    (IVON only uses it element-wise: in the weight noise, the curvature update and the mean
    step), and its two update hooks gain the prior mean ``m_g`` and the scaled duals
    ``v̄ = τv_k/N_k``, ``V̄ = τV_k/N_k``:

        h_tgt = ĥ − V̄;        h ← β2 h + (1−β2) h_tgt + ½(1−β2)² (h − h_tgt)²/(h + δ̄)
        m ← m − lr · clip([g/(1 − β1^c) + δ̄ (m − m_g) + v̄ − V̄ m] / (h + δ̄))

    With ``m_g = 0``, constant ``δ̄`` and zero duals every operation reduces to IVON's own
    (ALGORITHMS.md §6 B6). One parameter group; no learning-rate rescaling (§2.5.2).
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        ess: float,
        *,
        prior_mean: torch.Tensor,
        prior_precision: torch.Tensor,
        dual_mean: torch.Tensor,
        dual_precision: torch.Tensor,
        hess_init: float,
        beta1: float,
        beta2: float,
        mc_samples: int,
        clip_radius: float = math.inf,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            ess=ess,
            hess_init=1.0,  # IVON insists on > 0; the buffer is set below (0 is allowed here)
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            mc_samples=mc_samples,
            clip_radius=clip_radius,
            rescale_lr=False,
        )
        (group,) = self.param_groups
        group["weight_decay"] = prior_precision
        # exactly as IVON._init_buffers fills it (hess_init goes through a float32 scalar)
        group["hess"] = torch.zeros_like(group["hess"]).add(torch.as_tensor(hess_init))
        self.prior_mean = prior_mean
        self.dual_mean = dual_mean
        self.dual_precision = dual_precision

    def _new_hess(
        self,
        method: str,
        hess: torch.Tensor,
        avg_nxg: torch.Tensor,
        avg_gsq: torch.Tensor,
        pg_slice: slice,
        ess: float,
        beta2: float,
        wd: torch.Tensor,
    ) -> torch.Tensor:
        """IVON's curvature update with the target ``ĥ − V̄`` (§2.5.2 step 3)."""
        target = IVON._get_nll_hess(method, hess + wd, avg_nxg, avg_gsq, pg_slice) * ess
        target = target - self.dual_precision
        out: torch.Tensor = (
            beta2 * hess
            + (1.0 - beta2) * target
            + (0.5 * (1 - beta2) ** 2) * (hess - target).square() / (hess + wd)
        )
        return out

    def _new_param_averages(
        self,
        param_avg: torch.Tensor,
        hess: torch.Tensor,
        momentum: torch.Tensor,
        lr: float,
        wd: torch.Tensor,
        clip_radius: float,
        debias: float,
        hess_init: float,
    ) -> torch.Tensor:
        """IVON's mean step with the prior centred at ``m_g`` and the dual terms (step 4)."""
        numerator = (
            momentum / debias
            + wd * (param_avg - self.prior_mean)
            + self.dual_mean
            - self.dual_precision * param_avg
        )
        return param_avg - lr * torch.clip(numerator / (hess + wd), -clip_radius, clip_radius)

    def floor_curvature(self, floor: float) -> int:
        """Raise ``h`` where ``h + δ̄ < floor``; return how many entries were raised."""
        (group,) = self.param_groups
        total = group["hess"] + group["weight_decay"]
        low = total < floor
        count = int(low.sum())
        if count:
            group["hess"] = torch.where(low, floor - group["weight_decay"], group["hess"])
        return count

    @property
    def curvature(self) -> torch.Tensor:
        """The curvature vector ``h`` (flat, parameter dtype)."""
        hess: torch.Tensor = self.param_groups[0]["hess"]
        return hess


def noise_seed(generator: torch.Generator) -> int:
    """The seed of the client's weight noise, drawn first from the round's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextmanager
def seeded_noise(seed: int, device: torch.device) -> Iterator[None]:
    """Run with torch's global RNG (which IVON samples from) seeded, restoring it afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def ivon(inp: SolverInput) -> SolverOutput:
    """``ivon-admm`` client (§2.9): IVON with prior ``(m_g, δ̄ = S_g/λ)`` and duals, then the dual
    step with ``S_k = λ(h + δ̄) = S_g + λh``.

    ``λ = ess = N_k/(τρ)``. Step range: the mean step divides the whole gradient, prior and
    dual terms included, by the precision ``h + δ̄``, so the penalty's share of the curvature
    contracts by ``1 − lr·δ̄/(h + δ̄) ∈ (1 − lr, 1)``: stable for ``lr < 2`` whatever ``K``,
    ``N_k`` or ``ρ`` (none enters the step bound; the floor keeps ``h + δ̄ > 0``).
    First participation: ``h = hess-init``, momentum 0, counter 0; later
    rounds: ``h = 0`` (curvature reset, §2.5.3) and momentum and step counter from the state.
    Order of the random draws: the noise seed, then one batch order per epoch.
    """
    rnd = GaussianRound.begin(inp, Family.DIAGONAL)
    cfg, model, data = inp.config, inp.model, inp.train
    device = rnd.start.device
    params = dict(model.named_parameters())
    dtype = params[inp.shared[0]].dtype
    ess = rnd.num_examples / (rnd.tau * rnd.rho)
    saved = inp.state.get(IVON_STATE, device)
    scale = rnd.tau / rnd.num_examples
    opt = IVONWithPrior(
        [params[n] for n in inp.shared],
        lr=inp.lr,
        ess=ess,
        prior_mean=rnd.mean_g.to(dtype),
        prior_precision=(rnd.precision_g / ess).to(dtype),
        dual_mean=(scale * rnd.dual_mean).to(dtype),
        dual_precision=(scale * rnd.dual_precision).to(dtype),
        hess_init=float(cfg["hess-init"]) if saved is None else 0.0,
        beta1=float(cfg["beta1"]),
        beta2=float(cfg["beta2"]),
        mc_samples=int(cfg["mc-samples"]),
    )
    if saved is not None:
        opt.param_groups[0]["momentum"] = saved["momentum"].to(dtype)
        opt.current_step = int(saved["step"][0])
    batch, samples, floor = int(cfg["batch-size"]), int(cfg["mc-samples"]), rnd.floor / ess
    model.train()
    last = 0.0
    with seeded_noise(noise_seed(inp.generator), device):
        for _ in range(int(cfg["local-epochs"])):
            order = torch.randperm(len(data), generator=inp.generator).to(data.y.device)
            total = 0.0
            for idx in torch.split(order, batch):
                for _ in range(samples):
                    with opt.sampled_params(train=True):
                        opt.zero_grad(set_to_none=True)
                        value = inp.task.objective(model, data.x[idx], data.y[idx])
                        value.backward()  # type: ignore[no-untyped-call]
                    total += float(value.detach()) * len(idx) / samples
                opt.step()
                rnd.floored += opt.floor_curvature(floor)
            last = total / max(len(data), 1)
    ivon_state = {
        "momentum": opt.param_groups[0]["momentum"].detach().clone(),
        "step": torch.tensor([opt.current_step], dtype=torch.int64),
    }
    precision = rnd.precision_g + ess * opt.curvature.to(torch.float64)
    out = rnd.finish(flatten(inp.named(inp.shared)), precision, last)
    out.state[IVON_STATE] = ivon_state
    return out


BAYES_SGD = Solver("bayes-sgd", isotropic, returns=(MEAN, DUAL_MEAN), keeps=(V_STATE,))
"""Isotropic Bayesian ADMM client (local SGD)."""
VON = Solver(
    "von",
    newton,
    returns=(MEAN, PRECISION, DUAL_MEAN, DUAL_PRECISION),
    needs=(GLOBAL_PRECISION,),
    keeps=(V_STATE, BIG_V_STATE),
)
"""Full-covariance Bayesian ADMM client (variational online Newton)."""
IVON_ADMM = Solver(
    "ivon",
    ivon,
    returns=(MEAN, PRECISION, DUAL_MEAN, DUAL_PRECISION),
    needs=(GLOBAL_PRECISION,),
    keeps=(V_STATE, BIG_V_STATE, IVON_STATE),
)
"""IVON-ADMM client."""
