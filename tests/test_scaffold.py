"""SCAFFOLD (option II) through the real strategy and ClientApp, against a float64 reference.

Least-squares clients ``f_i = (1/2n_i)‖X_iθ − y_i‖²`` (``∇f_i = A_iθ − b_i``) with full-batch
local steps, so that the reference below is the exact SCAFFOLD recursion (Karimireddy et al.
2020, Algorithm 1): ``y ← y − η_l(A_i y − b_i − c_i + c)`` for K steps, ``c_i⁺ = c_i − c +
(x − y)/(Kη_l)``, ``x ← x + η_g mean_S(y_i − x)``, ``c ← c + (1/N) Σ_S (c_i⁺ − c_i)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import MessageType

from client_app.solvers.scaffold import C_LOCAL
from protocol.records import CONTROL, ROUND, SHARED
from strategies.scaffold import ScaffoldStrategy
from tasks import registry
from tests.conftest import default_config, read_metrics, run_local
from tests.lsq_task import DIM, exact_config, flat_record, lsq_clients
from tests.test_fedpm import ConvexLSQ

M = 4


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", ConvexLSQ)



def test_scaffold_matches_float64_reference_with_partial_participation(tmp_path: Path) -> None:
    lr, server_lr, steps, rounds = 0.1, 0.8, 3, 3
    cfg = exact_config(tmp_path, "scaffold") | {
        "local-epochs": steps,
        "lr": lr,
        "server-lr": server_lr,
        "fraction-train": 0.5,
        "num-server-rounds": rounds,
    }
    run_dir, grid = run_local(cfg, M)
    sent: dict[int, dict[int, Any]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            pid = int(grid.contexts[msg.metadata.dst_node_id].node_config["partition-id"])
            sent.setdefault(int(msg.content[ROUND]["server-round"]), {})[pid] = msg.content

    data = lsq_clients(M, 3)
    a = [x.T @ x / len(y) for x, y in data]
    b = [x.T @ y / len(y) for x, y in data]
    x = flat_record(next(iter(sent[1].values()))[SHARED])
    c = np.zeros(DIM)
    c_i = [np.zeros(DIM) for _ in range(M)]
    for rnd in range(1, rounds + 1):
        assert len(sent[rnd]) == M // 2  # partial participation: 2 of 4 clients
        for content in sent[rnd].values():
            np.testing.assert_allclose(flat_record(content[SHARED]), x, rtol=0, atol=1e-13)
            np.testing.assert_allclose(flat_record(content[CONTROL]), c, rtol=0, atol=1e-13)
        ys, dcs = [], []
        for i in sorted(sent[rnd]):
            y = x.copy()
            for _ in range(steps):
                y = y - lr * (a[i] @ y - b[i] - c_i[i] + c)
            new = c_i[i] - c + (x - y) / (steps * lr)
            ys.append(y)
            dcs.append(new - c_i[i])
            c_i[i] = new
        x = x + server_lr * (np.mean(ys, axis=0) - x)
        c = c + len(ys) / M * np.mean(dcs, axis=0)
    assert sorted(sent[1]) != sorted(sent[2]) or sorted(sent[2]) != sorted(sent[3])
    for pid, ctx in enumerate(grid.contexts.values()):
        if C_LOCAL in ctx.state.array_records:
            got = flat_record(ctx.state.array_records[C_LOCAL])
            np.testing.assert_allclose(got, c_i[pid], rtol=0, atol=1e-12)
        else:
            assert not c_i[pid].any()
    rows = read_metrics(run_dir)
    assert rows[1]["bytes-up"] == 2 * (M // 2) * 8 * DIM  # y_i and Δc_i per participant
    assert rows[1]["bytes-down"] == 2 * (M // 2) * 8 * DIM  # x and c per participant


def test_scaffold_control_variate_survives_checkpoint() -> None:
    strategy = ScaffoldStrategy(default_config() | {"server-lr": 1.0})
    strategy.c = {"w": np.arange(3.0), "b": np.ones(1)}
    other = ScaffoldStrategy(default_config() | {"server-lr": 1.0})
    other.c = {"w": np.zeros(3), "b": np.zeros(1)}
    other.restore_state(strategy.checkpoint_state())
    for key, value in strategy.c.items():
        np.testing.assert_array_equal(other.c[key], value)
    with pytest.raises(ValueError, match="control variates"):
        other.restore_state({"control/w": np.zeros(3)})


def test_scaffold_reduces_subopt_on_breast_cancer(tmp_path: Path) -> None:
    cfg = default_config() | {
        "algorithm": "scaffold",
        "task": "breast-cancer",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
        "local-test-fraction": 0.0,
        "local-epochs": 2,
        "batch-size": 32,
        "lr": 0.5,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.0,
        "num-server-rounds": 4,
        "device": "cpu",
        "output-dir": str(tmp_path),
    }
    run_dir, _ = run_local(cfg, 4)
    rows = read_metrics(run_dir)
    subopt = [r["subopt"] for r in rows]
    assert subopt[-1] < 0.5 * subopt[0], subopt
    assert all(r["dropped-replies"] == 0 and r["clients"] == 2 for r in rows[1:])
    assert rows[-1]["global-accuracy"] > 0.85, rows[-1]
