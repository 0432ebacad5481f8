"""Every preset learns at its own defaults (issue 12): the learning matrix.

Each method of ``methods.registry.METHODS`` runs in process (``server_app.api.run_in_process``)
with nothing set but ``algorithm``, ``task`` and the number of rounds, on

* ``digits`` (the default task) with 2 and 10 clients, every method: on its small CNN, except
  newton-admm and fednl (full-covariance / exact-Hessian by definition), whose ``model``
  preset is the task's convex model (multinomial logistic regression on the 64 pixels); fedpm
  and localnewton use their FOOF presets on the CNN;
* ``breast-cancer`` (logistic regression, convex) with 2 and 10 clients, every method whose
  default personalization is defined for a linear model (FedPer/FedSim/FedAlt/FedRep/FedAPM
  default to a personal output layer, which a one-layer model does not have).

Checked: no divergence (every round's train loss finite and no round rejected), and the final
accuracy at or above a floor: the personalized metric (each client's model on its local test
split) for methods with a personal block or personal model, the global model's otherwise.

Floors: digits 0.85 with 10 clients (the issue's acceptance target) and 0.80 with 2 clients
(its FedAPM 2-client target, applied to every method); breast-cancer 0.90.

Rounds. The acceptance cases, digits with 10 clients, run the default number of rounds (20).
The 2-client digits runs and the breast-cancer runs stop after ``SHORT = 5`` rounds: there every
preset is at its floor by round 5 (2 clients hold half the data each; logistic regression
converges in a few rounds), and the failure the 2-client case guards against (FedAPM at chance
from round 2) shows early. Values: benchmarks/README.md, "Method defaults: the learning matrix".
``DUALFLOWER_MATRIX_ROUNDS=0`` runs every case at the default rounds (the command of that table).
A few cases also run on the real simulation engine: ``tests/test_learning_engine.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from methods.registry import METHODS
from server_app.api import run_in_process

SHORT = int(os.environ.get("DUALFLOWER_MATRIX_ROUNDS", "5"))
"""Rounds of the non-acceptance cases; 0 = the default ``num-server-rounds`` (module docstring)."""

ON_CONVEX = ("newton-admm", "fednl")
"""Methods whose ``model`` preset is the task's convex model (digits offers one)."""
PERSONAL_DEFAULT = ("fedper", "fedsim", "fedalt", "fedrep", "fedapm")
"""Methods whose default personalization is a personal output layer (not on linear models)."""
PERSONALIZED_METRIC = (*PERSONAL_DEFAULT, "ditto")
"""Methods judged by the personalized accuracy (a personal block or a personal model)."""
OPEN: dict[tuple[str, str, int], str] = {}
"""Known misses, xfail (not strict) with their reason until their defaults are fixed."""

FLOORS = {("digits", 2): 0.80, ("digits", 10): 0.85, ("breast-cancer", 2): 0.90}
FLOORS[("breast-cancer", 10)] = 0.90

CASES = [
    (task, name, clients)
    for task, names in (
        ("digits", list(METHODS)),
        ("breast-cancer", [m for m in METHODS if m not in PERSONAL_DEFAULT]),
    )
    for name in names
    for clients in (2, 10)
]


@pytest.mark.parametrize(("task", "algorithm", "clients"), CASES)
def test_preset_learns_at_its_defaults(
    tmp_path: Path, task: str, algorithm: str, clients: int
) -> None:
    overrides = {"algorithm": algorithm, "task": task, "output-dir": str(tmp_path)}
    if SHORT and (task, clients) != ("digits", 10):
        overrides["num-server-rounds"] = SHORT
    result = run_in_process(overrides, clients)
    rows = result.rows
    recorded = json.loads((result.run_dir / "config.json").read_text())
    convex = algorithm in ON_CONVEX or task == "breast-cancer"
    assert recorded["run-config"]["model"] == ("convex" if convex else "deep")
    trained = [row for row in rows if row["round"] >= 1]
    metric = "personal-accuracy" if algorithm in PERSONALIZED_METRIC else "global-accuracy"
    final = trained[-1].get(metric, math.nan)
    floor = FLOORS[(task, clients)]
    diverged = [
        row["round"]
        for row in trained
        if not math.isfinite(row.get("train-loss", math.nan)) or row.get("round-rejected")
    ]
    print(f"MATRIX {task} {algorithm} {clients} {metric} {final:.3f} rounds={len(trained)}")
    ok = not diverged and final >= floor
    if not ok and (task, algorithm, clients) in OPEN:
        pytest.xfail(OPEN[(task, algorithm, clients)])
    assert not diverged, f"{algorithm} on {task} with {clients} clients diverged in {diverged}"
    assert final >= floor, (
        f"{algorithm} on {task} with {clients} clients: final {metric} {final:.3f} < {floor}"
    )
