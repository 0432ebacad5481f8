"""The three Bayesian ADMM presets end to end on the real Flower simulation engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import read_metrics
from tests.test_engine import launch, leftover_processes

pytestmark = pytest.mark.engine

RUNS = {  # small, stable local work on the convex breast-cancer task (newton-admm: d = 62)
    "bayes-admm": "lr=0.1",
    "newton-admm": "lr=0.5 rho=0.5 gamma=0.5 mc-samples=0",
    "ivon-admm": "lr=0.001 mc-samples=1",
}


def test_bayes_admm_family_runs_on_the_simulation_engine(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    for algorithm, extra in RUNS.items():
        cfg = (
            f"algorithm='{algorithm}' task='breast-cancer' num-server-rounds=2 local-epochs=2 "
            f"fraction-evaluate=0.0 eval-samples=4 {extra} output-dir='{out}' "
            f"run-name='{algorithm}'"
        )
        result = launch(tmp_path, cfg, nodes=3)
        assert result.returncode == 0, (algorithm, result.stderr[-3000:])
        assert leftover_processes(result) == []
        rows = read_metrics(out / algorithm)
        assert [r["round"] for r in rows] == [0, 1, 2]
        last = rows[-1]
        assert last["clients"] == 3 and last["dropped-replies"] == 0, algorithm
        assert last["precision-floored"] == 0, algorithm
        for key in ("global-accuracy", "global-nll", "global-ece", "global-bayes-accuracy"):
            assert math.isfinite(last[key]), (algorithm, key)
        assert last["global-accuracy"] > 0.8, (algorithm, last["global-accuracy"])
