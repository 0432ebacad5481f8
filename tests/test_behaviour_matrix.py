"""Every algorithm's metrics.jsonl on a fixed matrix of in-process runs equals the recorded one.

Guards refactors (issue 10: "behaviour unchanged"): the golden files were written by
``python -m tests.behaviour_matrix --write`` before the Method redesign.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.behaviour_matrix import GOLDEN, MATRIX, run


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_metrics_equal_golden(tmp_path: Path, name: str) -> None:
    expected = [json.loads(line) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    assert run(name, tmp_path) == expected
