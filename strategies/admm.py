"""Consensus ADMM aggregation with stale ``z_i`` (FedADMM; the base of FedAPM and Bayes-ADMM).

ALGORITHMS.md §1.2 step 1 and §1.5: the server keeps every client's last
``z_i = u_i + π_i/ρ`` (pre-filled with ``z_i^0 = u^0``, i.e. ``π_i^0 = 0``) and sets
``u = (1/m) Σ_{i=1..m} z_i`` over **all** m clients, stale entries included. With η = 1 this
equals Gong et al.'s incremental server ``u += (1/m) Σ_{i∈S}(z_i^new − z_i^old)`` (§1.9).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from protocol.records import numpy_to_record, record_to_numpy
from strategies.base import FederatedStrategy, Reply
from strategies.checkpointing import RuleState, pack_partitions, unpack_partitions
from strategies.mean import weighted_mean

Z = "z"
"""ArrayRecord client -> server: ``z_i = u_i + π_i/ρ`` over the shared block."""


class ConsensusADMMStrategy(FederatedStrategy):
    """Server of federated consensus ADMM: plain mean over all clients' (stale) ``z_i``."""

    reply_records = (Z,)

    def init_state(self, initial: ArrayRecord) -> None:
        """``z_i^0 = u^0`` for every client (zero multipliers)."""
        u0 = record_to_numpy(initial)
        self.z: dict[int, dict[str, np.ndarray]] = {
            pid: {k: v.copy() for k, v in u0.items()} for pid in self.nodes
        }

    def checkpoint_state(self) -> RuleState:
        """Every partition's (stale) ``z_i``."""
        return pack_partitions(Z, self.z)

    def restore_state(self, state: RuleState) -> None:
        """``z_i`` of every partition from the checkpoint."""
        z = unpack_partitions(Z, state)
        if set(z) != set(self.z):
            raise ValueError(
                f"checkpoint holds z_i of partitions {sorted(z)}, not {sorted(self.z)}"
            )
        self.z = z

    def aggregate(
        self, server_round: int, current: ArrayRecord, replies: list[Reply]
    ) -> ArrayRecord:
        """Replace the participants' ``z_i`` and return ``u = (1/m) Σ_i z_i``."""
        for reply in replies:
            self.z[reply.partition_id] = reply.arrays[Z]
        pids = sorted(self.z)
        return numpy_to_record(weighted_mean([self.z[p] for p in pids], [1.0] * len(pids)))
