"""FedPM: local preconditioned steps, then preconditioned mixing on the server (ALGORITHMS.md §3).

Not the "FedPM" of Flower Baselines / FL4Health (federated probabilistic masks): this is
Ishii et al., "FedPM: federated preconditioned mixing" (arXiv 2511.09100, AAAI-26).

Client ``i`` takes ``K`` (``newton-steps``) local steps ``θ ← θ − η P_i^{-1} ∇f_i(θ)`` from ``θ^t``
and replies its parameters ``θ_i`` (``SHARED``) and the preconditioner of its **last** step
(``CURVATURE``, §3.2, §3.3). The server, with no data, mixes over the participants ``S_t``
(§3.2, §3.6)

    θ^{t+1} = (Σ_{i∈S_t} w_i P_i)^{-1} Σ_{i∈S_t} w_i P_i θ_i,        w_i = 1 | n_i

(``client-weighting`` = uniform | examples, the base's one policy; §3.4). Three curvature kinds:

* ``hessian`` (§3.3): ``P_i = ∇²f_i + λI`` over the flattened shared block (record order), one
  symmetric ``d×d`` matrix sent as its upper triangle (``TRIU``, row-major, ``d(d+1)/2`` values).
* ``foof`` (§3.4): per Linear / Conv2d layer ``l`` the damped factor ``Ā_l = A_l + λI`` of the
  uncentred second moment of the layer's inputs (im2col patches for convolutions, bias folded in
  as a last input of ones), upper triangle under the layer's module name. The layer is mixed as

      W^{t+1} = (Σ_i w_i W_i Ā_{i,l}) (Σ_i w_i Ā_{i,l})^{-1}        (W = [weight | bias])

  and every other shared parameter (not in a preconditioned layer) by the weighted mean.
* ``diagonal``: a vector per shared parameter (the shared block's layout): for a layer's weight
  entry ``W[o, j]`` the diagonal ``A_l[j, j] + λ`` of the FOOF factor, ``1 + λ`` elsewhere; mixed
  element-wise ``θ = Σ w_i p_i ⊙ θ_i / Σ w_i p_i``. Cheap (no ``d_in²`` factor) for large models.

With ``K = 1`` the client's ``P_i^{-1}`` and the server's ``P_i`` cancel and one round is
``θ^t − η (Σ w_i P_i)^{-1} Σ w_i ∇f_i(θ^t)`` (§3.5; exact Hessians: the global Newton step, i.e.
FedNL without compression). LocalNewton (§5) is the mean rule with the same local solver.

Globalization (``globalization='levenberg-marquardt'``, exact Hessians, ``K = 1``): the server
recovers the exact model of ``f = Σ w_i f_i / W`` at ``u^t`` from the replies,
``H = (Σ w_i P_i)/W − λI`` and ``g = (Σ w_i P_i)(u^t − θ̂)/(ηW)`` (``θ̂`` the mix; §3.5), and
steps ``x + s``, ``s = −η (H + μ_t I)^{-1} g`` from the last accepted point ``x`` with a damping
``μ_t`` adapted from the decrease of ``f`` it observes one round later (each client reports
``f_i(u^t)``; ``LevenbergMarquardt``): ``μ_0 = lm-damping``, ``μ_t → 0`` while steps succeed,
so the tail is the undamped Newton step's (superlinear, §3.2), and ``θ*`` stays the only fixed
point (``g = 0 ⇒ s = 0``). With ``globalization='none'`` the step is the mix itself and every
§3.5 identity holds bit for bit. FOOF / diagonal curvature and ``K > 1`` always use the plain
mix (no exact model of ``f``: the graceful fallback for non-convex models).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from torch import nn

from protocol.fedpm import OBJECTIVE
from protocol.foof import Layer, foof_layers, layer_matrix, split_layer_matrix
from protocol.records import CURVATURE, SHARED, TRIU, numpy_to_record
from protocol.symmetric import triu_size, unpack_symmetric
from strategies.base import FederatedStrategy, Reply
from strategies.checkpointing import RuleState, pack_global, unpack_global
from strategies.validation import ReplyError, Template
from tasks.functional import flatten, unflatten

KINDS = ("hessian", "foof", "diagonal")
"""Values of ``curvature``."""
PSD_TOLERANCE = 1e-6
"""Relative tolerance on negative eigenvalues of a reported preconditioner (rounding)."""
ACCEPT = 1e-4
"""Least ratio of actual to predicted decrease that keeps a step (Levenberg–Marquardt)."""
ROUNDING = 64 * 2.0**-52
"""Relative allowance on ``f(u) − f(x)`` for rounding (a step at the optimum is kept)."""
MIN_RESTART = 1e-3
"""Least server damping after a rejection, relative to the mean eigenvalue ``tr H / d``."""

Arrays = dict[str, torch.Tensor]


# ----------------------------------------------------------------------- symmetric packing
# ----------------------------------------------------------------------- FOOF layer layout
def curvature_template(kind: str, shared: Template, layers: Sequence[Layer]) -> Template:
    """Expected arrays of a ``CURVATURE`` reply (name -> (shape, dtype)) for ``kind``."""
    dtype = next(iter(shared.values()))[1]
    if kind == "hessian":
        d = sum(math.prod(shape) for shape, _ in shared.values())
        return {TRIU: ((triu_size(d),), dtype)}
    if kind == "foof":
        return {layer.name: ((triu_size(layer.size),), dtype) for layer in layers}
    if kind == "diagonal":
        return dict(shared)
    raise ValueError(f"curvature={kind!r}; expected one of {', '.join(KINDS)}")


def template_nbytes(template: Template) -> int:
    """Payload bytes of one record with ``template``."""
    import numpy as np

    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in template.values())


# ----------------------------------------------------------------------- the mixing (§3.2/3.4)
def _solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``matrix^{-1} rhs``; a least-squares (pseudo-inverse) solve if ``matrix`` is singular."""
    try:
        out: torch.Tensor = torch.linalg.solve(matrix, rhs)
    except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
        log(WARNING, "FedPM: mixed preconditioner is singular; using its pseudo-inverse")
        out = torch.linalg.pinv(matrix) @ rhs
    return out


def precondition_mix(
    kind: str,
    thetas: Sequence[Mapping[str, torch.Tensor]],
    curvatures: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    layers: Sequence[Layer] = (),
) -> Arrays:
    """``θ = (Σ_i w_i P_i)^{-1} Σ_i w_i P_i θ_i`` in float64 (ALGORITHMS.md §3.2, §3.4, §3.7).

    ``thetas``: the clients' parameters by name (shared-block order); ``curvatures``: their
    decoded preconditioners — ``hessian``: ``{TRIU: d×d matrix}``; ``foof``: ``{layer: Ā_l}``;
    ``diagonal``: vectors by parameter name. Parameters outside the FOOF layers get the weighted
    mean. Returns float64 tensors in the order of ``thetas[0]``.
    """
    w = [float(x) for x in weights]
    names = list(thetas[0])
    shapes = {k: tuple(v.shape) for k, v in thetas[0].items()}
    th = [{k: v.to(torch.float64) for k, v in t.items()} for t in thetas]
    cv = [{k: v.to(torch.float64) for k, v in c.items()} for c in curvatures]

    def wsum(terms: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([wi * x for wi, x in zip(w, terms, strict=True)]).sum(0)

    if kind == "hessian":
        p_sum = wsum([c[TRIU] for c in cv])
        rhs = wsum([c[TRIU] @ flatten(t) for c, t in zip(cv, th, strict=True)])
        return dict(unflatten(_solve(p_sum, rhs), shapes))
    if kind == "diagonal":
        return {
            k: wsum([c[k] * t[k] for c, t in zip(cv, th, strict=True)]) / wsum([c[k] for c in cv])
            for k in names
        }
    if kind != "foof":
        raise ValueError(f"curvature={kind!r}; expected one of {', '.join(KINDS)}")
    mixed: Arrays = {}
    for layer in layers:
        # (Σ w W_i Ā_i)(Σ w Ā_i)^{-1}, transposed: (Σ w Ā_i)^{-1} (Σ w Ā_i W_iᵀ) (Ā symmetric)
        a_sum = wsum([c[layer.name] for c in cv])
        rhs = wsum([c[layer.name] @ layer_matrix(t, layer).T for c, t in zip(cv, th, strict=True)])
        mixed.update(split_layer_matrix(_solve(a_sum, rhs).T, layer, shapes))
    for k in names:
        if k not in mixed:
            mixed[k] = wsum([t[k] for t in th]) / sum(w)
    return {k: mixed[k] for k in names}


def decode_curvature(kind: str, arrays: Mapping[str, Any]) -> Arrays:
    """A ``CURVATURE`` record (numpy or torch) as float64 matrices / vectors for the mixing."""
    tensors = {k: torch.as_tensor(v).to(torch.float64) for k, v in arrays.items()}
    if kind == "diagonal":
        return tensors
    return {k: unpack_symmetric(v) for k, v in tensors.items()}


# ----------------------------------------------------------------------- config rule
def model_layout(config: Mapping[str, Any]) -> tuple[nn.Module, list[str]]:
    """The task's model (built under a forked RNG) and its shared parameter names."""
    from tasks.personalization import split_names
    from tasks.registry import task_of

    with torch.random.fork_rng(devices=[]):
        model = task_of(config).build_model(str(config["personalization"]))
    shared, _ = split_names(model, str(config["personalization"]))
    return model, shared


def curvature_upload(config: Mapping[str, Any]) -> tuple[int, int]:
    """(curvature bytes, parameter bytes) one client uploads per round under ``config``."""
    model, shared = model_layout(config)
    params = dict(model.named_parameters())
    template: Template = {
        k: (tuple(params[k].shape), str(params[k].dtype).removeprefix("torch.")) for k in shared
    }
    curv = curvature_template(str(config["curvature"]), template, foof_layers(model, shared))
    return template_nbytes(curv), template_nbytes(template)


def check_fedpm(config: Mapping[str, Any], num_shared: int) -> str | None:
    """Config rule of the FedPM family: the curvature upload must fit ``curvature-cap-mb``."""
    curv, params = curvature_upload(config)
    cap = float(config["curvature-cap-mb"]) * 2**20
    if curv > cap:
        return (
            f"algorithm={config['algorithm']!r} with curvature={config['curvature']!r} would "
            f"upload {curv / 2**20:.1f} MB of curvature per client and round for task="
            f"{config['task']!r} ({num_shared} shared parameters, {params / 2**20:.2f} MB), over "
            f"curvature-cap-mb={config['curvature-cap-mb']}; use curvature='foof' or 'diagonal', "
            f"a smaller model (model='convex' where the task offers one), or raise "
            "curvature-cap-mb"
        )
    return None


# ----------------------------------------------------------------------- the rules
class FedPMStrategy(FederatedStrategy):
    """Server of FedPM: preconditioned mixing of the participants' ``(θ_i, P_i)`` (§3.2, §3.7).

    Server state: ``θ`` only (the preconditioner is rebuilt every round, §3.3).
    """

    reply_records: tuple[str, ...] = (SHARED, CURVATURE)

    def __init__(self, config: Mapping[str, Any], solver: str = "") -> None:
        super().__init__(config, solver)
        self.kind = str(config["curvature"])
        self.layers: list[Layer] = []
        self.globalization: LevenbergMarquardt | None = None
        if (
            config.get("globalization") == "levenberg-marquardt"
            and self.kind == "hessian"
            and int(config["newton-steps"]) == 1
        ):
            self.globalization = LevenbergMarquardt(
                float(config["eta"]), float(config["damping"]), float(config["lm-damping"])
            )

    def init_state(self, initial: ArrayRecord) -> None:
        """The FOOF layer layout of the shared block (from the task's model)."""
        model, _ = model_layout(self.config)
        self.layers = foof_layers(model, list(self.shared_template))
        log(
            INFO,
            "%s: curvature=%s, %d preconditioned layers, up per client and round: %s",
            type(self).__name__,
            self.kind,
            len(self.layers),
            ", ".join(f"{k} {v / 2**20:.3f} MB" for k, v in self.upload_nbytes().items()),
        )

    def upload_nbytes(self) -> dict[str, int]:
        """Payload bytes one client uploads per round, by reply record (only what is sent)."""
        return {name: template_nbytes(self.reply_template(name)) for name in self.reply_records}

    def reply_template(self, name: str) -> Template:
        """``CURVATURE`` follows ``curvature_template``; ``SHARED`` the shared block."""
        if name == CURVATURE:
            return curvature_template(self.kind, self.shared_template, self.layers)
        return self.shared_template

    def check_reply(self, arrays: Mapping[str, Mapping[str, Any]]) -> None:
        """The preconditioner must be positive semi-definite: an exact Hessian's eigenvalues
        ``≥ −PSD_TOLERANCE·max|λ|``, FOOF factors likewise, a diagonal curvature ``> 0``
        (a negated or indefinite ``P_i`` would steer the mixing; ALGORITHMS.md §3.2).
        """
        for name, value in decode_curvature(self.kind, arrays[CURVATURE]).items():
            if self.kind == "diagonal":
                if not bool((value > 0).all()):
                    raise ReplyError(f"{CURVATURE}[{name}] has non-positive diagonal entries")
                continue
            eig = torch.linalg.eigvalsh(value)
            if float(eig.min()) < -PSD_TOLERANCE * max(float(eig.abs().max()), 1e-300):
                raise ReplyError(
                    f"{CURVATURE}[{name}] is not positive semi-definite (eigenvalue "
                    f"{float(eig.min()):.3g})"
                )

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """``θ^{t+1} = (Σ w_i P_i)^{-1} Σ w_i P_i θ_i`` over this round's participants."""
        thetas = [{k: torch.from_numpy(v) for k, v in r.arrays[SHARED].items()} for r in replies]
        curvatures = [decode_curvature(self.kind, r.arrays[CURVATURE]) for r in replies]
        mixed = precondition_mix(
            self.kind,
            thetas,
            curvatures,
            [self.client_weight(r.partition_id) for r in replies],
            self.layers,
        )
        if self.globalization is not None:
            weights = [self.client_weight(r.partition_id) for r in replies]
            if not all(OBJECTIVE in r.metrics for r in replies):
                raise ValueError(f"FedPM globalization: replies without the {OBJECTIVE!r} metric")
            value = sum(
                w * r.metrics[OBJECTIVE] for w, r in zip(weights, replies, strict=True)
            ) / sum(weights)
            p_mean = torch.stack(
                [w * c[TRIU] for w, c in zip(weights, curvatures, strict=True)]
            ).sum(0) / sum(weights)
            u = flatten({k: torch.from_numpy(current[k].numpy()) for k in self.shared_template})
            point = self.globalization.update(
                tuple(r.partition_id for r in replies), u, value, p_mean, flatten(mixed)
            )
            shapes = {k: shape for k, (shape, _) in self.shared_template.items()}
            mixed = dict(unflatten(point, shapes))
        return numpy_to_record(
            {k: v.numpy().astype(self.shared_template[k][1]) for k, v in mixed.items()}
        )

    def checkpoint_state(self) -> RuleState:
        """The globalization's anchor, model and damping (none before round 1)."""
        if self.globalization is None or self.globalization.anchor is None:
            return {}
        return pack_global("fedpm", self.globalization.arrays())

    def restore_state(self, state: RuleState) -> None:
        """Set the globalization from ``checkpoint_state()`` output (``{}``: before round 1)."""
        if self.globalization is None:
            super().restore_state(state)
            return
        self.globalization.reset()
        if state:
            self.globalization.load(unpack_global("fedpm", state, STATE_NAMES, "FedPM state"))


STATE_NAMES = ("anchor", "value", "gradient", "hessian", "levenberg", "participants")
"""Arrays of the globalization's checkpoint (``LevenbergMarquardt.arrays``)."""


class LevenbergMarquardt:
    """Server-side Levenberg–Marquardt globalization of FedPM's step (exact Hessians, ``K = 1``).

    State: the anchor ``x`` (last accepted point), ``f(x)``, the model ``(g, H)`` of ``f`` at
    ``x``, the server damping ``μ`` and the participants whose weighted objective ``f`` is.
    Round ``t`` brings ``f(u^t)``: with ``ρ = (f(x) − f(u^t)) / pred`` (``pred`` the model
    decrease of the step to ``u^t``) the point is kept if ``ρ > ACCEPT`` (then ``μ ← μ/10`` if
    ``ρ > 0.75``, ``μ ← 4μ`` if ``ρ < 0.25``), else the server retries from ``x`` with
    ``μ ← max(4μ, MIN_RESTART·tr H/d)`` using the stored model: no extra exchange, one round per
    rejection. Another participant set makes the values incomparable: ``u^t`` is then kept.
    """

    def __init__(self, eta: float, damping: float, initial: float) -> None:
        self.eta, self.damping, self.initial = eta, damping, initial
        self.reset()

    def reset(self) -> None:
        """No anchor (before round 1)."""
        self.anchor: torch.Tensor | None = None
        self.value = math.nan
        self.gradient = torch.zeros(0, dtype=torch.float64)
        self.hessian = torch.zeros(0, 0, dtype=torch.float64)
        self.levenberg = self.initial
        self.participants: tuple[int, ...] = ()

    def arrays(self) -> dict[str, Any]:
        """The state as named float64 numpy arrays (``STATE_NAMES``)."""
        assert self.anchor is not None
        return {
            "anchor": self.anchor.numpy(),
            "value": torch.tensor([self.value], dtype=torch.float64).numpy(),
            "gradient": self.gradient.numpy(),
            "hessian": self.hessian.numpy(),
            "levenberg": torch.tensor([self.levenberg], dtype=torch.float64).numpy(),
            "participants": torch.tensor(self.participants, dtype=torch.float64).numpy(),
        }

    def load(self, arrays: Mapping[str, Any]) -> None:
        """Inverse of ``arrays``."""
        self.anchor = torch.from_numpy(arrays["anchor"])
        self.value = float(arrays["value"][0])
        self.gradient = torch.from_numpy(arrays["gradient"])
        self.hessian = torch.from_numpy(arrays["hessian"])
        self.levenberg = float(arrays["levenberg"][0])
        self.participants = tuple(int(p) for p in arrays["participants"])

    def step(self) -> torch.Tensor:
        """``s = −η (H + μI)^{-1} g`` from the anchor's model."""
        eye = torch.eye(self.gradient.numel(), dtype=torch.float64)
        return -self.eta * _solve(self.hessian + self.levenberg * eye, self.gradient)

    def update(
        self,
        participants: tuple[int, ...],
        u: torch.Tensor,
        value: float,
        precond: torch.Tensor,
        mixed: torch.Tensor,
    ) -> torch.Tensor:
        """The next global point ``x + s`` from this round's replies at ``u`` (flat, float64).

        ``value``: ``f(u)`` (weighted mean of the participants' ``f_i(u)``); ``precond``:
        ``Σ w_i P_i / W``; ``mixed``: the FedPM mix ``θ̂``. The model at ``u`` is
        ``H = precond − λI`` and ``g = precond (u − θ̂)/η`` (exact for ``K = 1``).
        """
        eye = torch.eye(u.numel(), dtype=torch.float64)
        hess = precond - self.damping * eye
        accept = self.anchor is None or participants != self.participants
        if not accept:
            assert self.anchor is not None
            s = u - self.anchor
            pred = -float(self.gradient @ s + 0.5 * s @ self.hessian @ s)
            actual = self.value - value
            slack = ROUNDING * max(abs(self.value), 1.0)
            rho = 1.0 if pred <= slack else actual / pred
            accept = math.isfinite(value) and (rho > ACCEPT or abs(actual) <= slack)
            if accept and rho > 0.75:
                self.levenberg /= 10.0
            elif accept and rho < 0.25:
                self.levenberg *= 4.0
            elif not accept:
                scale = float(torch.trace(self.hessian)) / max(u.numel(), 1)
                self.levenberg = max(4.0 * self.levenberg, MIN_RESTART * scale)
        if accept:
            self.anchor, self.value, self.participants = u, value, participants
            self.gradient, self.hessian = precond @ (u - mixed) / self.eta, hess
        assert self.anchor is not None
        return self.anchor + self.step()
