"""Weighted mean of the replied shared blocks: FedAvg, FedProx, FedPer (§5)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from protocol.records import SHARED, numpy_to_record
from strategies.base import FederatedStrategy, Reply


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
    """``u^{t+1} = Σ_{i∈S} (n_i / n_S) u_i``: the sample-weighted mean of the participants."""

    reply_records = (SHARED,)

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """Sample-weighted mean of the replies' shared blocks."""
        return numpy_to_record(
            weighted_mean([r.arrays[SHARED] for r in replies], [r.num_examples for r in replies])
        )
