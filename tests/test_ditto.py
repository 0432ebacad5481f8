"""Ditto (Li et al. 2021, Algorithm 1) through the real strategy and ClientApp.

Least-squares clients ``F_k = (1/2n_k)‖X_kw − y_k‖²`` (``∇F_k = A_kw − b_k``) with full-batch
steps: the global model is FedAvg's (``K`` steps ``w ← w − η(A_kw − b_k)`` from ``w^t``, mean
of the replies), the personal model ``v_k ← v_k − η(A_kv_k − b_k + λ(v_k − w^t))`` for ``s``
steps (``v_k^0`` = the first global model the client receives), whose fixed point is the
proximal point ``(A_k + λI)^{-1}(b_k + λw^t)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import MessageType

from client_app.runtime import client_data
from client_app.solvers.ditto import PERSONAL_MODEL
from protocol.records import CONFIG, SHARED
from server_app.config import ConfigError, validate_run_config
from server_app.inprocess import InProcessGrid
from tasks import registry
from tests.conftest import default_config, read_metrics, run_local
from tests.lsq_task import (
    DIM,
    LeastSquaresTask,
    exact_config,
    flat_record,
    lsq_clients,
    train_contents_by_round,
)
from tests.test_engine import launch, leftover_processes

M = 4


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", LeastSquaresTask)




def _personal(grid: InProcessGrid) -> dict[int, np.ndarray]:
    """Each client's stored ``v_k`` (clients that never trained hold none)."""
    out = {}
    for ctx in grid.contexts.values():
        if PERSONAL_MODEL in ctx.state.array_records:
            pid = int(ctx.node_config["partition-id"])
            out[pid] = flat_record(ctx.state.array_records[PERSONAL_MODEL])
    return out


def _client_splits(grid: InProcessGrid, config: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(train, test) tensors of every partition, as its ClientApp sees them."""
    ctxs = sorted(grid.contexts.values(), key=lambda c: int(c.node_config["partition-id"]))
    return [client_data(config, c, torch.device("cpu"), torch.float64) for c in ctxs]


def test_ditto_personal_model_matches_float64_proximal_iteration(tmp_path: Path) -> None:
    lr, lam, steps, personal_steps, rounds = 0.1, 0.5, 2, 4, 3
    cfg = exact_config(tmp_path, "ditto") | {
        "local-epochs": steps,
        "personal-epochs": personal_steps,
        "ditto-lambda": lam,
        "lr": lr,
        "fraction-train": 0.5,
        "num-server-rounds": rounds,
    }
    _, grid = run_local(cfg, M)
    sent = train_contents_by_round(grid)

    data = lsq_clients(M, 3)
    a = [x.T @ x / len(y) for x, y in data]
    b = [x.T @ y / len(y) for x, y in data]
    w = flat_record(next(iter(sent[1].values()))[SHARED])
    v: dict[int, np.ndarray] = {}
    for rnd in range(1, rounds + 1):
        assert len(sent[rnd]) == M // 2  # partial participation: 2 of 4 clients
        for content in sent[rnd].values():
            assert set(content.array_records) == {SHARED}
            np.testing.assert_allclose(flat_record(content[SHARED]), w, rtol=0, atol=1e-13)
        replies = []
        for k in sorted(sent[rnd]):
            wk = w.copy()
            for _ in range(steps):
                wk = wk - lr * (a[k] @ wk - b[k])
            replies.append(wk)
            vk = v.get(k, w).copy()
            for _ in range(personal_steps):
                vk = vk - lr * (a[k] @ vk - b[k] + lam * (vk - w))
            v[k] = vk
        w = np.mean(replies, axis=0)  # client-weighting='uniform'
    assert len({tuple(sorted(s)) for s in sent.values()}) > 1
    got = _personal(grid)
    assert sorted(got) == sorted(v)
    assert any(len([r for r in sent if k in sent[r]]) > 1 for k in v)  # a v_k carried over
    for k, vk in v.items():
        np.testing.assert_allclose(got[k], vk, rtol=0, atol=1e-12)


def test_ditto_personal_model_is_the_proximal_point(tmp_path: Path) -> None:
    lr, lam = 0.25, 1.0  # contraction ≤ 0.72 per step on these clients
    cfg = exact_config(tmp_path, "ditto") | {
        "local-epochs": 1,
        "personal-epochs": 150,
        "ditto-lambda": lam,
        "lr": lr,
        "num-server-rounds": 1,
    }
    _, grid = run_local(cfg, M)
    w0 = flat_record(next(iter(train_contents_by_round(grid)[1].values()))[SHARED])
    got = _personal(grid)
    assert sorted(got) == list(range(M))
    for k, (x, y) in enumerate(lsq_clients(M, 3)):
        a, b = x.T @ x / len(y), x.T @ y / len(y)
        closed = np.linalg.solve(a + lam * np.eye(DIM), b + lam * w0)
        np.testing.assert_allclose(got[k], closed, rtol=0, atol=1e-12)
        assert np.linalg.norm(closed - w0) > 0.1  # far from the global model


def test_ditto_personalized_evaluation_uses_the_personal_model(tmp_path: Path) -> None:
    cfg = exact_config(tmp_path, "ditto") | {
        "local-epochs": 2,
        "personal-epochs": 30,
        "ditto-lambda": 0.1,
        "lr": 0.2,
        "local-test-fraction": 0.3,
        "fraction-train": 0.5,
        "fraction-evaluate": 1.0,
        "num-server-rounds": 2,
    }
    run_dir, grid = run_local(cfg, M)
    final = read_metrics(run_dir)[-1]
    config = dict(
        next(m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN).content[CONFIG]
    )
    last = [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE][-1]
    w = flat_record(last.content[SHARED])
    personal = _personal(grid)
    assert 0 < len(personal) <= M

    def mean_loss(models: dict[int, np.ndarray]) -> float:
        total = count = 0.0
        for k, (_, test) in enumerate(_client_splits(grid, config)):
            x, y = test.x.numpy(), test.y.numpy()
            theta = models.get(k, w)  # a client that never trained evaluates w
            total += 0.5 * float(((x @ theta - y) ** 2).sum())
            count += len(y)
        return total / count

    assert final["personal-loss"] == pytest.approx(mean_loss(personal), rel=1e-10)
    assert abs(mean_loss({}) - mean_loss(personal)) > 1e-3  # the global model scores otherwise


def test_ditto_refuses_personal_blocks_and_bad_lambda() -> None:
    base = default_config() | {"algorithm": "ditto"}
    assert validate_run_config(base)["client-weighting"] == "examples"  # FedAvg's mean
    with pytest.raises(ConfigError, match="personalization='output' is not defined"):
        validate_run_config(base | {"personalization": "output"})
    with pytest.raises(ConfigError, match=r"ditto-lambda=-1\.0 is not allowed"):
        validate_run_config(base | {"ditto-lambda": -1.0})
    with pytest.raises(ConfigError, match=r"ditto-lambda=0\.5 is not a hyper-parameter"):
        validate_run_config(default_config() | {"algorithm": "fedavg", "ditto-lambda": 0.5})


def test_ditto_global_model_is_fedavg_and_personal_accuracy_improves(tmp_path: Path) -> None:
    cfg = default_config() | {
        "num-server-rounds": 3,
        "fraction-train": 0.7,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.3,
        "device": "cpu",
        "output-dir": str(tmp_path),
    }
    ditto, _ = run_local(cfg | {"algorithm": "ditto", "run-name": "ditto"}, 3)
    fedavg, _ = run_local(cfg | {"algorithm": "fedavg", "run-name": "fedavg"}, 3)
    rows, base = read_metrics(ditto), read_metrics(fedavg)
    for ours, theirs in zip(rows, base, strict=True):  # Ditto's global model is FedAvg's
        assert ours["global-accuracy"] == theirs["global-accuracy"]
        assert ours.get("train-loss") == theirs.get("train-loss")
    personal = [r["personal-accuracy"] for r in rows[1:]]
    assert personal[-1] > personal[0] + 0.2 and personal[-1] > 0.8, personal
    assert personal[-1] > base[-1]["personal-accuracy"]  # v_k beats w^t on the local tests
    assert rows[-1]["personal-gap-norm-mean"] > 0


@pytest.mark.engine
def test_ditto_runs_on_the_simulation_engine(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    cfg = (
        "algorithm='ditto' num-server-rounds=2 fraction-train=0.67 "
        f"ditto-lambda=0.5 output-dir='{out}' run-name='ditto'"
    )
    result = launch(tmp_path, cfg, nodes=3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftover_processes(result) == []
    rows = read_metrics(out / "ditto")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and r["dropped-replies"] == 0 for r in rows[1:])
    assert rows[2]["personal-accuracy"] > max(0.5, rows[1]["personal-accuracy"])
    assert rows[-1]["personal-gap-norm-mean"] > 0
    assert rows[-1]["global-accuracy"] > rows[0]["global-accuracy"]
