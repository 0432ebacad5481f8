"""Bayesian ADMM: one aggregation rule over Gaussian natural parameters (ALGORITHMS.md §2).

A Gaussian ``q = N(m, S^{-1})`` is handled through the linear pair ``(η, S) = (S m, S)`` (§2.1).
Client ``k`` returns its variational posterior ``(m_k, S_k)`` and its natural-parameter duals
``(v_k, V_k)`` (§2.2, §2.7); the server keeps the global ``(m_g, S_g)``, the prior
``p_0 = N(0, S_0^{-1})`` with ``S_0 = prior-precision · I`` and every client's last site and sets
(§2.2 / §2.5.5)

    S_g   = (1−α) (1/K) Σ_k S_k     + α (S_0 + Σ_k V_k)
    S_g m_g = (1−α) (1/K) Σ_k S_k m_k + α (S_0 m_0 + Σ_k v_k),      m_0 = 0,

with ``α = 1/(1 + K ρ)`` unless ``server-step`` (> 0) overrides it. Three families share this
rule and differ only in the shape of a precision (§2.3-2.5):

* ``isotropic`` (``bayes-admm``, §2.3): the precision is fixed at ``S_0 = s I`` (``s`` =
  ``prior-precision``), so ``S_k = S_g = s I`` and ``V_k = 0``; only means and ``v_k`` travel.
  This *is* consensus ADMM with penalty ``τ ρ s`` and multipliers ``τ v_k``.
* ``diagonal`` (``ivon-admm``, §2.5): precisions are vectors with the shared block's layout.
* ``full`` (``newton-admm``, §2.4): precisions are ``d×d`` matrices over the flattened shared
  block (``d`` = number of shared parameters, record order), one array named ``MATRIX``.

Partial participation (§2.8, an extension beyond the paper, UNVERIFIED): the server caches every
client's last ``(S_k, S_k m_k, v_k, V_k)`` — before its first reply ``(S_0, 0, 0, 0)``, i.e. the
client still at ``q_g^0 = p_0`` — and always combines all ``K`` sites, so absent clients keep
their duals. Positivity (§2.9 pitfall, UNVERIFIED): received ``S_k`` and the new ``S_g`` are
raised to ``precision-floor`` (eigenvalues for the full family); every raised entry is counted
in the round metric ``precision-floored`` (with the clients' own counts) and logged.

Round 1: the server starts at the prior (``m_g = 0``, ``S_g = S_0``, §2.5.5), while local
training starts at the seeded initial weights (§2.5.3); so in round 1 ``SHARED`` carries the
initial weights (the starting point) and ``GLOBAL_MEAN`` the prior mean that the KL term is
centred on. From round 2 on ``SHARED`` is ``m_g`` itself and ``GLOBAL_MEAN`` is not sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common import log

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
    numpy_to_record,
)
from strategies.base import FederatedStrategy, GlobalSampler, Reply
from strategies.checkpointing import RuleState, pack_partitions, unpack_partitions
from strategies.validation import Template
from tasks.functional import flatten as flatten
from tasks.functional import unflatten as unflatten

MAX_FULL_DIM = 1024
"""Largest shared block (parameters) for which ``newton-admm`` keeps ``d×d`` matrices."""


def server_step(config: Mapping[str, Any], num_clients: int) -> float:
    """``α``: ``server-step`` when positive, else ``1/(1 + K ρ)`` (§2.2)."""
    override = float(config["server-step"])
    return override if override > 0 else 1.0 / (1.0 + num_clients * float(config["rho"]))


def check_full_covariance(config: Mapping[str, Any], num_shared: int) -> str | None:
    """Config rule of ``newton-admm``: ``d×d`` matrices only for small shared blocks."""
    if num_shared > MAX_FULL_DIM:
        return (
            f"algorithm={config['algorithm']!r} keeps full {num_shared}x{num_shared} precision "
            f"matrices; it allows at most {MAX_FULL_DIM} shared parameters (this task's model "
            f"has {num_shared}); use 'ivon-admm' (diagonal) or a smaller model (model='convex' "
            "where the task offers one)"
        )
    return None


def check_sampling(config: Mapping[str, Any], num_shared: int) -> str | None:
    """Config rule of ``ivon-admm``: IVON draws at least one weight sample per step."""
    if int(config["mc-samples"]) < 1:
        return (
            f"algorithm={config['algorithm']!r} needs mc-samples >= 1 (IVON samples weights); "
            f"mc-samples={config['mc-samples']!r} (0 = delta method) is only for 'newton-admm'"
        )
    return None


@dataclass
class Site:
    """The server's cache of one client: ``(S_k m_k, S_k, v_k, V_k)`` (§2.8)."""

    eta: torch.Tensor
    precision: torch.Tensor
    dual_mean: torch.Tensor
    dual_precision: torch.Tensor


SITE_FIELDS = ("eta", "precision", "dual_mean", "dual_precision")
"""``Site`` fields, in constructor order (checkpoint names)."""


class BayesADMMStrategy(FederatedStrategy):
    """Server of Bayesian ADMM (§2.2): natural-parameter combination of all clients' sites.

    State (float64, flattened shared block): ``m_g``, ``S_g``, ``S_0`` and one ``Site`` per
    client. ``aggregate`` returns ``m_g`` (the mean model, what the server evaluates);
    ``global_sampler`` draws from ``N(m_g, S_g^{-1})`` for the posterior predictive.
    """

    family: ClassVar[Family] = Family.DIAGONAL
    reply_records: tuple[str, ...] = (MEAN, PRECISION, DUAL_MEAN, DUAL_PRECISION)
    sends: tuple[str, ...] = (GLOBAL_PRECISION, GLOBAL_MEAN)

    def __init__(self, config: Mapping[str, Any], solver: str = "") -> None:
        super().__init__(config, solver)
        self.prior_precision_value = float(config["prior-precision"])
        self.floor = float(config["precision-floor"])
        self.floored = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtype = "float32"

    # ----------------------------------------------------------------- state and layout
    @property
    def alpha(self) -> float:
        """Server interpolation ``α`` (§2.2)."""
        return server_step(self.config, self.num_clients)

    def init_state(self, initial: ArrayRecord) -> None:
        """Server at the prior: ``m_g = 0``, ``S_g = S_0`` (§2.5.5); sites at ``p_0``, duals 0."""
        self.shapes = {k: shape for k, (shape, _) in self.shared_template.items()}
        dtypes = {dtype for _, dtype in self.shared_template.values()}
        if len(dtypes) != 1:
            raise ValueError(f"Bayesian ADMM needs one dtype for the shared block, got {dtypes}")
        self.dtype = dtypes.pop()
        d = sum(math.prod(s) for s in self.shapes.values())
        ones = torch.ones(d, dtype=torch.float64)
        self.prior_precision = self.prior_precision_value * (
            torch.diag(ones) if self.family is Family.FULL else ones
        )
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.precision = self.prior_precision.clone()
        self.at_prior = True
        self.sites = {
            pid: Site(
                torch.zeros(d, dtype=torch.float64),
                self.prior_precision.clone(),
                torch.zeros(d, dtype=torch.float64),
                torch.zeros_like(self.prior_precision),
            )
            for pid in self.nodes
        }
        self._broadcast = self._precision_record(self.precision)

    def checkpoint_state(self) -> RuleState:
        """``m_g``, ``S_g``, whether the server is still at the prior, and every site (float64)."""
        sites = {
            pid: {f: getattr(site, f).numpy() for f in SITE_FIELDS}
            for pid, site in self.sites.items()
        }
        return {
            "mean": self.mean.numpy(),
            "precision": self.precision.numpy(),
            "at-prior": np.array(self.at_prior),
            **pack_partitions("site", sites),
        }

    def restore_state(self, state: RuleState) -> None:
        """The state ``checkpoint_state`` saved; the broadcast ``S_g`` record is rebuilt."""
        sites = unpack_partitions("site", state)
        if set(sites) != set(self.sites):
            raise ValueError(
                f"checkpoint holds sites of partitions {sorted(sites)}, not {sorted(self.sites)}"
            )
        self.sites = {
            pid: Site(*(torch.from_numpy(arrays[f]) for f in SITE_FIELDS))
            for pid, arrays in sites.items()
        }
        self.mean = torch.from_numpy(np.array(state["mean"]))
        self.precision = torch.from_numpy(np.array(state["precision"]))
        self.at_prior = bool(state["at-prior"])
        self._broadcast = self._precision_record(self.precision)

    def precision_template(self) -> Template:
        """Layout of a precision record: the shared block's, or one ``d×d`` ``MATRIX``."""
        if self.family is not Family.FULL:
            return self.shared_template
        d = sum(math.prod(s) for s in self.shapes.values())
        return {MATRIX: ((d, d), self.dtype)}

    def reply_template(self, name: str) -> Template:
        """Precision records follow ``precision_template``; means and ``v_k`` the shared block."""
        if name in (PRECISION, DUAL_PRECISION):
            return self.precision_template()
        return self.shared_template

    def _vector_record(self, flat: torch.Tensor) -> ArrayRecord:
        return numpy_to_record(
            {k: v.numpy().astype(self.dtype) for k, v in unflatten(flat, self.shapes).items()}
        )

    def _precision_record(self, precision: torch.Tensor) -> ArrayRecord:
        if self.family is Family.FULL:
            return numpy_to_record({MATRIX: precision.numpy().astype(self.dtype)})
        return self._vector_record(precision)

    def _precision_of(self, arrays: Mapping[str, np.ndarray]) -> torch.Tensor:
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        return tensors[MATRIX].to(torch.float64) if self.family is Family.FULL else flatten(tensors)

    def node_records(self, partition_id: int) -> dict[str, ArrayRecord]:
        """``S_g`` (not for the isotropic family) and, while at the prior, ``m_g`` (= 0)."""
        records: dict[str, ArrayRecord] = {}
        if self.family is not Family.ISOTROPIC:
            records[GLOBAL_PRECISION] = self._broadcast
        if self.at_prior:
            records[GLOBAL_MEAN] = self._vector_record(self.mean)
        return records

    # ----------------------------------------------------------------- the rule
    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """Update the replying clients' sites, then ``(S_g, m_g)`` over all K sites (§2.2)."""
        self.floored = 0
        for reply in replies:
            site = self.sites[reply.partition_id]
            mean = flatten({k: torch.from_numpy(v) for k, v in reply.arrays[MEAN].items()})
            site.dual_mean = flatten(
                {k: torch.from_numpy(v) for k, v in reply.arrays[DUAL_MEAN].items()}
            )
            if self.family is not Family.ISOTROPIC:  # isotropic: S_k = S_0, V_k = 0 (fixed)
                site.precision, low = floor_precision(
                    self.family, self._precision_of(reply.arrays[PRECISION]), self.floor
                )
                self.floored += low
                site.dual_precision = self._precision_of(reply.arrays[DUAL_PRECISION])
            site.eta = precision_times(self.family, site.precision, mean)
        alpha, sites = self.alpha, list(self.sites.values())

        def total(field: str) -> torch.Tensor:
            return torch.stack([getattr(site, field) for site in sites]).sum(0)

        k = len(sites)
        eta = (1 - alpha) * total("eta") / k + alpha * total("dual_mean")  # η_0 = S_0 m_0 = 0
        if self.family is not Family.ISOTROPIC:
            precision = (1 - alpha) * total("precision") / k + alpha * (
                self.prior_precision + total("dual_precision")
            )
            self.precision, low = floor_precision(self.family, precision, self.floor)
            self.floored += low
        self.mean = mean_from_natural(self.family, self.precision, eta)
        self.at_prior = False
        self._broadcast = self._precision_record(self.precision)
        if self.floored:
            log(
                WARNING,
                "round %d: %d precision entries below precision-floor=%g raised to it (server)",
                server_round,
                self.floored,
                self.floor,
            )
        return self._vector_record(self.mean)

    def train_metrics(self, replies: list[Reply]) -> dict[str, float]:
        """Base metrics plus ``precision-floored`` (server and clients, this round)."""
        clients = sum(int(r.metrics.get(FLOORED, 0)) for r in replies)
        if clients:
            log(WARNING, "%d precision entries floored on the clients this round", clients)
        return {**super().train_metrics(replies), FLOORED: float(self.floored + clients)}

    def global_sampler(self) -> GlobalSampler:
        """Draws ``θ ~ N(mean, S_g^{-1})`` (the global Gaussian around the evaluated mean)."""

        def draws(mean: ArrayRecord, num: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
            center = flatten({k: torch.from_numpy(v.numpy()) for k, v in mean.items()})
            generator = torch.Generator().manual_seed(seed)
            for _ in range(num):
                theta = sample_gaussian(self.family, center, self.precision, generator)
                yield {
                    k: v.numpy().astype(self.dtype)
                    for k, v in unflatten(theta, self.shapes).items()
                }

        return draws


class IsotropicBayesADMM(BayesADMMStrategy):
    """``bayes-admm``: fixed isotropic precision ``s I`` = classic federated ADMM (§2.3)."""

    family = Family.ISOTROPIC
    reply_records = (MEAN, DUAL_MEAN)


class DiagonalBayesADMM(BayesADMMStrategy):
    """``ivon-admm``: diagonal Gaussians, client precisions from IVON (§2.5)."""

    family = Family.DIAGONAL


class FullCovarianceBayesADMM(BayesADMMStrategy):
    """``newton-admm``: full-covariance Gaussians, Newton-like client (§2.4)."""

    family = Family.FULL
