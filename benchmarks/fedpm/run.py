"""FedPM benchmarks (issue 5): convex suboptimality and a heterogeneous CNN task.

Every run goes through the real ServerApp and ClientApp code on the in-process grid
(``server_app.inprocess``). "FedPM" here is federated *preconditioned mixing* (Ishii et al.,
AAAI-26), not the probabilistic-mask FedPM of Flower Baselines / FL4Health.

1. Convex (L2 logistic regression, ``client-weighting='examples'``, full participation):
   ``synthetic`` (alpha = beta = 1, natural clients) and ``breast-cancer`` (Dirichlet 0.5),
   ``subopt = f(θ_t) − f*`` per round for fedpm (exact Hessian, K = 1), localnewton (K = 1),
   fedavg, fedprox, scaffold; rounds to ``subopt <= 1e-8``; the ratio of successive suboptimalities.
2. CNN: ``digits`` with Dirichlet(0.1), fedpm (FOOF) vs localnewton (FOOF) vs fedavg vs
   scaffold, seeds 0-2: global accuracy (mean ± std) at half and all rounds, and bytes up per
   client per round.

    python -m benchmarks.fedpm.run [--parts convex cnn --rounds 20 --cnn-rounds 5 --cnn-steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from server_app.api import run_in_process
from server_app.config import unused_as_auto, validate_run_config
from server_app.suboptimality import damped_newton, global_objective, initial_theta, optimum
from tasks.federation import federation_spec

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"

CONVEX = {  # method -> overrides (all: client-weighting='examples', full participation)
    "fedpm": {"algorithm": "fedpm", "curvature": "hessian", "newton-steps": 1},
    "localnewton": {"algorithm": "localnewton", "curvature": "hessian", "newton-steps": 1},
    "fedavg": {"algorithm": "fedavg", "lr": 0.5, "local-epochs": 5, "batch-size": 32},
    "fedprox": {
        "algorithm": "fedprox",
        "lr": 0.5,
        "local-epochs": 5,
        "batch-size": 32,
        "proximal-mu": 0.01,
    },
    "scaffold": {"algorithm": "scaffold", "lr": 0.5, "local-epochs": 5, "batch-size": 32},
}
TASKS = {
    "synthetic": {"task": "synthetic", "partitioner": "natural"},
    "breast-cancer": {"task": "breast-cancer", "partitioner": "dirichlet", "dirichlet-alpha": 0.5},
}
CNN = {  # FOOF methods: --cnn-steps minibatch steps; SGD methods: 2 epochs (~12 steps)
    "fedpm-foof": {"algorithm": "fedpm", "curvature": "foof"},
    "localnewton-foof": {"algorithm": "localnewton", "curvature": "foof"},
    "fedavg": {"algorithm": "fedavg", "local-epochs": 2},
    "scaffold": {"algorithm": "scaffold", "local-epochs": 2},
}


@lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    """The run-config defaults of pyproject.toml, read once (a snapshot for the whole run)."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def run(cfg: dict[str, Any], clients: int) -> list[dict[str, Any]]:
    """One in-process run; its metrics.jsonl rows."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_in_process(cfg | {"output-dir": tmp}, clients).rows


def centralized(task: str, overrides: dict[str, Any], rounds: int) -> str:
    """The table row of centralized damped Newton (float64, Armijo) from the same start."""
    cfg = validate_run_config(defaults() | overrides | {"algorithm": "fedpm"})
    spec = federation_spec(cfg, 10)
    f, shapes = global_objective(spec, "examples", 0)
    values = [v for _, v in damped_newton(f, initial_theta(spec, 0, shapes))][: rounds + 1]
    f_star = optimum(spec, "examples", 0)[1]
    sub = [max(v - f_star, 0.0) for v in values] + [0.0] * (rounds + 1 - len(values))
    hit = next((i for i, s in enumerate(sub) if s <= 1e-8), None)
    reached = hit if hit is not None else f"> {rounds}"
    ratios = [b / a for a, b in itertools.pairwise(sub[1:]) if a > 1e-14][-3:]
    return (
        f"| {task} | centralized damped Newton (iterations) | {sub[1]:.2e} | "
        f"{sub[min(5, rounds)]:.2e} | {sub[-1]:.2e} | {reached} | "
        + ", ".join(f"{x:.1e}" for x in ratios)
        + " | - |"
    )


def convex(rounds: int, eta: float, damping: float | None) -> list[str]:
    """Suboptimality table (markdown rows) for the convex tasks."""
    lines = [
        "| task | method | subopt r1 | r5 | final | rounds to 1e-8 | last successive ratios "
        "| MB up per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    newton: dict[str, Any] = {"eta": eta} | ({} if damping is None else {"damping": damping})
    for task, tover in TASKS.items():
        lines.append(centralized(task, tover, rounds))
        print(lines[-1], flush=True)
        for method, over in CONVEX.items():
            cfg = (
                defaults()
                | tover
                | over
                | {
                    "num-server-rounds": rounds,
                    "fraction-evaluate": 0.0,
                    "seed": 0,
                    "client-weighting": "examples",
                    "local-test-fraction": 0.0,
                    "device": "cpu",
                    "run-name": f"{task}-{method}",
                }
                | (newton if over["algorithm"] in ("fedpm", "localnewton") else {})
            )
            rows = run(unused_as_auto(cfg), 10)  # scaffold takes no client-weighting
            sub = [max(r["subopt"], 0.0) for r in rows]
            hit = next((r["round"] for r, s in zip(rows, sub, strict=True) if s <= 1e-8), None)
            ratios = [b / a for a, b in itertools.pairwise(sub[1:]) if a > 1e-14][-3:]
            lines.append(
                f"| {task} | {method} | {sub[1]:.2e} | {sub[min(5, rounds)]:.2e} | {sub[-1]:.2e} "
                f"| {hit if hit is not None else f'> {rounds}'} | "
                + ", ".join(f"{x:.1e}" for x in ratios)
                + f" | {statistics.mean(r['bytes-up'] for r in rows[1:]) / 1e6:.3f} |"
            )
            print(lines[-1], flush=True)
    return lines


def cnn(rounds: int, seeds: list[int], steps: int) -> list[str]:
    """Accuracy / bytes table for the digits CNN with Dirichlet(0.1)."""
    lines = [
        f"| method | accuracy r{rounds // 2} | final accuracy r{rounds} (mean ± std) "
        "| MB up per client per round |",
        "|---|---|---|---|",
    ]
    for method, over in CNN.items():
        accs, mids, mbs = [], [], []
        for seed in seeds:
            cfg = (
                defaults()
                | over
                | {
                    "task": "digits",
                    "partitioner": "dirichlet",
                    "dirichlet-alpha": 0.1,
                    "num-server-rounds": rounds,
                    "fraction-evaluate": 0.0,
                    "seed": seed,
                    "device": "cpu",
                    "eta": 0.1,
                    "damping": 0.1,
                    "newton-steps": steps,
                    "batch-size": 32,
                    "run-name": f"cnn-{method}-{seed}",
                }
            )
            rows = run(unused_as_auto(cfg), 10)  # the FOOF keys only for the FOOF methods
            accs.append(rows[-1]["global-accuracy"])
            mids.append(rows[rounds // 2]["global-accuracy"])
            mbs.append(rows[-1]["bytes-up"] / rows[-1]["clients"] / 2**20)
        sd = statistics.stdev(accs) if len(accs) > 1 else math.nan
        lines.append(
            f"| {method} | {statistics.mean(mids):.3f} | {statistics.mean(accs):.3f} ± {sd:.3f} "
            f"| {mbs[0]:.3f} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    """Parse arguments, run the parts, print and save the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", nargs="+", default=["convex", "cnn"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cnn-rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cnn-steps", type=int, default=20, help="FOOF steps per round")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument(
        "--damping", type=float, default=None, help="local damping (default: the preset)"
    )
    args = parser.parse_args()
    defaults()
    out = []
    if "convex" in args.parts:
        out += [*convex(args.rounds, args.eta, args.damping), ""]
    if "cnn" in args.parts:
        out += cnn(args.cnn_rounds, args.seeds, args.cnn_steps)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tables.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
