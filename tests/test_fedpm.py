"""FedPM / LocalNewton through the real strategy and ClientApp, against float64 references.

ALGORITHMS.md §3.5 and §6 P1-P7: on federated quadratics with exact Hessians one round maps the
error by exactly ``(1−η)^K`` (P1, P2); damped Hessians give the damped global Newton step (P3);
with ``K = 1`` the mixing undoes any invertible client preconditioner (global Newton step);
LocalNewton converges to the mean of the local optima (P4); ``P_i = n_i I`` is weighted FedAvg
(P6); FOOF on one linear layer with squared loss reaches the least-squares optimum in one round
(P5); the FOOF factors equal an explicit im2col construction; Newton on logistic regression is
superlinear (P7). The least-squares client ``i`` has ``f_i = (1/2n_i)‖X_iθ − y_i‖²``, i.e.
Hessian ``A_i = X_iᵀX_i/n_i`` and ``∇f_i(θ) = A_iθ − b_i`` with ``b_i = X_iᵀy_i/n_i``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from torch import nn

from client_app.solvers.base import SavedState, SolverInput
from client_app.solvers.preconditioned import _batches, foof_diagonal, foof_factor, foof_steps
from methods.registry import METHODS
from protocol.foof import foof_layers
from protocol.records import CURVATURE, ROUND, SHARED, TRIU
from protocol.round import RoundValues
from protocol.symmetric import pack_symmetric, unpack_symmetric
from server_app.config import ConfigError, validate_run_config
from server_app.suboptimality import optimum
from strategies.fedpm import FedPMStrategy, precondition_mix
from tasks import registry
from tasks.data import ArrayData, TaskData
from tasks.federation import federation_spec
from tasks.materialize import Tensors
from tasks.synthetic import SyntheticTask
from tests.conftest import default_config, read_metrics, run_local
from tests.lsq_task import DIM, LeastSquaresTask, exact_config, lsq_clients

M = 4
OUT = 3


def multi_output_clients(num: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X_i, Y_i) with ``OUT`` targets, heterogeneous feature scales and true maps."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for i in range(num):
        n = 15 + 4 * i
        x = rng.normal(size=(n, DIM)) * rng.uniform(0.5, 2.0, size=DIM) + i
        w = rng.normal(size=(OUT, DIM)) + i
        out.append((x, x @ w.T + 0.2 * rng.normal(size=(n, OUT)) + 1.0))
    return out


class ConvexLSQ(LeastSquaresTask):
    """The least-squares task, marked convex so that the server logs ``subopt``."""

    models = ("convex",)


class MultiOutputLSQ(LeastSquaresTask):
    """``½·mean_j ‖W a_j + b − y_j‖²`` (sum over outputs): one Linear layer with a bias (§3.5)."""

    name = "mlsq"

    def load(self, options: Any) -> TaskData:
        clients = multi_output_clients(options.num_partitions, options.seed)
        x = np.concatenate([c[0] for c in clients])
        y = np.concatenate([c[1] for c in clients])
        groups = np.concatenate([np.full(len(c[1]), i) for i, c in enumerate(clients)])
        return TaskData(ArrayData(x, y), None, 1, groups=groups.astype(np.int64))  # type: ignore[arg-type]

    def build_model(self, personalization: str) -> nn.Module:
        return nn.Linear(DIM, OUT).double()

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((model(x) - y) ** 2).sum(1).mean()


class Synthetic64(SyntheticTask):
    """``synthetic`` (L2 logistic regression) with a float64 model, for exact convergence, and
    features scaled by ``SCALE`` so that undamped Newton (η = 1) from the initial weights is in
    its local regime (on the raw features global Newton overshoots and diverges).
    """

    name = "synthetic64"
    l2 = 1.0
    scale = 0.3

    def load(self, options: Any) -> TaskData:
        data = super().load(options)
        pool = ArrayData((data.pool.x * self.scale).astype(np.float32), data.pool.y)
        return TaskData(pool, None, data.num_classes, groups=data.groups)

    def build_model(self, personalization: str) -> nn.Module:
        return super().build_model(personalization).double()


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "lsq", ConvexLSQ)
    monkeypatch.setitem(registry.TASKS, "mlsq", MultiOutputLSQ)
    monkeypatch.setitem(registry.TASKS, "synthetic64", Synthetic64)


def pm_config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    extra = {
        "num-server-rounds": 3,
        "eta": 1.0,
        "newton-steps": 1,
        "curvature": "hessian",
        "damping": 0.0,
        "globalization": "none",  # the §3.5 identities are those of the plain mix
    }
    return exact_config(tmp_path, "fedpm") | extra | over


def sent_thetas(grid: Any) -> list[np.ndarray]:
    """θ^t (flattened SHARED, record order) broadcast in each round t = 0, 1, ..."""
    rounds: dict[int, np.ndarray] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            theta = np.concatenate([a.numpy().ravel() for a in msg.content[SHARED].values()])
            rnd = int(msg.content[ROUND]["server-round"])
            assert rnd not in rounds or np.array_equal(rounds[rnd], theta)
            rounds[rnd] = theta
    return [rounds[r] for r in sorted(rounds)]


def quadratics(seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    data = lsq_clients(M, seed)
    return (
        [x.T @ x / len(y) for x, y in data],
        [x.T @ y / len(y) for x, y in data],
        [len(y) for _, y in data],
    )


# ----------------------------------------------------------------------------- P1, P2
@pytest.mark.parametrize(
    ("eta", "steps", "weighting"),
    [(1.0, 1, "uniform"), (0.5, 1, "uniform"), (0.5, 3, "examples"), (0.3, 5, "uniform")],
)
def test_quadratic_contraction_law(tmp_path: Path, eta: float, steps: int, weighting: str) -> None:
    cfg = pm_config(
        tmp_path,
        eta=eta,
        **{"newton-steps": steps, "client-weighting": weighting, "num-server-rounds": 4},
    )
    run_dir, grid = run_local(cfg, M)
    a, b, n = quadratics(3)
    w = n if weighting == "examples" else [1] * M
    theta_star = np.linalg.solve(
        sum(wi * ai for wi, ai in zip(w, a, strict=True)),
        sum(wi * bi for wi, bi in zip(w, b, strict=True)),
    )
    thetas = sent_thetas(grid)
    assert len(thetas) == 4
    factor = (1.0 - eta) ** steps
    scale = np.abs(thetas[0] - theta_star).max()
    for before, after in itertools.pairwise(thetas):
        np.testing.assert_allclose(
            after - theta_star, factor * (before - theta_star), rtol=0, atol=1e-12 * scale
        )
    rows = read_metrics(run_dir)
    assert rows[0]["subopt"] > 1e-3
    if eta == 1.0:  # P1: the optimum in one round
        np.testing.assert_allclose(thetas[1], theta_star, rtol=0, atol=1e-12 * scale)
        assert abs(rows[1]["subopt"]) < 1e-12
    assert rows[1]["bytes-up-per-client"] == 8 * (DIM + DIM * (DIM + 1) // 2)


# ----------------------------------------------------------------------------- P3
def test_damped_hessians_give_damped_global_newton_step(tmp_path: Path) -> None:
    lam = 0.7
    _, grid = run_local(pm_config(tmp_path, damping=lam, **{"num-server-rounds": 2}), M)
    a, b, _ = quadratics(3)
    theta0, theta1 = sent_thetas(grid)[:2]
    grads = sum(ai @ theta0 - bi for ai, bi in zip(a, b, strict=True))
    expected = theta0 - np.linalg.solve(sum(a) + M * lam * np.eye(DIM), grads)
    np.testing.assert_allclose(theta1, expected, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- §3.5 K = 1
@pytest.mark.parametrize("kind", ["hessian", "diagonal"])
def test_one_step_mixing_is_global_newton_step_for_any_client_matrices(kind: str) -> None:
    rng = np.random.default_rng(0)
    d, eta = 6, 0.7
    theta = rng.normal(size=d)
    weights = [1.0, 3.0, 0.5]
    mats, grads, thetas, curvs = [], [], [], []
    for _ in weights:
        if kind == "hessian":
            q = rng.normal(size=(d, d))
            p = q @ q.T + 0.1 * np.eye(d)
            curvs.append({TRIU: unpack_symmetric(pack_symmetric(torch.from_numpy(p)))})
        else:
            p = np.diag(rng.uniform(0.1, 5.0, size=d))
            curvs.append({"w": torch.from_numpy(np.diag(p).copy())})
        g = rng.normal(size=d)
        mats.append(p)
        grads.append(g)
        thetas.append({"w": torch.from_numpy(theta - eta * np.linalg.solve(p, g))})
    mixed = precondition_mix(kind, thetas, curvs, weights)["w"].numpy()
    p_sum = sum(w * p for w, p in zip(weights, mats, strict=True))
    g_sum = sum(w * g for w, g in zip(weights, grads, strict=True))
    np.testing.assert_allclose(mixed, theta - eta * np.linalg.solve(p_sum, g_sum), atol=1e-12)


# ----------------------------------------------------------------------------- P6
@pytest.mark.parametrize("kind", ["hessian", "diagonal"])
def test_scaled_identity_preconditioners_give_weighted_fedavg(kind: str) -> None:
    rng = np.random.default_rng(1)
    sizes = [5.0, 17.0, 2.0, 9.0]
    thetas = [
        {"a": torch.from_numpy(rng.normal(size=(2, 3))), "b": torch.randn(4).double()}
        for _ in sizes
    ]
    if kind == "hessian":
        curvs = [{TRIU: n * torch.eye(10, dtype=torch.float64)} for n in sizes]
    else:
        curvs = [
            {k: torch.full_like(v, n) for k, v in t.items()}
            for t, n in zip(thetas, sizes, strict=True)
        ]
    for weights, expect_w in (([1.0] * 4, sizes), (sizes, [n * n for n in sizes])):
        mixed = precondition_mix(kind, thetas, curvs, weights)
        for key in ("a", "b"):
            expected = sum(w * t[key] for w, t in zip(expect_w, thetas, strict=True)) / sum(
                expect_w
            )
            torch.testing.assert_close(mixed[key], expected, rtol=1e-14, atol=1e-14)
    # P_i = c·I (same c): the uniform mean
    same = [{TRIU: 3.0 * torch.eye(10, dtype=torch.float64)} for _ in sizes]
    if kind == "hessian":
        mixed = precondition_mix(kind, thetas, same, [1.0] * 4)
        torch.testing.assert_close(mixed["a"], sum(t["a"] for t in thetas) / 4)


# ----------------------------------------------------------------------------- P4
def test_local_newton_converges_to_mean_of_local_optima(tmp_path: Path) -> None:
    cfg = pm_config(tmp_path, algorithm="localnewton", **{"num-server-rounds": 3})
    run_dir, grid = run_local(cfg, M)
    a, b, _ = quadratics(3)
    biased = np.mean([np.linalg.solve(ai, bi) for ai, bi in zip(a, b, strict=True)], axis=0)
    theta_star = np.linalg.solve(sum(a), sum(b))
    for theta in sent_thetas(grid)[1:]:
        np.testing.assert_allclose(theta, biased, rtol=1e-12, atol=1e-12)
    assert np.linalg.norm(biased - theta_star) > 0.1
    rows = read_metrics(run_dir)
    assert rows[-1]["subopt"] > 1e-3  # stuck away from f*
    assert rows[-1]["bytes-up-per-client"] == 8 * DIM  # parameters only


def test_upload_bytes_count_only_what_is_sent(tmp_path: Path) -> None:
    shared = {"weight": ((1, DIM), "float64")}
    for algorithm, expected in (
        ("localnewton", {SHARED: 8 * DIM}),
        ("fedpm", {SHARED: 8 * DIM, CURVATURE: 8 * DIM * (DIM + 1) // 2}),
    ):
        cfg = validate_run_config(pm_config(tmp_path, algorithm=algorithm))
        method = METHODS[algorithm]
        assert set(method.rule.reply_records) == set(expected), algorithm
        strategy = FedPMStrategy(cfg, method.solver.name)
        strategy.shared_template = shared
        strategy.init_state(ArrayRecord())
        sent = {k: v for k, v in strategy.upload_nbytes().items() if k in expected}
        assert sent == expected, algorithm


# ----------------------------------------------------------------------------- P5
def test_foof_single_linear_layer_reaches_least_squares_optimum(tmp_path: Path) -> None:
    cfg = pm_config(tmp_path, task="mlsq", curvature="foof", **{"num-server-rounds": 2})
    _, grid = run_local(cfg, M)
    data = multi_output_clients(M, 3)
    aug = [np.hstack([x, np.ones((len(x), 1))]) for x, _ in data]
    a_sum = sum(z.T @ z / len(z) for z in aug)
    c_sum = sum(y.T @ z / len(z) for z, (_, y) in zip(aug, data, strict=True))
    w_star = c_sum @ np.linalg.inv(a_sum)
    theta1 = sent_thetas(grid)[1]
    np.testing.assert_allclose(theta1[: OUT * DIM].reshape(OUT, DIM), w_star[:, :DIM], atol=1e-10)
    np.testing.assert_allclose(theta1[OUT * DIM :], w_star[:, DIM], atol=1e-10)


# ----------------------------------------------------------------------------- FOOF factors
def test_foof_factor_of_linear_layer_is_second_moment_of_augmented_inputs() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = (
        sum(torch.outer(torch.cat([r, torch.ones(1)]), torch.cat([r, torch.ones(1)])) for r in x)
        / 5
    )
    torch.testing.assert_close(foof_factor(layer, x), expected)
    torch.testing.assert_close(foof_diagonal(layer, x), torch.diagonal(expected))
    no_bias = nn.Linear(3, 2, bias=False).double()
    torch.testing.assert_close(foof_factor(no_bias, x), x.T @ x / 5)


def test_foof_factor_of_conv_layer_is_second_moment_of_im2col_patches() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=(2, 3), padding=1, stride=(1, 2)).double()
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    out = conv(x)
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    patches = []
    for b in range(x.shape[0]):
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                patch = padded[b, :, i : i + 2, 2 * j : 2 * j + 3].reshape(-1)
                # the im2col layout is the weight's: W.reshape(C_out, -1) @ patch + bias = output
                torch.testing.assert_close(
                    conv.weight.reshape(3, -1) @ patch + conv.bias, out[b, :, i, j]
                )
                patches.append(torch.cat([patch, torch.ones(1, dtype=torch.float64)]))
    rows = torch.stack(patches)
    torch.testing.assert_close(foof_factor(conv, x), rows.T @ rows / len(rows))
    torch.testing.assert_close(foof_diagonal(conv, x), (rows**2).mean(0))
    (layer,) = foof_layers(nn.Sequential(conv), ["0.weight", "0.bias"])
    assert (layer.name, layer.size) == ("0", 2 * 2 * 3 + 1)


# ----------------------------------------------------------------------------- P7
def test_newton_on_logistic_regression_is_superlinear(tmp_path: Path) -> None:
    cfg = pm_config(
        tmp_path,
        task="synthetic64",
        seed=0,
        **{"num-server-rounds": 5, "client-weighting": "examples"},
    )
    run_dir, grid = run_local(cfg, M)
    theta_star, _ = optimum(federation_spec(validate_run_config(cfg), M), "examples", 0)
    errors = [np.linalg.norm(t - theta_star.numpy()) for t in sent_thetas(grid)]
    ratios = [e1 / e0 for e0, e1 in itertools.pairwise(errors) if e0 > 1e-11]
    assert len(ratios) >= 3, errors
    assert all(r1 < r0 for r0, r1 in itertools.pairwise(ratios)), ratios
    assert ratios[-1] < 0.05, ratios
    subopt = [r["subopt"] for r in read_metrics(run_dir)]
    assert subopt[-1] < 1e-12 < subopt[0], subopt


# ----------------------------------------------------------------------------- bad input
def test_non_finite_curvature_reply_is_dropped(tmp_path: Path) -> None:
    def poison(reply: Message) -> Message:
        if (
            CURVATURE in reply.content.array_records
            and int(reply.content["metrics"]["partition-id"]) == 1
        ):
            rec = reply.content.array_records[CURVATURE]
            bad = rec[TRIU].numpy().copy()
            bad[0] = np.nan
            rec[TRIU] = Array(bad)
        return reply

    cfg = pm_config(tmp_path, **{"num-server-rounds": 2})
    run_dir, grid = run_local(cfg, M, tamper=poison)
    rows = read_metrics(run_dir)
    assert [r["dropped-replies"] for r in rows[1:]] == [1, 1]
    assert [r["clients"] for r in rows[1:]] == [M - 1, M - 1]
    a, b, _ = quadratics(3)  # the optimum of the three remaining clients, in one round
    keep = [0, 2, 3]
    expected = np.linalg.solve(sum(a[i] for i in keep), sum(b[i] for i in keep))
    np.testing.assert_allclose(sent_thetas(grid)[1], expected, atol=1e-11)


def test_curvature_upload_over_cap_is_refused_before_round_one() -> None:
    cfg = default_config() | {"algorithm": "fedpm", "task": "digits", "curvature": "hessian"}
    with pytest.raises(ConfigError, match="curvature-cap-mb"):
        validate_run_config(cfg)
    validate_run_config(cfg | {"curvature": "foof"})
    with pytest.raises(ConfigError, match="curvature-cap-mb"):
        validate_run_config(cfg | {"curvature": "foof", "curvature-cap-mb": 0.01})
    fednl = cfg | {"algorithm": "fednl", "task": "breast-cancer", "curvature": "auto"}
    preset = validate_run_config(fednl)  # the fednl preset sets the values, a user may override
    assert (preset["newton-steps"], preset["curvature"]) == (1, "hessian")
    assert validate_run_config(fednl | {"newton-steps": 2})["newton-steps"] == 2


# ----------------------------------------------------------------------------- FOOF statistics
def foof_input(ema: float, refresh: int, steps: int, diagonal: bool = False) -> SolverInput:
    """One client of ``mlsq`` (a single Linear layer) set up for ``foof_steps``."""
    x, y = multi_output_clients(1, 5)[0]
    model = nn.Linear(DIM, OUT).double()
    shared = ["weight", "bias"]
    config = default_config() | {
        "eta": 0.1,
        "damping": 0.3,
        "lr": 0.1,
        "batch-size": 4,
        "newton-steps": steps,
        "foof-ema": ema,
        "foof-refresh": refresh,
    }
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return SolverInput(
        MultiOutputLSQ(),
        model,
        shared,
        [],
        {n: p.detach().clone() for n, p in model.named_parameters()},
        Tensors(torch.from_numpy(x), torch.from_numpy(y)),
        config,
        RoundValues(1, "fedpm-newton", float(config["lr"]), 1.0, 1),
        SavedState(),
        torch.Generator().manual_seed(7),
    )


def batch_factors(inp: SolverInput, steps: int) -> list[torch.Tensor]:
    """``A`` of each step's minibatch, from the same seeded batch order as the solver."""
    order = _batches(SolverInput(**{**vars(inp), "generator": torch.Generator().manual_seed(7)}))
    return [foof_factor(inp.model, inp.train.x[next(order)]) for _ in range(steps)]


def test_foof_ema_smooths_the_factor_as_documented() -> None:
    beta, lam = 0.6, 0.3
    inp = foof_input(beta, 1, 3)
    a1, a2, a3 = batch_factors(inp, 3)
    _, curvature, _ = foof_steps(inp, diagonal=False)
    expected = beta * (beta * a1 + (1 - beta) * a2) + (1 - beta) * a3 + lam * torch.eye(DIM + 1)
    torch.testing.assert_close(unpack_symmetric(curvature["layer"]), expected)
    _, no_ema, _ = foof_steps(foof_input(0.0, 1, 3), diagonal=False)
    torch.testing.assert_close(unpack_symmetric(no_ema["layer"]), a3 + lam * torch.eye(DIM + 1))


def test_foof_refresh_recomputes_the_factor_every_k_steps() -> None:
    beta, lam = 0.5, 0.3
    inp = foof_input(beta, 2, 4)
    a = batch_factors(inp, 4)
    _, curvature, _ = foof_steps(inp, diagonal=False)
    expected = beta * a[0] + (1 - beta) * a[2] + lam * torch.eye(DIM + 1)  # steps 0 and 2 only
    torch.testing.assert_close(unpack_symmetric(curvature["layer"]), expected)
    _, every, _ = foof_steps(foof_input(beta, 1, 4), diagonal=False)
    assert not torch.allclose(unpack_symmetric(every["layer"]), expected)
    # the diagonal variant follows the same schedule, on diag A
    _, diag, _ = foof_steps(foof_input(beta, 2, 4), diagonal=True)
    expected_diag = torch.diagonal(expected - lam * torch.eye(DIM + 1)) + lam
    torch.testing.assert_close(diag["weight"], expected_diag[:DIM].expand(OUT, DIM))
    torch.testing.assert_close(diag["bias"], expected_diag[DIM].expand(OUT))
