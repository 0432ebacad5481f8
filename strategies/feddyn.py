"""FedDyn (Acar, Zhao, Navarro, Mattina, Whatmough, Saligrama, ICLR 2021, Algorithm 1).

Client ``k ∈ P_t`` (the round's participants, ``m`` clients in all) replies
``θ_k^t = argmin_θ L_k(θ) − ⟨∇L_k(θ_k^{t−1}), θ⟩ + (α/2)||θ − θ^{t−1}||²``
(``client_app/solvers/feddyn.py``). The server keeps ``h`` (zeros at start) and sets

    h^t = h^{t−1} − α (1/m) Σ_{k∈P_t} (θ_k^t − θ^{t−1})
    θ^t = (1/|P_t|) Σ_{k∈P_t} θ_k^t − (1/α) h^t

(``α = alpha``). Since each participant's linear term moves by ``−α(θ_k^t − θ^{t−1})``, ``h``
stays the mean over all ``m`` clients of their linear terms, ``h^t = (1/m) Σ_k ∇L_k(θ_k^t)``
(with zeros for clients that never trained). Participants are averaged uniformly, as in the
paper; the rule takes no ``client-weighting``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from protocol.records import SHARED, numpy_to_record, record_to_numpy
from strategies.base import FederatedStrategy, Reply
from strategies.checkpointing import RuleState, float64_zeros, pack_global, unpack_global
from strategies.mean import float64, weighted_mean

H = "feddyn-h"
"""Checkpoint prefix of the server state ``h`` (shared-block layout, float64)."""


class FedDynStrategy(FederatedStrategy):
    """Server of FedDyn: ``h`` update and ``θ^t = mean_{P_t} θ_k^t − h^t/α``."""

    reply_records = (SHARED,)

    def __init__(self, config: Mapping[str, Any], solver: str = "") -> None:
        super().__init__(config, solver)
        self.alpha = float(config["alpha"])
        self.h: dict[str, np.ndarray] = {}

    def init_state(self, initial: ArrayRecord) -> None:
        """``h^0 = 0`` in the shared block's layout (float64 accumulator)."""
        self.h = float64_zeros(record_to_numpy(initial))

    def checkpoint_state(self) -> RuleState:
        """``h`` (float64), as ``"feddyn-h/<name>"`` arrays."""
        return pack_global(H, self.h)

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """``h`` from ``checkpoint_state`` output (after ``init_state``)."""
        self.h = unpack_global(H, state, self.h, "FedDyn server state h")

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """``h ← h − α(1/m)Σ_{P_t}(θ_k − θ^{t−1})`` in place; returns ``mean θ_k − h/α``."""
        prev = float64(record_to_numpy(current))
        mean = weighted_mean([float64(r.arrays[SHARED]) for r in replies], [1.0] * len(replies))
        share = len(replies) / self.num_clients  # (1/m) Σ_{P_t} = (|P_t|/m) mean_{P_t}
        self.h = {k: self.h[k] - self.alpha * share * (mean[k] - prev[k]) for k in self.h}
        return numpy_to_record(
            self.in_shared_dtypes({k: mean[k] - self.h[k] / self.alpha for k in mean})
        )

    def train_metrics(self, replies: list[Reply]) -> dict[str, float]:
        """The base metrics plus ``h-norm = ||h^t||`` (after this round's update)."""
        norm = float(np.sqrt(sum(float((v**2).sum()) for v in self.h.values())))
        return {**super().train_metrics(replies), "h-norm": norm}
