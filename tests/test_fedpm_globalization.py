"""FedPM's server-side Levenberg–Marquardt globalization (``strategies.fedpm.LevenbergMarquardt``).

Issue 12: ``algorithm='fedpm' curvature='hessian' task='synthetic'`` at its defaults reaches
``subopt ≤ 1e-8`` within the default rounds with a superlinear tail (successive error ratios
→ 0), ``θ*`` is the only fixed point, a rejected step is retried from the anchor with more
damping (no extra exchange), the state survives a checkpoint, and on quadratics the rule with
``lm-damping=0`` keeps the full Newton step (P1 with the globalization on).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from server_app.api import run_in_process
from strategies.fedpm import LevenbergMarquardt
from tasks import registry
from tests.conftest import read_metrics, run_local
from tests.test_fedpm import ConvexLSQ, M, pm_config, quadratics, sent_thetas


def model_of(a: np.ndarray, b: np.ndarray, u: np.ndarray, damping: float, eta: float):  # type: ignore[no-untyped-def]
    """What the FedPM replies at ``u`` tell the server about ``½θᵀAθ − bᵀθ``: ``(P, θ̂)``."""
    p = torch.from_numpy(a + damping * np.eye(len(b)))
    mixed = torch.from_numpy(u) - eta * torch.linalg.solve(p, torch.from_numpy(a @ u - b))
    return p, mixed


def test_stationary_point_is_a_fixed_point() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(5, 5))
    a, b = q @ q.T + np.eye(5), rng.normal(size=5)
    star = np.linalg.solve(a, b)
    lm = LevenbergMarquardt(1.0, 1e-3, 1.0)
    p, mixed = model_of(a, b, star, 1e-3, 1.0)
    point = lm.update((0,), torch.from_numpy(star), 0.0, p, mixed)
    np.testing.assert_allclose(point.numpy(), star, atol=1e-14)


def test_rejected_step_is_retried_from_the_anchor_with_more_damping() -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 4))
    a, b = q @ q.T + np.eye(4), rng.normal(size=4)
    x = rng.normal(size=4)
    lm = LevenbergMarquardt(1.0, 0.0, 0.5)
    p, mixed = model_of(a, b, x, 0.0, 1.0)
    value = 0.5 * x @ a @ x - b @ x
    first = lm.update((0,), torch.from_numpy(x), value, p, mixed)
    mu = lm.levenberg
    expected = x - np.linalg.solve(a + 0.5 * np.eye(4), a @ x - b)
    np.testing.assert_allclose(first.numpy(), expected, atol=1e-12)
    # the objective got worse at the new point: rejected, retried from x with 4x the damping
    p2, mixed2 = model_of(a, b, first.numpy(), 0.0, 1.0)
    retry = lm.update((0,), first, value + 1.0, p2, mixed2)
    assert lm.levenberg == 4 * mu
    np.testing.assert_allclose(lm.anchor.numpy(), x)  # type: ignore[union-attr]
    expected = x - np.linalg.solve(a + 2.0 * np.eye(4), a @ x - b)
    np.testing.assert_allclose(retry.numpy(), expected, atol=1e-12)
    # a checkpoint round trip keeps every value
    again = LevenbergMarquardt(1.0, 0.0, 0.5)
    again.load(lm.arrays())
    assert again.arrays().keys() == lm.arrays().keys()
    for key, array in lm.arrays().items():
        np.testing.assert_array_equal(again.arrays()[key], array, err_msg=key)


@pytest.fixture()
def _lsq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", ConvexLSQ)


@pytest.mark.usefixtures("_lsq")
def test_full_newton_step_is_kept_on_quadratics_at_zero_initial_damping(tmp_path: Path) -> None:
    cfg = pm_config(tmp_path, globalization="levenberg-marquardt", **{"lm-damping": 0.0})
    run_dir, grid = run_local(cfg, M)
    a, b, _ = quadratics(3)
    theta_star = np.linalg.solve(sum(a), sum(b))
    thetas = sent_thetas(grid)
    scale = np.abs(thetas[0] - theta_star).max()
    for theta in thetas[1:]:  # P1 with the globalization on: the optimum in one round, kept
        np.testing.assert_allclose(theta, theta_star, rtol=0, atol=1e-12 * scale)
    assert abs(read_metrics(run_dir)[-1]["subopt"]) < 1e-12


def test_synthetic_reaches_1e_8_with_a_superlinear_tail(tmp_path: Path) -> None:
    """The issue's run: exact Hessians on ``synthetic``, every other key at its default."""
    rows = run_in_process(
        {
            "algorithm": "fedpm",
            "curvature": "hessian",
            "task": "synthetic",
            "fraction-evaluate": 0.0,
            "output-dir": str(tmp_path),
        },
        10,
    ).rows
    subopt = [row["subopt"] for row in rows]
    assert len(subopt) == 21 and subopt[-1] <= 1e-8, subopt
    first = next(i for i, s in enumerate(subopt) if s <= 1e-12)  # the float32 floor from here
    ratios = [s1 / s0 for s0, s1 in itertools.pairwise(subopt[first - 4 : first + 1])]
    assert all(r1 < r0 for r0, r1 in itertools.pairwise(ratios)), (ratios, subopt)
    assert ratios[-1] < 0.01, (ratios, subopt)
