"""The lr grid behind the presets of the methods that share the ``lr`` key's default.

Every method gets the same grid points, scenarios and seeds (``GRID`` × ``SCENARIOS`` ×
``SEEDS``), run by ``benchmarks.personalization.run`` as ``<method>-lr<value>`` entries; this
module reads the saved runs and prints, per method and lr, the mean final personalized accuracy
per scenario, the runs that diverged (``diverged``), and the selection, stability first: among
the grid points at which no run diverged, the one with the highest mean final accuracy over the
grid's runs, compared at three decimals, ties to the smaller lr (the wider margin to the
divergent end of the grid); only if every point has a bad run, the highest mean over all of
them. Runs of the ``CHECKS`` scenarios (Fashion-MNIST, too slow for the whole grid here)
count for stability only, where they exist: a point fails its check if one of them diverged
or if their mean final accuracy is more than ``CHECK_MARGIN`` below the method's best checked
point (a model that collapsed early and stays stuck, without a loss blow-up).

    python -m benchmarks.personalization.run --rounds 20 --scenarios digits-dir0.1 mfeat \\
        --algorithms fedavg-lr0.4 fedavg-lr0.2 fedavg-lr0.1 fedavg-lr0.05 ...   # method × point
    python -m benchmarks.personalization.lr_grid          # the table and the choice
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("fedavg", "fedprox", "ditto", "fedper", "fedalt", "fedrep", "fedadmm", "fedapm")
GRID = (0.05, 0.1, 0.2, 0.4)
SCENARIOS = ("digits-dir0.1", "mfeat")
CHECKS = ("fmnist-dir0.1",)
SEEDS = (0, 1, 2)
CHECK_MARGIN = 0.05
"""How far (accuracy) a point's check mean may fall below the method's best checked point."""
CHANCE = 0.2
"""A final personalized accuracy below this counts as diverged (10 classes: chance is 0.1)."""


def final_accuracy(rows: list[dict[str, Any]]) -> float:
    """The last round's personalized accuracy (0 if it has none: a stopped run)."""
    return float(rows[-1].get("personal-accuracy") or 0.0)


BLOW_UP = 10.0
"""A round's mean train loss above this counts as diverged (10-class cross-entropy at chance
is ln 10 = 2.3; every stable run of the grid stays below 3)."""


def diverged(rows: list[dict[str, Any]]) -> bool:
    """Stopped by the ServerApp, ended near chance, or a train loss that blew up."""
    losses = [float(r["train-loss"]) for r in rows if "train-loss" in r]
    return (
        "failed" in rows[-1]
        or final_accuracy(rows) < CHANCE
        or any(not math.isfinite(x) or x > BLOW_UP for x in losses)
    )


def cell(runs_dir: Path, method: str, lr: float, scenario: str) -> list[list[dict[str, Any]]]:
    """The saved runs of ``method`` at ``lr`` on ``scenario``, one per seed that finished."""
    paths = [runs_dir / scenario / f"{method}-lr{lr:g}-{seed}.json" for seed in SEEDS]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def _mean(runs: list[list[dict[str, Any]]]) -> float:
    """Mean final accuracy of ``runs``."""
    return statistics.fmean(final_accuracy(r) for r in runs)


def _summary(finals: list[float]) -> str:
    """``mean (per seed, ...)`` of final accuracies."""
    return f"{statistics.fmean(finals):.3f} ({', '.join(f'{a:.2f}' for a in finals)})"


def main() -> None:
    """Print the grid table and the selected lr per method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks/personalization/results/runs"
    )
    args = parser.parse_args()
    head = " | ".join(f"{s} final (mean of seeds)" for s in SCENARIOS)
    checks = " | ".join(f"{s} final (check)" for s in CHECKS)
    print(
        f"| method | lr | {head} | {checks} | diverged runs | fails the check "
        "| mean over the grid's runs |"
    )
    print("|---" * (6 + len(SCENARIOS)) + "|")
    chosen: dict[str, float] = {}
    for method in METHODS:
        cells = {lr: [cell(args.runs, method, lr, s) for s in SCENARIOS] for lr in GRID}
        checks_of = {lr: [cell(args.runs, method, lr, s) for s in CHECKS] for lr in GRID}
        best = [
            max(
                (_mean(checks_of[lr][i]) for lr in GRID if len(checks_of[lr][i]) == len(SEEDS)),
                default=math.nan,
            )
            for i in range(len(CHECKS))
        ]
        scores: dict[float, float] = {}
        stable: set[float] = set()
        for lr in GRID:
            per_scenario, checked = cells[lr], checks_of[lr]
            flat = [final_accuracy(r) for runs in per_scenario for r in runs]
            if len(flat) < len(SCENARIOS) * len(SEEDS):
                print(f"| {method} | {lr:g} | missing runs ({len(flat)}) |")
                continue
            bad = sum(1 for runs in per_scenario + checked for r in runs if diverged(r))
            short = any(
                runs and _mean(runs) < top - CHECK_MARGIN
                for runs, top in zip(checked, best, strict=True)
            )
            scores[lr] = statistics.fmean(flat)
            if bad == 0 and not short:
                stable.add(lr)
            cols = " | ".join(_summary([final_accuracy(r) for r in runs]) for runs in per_scenario)
            extra = " | ".join(
                _summary([final_accuracy(r) for r in runs]) if runs else "not run"
                for runs in checked
            )
            print(
                f"| {method} | {lr:g} | {cols} | {extra} | {bad} | {'yes' if short else 'no'} "
                f"| {scores[lr]:.3f} |"
            )
        if scores:
            pool = stable or set(scores)
            chosen[method] = max(pool, key=lambda lr: (round(scores[lr], 3), -lr))
    print()
    print("chosen: " + ", ".join(f"{m} lr={lr:g}" for m, lr in chosen.items()))


if __name__ == "__main__":
    main()
