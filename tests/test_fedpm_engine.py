"""FedPM end to end on the real Flower simulation engine, for every curvature transport."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tasks.registry import get_task
from tests.conftest import read_metrics
from tests.test_engine import launch, leftover_processes

pytestmark = pytest.mark.engine

RUNS = {  # exact Hessians on the convex task (d = 62); FOOF / diagonal factors on the digits CNN
    "hessian": "task='breast-cancer' eta=1.0 damping=0.001",
    "foof": "task='digits' eta=0.1 damping=0.1 newton-steps=20 batch-size=32",
    "diagonal": "task='digits' eta=0.1 damping=0.1 newton-steps=20 batch-size=32",
}


@pytest.mark.parametrize("kind", list(RUNS))
def test_fedpm_runs_on_the_simulation_engine(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "outputs"
    extra = RUNS[kind]
    cfg = (
        f"algorithm='fedpm' curvature='{kind}' num-server-rounds=2 fraction-evaluate=0.0 "
        f"{extra} output-dir='{out}' run-name='{kind}'"
    )
    result = launch(tmp_path, cfg, nodes=3)
    assert result.returncode == 0, (kind, result.stderr[-3000:])
    assert leftover_processes(result) == []
    rows = read_metrics(out / kind)
    assert [r["round"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert last["clients"] == 3 and last["dropped-replies"] == 0, kind
    assert last["bytes-up-per-client"] > 0, kind
    assert math.isfinite(last["global-accuracy"]), kind
    if kind == "hessian":
        assert 0 <= last["subopt"] < rows[0]["subopt"], [r["subopt"] for r in rows]
        assert last["global-accuracy"] > 0.9, last["global-accuracy"]
    else:
        assert "subopt" not in last  # not a convex task
        assert last["global-accuracy"] > rows[0]["global-accuracy"], kind
    if kind == "diagonal":  # one curvature value per parameter: twice the model up
        model = get_task("digits").build_model("none")
        assert last["bytes-up-per-client"] == 2 * 4 * sum(p.numel() for p in model.parameters())
