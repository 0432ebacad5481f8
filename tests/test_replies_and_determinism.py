"""Bad replies are dropped with a reason and never reach server state; runs are reproducible."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType

from protocol.records import SHARED, Z
from tests.conftest import read_metrics, run_local

Corrupt = Callable[[ArrayRecord], None]


def _nan(rec: ArrayRecord) -> None:
    key = next(iter(rec.keys()))
    bad = rec[key].numpy().copy()
    bad.flat[0] = np.nan
    rec[key] = Array(bad)


def _shape(rec: ArrayRecord) -> None:
    key = next(iter(rec.keys()))
    rec[key] = Array(np.zeros((3, 3), dtype=np.float32))


def _missing(rec: ArrayRecord) -> None:
    del rec[next(iter(rec.keys()))]


def tamper_first_node(record: str, corrupt: Corrupt) -> Callable[[Message], Message]:
    """Corrupt the training replies of the node that holds partition 0."""

    def tamper(reply: Message) -> Message:
        if (
            reply.metadata.message_type == MessageType.TRAIN
            and int(reply.content["metrics"]["partition-id"]) == 0
        ):
            corrupt(reply.content[record])
        return reply

    return tamper


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [(_nan, "non-finite"), (_shape, "does not hold exactly|shape"), (_missing, "exactly")],
)
@pytest.mark.parametrize(("algorithm", "record"), [("fedavg", SHARED), ("fedadmm", Z)])
def test_bad_reply_dropped_with_reason(
    config: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    corrupt: Corrupt,
    reason: str,
    algorithm: str,
    record: str,
) -> None:
    config.update({"algorithm": algorithm, "fraction-evaluate": 0.0, "local-epochs": 1})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_dir, _ = run_local(config, 4, tamper=tamper_first_node(record, corrupt))
    rows = read_metrics(run_dir)
    assert [r["dropped-replies"] for r in rows[1:]] == [1.0, 1.0]
    assert [r["clients"] for r in rows[1:]] == [3.0, 3.0]
    assert all(np.isfinite(r["global-accuracy"]) for r in rows)
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "dropped train reply" in logged
    import re

    assert re.search(reason, logged)


def test_dropped_admm_reply_keeps_stale_z(config: dict[str, Any]) -> None:
    """The server's z cache for the bad client stays at z^0 = u^0 (never the corrupt value)."""
    from server_app import app as server_module

    captured: dict[str, Any] = {}
    original = server_module.METHODS["fedadmm"].rule.aggregate

    def spy(self: Any, server_round: int, current: Any, replies: Any) -> Any:
        out = original(self, server_round, current, replies)
        captured["z0"] = {k: v.copy() for k, v in self.z[0].items()}
        return out

    config.update({"algorithm": "fedadmm", "fraction-evaluate": 0.0})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server_module.METHODS["fedadmm"].rule, "aggregate", spy)
        _, grid = run_local(config, 3, tamper=tamper_first_node(Z, _nan))
    u0 = next(m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN)
    for key, arr in u0.content[SHARED].items():
        np.testing.assert_array_equal(captured["z0"][key], arr.numpy())


def _without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall-time"} for r in rows]


@pytest.mark.parametrize("algorithm", ["fedavg", "fedadmm", "fedprox"])
def test_same_config_same_metrics(tmp_path: Path, config: dict[str, Any], algorithm: str) -> None:
    config.update(
        {
            "algorithm": algorithm,
            "fraction-train": 0.5,
            "partitioner": "dirichlet",
            "local-epochs": 1,
        }
    )
    a, _ = run_local(config | {"run-name": "a"}, 6)
    b, _ = run_local(config | {"run-name": "b"}, 6)
    c, _ = run_local(config | {"run-name": "c", "seed": 1}, 6)
    assert _without_time(read_metrics(a)) == _without_time(read_metrics(b))
    assert _without_time(read_metrics(a)) != _without_time(read_metrics(c))


def test_results_files(config: dict[str, Any]) -> None:
    import json

    run_dir, _ = run_local(config | {"algorithm": "fedadmm"}, 3)
    rows = read_metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    expected = {
        "wall-time",
        "bytes-up",
        "bytes-down",
        "train-loss",
        "global-accuracy",
        "global-macro-f1",
        "global-auc",
        "personal-accuracy",
        "personal-macro-f1",
        "personal-auc",
        "dual-norm-mean",
        "dual-norm-max",
        "drift-norm-mean",
    }
    assert expected <= set(rows[1])
    assert rows[1]["bytes-up"] > 0 and rows[1]["bytes-down"] >= rows[1]["bytes-up"]  # fused: u once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and "best-global-accuracy" in summary
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["run-config"]["algorithm"] == "fedadmm" and resolved["num-clients"] == 3
    assert run_dir.is_absolute()
