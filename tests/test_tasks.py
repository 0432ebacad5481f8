"""Bundled tasks load offline, and run end to end through the in-process federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from client_app.runtime import PERSONAL
from client_app.solvers.admm import PI
from client_app.state import ClientState
from tasks.base import DataOptions
from tasks.breast_cancer import BreastCancerTask
from tasks.digits import DigitsTask
from tasks.synthetic import DIM, SyntheticTask, generate_synthetic
from server_app.checkpoint import read_checkpoint
from tests.conftest import read_metrics, run_local

OPTS = DataOptions(data_dir="", download=False, seed=0, num_partitions=7)


def test_digits_loader() -> None:
    data = DigitsTask().load(OPTS)
    assert data.pool.x.shape[1:] == (1, 8, 8) and data.pool.x.dtype == np.float32
    assert len(data.pool) + len(data.server_test) == 1797  # type: ignore[arg-type]
    assert data.pool.x.min() >= 0.0 and data.pool.x.max() <= 1.0


def test_breast_cancer_standardised_on_train_pool() -> None:
    data = BreastCancerTask().load(OPTS)
    np.testing.assert_allclose(data.pool.x.mean(axis=0), 0.0, atol=1e-5)
    assert set(np.unique(data.pool.y)) == {0, 1}


def test_synthetic_generator_follows_fedprox() -> None:
    x, y, users = generate_synthetic(7, 1.0, 1.0, 0)
    assert x.shape[1] == DIM and set(np.unique(users)) == set(range(7))
    sizes = np.bincount(users)
    assert sizes.min() >= 50 and sizes.max() <= 1000
    assert y.min() >= 0 and y.max() <= 9
    x2, _, _ = generate_synthetic(7, 1.0, 1.0, 0)
    np.testing.assert_array_equal(x, x2)
    data = SyntheticTask().load(OPTS)
    assert data.groups is not None and int(data.groups.max()) == 6


def test_synthetic_fedadmm_with_state_dir(config: dict[str, Any], tmp_path: Path) -> None:
    config.update(
        {
            "task": "synthetic",
            "algorithm": "fedadmm",
            "partitioner": "natural",
            "local-epochs": 1,
            "state-dir": str(tmp_path / "state"),
            "lr": 0.05,
        }
    )
    run_dir, grid = run_local(config, 5)
    rows = read_metrics(run_dir)
    assert rows[-1]["personal-accuracy"] is not None and "global-accuracy" not in rows[-1]
    files = sorted((tmp_path / "state" / run_dir.name).rglob("round-2.pt"))
    assert len(files) == 5
    nid = grid.node_ids[2]
    ctx = grid.contexts[nid]
    in_memory = ctx.state[PI]["linear.weight"].numpy()
    ctx.state = RecordDict()  # a restarted SuperNode has an empty context.state
    run_id = read_checkpoint(run_dir).run_id
    restored = ClientState(
        ctx, 2, str(tmp_path / "state"), run_dir.name, 3, run_id=run_id, algorithm="fedadmm"
    ).get(PI, torch.device("cpu"))
    assert restored is not None
    np.testing.assert_array_equal(restored["linear.weight"].numpy(), in_memory)


def test_personal_block_never_travels(config: dict[str, Any]) -> None:
    config.update(
        {
            "task": "breast-cancer",
            "algorithm": "fedper",
            "personalization": "split-input",
            "local-epochs": 1,
        }
    )
    run_dir, grid = run_local(config, 4)
    names = {
        k
        for msg in grid.sent + grid.received
        for rec in msg.content.array_records.values()
        for k in rec
    }
    assert names == {"linear.weight", "linear.bias"}
    for nid in grid.node_ids:
        personal = grid.contexts[nid].state[PERSONAL]
        assert list(personal.keys()) == ["linear_p.weight"]
        assert np.abs(personal["linear_p.weight"].numpy()).sum() > 0  # it was trained
    assert read_metrics(run_dir)[-1]["personal-accuracy"] > 0.5


def test_metrics_count_non_finite_predictions_as_wrong() -> None:
    from tasks.metrics import classification_metrics

    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    m = classification_metrics(y, probs, float("nan"))
    assert m["accuracy"] == 0.75  # the NaN row is wrong, the three finite rows are right
    assert m["auc"] == 1.0  # computed on the finite rows only
