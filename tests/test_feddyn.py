"""FedDyn (Acar et al. 2021, Algorithm 1) through the real strategy and ClientApp.

Least-squares clients ``L_k = (1/2n_k)‖X_kθ − y_k‖²`` (``∇L_k = A_kθ − b_k``) with full-batch
local steps, so that the reference below is the exact recursion: ``K`` steps
``θ ← θ − η(A_kθ − b_k − g_k + α(θ − θ^{t−1}))`` from ``θ^{t−1}``, ``g_k ← g_k − α(θ_k − θ^{t−1})``;
server ``h ← h − α(1/m)Σ_{P_t}(θ_k − θ^{t−1})``, ``θ^t = mean_{P_t} θ_k − h/α``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client_app.app import app as client_app
from client_app.solvers.feddyn import LINEAR
from protocol.records import SHARED
from server_app.app import run_federation
from server_app.checkpoint import read_checkpoint
from server_app.config import ConfigError, validate_run_config
from server_app.inprocess import InProcessGrid
from strategies.feddyn import FedDynStrategy, H
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




def test_feddyn_matches_float64_reference_with_partial_participation(tmp_path: Path) -> None:
    lr, alpha, steps, rounds = 0.1, 0.3, 3, 4
    cfg = exact_config(tmp_path, "feddyn") | {
        "local-epochs": steps,
        "lr": lr,
        "alpha": alpha,
        "fraction-train": 0.5,
        "num-server-rounds": rounds,
    }
    run_dir, grid = run_local(cfg, M)
    sent = train_contents_by_round(grid)

    data = lsq_clients(M, 3)
    a = [x.T @ x / len(y) for x, y in data]
    b = [x.T @ y / len(y) for x, y in data]
    theta = flat_record(next(iter(sent[1].values()))[SHARED])
    h = np.zeros(DIM)
    g = [np.zeros(DIM) for _ in range(M)]
    for rnd in range(1, rounds + 1):
        assert len(sent[rnd]) == M // 2  # partial participation: 2 of 4 clients
        for content in sent[rnd].values():
            assert set(content.array_records) == {SHARED}  # h never leaves the server
            np.testing.assert_allclose(flat_record(content[SHARED]), theta, rtol=0, atol=1e-13)
        replies = []
        for k in sorted(sent[rnd]):
            th = theta.copy()
            for _ in range(steps):
                th = th - lr * (a[k] @ th - b[k] - g[k] + alpha * (th - theta))
            g[k] = g[k] - alpha * (th - theta)
            replies.append(th)
        h = h - alpha / M * np.sum([th - theta for th in replies], axis=0)
        theta = np.mean(replies, axis=0) - h / alpha
    assert len({tuple(sorted(s)) for s in sent.values()}) > 1  # different clients over rounds
    trained = set().union(*(set(s) for s in sent.values()))
    for pid, ctx in enumerate(grid.contexts.values()):
        if pid in trained:
            got = flat_record(ctx.state.array_records[LINEAR])
            np.testing.assert_allclose(got, g[pid], rtol=0, atol=1e-12)
        else:
            assert LINEAR not in ctx.state.array_records and not g[pid].any()
    ckpt = read_checkpoint(run_dir)
    assert ckpt.round == rounds
    h_server = ckpt.rule_state[f"{H}/weight"].ravel()
    np.testing.assert_allclose(h_server, h, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_server, np.mean(g, axis=0), rtol=0, atol=1e-12)  # h = mean g_k
    np.testing.assert_allclose(flat_record(ckpt.global_record()), theta, rtol=0, atol=1e-12)
    rows = read_metrics(run_dir)
    assert rows[-1]["h-norm"] == pytest.approx(float(np.linalg.norm(h)), rel=1e-12)
    assert rows[1]["bytes-up"] == rows[1]["bytes-down"] == (M // 2) * 8 * DIM  # θ only


def test_feddyn_server_state_survives_checkpoint() -> None:
    cfg = default_config() | {"alpha": 0.1}
    strategy = FedDynStrategy(cfg)
    strategy.h = {"w": np.arange(3.0), "b": np.ones(1)}
    other = FedDynStrategy(cfg)
    other.h = {"w": np.zeros(3), "b": np.zeros(1)}
    state = strategy.checkpoint_state()
    assert sorted(state) == [f"{H}/b", f"{H}/w"]
    other.restore_state(state)
    for key, value in strategy.h.items():
        np.testing.assert_array_equal(other.h[key], value)
        assert other.h[key].dtype == np.float64
    with pytest.raises(ValueError, match="FedDyn server state h"):
        other.restore_state({f"{H}/w": np.zeros(3)})


def test_feddyn_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = exact_config(tmp_path, "feddyn") | {
        "local-epochs": 2,
        "lr": 0.1,
        "alpha": 0.5,
        "fraction-train": 0.5,
        "num-server-rounds": 4,
    }
    full, _ = run_local(cfg | {"run-name": "full"}, M)

    def grid(first: int) -> InProcessGrid:
        return InProcessGrid(
            client_app,
            M,
            node_config=lambda i: {
                "partition-id": i,
                "num-partitions": M,
                "state-dir": str(tmp_path / "state"),
            },
            first_node_id=first,
        )

    cut = run_federation(grid(1000), cfg | {"run-name": "cut", "num-server-rounds": 2})
    resumed = run_federation(grid(7000), cfg | {"resume-from": str(cut)})
    assert resumed == cut

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]

    assert strip(read_metrics(cut)) == strip(read_metrics(full))
    ours, theirs = read_checkpoint(cut), read_checkpoint(full)
    assert ours.round == theirs.round == 4
    for key, value in theirs.rule_state.items():
        np.testing.assert_array_equal(ours.rule_state[key], value)


def test_feddyn_refuses_client_weighting_and_personal_modes() -> None:
    base = default_config() | {"algorithm": "feddyn"}
    with pytest.raises(ConfigError, match="client-weighting='examples' is not a hyper-parameter"):
        validate_run_config(base | {"client-weighting": "examples"})
    with pytest.raises(ConfigError, match="personalization='output' is not defined"):
        validate_run_config(base | {"personalization": "output"})
    with pytest.raises(ConfigError, match=r"alpha=0\.0 is not allowed"):
        validate_run_config(base | {"alpha": 0.0})


def test_feddyn_learns_digits_in_process(tmp_path: Path) -> None:
    cfg = default_config() | {
        "algorithm": "feddyn",
        "num-server-rounds": 3,
        "fraction-train": 0.7,
        "fraction-evaluate": 0.0,
        "device": "cpu",
        "output-dir": str(tmp_path),
    }
    run_dir, _ = run_local(cfg, 3)
    rows = read_metrics(run_dir)
    acc = [r["global-accuracy"] for r in rows]
    assert acc[-1] > acc[0] + 0.5 and acc[-1] > 0.7, acc
    assert all(r["dropped-replies"] == 0 and r["clients"] == 2 for r in rows[1:])
    assert rows[-1]["h-norm"] > 0 and rows[-1]["linear-norm-mean"] > 0


@pytest.mark.engine
def test_feddyn_runs_on_the_simulation_engine(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    cfg = (
        "algorithm='feddyn' num-server-rounds=2 local-epochs=1 fraction-train=0.67 "
        f"alpha=0.1 output-dir='{out}' run-name='dyn'"
    )
    result = launch(tmp_path, cfg, nodes=3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert leftover_processes(result) == []
    rows = read_metrics(out / "dyn")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients"] == 2 and r["dropped-replies"] == 0 for r in rows[1:])
    assert rows[-1]["h-norm"] > 0
    assert rows[-1]["global-accuracy"] > rows[0]["global-accuracy"]
