"""The learning matrix's engine cases (issue 12): presets at their own defaults learn on the
real simulation engine too (``dualflower-run``: private SuperLink, Ray), not only in process.

* ``fedapm`` with 2 clients (the preset that collapsed to chance in round 2, in process and
  deployed, before its stage safeguard): personalized accuracy ≥ 0.80 after 5 rounds;
* ``fednl`` with 10 clients on digits' convex model (its ``model`` preset): global accuracy
  ≥ 0.85 after 5 rounds, and ``config.json`` records the model and its origin.

Nothing else is set but the rounds and the output directory. Floors as in
``tests/test_learning_matrix.py``, which runs every preset (IVON-ADMM at the default rounds
included) in process; two engine runs keep CI within its time budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_engine import launch

pytestmark = pytest.mark.engine

CASES = [
    ("fedapm", 2, 5, "personal-accuracy", 0.80),
    ("fednl", 10, 5, "global-accuracy", 0.85),
]
"""(algorithm, clients, rounds (0 = the default), metric, floor)."""


@pytest.mark.parametrize(("algorithm", "clients", "rounds", "metric", "floor"), CASES)
def test_preset_learns_on_the_simulation_engine(
    tmp_path: Path, algorithm: str, clients: int, rounds: int, metric: str, floor: float
) -> None:
    out = tmp_path / "outputs"
    cfg = f"algorithm='{algorithm}' output-dir='{out}' run-name='r'"
    if rounds:
        cfg += f" num-server-rounds={rounds}"
    result = launch(tmp_path, cfg, nodes=clients)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "r" / "metrics.jsonl").read_text().splitlines()]
    recorded = json.loads((out / "r" / "config.json").read_text())
    assert recorded["num-clients"] == clients
    assert rows[-1]["round"] == (rounds or recorded["run-config"]["num-server-rounds"])
    assert all(r.get("dropped-replies", 0) == 0 for r in rows)
    assert rows[-1][metric] >= floor, f"{algorithm}: final {metric} {rows[-1][metric]:.3f}"
    if algorithm == "fednl":
        assert recorded["run-config"]["model"] == "convex"
        assert recorded["origins"]["model"] == "method"
