"""FedAPM through the real strategy and ClientApp, against float64 references (ALGORITHMS.md §6).

Joint quadratic ``f_i(v, u)`` with ``H_i = [[P_i, C_i], [C_iᵀ, Q_i]]`` (v personal, u shared):
the fixed point is ``u* = (Σ α_i S_i)^{-1} Σ α_i r_i`` with the Schur complements
``S_i = Q_i − C_iᵀ P_i^{-1} C_i`` and ``r_i = q_i − C_iᵀ P_i^{-1} p_i``, ``v_i* = P_i^{-1}(p_i − C_i u*)``,
and at it ``Σ π_i = 0`` and ``π_i = −α_i ∇_u f_i(v_i*, u*)`` (M2, M3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import MessageType

from client_app.runtime import PERSONAL
from client_app.solvers.admm import PI
from protocol.records import ROUND, SHARED
from server_app.inprocess import InProcessGrid
from tasks import registry
from tasks.materialize import build_skeleton
from tests.conftest import default_config, read_metrics, run_local
from tests.lsq_task import DIM_U, JointQuadraticTask, lsq_clients

M = 4


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "joint-quadratic", JointQuadraticTask)


def apm_config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    cfg = default_config() | {
        "algorithm": "fedapm",
        "task": "joint-quadratic",
        "partitioner": "natural",
        "seed": 5,
        "personalization": "split-input",
        "local-test-fraction": 0.0,
        "batch-size": 10_000,
        "local-epochs": 3,
        "personal-epochs": 4,
        "shared-epochs": 3,
        "lr": 0.1,
        "rho": 0.5,
        "sigma": 1.0,
        "momentum": 0.0,
        "weight-decay": 0.0,
        "fraction-evaluate": 0.0,
        "output-dir": str(tmp_path),
        "num-server-rounds": 8,
    }
    return cfg | over


def blocks(seed: int) -> list[dict[str, np.ndarray]]:
    """Per client: H = X^T X / n and g = X^T y / n split into the u (first) and v (last) parts."""
    out = []
    for x, y in lsq_clients(M, seed):
        h, g = x.T @ x / len(y), x.T @ y / len(y)
        out.append(
            {
                "Q": h[:DIM_U, :DIM_U],
                "C": h[DIM_U:, :DIM_U],
                "P": h[DIM_U:, DIM_U:],
                "q": g[:DIM_U],
                "p": g[DIM_U:],
            }
        )
    return out


def broadcasts(grid: InProcessGrid) -> list[tuple[np.ndarray, list[int]]]:
    pid_of = {nid: i for i, nid in enumerate(grid.node_ids)}
    rounds: dict[int, tuple[np.ndarray, list[int]]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            assert list(msg.content[SHARED].keys()) == ["shared.weight"]  # v never sent
            u = msg.content[SHARED]["shared.weight"].numpy().ravel()
            rounds.setdefault(int(msg.content[ROUND]["server-round"]), (u, []))[1].append(
                pid_of[msg.metadata.dst_node_id]
            )
    return [rounds[r] for r in sorted(rounds)]


def reference(
    cfg: dict[str, Any], u0: np.ndarray, v0: np.ndarray, schedule: list[list[int]]
) -> list[np.ndarray]:
    """§1.2 in float64 with full-batch gradient steps; u^t for every round.

    ``warm-start='local'``: both stages start from the client's last ``u_i``, with
    ``u_i^0 = u^0`` (§1.6) whatever the round of its first participation.
    """
    b = blocks(int(cfg["seed"]))
    lr, rho, sigma, alpha = cfg["lr"], cfg["rho"], cfg["sigma"], 1.0 / M
    local = cfg.get("warm-start") == "local"
    u = u0.copy()
    v = [v0.copy() for _ in range(M)]
    u_own = [u0.copy() for _ in range(M)]
    pi = [np.zeros_like(u0) for _ in range(M)]
    z = [u0.copy() for _ in range(M)]
    us = [u.copy()]
    for part in schedule:
        for i in part:
            w, v_prev, bi = (u_own[i] if local else u).copy(), v[i].copy(), b[i]
            # each step: gradient step on f_i, then the exact prox of the stage's quadratic
            for _ in range(cfg["personal-epochs"]):  # (a) ∇_v f = P v + C u − p
                y = v[i] - lr * (bi["P"] @ v[i] + bi["C"] @ w - bi["p"])
                v[i] = v_prev + (y - v_prev) / (1 + lr * sigma / alpha)
            for _ in range(cfg["shared-epochs"]):  # (b) ∇_u f = Q u + Cᵀ v − q
                y = w - lr * (bi["Q"] @ w + bi["C"].T @ v[i] - bi["q"])
                w = u + (y - u - lr * pi[i] / alpha) / (1 + lr * rho / alpha)
            pi[i] = pi[i] + rho * (w - u)  # (c)
            z[i] = w + pi[i] / rho  # (d)
            u_own[i] = w
        u = np.mean(z, axis=0)
        us.append(u.copy())
    return us


def closed_form(seed: int) -> tuple[np.ndarray, list[np.ndarray], list[dict[str, np.ndarray]]]:
    b = blocks(seed)
    s = [bi["Q"] - bi["C"].T @ np.linalg.solve(bi["P"], bi["C"]) for bi in b]
    r = [bi["q"] - bi["C"].T @ np.linalg.solve(bi["P"], bi["p"]) for bi in b]
    u_star = np.linalg.solve(sum(s) / M, sum(r) / M)
    v_star = [np.linalg.solve(bi["P"], bi["p"] - bi["C"] @ u_star) for bi in b]
    return u_star, v_star, b


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_iterates_equal_algorithm_1(tmp_path: Path, fraction: float) -> None:
    cfg = apm_config(tmp_path, **{"fraction-train": fraction})
    _, grid = run_local(cfg, M)
    rounds = broadcasts(grid)
    v0 = build_skeleton(JointQuadraticTask(), "split-input", cfg["seed"]).init["personal.weight"]
    expected = reference(cfg, rounds[0][0], v0.numpy().ravel(), [p for _, p in rounds])
    for t, (u_sent, _) in enumerate(rounds):
        np.testing.assert_allclose(u_sent, expected[t], rtol=1e-12, atol=1e-13)


def test_local_warm_start_begins_at_u0_under_partial_participation(tmp_path: Path) -> None:
    """§1.6–1.7, ``warm-start='local'``: a client first sampled in round t > 1 starts its
    stages at ``u_i^0 = u^0`` (rebuilt from the seed on the client), not at ``u^t``.
    """
    cfg = apm_config(tmp_path, **{"fraction-train": 0.5, "warm-start": "local"})
    _, grid = run_local(cfg, M)
    rounds = broadcasts(grid)
    schedule = [p for _, p in rounds]
    first = {i: next(t for t, p in enumerate(schedule) if i in p) for i in range(M)}
    assert max(first.values()) > 0, first  # some client joins after round 1
    v0 = build_skeleton(JointQuadraticTask(), "split-input", cfg["seed"]).init["personal.weight"]
    expected = reference(cfg, rounds[0][0], v0.numpy().ravel(), schedule)
    for t, (u_sent, _) in enumerate(rounds):
        np.testing.assert_allclose(u_sent, expected[t], rtol=1e-12, atol=1e-13)
    late = reference(cfg | {"warm-start": "server"}, rounds[0][0], v0.numpy().ravel(), schedule)
    assert not np.allclose(late[-1], expected[-1], atol=1e-6)  # the start matters


@pytest.mark.parametrize(("fraction", "rounds"), [(1.0, 150), (0.5, 400)])
def test_converges_to_schur_complement_optimum(
    tmp_path: Path, fraction: float, rounds: int
) -> None:
    cfg = apm_config(
        tmp_path,
        **{
            "fraction-train": fraction,
            "num-server-rounds": rounds,
            "sigma": 0.1,
            "personal-epochs": 10,
        },
    )
    _, grid = run_local(cfg, M)
    u_star, v_star, b = closed_form(int(cfg["seed"]))
    np.testing.assert_allclose(broadcasts(grid)[-1][0], u_star, atol=1e-8)
    pis = []
    for i, nid in enumerate(grid.node_ids):
        state = grid.contexts[nid].state
        np.testing.assert_allclose(
            state[PERSONAL]["personal.weight"].numpy().ravel(), v_star[i], atol=1e-7
        )
        pis.append(state[PI]["shared.weight"].numpy().ravel())
        grad_u = b[i]["Q"] @ u_star + b[i]["C"].T @ v_star[i] - b[i]["q"]
        np.testing.assert_allclose(pis[-1], -grad_u / M, atol=1e-7)  # π_i = −α_i ∇_u f_i
    np.testing.assert_allclose(np.sum(pis, axis=0), 0.0, atol=1e-8)


def test_without_personal_block_equals_fedadmm(tmp_path: Path) -> None:
    """§1.9: FedAPM with personalization='none' is FedADMM, through the whole product."""
    from tests.conftest import default_config as defaults

    base = defaults() | {
        "output-dir": str(tmp_path),
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "local-epochs": 1,
    }
    a, _ = run_local(base | {"algorithm": "fedadmm", "run-name": "admm"}, 5)
    b, _ = run_local(
        base | {"algorithm": "fedapm", "personalization": "none", "run-name": "apm"}, 5
    )

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]

    assert strip(read_metrics(a)) == strip(read_metrics(b))


def test_inexactness_rule_stops_early_and_decays(tmp_path: Path) -> None:
    """With a loose ξ0 the shared stage stops after one epoch; ξ_i decays by mu-xi per round."""
    from client_app.solvers.admm import XI

    cfg = apm_config(
        tmp_path, **{"xi0": 1e3, "mu-xi": 0.5, "num-server-rounds": 3, "shared-epochs": 50}
    )
    _, grid = run_local(cfg, M)
    for nid in grid.node_ids:
        assert float(grid.contexts[nid].state[XI]["value"].numpy()[0]) == pytest.approx(
            1e3 * 0.5**3
        )
    exact = reference(
        cfg | {"shared-epochs": 1},
        broadcasts(grid)[0][0],
        __import__("client_app.runtime", fromlist=["x"])
        .build_skeleton(JointQuadraticTask(), "split-input", cfg["seed"])
        .init["personal.weight"]
        .numpy()
        .ravel(),
        [p for _, p in broadcasts(grid)],
    )
    np.testing.assert_allclose(
        broadcasts(grid)[-1][0], exact[len(broadcasts(grid)) - 1], rtol=1e-12
    )
