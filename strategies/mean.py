"""Weighted mean of the replied shared blocks: FedAvg, FedProx, FedPer, LocalNewton (§5)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord

from protocol.records import SHARED, numpy_to_record
from strategies.base import FederatedStrategy, Reply


def float64(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float64 copies of ``arrays`` (so that ``weighted_mean`` returns float64 too)."""
    return {k: np.asarray(v).astype(np.float64) for k, v in arrays.items()}


def weighted_mean(
    blocks: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """``Σ_i w_i x_i / Σ_i w_i`` per array, accumulated in float64, returned in the input dtype."""
    total = float(sum(weights))
    return {
        key: np.asarray(
            sum(w * blk[key].astype(np.float64) for blk, w in zip(blocks, weights, strict=True))
            / total
        ).astype(blocks[0][key].dtype)
        for key in blocks[0]
    }


class MeanStrategy(FederatedStrategy):
    """``u^{t+1} = Σ_{i∈S} w_i u_i / Σ_{i∈S} w_i``: the weighted mean of the participants
    (``w_i`` from ``client-weighting``: ``n_i`` for FedAvg's sample-weighted mean, or 1).
    """

    reply_records = (SHARED,)

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """Weighted mean of the replies' shared blocks."""
        weights = [self.client_weight(r.partition_id) for r in replies]
        return numpy_to_record(weighted_mean([r.arrays[SHARED] for r in replies], weights))
