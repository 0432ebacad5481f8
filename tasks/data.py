"""In-memory datasets, federated partitioning and per-client train/test splits.

Partitioning uses Flower Datasets partitioners over an index column, so every scheme is
deterministic from the run's ``seed`` and works offline on data already in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PARTITIONERS = ("iid", "dirichlet", "pathological", "natural")


@dataclass(frozen=True)
class ArrayData:
    """Features ``x`` (float32, any trailing shape) and integer labels ``y``."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: NDArray[np.int64]) -> ArrayData:
        """Rows ``idx`` as a new dataset."""
        return ArrayData(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class TaskData:
    """What a task's loader returns: the pool that is partitioned, and the server's test set.

    ``groups`` gives the natural client (e.g. user id, 0..G-1) of every pooled example, for
    tasks that have one; ``server_test`` is None when the task has no central test set.
    """

    pool: ArrayData
    server_test: ArrayData | None
    num_classes: int
    groups: NDArray[np.int64] | None = None


@dataclass(frozen=True)
class ClientSplit:
    """One client's local training and test data."""

    train: ArrayData
    test: ArrayData


@dataclass(frozen=True)
class PartitionSpec:
    """How the pool is cut into clients (run-config keys of the same names)."""

    scheme: str
    num_partitions: int
    seed: int
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    local_test_fraction: float = 0.2


class DataUnavailableError(RuntimeError):
    """A dataset's files are missing or malformed; the message says where and how to fix."""


def _index_dataset(labels: NDArray[np.int64]):  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import Dataset

    return Dataset.from_dict({"idx": np.arange(len(labels), dtype=np.int64), "label": labels})


def partition_indices(
    labels: NDArray[np.int64], spec: PartitionSpec, groups: NDArray[np.int64] | None = None
) -> list[NDArray[np.int64]]:
    """Indices of the pool that each of the ``spec.num_partitions`` clients holds.

    ``iid`` shuffles with the seed and shards evenly; ``dirichlet`` draws label proportions
    from Dir(alpha) per class (label skew); ``pathological`` gives each client
    ``classes_per_client`` classes; ``natural`` keeps the task's own grouping (one client per
    group), which requires ``num_partitions`` to equal the number of groups.
    """
    n = spec.num_partitions
    if spec.scheme == "natural":
        if groups is None:
            raise ValueError("partitioner='natural' needs a task with natural clients")
        num_groups = int(groups.max()) + 1
        if num_groups != n:
            raise ValueError(
                f"partitioner='natural': this task has {num_groups} natural clients but the "
                f"federation has {n} nodes; start {num_groups} SuperNodes (num-supernodes) "
                "or use partitioner='iid'|'dirichlet'|'pathological'"
            )
        return [np.flatnonzero(groups == g).astype(np.int64) for g in range(n)]
    if spec.scheme == "iid":
        perm = np.random.default_rng(spec.seed).permutation(len(labels)).astype(np.int64)
        return [np.sort(part) for part in np.array_split(perm, n)]
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    if spec.scheme == "dirichlet":
        min_size = max(2, min(10, len(labels) // (4 * n)))
        partitioner = DirichletPartitioner(
            num_partitions=n,
            partition_by="label",
            alpha=spec.dirichlet_alpha,
            min_partition_size=min_size,
            self_balancing=False,
            shuffle=True,
            seed=spec.seed,
        )
    elif spec.scheme == "pathological":
        partitioner = PathologicalPartitioner(
            num_partitions=n,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=spec.seed,
        )
    else:
        raise ValueError(f"unknown partitioner {spec.scheme!r}; allowed: {', '.join(PARTITIONERS)}")
    partitioner.dataset = _index_dataset(labels)
    return [
        np.sort(np.asarray(partitioner.load_partition(i)[:]["idx"], dtype=np.int64))
        for i in range(n)
    ]


def split_local(
    idx: NDArray[np.int64], test_fraction: float, seed: int, partition_id: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Shuffle a client's indices (seeded per client) and cut off its local test split."""
    rng = np.random.default_rng([seed, partition_id, 7919])
    perm = rng.permutation(idx)
    n_test = round(test_fraction * len(perm))
    if test_fraction > 0 and len(perm) > 1:
        n_test = min(max(n_test, 1), len(perm) - 1)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def stratified_holdout(
    y: NDArray[np.int64], fraction: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split row indices into (kept, held out), holding out ``fraction`` of every class."""
    rng = np.random.default_rng([seed, 104729])
    keep: list[NDArray[np.int64]] = []
    held: list[NDArray[np.int64]] = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = round(fraction * len(rows))
        held.append(rows[:k])
        keep.append(rows[k:])
    return np.sort(np.concatenate(keep)).astype(np.int64), np.sort(np.concatenate(held)).astype(
        np.int64
    )
