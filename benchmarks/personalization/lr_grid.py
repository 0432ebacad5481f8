"""The lr grid behind the presets of the methods that share the ``lr`` key's default.

Every method gets the same grid points, scenarios and seeds (``GRID`` × ``SCENARIOS`` ×
``SEEDS``), run by ``benchmarks.personalization.run`` as ``<method>-lr<value>`` entries; this
module reads the saved runs and prints, per method and lr, the mean final personalized accuracy
per scenario, the runs the ServerApp stopped or whose accuracy fell to chance, and the
selection, stability first: among the grid points at which no run diverged or was stopped, the
one with the highest mean final accuracy over all runs (ties to the larger lr); only if every
point has a bad run, the highest mean over all of them.

    python -m benchmarks.personalization.run --rounds 20 --scenarios digits-dir0.1 mfeat \\
        --algorithms fedavg-lr0.1 fedavg-lr0.05 ...      # every method × grid point
    python -m benchmarks.personalization.lr_grid          # the table and the choice
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("fedavg", "fedprox", "ditto", "fedper", "fedalt", "fedrep", "fedadmm", "fedapm")
GRID = (0.05, 0.1, 0.2)
SCENARIOS = ("digits-dir0.1", "mfeat")
SEEDS = (0, 1, 2)
CHANCE = 0.2
"""A final personalized accuracy below this counts as diverged (10 classes: chance is 0.1)."""


def final_accuracy(rows: list[dict[str, Any]]) -> float:
    """The last round's personalized accuracy (0 if it has none: a stopped run)."""
    return float(rows[-1].get("personal-accuracy") or 0.0)


def cell(runs_dir: Path, method: str, lr: float, scenario: str) -> list[list[dict[str, Any]]]:
    """The saved runs of ``method`` at ``lr`` on ``scenario``, one per seed that finished."""
    paths = [runs_dir / scenario / f"{method}-lr{lr:g}-{seed}.json" for seed in SEEDS]
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


def main() -> None:
    """Print the grid table and the selected lr per method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", type=Path, default=ROOT / "benchmarks/personalization/results/runs"
    )
    args = parser.parse_args()
    head = " | ".join(f"{s} final (mean of seeds)" for s in SCENARIOS)
    print(f"| method | lr | {head} | diverged or stopped runs | mean over all runs |")
    print("|---" * (4 + len(SCENARIOS)) + "|")
    chosen: dict[str, float] = {}
    for method in METHODS:
        scores: dict[float, float] = {}
        stable: set[float] = set()
        for lr in GRID:
            per_scenario = [cell(args.runs, method, lr, s) for s in SCENARIOS]
            finals = [[final_accuracy(r) for r in runs] for runs in per_scenario]
            flat = [a for f in finals for a in f]
            if len(flat) < len(SCENARIOS) * len(SEEDS):
                print(f"| {method} | {lr:g} | missing runs ({len(flat)}) |")
                continue
            bad = sum(
                1
                for runs in per_scenario
                for r in runs
                if "failed" in r[-1] or final_accuracy(r) < CHANCE
            )
            scores[lr] = statistics.fmean(flat)
            if bad == 0:
                stable.add(lr)
            cols = " | ".join(
                f"{statistics.fmean(f):.3f} ({', '.join(f'{a:.2f}' for a in f)})" for f in finals
            )
            print(f"| {method} | {lr:g} | {cols} | {bad} | {scores[lr]:.3f} |")
        if scores:
            pool = stable or set(scores)
            chosen[method] = max(pool, key=lambda lr: (round(scores[lr], 3), lr))
    print()
    print("chosen: " + ", ".join(f"{m} lr={lr:g}" for m, lr in chosen.items()))


if __name__ == "__main__":
    main()
