"""Partitioning: deterministic from the seed, disjoint, and skewed as the scheme says."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.data import PartitionSpec, partition_indices, split_local, stratified_holdout

LABELS = np.repeat(np.arange(10), 120).astype(np.int64)


def spec(scheme: str, seed: int = 0, **kw: float) -> PartitionSpec:
    return PartitionSpec(scheme=scheme, num_partitions=10, seed=seed, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_deterministic_and_disjoint(scheme: str) -> None:
    a = partition_indices(LABELS, spec(scheme, 3))
    b = partition_indices(LABELS, spec(scheme, 3))
    c = partition_indices(LABELS, spec(scheme, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    joined = np.concatenate(a)
    assert len(np.unique(joined)) == len(joined)
    if scheme != "pathological":
        assert len(joined) == len(LABELS)


def _mean_label_entropy(parts: list[np.ndarray]) -> float:
    out = []
    for p in parts:
        counts = np.bincount(LABELS[p], minlength=10) / len(p)
        nz = counts[counts > 0]
        out.append(float(-(nz * np.log(nz)).sum()))
    return float(np.mean(out))


def test_dirichlet_label_skew_grows_as_alpha_shrinks() -> None:
    iid = _mean_label_entropy(partition_indices(LABELS, spec("iid")))
    mild = _mean_label_entropy(partition_indices(LABELS, spec("dirichlet", dirichlet_alpha=1.0)))
    strong = _mean_label_entropy(partition_indices(LABELS, spec("dirichlet", dirichlet_alpha=0.1)))
    assert iid > 2.2  # close to log(10) = 2.30
    assert strong < mild < iid
    assert strong < 1.5


def test_pathological_gives_k_classes() -> None:
    parts = partition_indices(LABELS, spec("pathological", classes_per_client=2))
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_natural_uses_groups_and_checks_count() -> None:
    groups = np.repeat(np.arange(10), 120)
    parts = partition_indices(LABELS, spec("natural"), groups)
    assert all(np.all(groups[p] == i) for i, p in enumerate(parts))
    with pytest.raises(ValueError, match="12 natural clients but the federation has 10"):
        partition_indices(LABELS, spec("natural"), np.repeat(np.arange(12), 100))


def test_local_split_disjoint_and_deterministic() -> None:
    idx = np.arange(50, 100)
    tr, te = split_local(idx, 0.2, 0, 3)
    assert len(te) == 10 and len(tr) == 40
    assert set(tr) | set(te) == set(idx) and not set(tr) & set(te)
    tr2, te2 = split_local(idx, 0.2, 0, 3)
    assert np.array_equal(te, te2)


def test_stratified_holdout_keeps_class_balance() -> None:
    keep, held = stratified_holdout(LABELS, 0.25, 0)
    assert np.all(np.bincount(LABELS[held]) == 30)
    assert not set(keep) & set(held)
