"""SCAFFOLD (Karimireddy et al., ICML 2020, Algorithm 1 with option II control variates).

The server keeps the global control variate ``c`` (zeros at start) next to the model ``x`` and
sends ``c`` to every sampled client as ``CONTROL``. Client ``i`` runs ``K`` local SGD steps
``y ← y − η_l (g_i(y) − c_i + c)`` from ``y = x``, updates its own control variate (option II)

    c_i⁺ = c_i − c + (x − y) / (K η_l)

and replies ``y_i`` (``SHARED``) and ``Δc_i = c_i⁺ − c_i`` (``DELTA_CONTROL``). Over the round's
participants ``S`` of ``N`` clients the server sets

    x ← x + η_g · (1/|S|) Σ_{i∈S} (y_i − x),        c ← c + (|S|/N) · (1/|S|) Σ_{i∈S} Δc_i

(``η_g = server-lr``), so that ``c`` stays the mean of all clients' ``c_i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from protocol.records import CONTROL, DELTA_CONTROL, SHARED, numpy_to_record, record_to_numpy
from strategies.base import FederatedStrategy, Reply
from strategies.checkpointing import RuleState, float64_zeros, pack_global, unpack_global
from strategies.mean import float64, weighted_mean


class ScaffoldStrategy(FederatedStrategy):
    """Server of SCAFFOLD: model step ``η_g · mean Δy`` and control step ``(|S|/N) mean Δc``."""

    reply_records = (SHARED, DELTA_CONTROL)
    sends = (CONTROL,)

    def __init__(self, config: Mapping[str, Any], solver: str = "") -> None:
        super().__init__(config, solver)
        self.server_lr = float(config["server-lr"])
        self.c: dict[str, np.ndarray] = {}

    def init_state(self, initial: ArrayRecord) -> None:
        """``c = 0`` in the shared block's layout (float64 accumulator)."""
        self.c = float64_zeros(record_to_numpy(initial))

    def checkpoint_state(self) -> RuleState:
        """``c`` (float64), as ``"control/<name>"`` arrays."""
        return pack_global(CONTROL, self.c)

    def restore_state(self, state: Mapping[str, np.ndarray]) -> None:
        """``c`` from ``checkpoint_state`` output (after ``init_state``)."""
        self.c = unpack_global(CONTROL, state, self.c, "control variates")

    def node_records(self, partition_id: int) -> dict[str, ArrayRecord]:
        """``CONTROL``: ``c`` in the shared block's dtypes."""
        return {CONTROL: numpy_to_record(self.in_shared_dtypes(self.c))}

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """``x + η_g mean_S(y_i − x)``; updates ``c += (|S|/N) mean_S Δc_i`` in place."""
        x = float64(record_to_numpy(current))
        uniform = [1.0] * len(replies)
        y = weighted_mean([float64(r.arrays[SHARED]) for r in replies], uniform)
        dc = weighted_mean([float64(r.arrays[DELTA_CONTROL]) for r in replies], uniform)
        share = len(replies) / self.num_clients
        self.c = {k: self.c[k] + share * dc[k] for k in self.c}
        return numpy_to_record(
            self.in_shared_dtypes({k: x[k] + self.server_lr * (y[k] - x[k]) for k in x})
        )
