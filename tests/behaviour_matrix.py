"""The fixed matrix of in-process runs whose metrics.jsonl must not change under refactors.

``python -m tests.behaviour_matrix --write`` records ``tests/golden/<name>.jsonl`` (every row
without its wall time); ``tests/test_behaviour_matrix.py`` reruns the matrix and compares
exactly. Rewrite the golden files only for a deliberate change of results, and say so.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent / "golden"
NODES = 3

MATRIX: dict[str, dict[str, Any]] = {
    "fedavg": {"algorithm": "fedavg"},
    "fedprox": {"algorithm": "fedprox"},
    "fedper": {"algorithm": "fedper"},
    "fedsim": {"algorithm": "fedsim"},
    "fedalt": {"algorithm": "fedalt"},
    "fedrep": {"algorithm": "fedrep", "personal-epochs": 2, "shared-epochs": 1},
    "fedadmm": {"algorithm": "fedadmm"},
    "fedapm": {"algorithm": "fedapm", "fraction-train": 0.7},
    "fedapm-local-xi": {"algorithm": "fedapm", "warm-start": "local", "xi0": 0.5},
    "bayes-admm": {"algorithm": "bayes-admm"},
    "newton-admm": {"algorithm": "newton-admm", "task": "breast-cancer"},
    "ivon-admm": {"algorithm": "ivon-admm", "eval-samples": 2},
    "ivon-admm-tuned": {
        "algorithm": "ivon-admm",
        "eval-samples": 2,
        "lr": 1e-3,
        "tau": 1e-3,
        "rho": 0.2,
        "gamma": 1e-3,
        "hess-init": 1e-3,
        "lr-schedule": "cosine",
    },
    "newton-admm-synthetic": {
        "algorithm": "newton-admm",
        "task": "synthetic",
        "mc-samples": 0,
        "rho": 0.5,
        "lr": 1.0,
    },
    "fedpm-hessian": {"algorithm": "fedpm", "task": "breast-cancer"},
    "fedpm-foof": {"algorithm": "fedpm", "curvature": "foof", "newton-steps": 3},
    "fedpm-foof-damped": {
        "algorithm": "fedpm",
        "curvature": "foof",
        "newton-steps": 3,
        "eta": 0.1,
        "damping": 0.1,
        "client-weighting": "examples",
    },
    "fedpm-diagonal": {"algorithm": "fedpm", "curvature": "diagonal", "newton-steps": 2},
    "localnewton": {"algorithm": "localnewton", "task": "breast-cancer", "newton-steps": 2},
    "fednl": {"algorithm": "fednl", "task": "breast-cancer"},
    "scaffold": {"algorithm": "scaffold", "fraction-train": 0.7},
    "ditto": {"algorithm": "ditto", "fraction-train": 0.7, "personal-epochs": 2},
    "feddyn": {"algorithm": "feddyn", "fraction-train": 0.7, "alpha": 0.1},
}
"""Run name -> overrides of the pyproject defaults (3 nodes, 2 rounds, seed 0)."""


def run(name: str, out: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` of matrix entry ``name`` (wall time removed)."""
    from tests.conftest import default_config, read_metrics, run_local

    cfg = default_config()
    cfg.update({"output-dir": str(out), "num-server-rounds": 2, "run-name": name, "device": "cpu"})
    cfg.update(MATRIX[name])
    run_dir, _ = run_local(cfg, NODES)
    return [{k: v for k, v in row.items() if k != "wall-time"} for row in read_metrics(run_dir)]


def main(argv: list[str]) -> None:
    """Write (``--write``) or print every golden file."""
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in MATRIX:
            rows = run(name, Path(tmp))
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            if "--write" in argv:
                (GOLDEN / f"{name}.jsonl").write_text(text)
            print(name, rows[-1])


if __name__ == "__main__":
    main(sys.argv[1:])
