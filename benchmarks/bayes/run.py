"""Bayesian ADMM benchmarks (issue 4): quadratics and a heterogeneous deep task.

Every run goes through the real ServerApp and ClientApp code on the in-process grid
(``server_app.inprocess``).

1. Quadratics (float64 federated least squares, 5 clients, full participation): rounds until
   the server mean is within a relative 1e-10 of the method's exact fixed point, for
   ``newton-admm`` (closed-form client) vs ``bayes-admm`` (isotropic, local gradient steps) vs
   ``fedadmm`` (local gradient steps).
2. Deep, heterogeneous: scikit-learn digits with the paper's MLP shape (64-200-100-10,
   sigmoid), 10 clients, Dirichlet(0.5) label skew, full participation: ``ivon-admm`` vs
   ``fedadmm`` vs ``fedavg`` vs ``fedprox``, mean ± std over seeds of the final global accuracy,
   NLL and ECE (mean prediction; IVON-ADMM also with its posterior predictive), and a PNG of
   the curves. ``--deep-task fmnist``: Fashion-MNIST instead (``--data-dir``, default the
   Debian package ``dataset-fashion-mnist``'s directory), the authors' 10 % training subset and
   MLP 784-200-100-10, IVON-ADMM both at the authors' settings (ALGORITHMS.md §2.5.6, FMNIST 10
   clients heterogeneous) and at the project's presets, the baselines at their presets.

    python -m benchmarks.bayes.run [--rounds 40 --seeds 0 1 2 --parts quadratic deep]
    python -m benchmarks.bayes.run --parts deep --deep-task fmnist --rounds 50
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import MessageType
from torch import nn

from client_app.app import app as client_app
from protocol.records import ROUND, SHARED
from server_app.app import run_federation
from server_app.config import unused_as_auto
from server_app.inprocess import InProcessGrid
from tasks import registry
from tasks.base import DataOptions, Task
from tasks.data import ArrayData, TaskData
from tasks.digits import DigitsTask
from tasks.vision import FashionMNISTTask

ROOT = Path(__file__).resolve().parents[2]


def defaults() -> dict[str, Any]:
    """The run-config defaults of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


# ------------------------------------------------------------------------------ quadratics
DIM, CLIENTS = 8, 5


def quadratic_clients(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(X_k, y_k): heterogeneous feature scales and true weights per client."""
    rng = np.random.default_rng([seed, 17])
    out = []
    for k in range(CLIENTS):
        n = 30 + 10 * k
        x = rng.normal(size=(n, DIM)) * rng.uniform(0.3, 2.0, size=DIM)
        out.append((x, x @ (rng.normal(size=DIM) + k) + 0.1 * rng.normal(size=n)))
    return out


class QuadraticTask(Task):
    """``f_k(θ) = (1/2n_k)‖X_kθ − y_k‖²`` in float64; one natural client per partition."""

    name = "bench-quadratic"
    natural_clients = True

    def load(self, options: DataOptions) -> TaskData:
        """The clients' rows pooled, grouped by client."""
        data = quadratic_clients(options.seed)
        groups = np.concatenate([np.full(len(y), k) for k, (_, y) in enumerate(data)])
        pool = ArrayData(np.concatenate([x for x, _ in data]), np.concatenate([y for _, y in data]))  # type: ignore[arg-type]
        return TaskData(pool, None, 1, groups=groups.astype(np.int64))

    def build_model(self, personalization: str) -> nn.Module:
        """Linear model without bias."""
        return nn.Linear(DIM, 1, bias=False).double()

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Half mean squared error."""
        return 0.5 * ((model(x).squeeze(1) - y) ** 2).mean()

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """The loss only (a regression task)."""
        return {"loss": float(self.objective(model, x, y))}


QUADRATIC_BASE = {
    "task": "bench-quadratic",
    "partitioner": "natural",
    "local-test-fraction": 0.0,
    "fraction-evaluate": 0.0,
    "batch-size": 100_000,
    "momentum": 0.0,
    "weight-decay": 0.0,
    "client-weighting": "examples",
    "tau": 1.0,
    "prior-precision": 1.0,
    "mc-samples": 0,
}
QUADRATIC_RUNS: dict[str, dict[str, Any]] = {
    "newton-admm (rho=1/K, gamma=1)": {
        "algorithm": "newton-admm",
        "rho": 1.0 / CLIENTS,
        "gamma": 1.0,
        "lr": 1.0,
        "local-epochs": 1,
    },
    "newton-admm (PVI: alpha=1, rho=1)": {
        "algorithm": "newton-admm",
        "rho": 1.0,
        "server-step": 1.0,
        "gamma": 1.0,
        "lr": 1.0,
        "local-epochs": 1,
    },
    "newton-admm (rho=0.5, gamma=1)": {
        "algorithm": "newton-admm",
        "rho": 0.5,
        "gamma": 1.0,
        "lr": 1.0,
        "local-epochs": 1,
    },
    "bayes-admm (isotropic)": {"algorithm": "bayes-admm", "gamma": 1.0, "local-epochs": 10},
    "fedadmm": {"algorithm": "fedadmm", "local-epochs": 10},
}
GRADIENT_GRID = {  # local gradient methods: small grid over (rho, lr), best one reported
    "bayes-admm (isotropic)": [{"rho": r, "lr": 0.1} for r in (20.0, 50.0)],
    "fedadmm": [{"rho": r, "lr": 0.1} for r in (0.1, 0.5)],
}


def quadratic_targets(seed: int, tau: float, s0: float) -> dict[str, np.ndarray]:
    """Exact fixed points: the posterior mean ``(ΣA_k + τ s I)^{-1} Σb_k`` (Bayes methods) and
    the unregularised ``(ΣA_k)^{-1} Σb_k`` (FedADMM, examples weighting)."""
    data = quadratic_clients(seed)
    a = sum(x.T @ x for x, _ in data)
    b = sum(x.T @ y for x, y in data)
    return {
        "bayes": np.linalg.solve(a + tau * s0 * np.eye(DIM), b),
        "fedadmm": np.linalg.solve(a, b),
    }


def server_means(grid: InProcessGrid) -> list[np.ndarray]:
    """The broadcast shared block of rounds 2, 3, ...: the server mean after rounds 1, 2, ..."""
    seen: dict[int, np.ndarray] = {}
    for msg in grid.sent:
        if msg.metadata.message_type == MessageType.TRAIN:
            seen[int(msg.content[ROUND]["server-round"])] = msg.content[SHARED]["weight"].numpy()
    return [seen[r].ravel() for r in sorted(seen) if r > 1]


def quadratic_part(rounds: int, out: Path, seed: int = 0) -> str:
    """Rounds to a relative error of 1e-10 for every method (best over a small grid)."""
    registry.TASKS["bench-quadratic"] = QuadraticTask
    targets = quadratic_targets(seed, QUADRATIC_BASE["tau"], QUADRATIC_BASE["prior-precision"])
    lines = [
        f"\n### Quadratics ({CLIENTS} clients, d = {DIM}, float64, full participation, "
        f"seed {seed}, at most {rounds} rounds)\n",
        "| method | setting | rounds to rel. error 1e-10 | rel. error after round 1 "
        "| final rel. error |",
        "|---|---|---|---|---|",
    ]
    for name, run in QUADRATIC_RUNS.items():
        best: tuple[float, str, list[float]] | None = None
        for extra in GRADIENT_GRID.get(name, [{}]):
            cfg = defaults() | QUADRATIC_BASE | run | extra
            cfg |= {"seed": seed, "num-server-rounds": rounds + 1, "output-dir": str(out)}
            cfg["run-name"] = f"q-{cfg['algorithm']}-{len(list(out.glob('*')))}"
            grid = InProcessGrid(client_app, CLIENTS)
            run_federation(grid, unused_as_auto(cfg))
            target = targets["fedadmm" if cfg["algorithm"] == "fedadmm" else "bayes"]
            errors = [
                float(np.linalg.norm(m - target) / np.linalg.norm(target))
                for m in server_means(grid)
            ]
            hit = next((t + 1 for t, e in enumerate(errors) if e <= 1e-10), math.inf)
            setting = ", ".join(f"{k}={v:g}" for k, v in extra.items()) or "—"
            if best is None or (hit, errors[-1]) < (best[0], best[2][-1]):
                best = (hit, setting, errors)
        assert best is not None
        hit, setting, errors = best
        reached = str(int(hit)) if math.isfinite(hit) else f"> {rounds}"
        lines.append(f"| {name} | {setting} | {reached} | {errors[0]:.1e} | {errors[-1]:.1e} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ deep task
class MLP(nn.Module):
    """The paper's FMNIST MLP, ``in_features``-200-100-10 with sigmoid units (64 on digits)."""

    def __init__(self, in_features: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 200)
        self.fc2 = nn.Linear(200, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        h = torch.sigmoid(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc3(torch.sigmoid(self.fc2(h)))
        return out


class DigitsMLPTask(DigitsTask):
    """The bundled digits with ``MLP`` (server test set: 20 % stratified hold-out)."""

    name = "bench-digits-mlp"

    def build_model(self, personalization: str) -> nn.Module:
        """64-200-100-10 sigmoid MLP."""
        return MLP()


FMNIST_SUBSET = 0.1
"""The authors' FMNIST with 10 clients uses a 10 % subset of the training set (§2.5.6)."""


class FashionMNISTMLPTask(FashionMNISTTask):
    """Fashion-MNIST, a fixed seeded 10 % of the training images (the pool that is
    partitioned), the full test set as the server test, with the 784-200-100-10 ``MLP``.
    """

    name = "bench-fmnist-mlp"

    def load(self, options: DataOptions) -> TaskData:
        """The full dataset, then the fixed training subset (the same for every seed)."""
        full = super().load(options)
        rng = np.random.default_rng([0, 10])
        n = len(full.pool)
        keep = np.sort(rng.choice(n, size=round(FMNIST_SUBSET * n), replace=False))
        return TaskData(
            ArrayData(full.pool.x[keep], full.pool.y[keep]), full.server_test, full.num_classes
        )

    def build_model(self, personalization: str) -> nn.Module:
        """784-200-100-10 sigmoid MLP."""
        return MLP(28 * 28)


DEEP_BASE = {
    "task": "bench-digits-mlp",
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "local-test-fraction": 0.0,
    "local-epochs": 10,
    "batch-size": 32,
    "momentum": 0.0,
    "client-weighting": "examples",
    "lr-schedule": "cosine",  # as the paper's heterogeneous configs, for every method
}
DEEP_RUNS: dict[str, dict[str, Any]] = {
    "ivon-admm": {
        "algorithm": "ivon-admm",
        "lr": 1e-3,
        "tau": 1e-3,
        "rho": 0.2,
        "gamma": 1e-3,
        "prior-precision": 1.0,
        "hess-init": 1e-3,
        "beta2": 0.9998,
        "mc-samples": 1,
        "eval-samples": 20,
    },
    "fedadmm": {"algorithm": "fedadmm", "lr": 1.0, "rho": 0.001},
    "fedavg": {"algorithm": "fedavg", "lr": 1.0},
    "fedprox": {"algorithm": "fedprox", "lr": 1.0, "proximal-mu": 0.01},
}
FMNIST_RUNS: dict[str, dict[str, Any]] = {
    # the authors' FMNIST-heterogeneous config (ALGORITHMS.md §2.5.6)
    "ivon-admm (authors)": {**DEEP_RUNS["ivon-admm"], "lr": 5e-5},
    # the project's presets: nothing set but the algorithm (and the shared protocol)
    "ivon-admm (presets)": {"algorithm": "ivon-admm", "eval-samples": 20},
    "fedadmm": {"algorithm": "fedadmm"},
    "fedavg": {"algorithm": "fedavg"},
    "fedprox": {"algorithm": "fedprox", "proximal-mu": 0.01},
}
DEEP_TASKS: dict[str, tuple[str, type[Task], dict[str, dict[str, Any]]]] = {
    "digits": ("bench-digits-mlp", DigitsMLPTask, DEEP_RUNS),
    "fmnist": ("bench-fmnist-mlp", FashionMNISTMLPTask, FMNIST_RUNS),
}
DEEP_METRICS = ("global-accuracy", "global-nll", "global-ece")
BAYES_METRICS = ("global-bayes-accuracy", "global-bayes-nll", "global-bayes-ece")


def run_deep(
    name: str, seed: int, rounds: int, out: Path, task: str = "digits", data_dir: str = ""
) -> list[dict[str, Any]]:
    """One deep run; its metrics.jsonl rows."""
    task_name, task_class, runs = DEEP_TASKS[task]
    registry.TASKS[task_name] = task_class
    cfg = defaults() | DEEP_BASE | {"task": task_name} | runs[name]
    if task == "fmnist":
        cfg["data-dir"] = data_dir
    cfg |= {"seed": seed, "num-server-rounds": rounds, "output-dir": str(out)}
    cfg["run-name"] = f"{name.replace(' ', '-').strip('()')}-{seed}"
    run_dir = run_federation(InProcessGrid(client_app, 10), unused_as_auto(cfg))
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stat(values: list[float | None]) -> str:
    """``mean ± std`` of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):.3f} ± {sd:.3f}"


def deep_part(
    rounds: int,
    seeds: list[int],
    out: Path,
    task: str = "digits",
    data_dir: str = "",
    methods: list[str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The deep table (final round, mean ± std over seeds) and the curves."""
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    title = {
        "digits": "Digits, MLP 64-200-100-10",
        "fmnist": f"Fashion-MNIST ({FMNIST_SUBSET:.0%} of the training set), MLP 784-200-100-10",
    }[task]
    lines = [
        f"\n### {title}, 10 clients, Dirichlet(0.5) label skew, full "
        f"participation, {rounds} rounds × 10 local epochs, cosine lr, seeds {seeds}\n",
        "| method | accuracy | NLL | ECE | posterior-predictive accuracy | PP NLL | PP ECE "
        "| s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in methods or DEEP_TASKS[task][2]:
        t0 = time.time()
        runs = [run_deep(name, s, rounds, out, task, data_dir) for s in seeds]
        curves[name] = runs
        cells = [stat([r[-1].get(k) for r in runs]) for k in (*DEEP_METRICS, *BAYES_METRICS)]
        per_run = (time.time() - t0) / len(seeds)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_run:.0f} |")
        print(f"deep {name}: {per_run:.0f}s per run", flush=True)
    return "\n".join(lines), curves


def plot(curves: dict[str, list[list[dict[str, Any]]]], path: Path) -> None:
    """Mean over seeds of global accuracy, NLL and ECE per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key in zip(axes, DEEP_METRICS, strict=True):
        for name, runs in curves.items():
            rows = runs[0]
            mean = [
                statistics.mean(r[i].get(key) or math.nan for r in runs) for i in range(len(rows))
            ]
            ax.plot(
                [x["round"] for x in rows],
                mean,
                label=name,
                lw=2 if name.startswith("ivon-admm") else 1,
            )
            if name.startswith("ivon-admm"):
                bayes = key.replace("global-", "global-bayes-")
                pp = [
                    statistics.mean(r[i].get(bayes) or math.nan for r in runs)
                    for i in range(len(rows))
                ]
                ax.plot(
                    [x["round"] for x in rows], pp, "--", label=f"{name} (posterior predictive)"
                )
        ax.set_title(f"{key} (mean over seeds)")
        ax.set_xlabel("round")
        if key != "global-accuracy":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Run the selected parts, print the tables, write table.md, curves.json and curves.png."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="deep task rounds")
    parser.add_argument("--quadratic-rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=["quadratic", "deep"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/bayes/results")
    parser.add_argument("--deep-task", choices=list(DEEP_TASKS), default="digits")
    parser.add_argument(
        "--data-dir",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST for --deep-task fmnist (default: the Debian package's directory)",
    )
    parser.add_argument("--methods", nargs="+", help="deep-task rows to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: extra threads only contend on a shared CPU
    sections: list[str] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if "quadratic" in args.parts:
            sections.append(quadratic_part(args.quadratic_rounds, Path(tmp) / "quadratic"))
            print(sections[-1], flush=True)
        if "deep" in args.parts:
            table, curves = deep_part(
                args.rounds,
                args.seeds,
                Path(tmp) / "deep",
                args.deep_task,
                args.data_dir,
                args.methods,
            )
            sections.append(table)
            print(table, flush=True)
            (args.out / "curves.json").write_text(json.dumps(curves))
            plot(curves, args.out / "curves.png")
    text = "\n".join(sections) + f"\n\n(total {time.time() - t0:.0f} s)\n"
    (args.out / "table.md").write_text(text)
    print(f"wrote {args.out / 'table.md'}" + (" and curves.png" if "deep" in args.parts else ""))


if __name__ == "__main__":
    main()
