"""ADMM-family local stages whose stable step does not depend on the number of clients (issue 12).

The stage objectives are ``f_i + (ρ/α_i)/2‖w − u^t‖² + ⟨π_i/α_i, w − u^t⟩`` (FedADMM/FedAPM
shared stage), ``f_i + (σ/α_i)/2‖v − v_i^t‖²`` (FedAPM personal stage) and
``f_k + (τ/N_k)[v_kᵀθ + (ρs/2)‖θ − m_g‖²]`` (isotropic Bayesian ADMM). Their quadratic's
curvature ``κ`` grows with the number of clients (``α_i = 1/m`` or ``n_i/n``; ``N_k = n/K``), so
a gradient step with the default ``lr`` diverges once ``lr·(L_i + κ) > 2`` (about 1,000
uniform clients at lr 0.2, ρ 0.01). The solvers take the quadratic by its exact proximal map:
here, on a float64 least-squares client with synthetic weights ``α_i`` for 2, 10, 100 and
1,000 clients (uniform and example-weighted), every stage equals the float64 proximal-gradient
reference (no safeguard halving) and converges to the exact stage minimiser (§6 M1). The
2- and 10-client federations on digits run in tests/test_learning_matrix.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from client_app.solvers.admm import PI, admm
from client_app.solvers.base import SavedState, SolverInput
from client_app.solvers.bayes import V_STATE, isotropic
from protocol.records import GLOBAL_MEAN, MEAN, Z
from protocol.round import RoundValues
from tasks.materialize import Tensors
from tests.lsq_task import DIM, LeastSquaresTask, lsq_clients

LR, RHO = 0.2, 0.01
"""The method defaults (``lr``, ``rho``)."""
CLIENTS = (2, 10, 100, 1000)


def client_input(
    alpha: float,
    epochs: int,
    state: dict[str, Any],
    data: tuple[np.ndarray, np.ndarray] | None = None,
    **cfg: Any,
) -> SolverInput:
    """One float64 least-squares client (default: client 0 of ``lsq_clients``), weight ``alpha``."""
    task = LeastSquaresTask()
    model = task.build_model("none")
    x, y = data if data is not None else lsq_clients(1, 3)[0]
    rng = np.random.default_rng(7)
    u = {"weight": torch.as_tensor(rng.normal(size=(1, DIM)))}
    with torch.no_grad():
        model.weight.copy_(u["weight"])
    config = {
        "rho": RHO,
        "sigma": 0.01,
        "warm-start": "server",
        "xi0": 0.0,
        "mu-xi": 0.9,
        "local-epochs": epochs,
        "personal-epochs": 0,
        "shared-epochs": 0,
        "batch-size": 10_000,
        "momentum": 0.0,
        "weight-decay": 0.0,
        "personalization": "none",
        "seed": 3,
        "gamma": 1.0,
        "tau": 1.0,
        "prior-precision": 1.0,
        "precision-floor": 1e-8,
    } | cfg
    return SolverInput(
        task,
        model,
        ["weight"],
        [],
        u,
        Tensors(torch.as_tensor(x), torch.as_tensor(y)),
        config,
        RoundValues(2, "admm", LR, alpha, 0),
        SavedState(state),
        torch.Generator().manual_seed(0),
        {GLOBAL_MEAN: u},
    )


def weights(m: int) -> list[float]:
    """Synthetic ``α_i`` of a federation of ``m``: uniform, and the smallest of ``n_i ∝ i + 1``."""
    return [1.0 / m, 2.0 / (m * (m + 1))]


def quadratic() -> tuple[np.ndarray, np.ndarray]:
    x, y = lsq_clients(1, 3)[0]
    return x.T @ x / len(y), x.T @ y / len(y)


@pytest.mark.parametrize("m", CLIENTS)
def test_shared_stage_is_stable_at_any_federation_size(m: int) -> None:
    a, b = quadratic()
    pi = np.random.default_rng(1).normal(size=DIM) * 0.1
    for alpha in weights(m):
        kappa = RHO / alpha
        epochs = 3
        inp = client_input(alpha, epochs, {PI: {"weight": torch.as_tensor(pi[None, :])}})
        u = inp.u["weight"].numpy().ravel()
        out = admm(inp)
        w = u.copy()
        for _ in range(epochs):  # gradient step on f_i, exact prox of the stage quadratic
            step = w - LR * (a @ w - b)
            w = u + (step - u - LR * pi / alpha) / (1 + LR * kappa)
        u_i = inp.named(["weight"])["weight"].numpy().ravel()
        np.testing.assert_allclose(u_i, w, rtol=1e-12, atol=1e-13)
        assert np.isfinite(out.records[Z]["weight"].numpy()).all()
        # at 1,000 clients the plain gradient step on the stage objective diverges
        lipschitz = float(np.linalg.eigvalsh(a).max())
        assert (LR * (lipschitz + kappa) > 2) == (m == 1000 or LR * kappa > 2)


@pytest.mark.parametrize("m", CLIENTS)
def test_shared_stage_reaches_the_exact_minimiser(m: int) -> None:
    """§6 M1: ``u_i = (α_iA_i + ρI)^{-1}(α_i b_i − π_i + ρu^t)`` after enough epochs."""
    a, b = quadratic()
    for alpha in weights(m):
        inp = client_input(alpha, 400, {})
        u = inp.u["weight"].numpy().ravel()
        admm(inp)
        exact = np.linalg.solve(alpha * a + RHO * np.eye(DIM), alpha * b + RHO * u)
        u_i = inp.named(["weight"])["weight"].numpy().ravel()
        np.testing.assert_allclose(u_i, exact, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("m", CLIENTS)
def test_isotropic_bayes_stage_is_stable_for_small_clients(m: int) -> None:
    """``κ = τρs/N_k`` with ``N_k = n/m`` of ``n = 2000`` examples; ``τρs = 50`` (§6 B2's)."""
    rng = np.random.default_rng(2)
    n_k = 2000 // m
    x = rng.normal(size=(n_k, DIM))
    y = x @ rng.normal(size=DIM)
    a, b = x.T @ x / n_k, x.T @ y / n_k
    dual = rng.normal(size=DIM)
    inp = client_input(
        1.0 / m, 3, {V_STATE: {"weight": torch.as_tensor(dual[None, :])}}, (x, y), rho=50.0
    )
    u = inp.u["weight"].numpy().ravel()
    out = isotropic(inp)
    kappa, lin = 50.0 / n_k, dual / n_k
    w = u.copy()
    for _ in range(3):
        step = w - LR * (a @ w - b)
        w = u + (step - u - LR * lin) / (1 + LR * kappa)
    mean = out.records[MEAN]["weight"].numpy().ravel()
    np.testing.assert_allclose(mean, w, rtol=1e-12, atol=1e-13)
    assert (LR * kappa > 2) == (m == 1000)  # where a gradient step would diverge
