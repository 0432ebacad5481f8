"""FedADMM through the real strategy and ClientApp, against a float64 NumPy reference.

ALGORITHMS.md §1.2 with an empty personal block (§1.9) and §6 M1/M3/M4: the iterates equal
the update equations, the fixed point is the global optimum ``(Σ α_i A_i)^{-1} Σ α_i b_i``,
``Σ_i π_i = 0`` and ``π_i = −α_i ∇f_i(u*)`` there, also with partial participation and
stale ``z_i``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import MessageType

from client_app.solvers.admm import PI
from protocol.records import ROUND, SHARED
from server_app.inprocess import InProcessGrid
from tasks import registry
from tests.conftest import run_local
from tests.lsq_task import LeastSquaresTask, exact_config, lsq_clients

M = 4


@pytest.fixture(autouse=True)
def _register_lsq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", LeastSquaresTask)


def lsq_config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    extra = {"local-epochs": 3, "lr": 0.1, "rho": 0.5, "num-server-rounds": 8}
    return exact_config(tmp_path, "fedadmm") | extra | over


def sent_rounds(grid: InProcessGrid) -> list[tuple[np.ndarray, list[int]]]:
    """Per round: the broadcast u^t and the partitions that trained."""
    pid_of = {nid: i for i, nid in enumerate(grid.node_ids)}
    rounds: dict[int, tuple[np.ndarray, list[int]]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type != MessageType.TRAIN:
            continue
        rnd = int(msg.content[ROUND]["server-round"])
        u = msg.content[SHARED]["weight"].numpy().ravel()
        entry = rounds.setdefault(rnd, (u, []))
        assert np.array_equal(entry[0], u)  # the same u^t goes to every participant
        entry[1].append(pid_of[msg.metadata.dst_node_id])
    return [rounds[r] for r in sorted(rounds)]


def reference(cfg: dict[str, Any], u0: np.ndarray, schedule: list[list[int]]) -> list[np.ndarray]:
    """Float64 FedADMM (§1.2, no personal block): u^t for t = 0..len(schedule)."""
    data = lsq_clients(M, int(cfg["seed"]))
    a = [x.T @ x / len(y) for x, y in data]
    b = [x.T @ y / len(y) for x, y in data]
    lr, rho, alpha, k = cfg["lr"], cfg["rho"], 1.0 / M, cfg["local-epochs"]
    u, pi, z = u0.copy(), [np.zeros_like(u0) for _ in range(M)], [u0.copy() for _ in range(M)]
    us = [u.copy()]
    for participants in schedule:
        for i in participants:
            w = u.copy()
            for _ in range(k):  # full-batch proximal-gradient steps on f_i + q_i,
                # q_i = (<pi, w-u> + rho/2|w-u|^2)/alpha: gradient step on f_i, then the exact
                # prox of lr*q_i (client_app.solvers.base.local_sgd)
                y = w - lr * (a[i] @ w - b[i])
                w = u + (y - u - lr * pi[i] / alpha) / (1 + lr * rho / alpha)
            pi[i] = pi[i] + rho * (w - u)  # dual update, §1.2 (c)
            z[i] = w + pi[i] / rho  # message, §1.2 (d)
        u = np.mean(z, axis=0)  # server: mean over all m, stale z_j included
        us.append(u.copy())
    return us


def optimum(seed: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    data = lsq_clients(M, seed)
    a = [x.T @ x / len(y) for x, y in data]
    b = [x.T @ y / len(y) for x, y in data]
    return np.linalg.solve(sum(a), sum(b)), a, b


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_iterates_equal_update_equations(tmp_path: Path, fraction: float) -> None:
    cfg = lsq_config(tmp_path, **{"fraction-train": fraction})
    _, grid = run_local(cfg, M)
    rounds = sent_rounds(grid)
    assert len(rounds) == cfg["num-server-rounds"]
    if fraction < 1.0:
        assert all(len(p) == 2 for _, p in rounds)
        assert len({tuple(p) for _, p in rounds}) > 1  # different clients over rounds
    expected = reference(cfg, rounds[0][0], [p for _, p in rounds])
    for t, (u_sent, _) in enumerate(rounds):
        np.testing.assert_allclose(u_sent, expected[t], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("fraction", "rounds"), [(1.0, 150), (0.5, 400)])
def test_fixed_point_is_global_optimum(tmp_path: Path, fraction: float, rounds: int) -> None:
    cfg = lsq_config(
        tmp_path, **{"fraction-train": fraction, "num-server-rounds": rounds, "local-epochs": 5}
    )
    _, grid = run_local(cfg, M)
    u_star, a, b = optimum(int(cfg["seed"]))
    u_last = sent_rounds(grid)[-1][0]
    np.testing.assert_allclose(u_last, u_star, rtol=0, atol=1e-8)
    pis = [grid.contexts[nid].state[PI]["weight"].numpy().ravel() for nid in grid.node_ids]
    np.testing.assert_allclose(np.sum(pis, axis=0), 0.0, atol=1e-8)  # Σ π_i = 0
    for i, pi in enumerate(pis):  # π_i = −α_i ∇f_i(u*)
        np.testing.assert_allclose(pi, -(a[i] @ u_star - b[i]) / M, atol=1e-7)
