"""Issue 12 (partial): methods that learn at their own defaults.

In-process federations, small: ``ivon-admm`` with nothing else set on digits (its presets),
``fedapm`` with 2 clients (the stage safeguard of ``client_app.solvers.admm.run_stage``) and
``newton-admm`` on breast-cancer (its ρ preset: every training reply finite from round 2 on).
"""

from __future__ import annotations

import math
from pathlib import Path

from server_app.api import run_in_process


def test_ivon_admm_learns_on_digits_at_its_defaults(tmp_path: Path) -> None:
    result = run_in_process(
        {"algorithm": "ivon-admm", "num-server-rounds": 3, "output-dir": str(tmp_path)}, 3
    )
    last = result.rows[-1]
    assert last["global-accuracy"] >= 0.85, last


def test_fedapm_learns_with_two_clients(tmp_path: Path) -> None:
    result = run_in_process(
        {"algorithm": "fedapm", "num-server-rounds": 4, "output-dir": str(tmp_path)}, 2
    )
    assert all(math.isfinite(row.get("train-loss", 0.0)) for row in result.rows)
    assert result.rows[-1]["personal-accuracy"] >= 0.85, result.rows[-1]


def test_newton_admm_replies_from_round_two_on(tmp_path: Path) -> None:
    result = run_in_process(
        {
            "algorithm": "newton-admm",
            "task": "breast-cancer",
            "num-server-rounds": 3,
            "output-dir": str(tmp_path),
        },
        3,
    )
    trained = [row for row in result.rows if row["round"] >= 1]
    assert [row["dropped-replies"] for row in trained] == [0.0, 0.0, 0.0]
    losses = [row["train-loss"] for row in trained]
    assert all(math.isfinite(x) and x < math.log(2) for x in losses[1:]), losses
    assert trained[-1]["global-accuracy"] >= 0.95, trained[-1]
