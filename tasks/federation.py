"""Build the federated view of a task: one client's split, or the server's test set.

Loading and partitioning happen once per process and set of options (simulation workers
serve many nodes); the result is deterministic, so every process computes the same split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tasks.base import DataOptions
from tasks.data import ArrayData, ClientSplit, PartitionSpec, partition_indices, split_local
from tasks.registry import get_task


@dataclass(frozen=True)
class FederationSpec:
    """Everything that determines the clients' data: task, loader options, partitioning."""

    task: str
    data: DataOptions
    partition: PartitionSpec


@dataclass(frozen=True)
class Federation:
    """All clients' splits and the server test set of one ``FederationSpec``."""

    clients: tuple[ClientSplit, ...]
    server_test: ArrayData | None
    num_classes: int


@lru_cache(maxsize=4)
def build_federation(spec: FederationSpec) -> Federation:
    """Load the task's data and cut it into ``num_partitions`` clients with local test splits."""
    task = get_task(spec.task)
    data = task.load(spec.data)
    parts = partition_indices(data.pool.y, spec.partition, data.groups)
    clients = []
    for pid, idx in enumerate(parts):
        train_idx, test_idx = split_local(
            idx, spec.partition.local_test_fraction, spec.partition.seed, pid
        )
        clients.append(ClientSplit(data.pool.subset(train_idx), data.pool.subset(test_idx)))
    return Federation(tuple(clients), data.server_test, data.num_classes)


def federation_spec(config: Mapping[str, Any], num_partitions: int) -> FederationSpec:
    """The FederationSpec described by a resolved run config and the number of clients."""
    seed = int(config["seed"])
    return FederationSpec(
        task=str(config["task"]),
        data=DataOptions(str(config["data-dir"]), bool(config["download"]), seed, num_partitions),
        partition=PartitionSpec(
            scheme=str(config["partitioner"]),
            num_partitions=num_partitions,
            seed=seed,
            dirichlet_alpha=float(config["dirichlet-alpha"]),
            classes_per_client=int(config["classes-per-client"]),
            local_test_fraction=float(config["local-test-fraction"]),
        ),
    )
