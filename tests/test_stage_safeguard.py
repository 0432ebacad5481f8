"""The divergence safeguard of FedAlt's and FedRep's stages (``client_app.solvers.admm.run_stage``
without a quadratic term), on float64 least squares with a personal block (``joint-quadratic``)
where a step ``lr > 2/L_i`` makes plain gradient descent blow up: the safeguarded stage halves the step until the stage objective no
longer more than doubles, so the run converges where the unguarded one diverges.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import client_app.solvers.alternating as alternating
from client_app.solvers.base import SolverInput, local_sgd
from tasks import registry
from tests.conftest import read_metrics, run_local
from tests.lsq_task import JointQuadraticTask, exact_config


@pytest.fixture(autouse=True)
def _register(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.TASKS, "joint-quadratic", JointQuadraticTask)


def _losses(tmp_path: Path, name: str) -> list[float]:
    cfg = exact_config(tmp_path, "fedalt") | {
        "task": "joint-quadratic",
        "personalization": "split-input",
        "lr": 1.0,  # > 2/L_i on these clients (feature scales up to 2)
        "num-server-rounds": 4,
        "run-name": name,
    }
    run_dir, _ = run_local(cfg, 3)
    return [row["train-loss"] for row in read_metrics(run_dir) if "train-loss" in row]


def test_unguarded_stage_diverges_and_the_safeguard_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    guarded = _losses(tmp_path, "guarded")
    assert all(math.isfinite(x) for x in guarded) and guarded[-1] < guarded[0], guarded

    def plain(inp: SolverInput, names: list[str], epochs: int, term: None) -> float:
        return local_sgd(inp, names, epochs)

    monkeypatch.setattr(alternating, "run_stage", plain)
    unguarded = _losses(tmp_path, "unguarded")
    assert unguarded[-1] > 5 * unguarded[0] and unguarded[-1] > 10 * guarded[-1], (
        unguarded,
        guarded,
    )
