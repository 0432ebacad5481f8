"""Bayesian ADMM through the real strategy and ClientApp, against float64 references.

ALGORITHMS.md §6: B2 (isotropic ``bayes-admm`` is consensus ADMM with ``ρ_ADMM = τρs``,
``y_k = τv_k``, iterate for iterate, also with partial participation and stale sites), B1/B3
(``newton-admm`` on quadratics: exact posterior and duals after one round), B4 (the invariant
``S_g = S_0 + ΣV_k``, ``S_g m_g = Σv_k`` when ``ρ = 1/(γK)``), B6 (one IVON-ADMM step with a zero
prior mean and zero duals is one ivon-opt IVON step), plus reply guards and the uncertainty
metrics. Client ``k`` of the least-squares task has ``ℓ_k = ½‖X_kθ − y_k‖²``, i.e.
``A_k = X_kᵀX_k`` and ``b_k = X_kᵀy_k``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, Context, Message, MessageType, RecordDict
from ivon import IVON

from client_app.solvers.base import SavedState, SolverInput
from client_app.solvers.bayes import IVON_STATE, ivon, noise_seed
from protocol.records import (
    CONFIG,
    DUAL_MEAN,
    DUAL_PRECISION,
    GLOBAL_MEAN,
    GLOBAL_PRECISION,
    MATRIX,
    MEAN,
    PRECISION,
    ROUND,
    SHARED,
)
from protocol.round import RoundValues
from server_app.config import ConfigError, validate_run_config
from server_app.inprocess import InProcessGrid
from tasks import registry
from tasks.materialize import Tensors, build_skeleton
from tasks.metrics import expected_calibration_error
from tests.conftest import default_config, read_metrics, run_local
from tests.lsq_task import DIM, LeastSquaresTask, exact_config, lsq_clients

K = 4


@pytest.fixture(autouse=True)
def _register_lsq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", LeastSquaresTask)


def bayes_config(tmp_path: Path, algorithm: str, **over: Any) -> dict[str, Any]:
    extra = {
        "local-epochs": 3,
        "lr": 0.1,
        "num-server-rounds": 6,
        "rho": 0.5,
        "gamma": 0.8,
        "tau": 0.5,
        "prior-precision": 2.0,
        "server-step": 0.0,
        "mc-samples": 0,
    }
    return exact_config(tmp_path, algorithm) | extra | over


def quadratics(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(A_k, b_k) of the sum losses ``ℓ_k = ½θᵀA_kθ − b_kᵀθ + const``."""
    data = lsq_clients(K, seed)
    return [x.T @ x for x, _ in data], [x.T @ y for x, y in data]


def train_messages(grid: InProcessGrid) -> dict[int, dict[int, Message]]:
    """round -> partition -> training message sent."""
    pid_of = {nid: i for i, nid in enumerate(grid.node_ids)}
    out: dict[int, dict[int, Message]] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            rnd = int(msg.content[ROUND]["server-round"])
            out.setdefault(rnd, {})[pid_of[msg.metadata.dst_node_id]] = msg
    return out


def train_replies(grid: InProcessGrid) -> dict[int, dict[int, Message]]:
    """round -> partition -> training reply (every reply is in ``grid.received`` in order)."""
    rounds = train_messages(grid)
    replies = iter(r for r in grid.received if r.metadata.message_type == MessageType.TRAIN)
    out: dict[int, dict[int, Message]] = {}
    for rnd in sorted(rounds):
        for _ in rounds[rnd]:
            reply = next(replies)
            out.setdefault(rnd, {})[int(reply.content["metrics"]["partition-id"])] = reply
    return out


def vec(msg: Message, record: str) -> np.ndarray:
    """The flattened (shared-layout) record, or the matrix of a full-covariance record."""
    rec = msg.content.array_records[record]
    if MATRIX in rec:
        return rec[MATRIX].numpy()
    return np.concatenate([a.numpy().ravel() for a in rec.values()])


# ------------------------------------------------------------------------------------- B2
def classic_admm(
    cfg: dict[str, Any], theta0: np.ndarray, schedule: list[list[int]]
) -> list[np.ndarray]:
    """Consensus ADMM on ``Σℓ_k + (τs/2)‖θ‖²`` (§2.3): penalty ``ρ_A``, multipliers ``y_k``,
    damping γ, exact server step, inexact clients (full-batch proximal-gradient steps of size
    ``lr/N_k`` from the broadcast point, the quadratic taken by its exact prox; round 1 from
    the initial weights, centre 0)."""
    data = lsq_clients(K, int(cfg["seed"]))
    a, b = quadratics(int(cfg["seed"]))
    tau, s = cfg["tau"], cfg["prior-precision"]
    rho_a, gamma, lr = tau * cfg["rho"] * s, cfg["gamma"], cfg["lr"]
    centre, start = np.zeros(DIM), theta0.copy()
    thetas = [np.zeros(DIM) for _ in range(K)]  # sites start at q_g^0 = p_0: θ_k = 0, y_k = 0
    ys = [np.zeros(DIM) for _ in range(K)]
    broadcasts = [start.copy()]
    for part in schedule:
        for k in part:
            n = len(data[k][1])
            w = start.copy()
            for _ in range(cfg["local-epochs"]):
                y = w - (lr / n) * (a[k] @ w - b[k])  # then the exact prox of the quadratic
                w = centre + (y - centre - (lr / n) * ys[k]) / (1 + (lr / n) * rho_a)
            ys[k] = ys[k] + gamma * rho_a * (w - centre)
            thetas[k] = w
        centre = (sum(ys) + rho_a * sum(thetas)) / (tau * s + K * rho_a)
        start = centre
        broadcasts.append(centre.copy())
    return broadcasts


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_isotropic_bayes_admm_is_classic_admm(tmp_path: Path, fraction: float) -> None:
    cfg = bayes_config(tmp_path, "bayes-admm", **{"fraction-train": fraction})
    _, grid = run_local(cfg, K)
    rounds = train_messages(grid)
    first = rounds[1][min(rounds[1])]
    assert set(first.content.array_records) == {SHARED, GLOBAL_MEAN}  # no precision travels
    np.testing.assert_array_equal(vec(first, GLOBAL_MEAN), 0.0)  # round 1 centred on the prior
    assert all(GLOBAL_MEAN not in m.content.array_records for m in rounds[2].values())
    theta0 = build_skeleton(LeastSquaresTask(), "none", 3).init["weight"].numpy().ravel()
    schedule = [sorted(rounds[r]) for r in sorted(rounds)]
    if fraction < 1:
        assert len({tuple(p) for p in schedule}) > 1
    expected = classic_admm(cfg, theta0, schedule)
    for t in sorted(rounds):
        for msg in rounds[t].values():
            np.testing.assert_allclose(vec(msg, SHARED), expected[t - 1], rtol=1e-12, atol=1e-13)
    replies = train_replies(grid)  # y_k = τ v_k, exactly the classic multipliers
    for k, reply in replies[1].items():
        assert set(reply.content.array_records) == {MEAN, DUAL_MEAN}
        n = len(lsq_clients(K, 3)[k][1])
        a, b = quadratics(3)
        rho_a = cfg["tau"] * cfg["rho"] * cfg["prior-precision"]
        w = theta0.copy()
        for _ in range(cfg["local-epochs"]):
            w = (w - (cfg["lr"] / n) * (a[k] @ w - b[k])) / (1 + (cfg["lr"] / n) * rho_a)
        np.testing.assert_allclose(
            cfg["tau"] * vec(reply, DUAL_MEAN), cfg["gamma"] * rho_a * w, rtol=1e-12
        )


def test_isotropic_fixed_point_is_map(tmp_path: Path) -> None:
    """§2.3 / B2: the limit is argmin Σℓ_k + (τs/2)‖θ‖² (ρ_ADMM = τρs = 50, 100 rounds)."""
    cfg = bayes_config(
        tmp_path,
        "bayes-admm",
        **{"num-server-rounds": 100, "gamma": 1.0, "local-epochs": 5, "rho": 50.0},
    )
    _, grid = run_local(cfg, K)
    a, b = quadratics(3)
    star = np.linalg.solve(sum(a) + cfg["tau"] * cfg["prior-precision"] * np.eye(DIM), sum(b))
    last = train_messages(grid)[100]
    np.testing.assert_allclose(vec(next(iter(last.values())), SHARED), star, atol=1e-8)


# ---------------------------------------------------------------------------------- B1 / B3
def exact_posterior(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    a, b = quadratics(int(cfg["seed"]))
    precision = cfg["prior-precision"] * np.eye(DIM) + sum(a) / cfg["tau"]
    return np.linalg.solve(precision, sum(b) / cfg["tau"]), precision


@pytest.mark.parametrize(
    ("rho", "server_step"),
    [(1.0 / K, 0.0), (0.7, 1.0)],  # α = 1/(1+Kρ) with ρ = 1/K; PVI (α = 1) with any ρ
)
def test_newton_admm_exact_in_one_round(tmp_path: Path, rho: float, server_step: float) -> None:
    cfg = bayes_config(
        tmp_path,
        "newton-admm",
        **{
            "rho": rho,
            "server-step": server_step,
            "gamma": 1.0,
            "lr": 1.0,
            "local-epochs": 1,
            "num-server-rounds": 3,
        },
    )
    _, grid = run_local(cfg, K)
    rounds = train_messages(grid)
    first = rounds[1][0]
    np.testing.assert_array_equal(
        vec(first, GLOBAL_PRECISION), cfg["prior-precision"] * np.eye(DIM)
    )  # prior start
    mean, precision = exact_posterior(cfg)
    for t in (2, 3):  # after one round exact, and stays there
        for msg in rounds[t].values():
            np.testing.assert_allclose(vec(msg, GLOBAL_PRECISION), precision, rtol=1e-12)
            np.testing.assert_allclose(vec(msg, SHARED), mean, rtol=1e-10)


@pytest.mark.parametrize("rho", [1.0 / K, 0.5])
def test_newton_admm_duals_exact_after_one_round(tmp_path: Path, rho: float) -> None:
    """B3: V_k = A_k/τ, v_k = b_k/τ after round 1 for any ρ; then q_k = q_g (duals stay)."""
    cfg = bayes_config(
        tmp_path,
        "newton-admm",
        **{"rho": rho, "gamma": 1.0, "lr": 1.0, "local-epochs": 1, "num-server-rounds": 2},
    )
    _, grid = run_local(cfg, K)
    a, b = quadratics(3)
    replies = train_replies(grid)
    for t in (1, 2):
        for k, reply in replies[t].items():
            np.testing.assert_allclose(vec(reply, DUAL_PRECISION), a[k] / cfg["tau"], rtol=1e-9)
            np.testing.assert_allclose(vec(reply, DUAL_MEAN), b[k] / cfg["tau"], rtol=1e-9)
    sent = train_messages(grid)[2]
    for k, reply in replies[2].items():  # round 2: the client solution is q_g itself
        np.testing.assert_allclose(
            vec(reply, PRECISION), vec(sent[k], GLOBAL_PRECISION), rtol=1e-9, atol=1e-9
        )
    for k, nid in enumerate(grid.node_ids):  # duals persisted in the client state
        state = grid.contexts[nid].state
        np.testing.assert_allclose(
            state[DUAL_PRECISION][MATRIX].numpy(), a[k] / cfg["tau"], rtol=1e-9
        )


# ------------------------------------------------------------------------------------- B4
@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("newton-admm", {"mc-samples": 1, "lr": 0.5, "local-epochs": 2}),
        ("ivon-admm", {"mc-samples": 1, "lr": 0.002, "batch-size": 8, "hess-init": 0.5}),
    ],
)
def test_invariant_when_rho_is_one_over_gamma_k(
    tmp_path: Path, algorithm: str, extra: dict[str, Any]
) -> None:
    gamma = 0.5

    def run(rho: float, name: str) -> tuple[float, float]:
        cfg = bayes_config(
            tmp_path,
            algorithm,
            **{"gamma": gamma, "rho": rho, "num-server-rounds": 4, "run-name": name, **extra},
        )
        _, grid = run_local(cfg, K)
        sent, replies = train_messages(grid), train_replies(grid)
        s0 = cfg["prior-precision"] * (np.eye(DIM) if algorithm == "newton-admm" else 1.0)
        err_s = err_m = 0.0
        for t in (1, 2, 3):
            msg = sent[t + 1][0]
            s_g, m_g = vec(msg, GLOBAL_PRECISION), vec(msg, SHARED)
            eta_g = s_g @ m_g if s_g.ndim == 2 else s_g * m_g
            big_v = sum(vec(r, DUAL_PRECISION) for r in replies[t].values())
            v = sum(vec(r, DUAL_MEAN) for r in replies[t].values())
            err_s = max(err_s, float(np.abs(s_g - (s0 + big_v)).max() / np.abs(s_g).max()))
            err_m = max(err_m, float(np.abs(eta_g - v).max() / np.abs(v).max()))
        return err_s, err_m

    assert max(run(1.0 / (gamma * K), "inv")) < 1e-10
    assert min(run(0.3, "other")) > 1e-6  # any other ρ breaks it


# ------------------------------------------------------------------------------------- B6
def test_one_ivon_admm_step_is_one_ivon_step(tmp_path: Path) -> None:
    """Zero duals, prior mean 0, constant prior precision, no lr rescaling: ivon-opt's step."""
    x, y = lsq_clients(1, 11)[0]
    data = Tensors(torch.as_tensor(x), torch.as_tensor(y))
    cfg = bayes_config(
        tmp_path,
        "ivon-admm",
        **{"local-epochs": 1, "mc-samples": 2, "lr": 0.05, "hess-init": 0.3, "beta2": 0.99},
    )
    s0, n = cfg["prior-precision"], len(y)
    ess = n / (cfg["tau"] * cfg["rho"])
    task = LeastSquaresTask()

    def fresh() -> torch.nn.Module:
        return build_skeleton(task, "none", 5).model

    model = fresh()
    u = {k: v.detach().clone() for k, v in model.named_parameters()}
    zeros = {k: torch.zeros_like(v) for k, v in u.items()}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = ivon(
        SolverInput(
            task,
            model,
            ["weight"],
            [],
            u,
            data,
            cfg,
            RoundValues(1, "ivon", float(cfg["lr"]), 1.0, 1),
            SavedState(),
            torch.Generator().manual_seed(42),
            {GLOBAL_MEAN: zeros, GLOBAL_PRECISION: {k: s0 + v for k, v in zeros.items()}},
        )
    )

    ref_model = fresh()
    generator = torch.Generator().manual_seed(42)
    opt = IVON(
        list(ref_model.parameters()),
        lr=cfg["lr"],
        ess=ess,
        hess_init=cfg["hess-init"],
        beta1=cfg["beta1"],
        beta2=cfg["beta2"],
        weight_decay=s0 / ess,
        mc_samples=cfg["mc-samples"],
        rescale_lr=False,
    )
    torch.manual_seed(noise_seed(generator))
    order = torch.randperm(n, generator=generator)
    for _ in range(cfg["mc-samples"]):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            task.objective(ref_model, data.x[order], data.y[order]).backward()
    opt.step()

    mean = out.records[MEAN]["weight"]
    assert not torch.equal(mean, u["weight"])  # it moved
    assert torch.equal(mean, ref_model.weight.detach())  # bit for bit (B6)
    hess = opt.param_groups[0]["hess"]  # S_k = S_g + λh (= λ(h + δ̄) up to rounding)
    torch.testing.assert_close(
        out.records[PRECISION]["weight"].ravel(), ess * (hess + s0 / ess), rtol=1e-12, atol=0
    )
    state = out.state[IVON_STATE]
    assert int(state["step"].numpy()[0]) == 1
    np.testing.assert_allclose(
        state["momentum"].numpy(), opt.param_groups[0]["momentum"].numpy(), rtol=1e-13
    )


# ---------------------------------------------------------------------------- reply guards
def _tamper_precision(value: float, partition: int = 0) -> Any:
    def tamper(reply: Message) -> Message:
        if (
            reply.metadata.message_type == MessageType.TRAIN
            and int(reply.content["metrics"]["partition-id"]) == partition
        ):
            rec = reply.content[PRECISION]
            key = next(iter(rec.keys()))
            bad = rec[key].numpy().copy()
            bad.flat[0] = value
            rec[key] = Array(bad)
        return reply

    return tamper


def test_non_finite_precision_reply_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = bayes_config(tmp_path, "ivon-admm", **{"mc-samples": 1, "lr": 0.002, "hess-init": 0.5})
    cfg["num-server-rounds"] = 2
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_dir, _ = run_local(cfg, K, tamper=_tamper_precision(math.nan))
    rows = read_metrics(run_dir)
    assert [r["dropped-replies"] for r in rows] == [1.0, 1.0]  # (no round 0: no test set)
    assert [r["clients"] for r in rows] == [3.0, 3.0]
    assert "precision[weight] has non-finite values" in caplog.text


@pytest.mark.parametrize("algorithm", ["ivon-admm", "newton-admm"])
def test_negative_precision_is_floored_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, algorithm: str
) -> None:
    ivon_only = {"hess-init": 0.5} if algorithm == "ivon-admm" else {}
    cfg = bayes_config(tmp_path, algorithm, **{"mc-samples": 1, "lr": 0.002, **ivon_only})
    cfg["num-server-rounds"] = 2
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_dir, grid = run_local(cfg, K, tamper=_tamper_precision(-1e6))
    rows = read_metrics(run_dir)
    assert len(rows) == 2 and all(r["precision-floored"] >= 1 for r in rows)
    assert all(r["dropped-replies"] == 0 for r in rows)
    assert "below precision-floor" in caplog.text
    s_g = vec(train_messages(grid)[2][0], GLOBAL_PRECISION)
    assert np.linalg.eigvalsh(s_g).min() > 0 if s_g.ndim == 2 else s_g.min() > 0


# ----------------------------------------------------------------------- config and metrics
@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"algorithm": "newton-admm", "model": "deep"}, "at most 1024 shared parameters"),
        ({"algorithm": "ivon-admm", "mc-samples": 0}, "needs mc-samples >= 1"),
    ],
)
def test_preset_rules(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_run_config(default_config() | over)


def test_uncertainty_metrics_in_global_evaluation(config: dict[str, Any]) -> None:
    config.update(
        {
            "algorithm": "ivon-admm",
            "task": "breast-cancer",
            "num-server-rounds": 1,
            "local-epochs": 1,
            "lr": 1e-3,
            "fraction-evaluate": 0.0,
            "eval-samples": 4,
        }
    )
    run_dir, _ = run_local(config, 3)
    row = read_metrics(run_dir)[1]
    for key in ("global-nll", "global-ece", "global-bayes-accuracy", "global-bayes-nll"):
        assert np.isfinite(row[key]), key
    assert 0 <= row["global-bayes-ece"] <= 1 and row["precision-floored"] == 0
    fedavg, _ = run_local(config | {"algorithm": "fedavg", "run-name": "avg", "eval-samples": 16}, 3)
    plain = read_metrics(fedavg)[1]
    assert "global-ece" in plain and "global-bayes-accuracy" not in plain


def test_expected_calibration_error() -> None:
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.61, 0.39], [0.63, 0.37]])
    # 15 bins: conf 0.9 -> bin 13 (right), 0.8 -> bin 12 (right), 0.61 and 0.63 -> bin 9
    # (one wrong, one right: accuracy 0.5, mean confidence 0.62)
    expected = (abs(1 - 0.9) + abs(1 - 0.8) + 2 * abs(0.5 - 0.62)) / 4
    assert expected_calibration_error(y, probs) == pytest.approx(expected)
    assert expected_calibration_error(y, np.eye(2)[y]) == 0.0


def test_cosine_lr_schedule_is_sent_per_round(tmp_path: Path) -> None:
    """§2.5.3: lr·½(1 + cos(π(t−1)/T)), stepped once per round, in every training message."""
    cfg = bayes_config(tmp_path, "ivon-admm", **{"mc-samples": 1, "lr": 0.002})
    cfg |= {"lr-schedule": "cosine", "num-server-rounds": 4}
    _, grid = run_local(cfg, K)
    for t, msgs in train_messages(grid).items():
        expected = 0.002 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 4))
        assert all(m.content[ROUND]["lr"] == pytest.approx(expected) for m in msgs.values())
