"""Reply fuzzing across the rules (issue 11's acceptance): one malformed training reply of
partition 0 per round, a different defect each round, for FedAvg, FedADMM, FedAPM, Bayesian
ADMM, IVON-ADMM, FedPM (exact Hessian and diagonal) and SCAFFOLD. Every run completes, every
bad reply is dropped with a reason naming node, partition and what is wrong, and the honest
clients' metrics are bit-identical to a run in which partition 0's replies were simply lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord

from protocol.records import CURVATURE, METRICS
from server_app.api import run_in_process

Edit = Callable[[Message], None]


def _record(reply: Message) -> str:
    """The reply's first ArrayRecord (its model: shared block, ``z_i`` or posterior mean)."""
    return next(iter(reply.content.array_records))


def _first(reply: Message) -> tuple[str, str, Array]:
    name = _record(reply)
    key = next(iter(reply.content.array_records[name].keys()))
    return name, key, reply.content.array_records[name][key]


def _set(reply: Message, values: np.ndarray) -> None:
    name, key, _ = _first(reply)
    reply.content.array_records[name][key] = Array(values)


def nan(reply: Message) -> None:
    values = _first(reply)[2].numpy().copy()
    values.flat[0] = np.nan
    _set(reply, values)


def inf(reply: Message) -> None:
    values = _first(reply)[2].numpy().copy()
    values.flat[-1] = -np.inf
    _set(reply, values)


def wrong_shape(reply: Message) -> None:
    _set(reply, _first(reply)[2].numpy().reshape(-1)[:-1].copy())


def float64(reply: Message) -> None:
    _set(reply, _first(reply)[2].numpy().astype(np.float64))


def header_lies(reply: Message) -> None:
    """The header of the real array over a one-value payload (class 1)."""
    name, key, arr = _first(reply)
    small = Array(np.zeros(1, arr.dtype))
    small.shape, small.dtype = arr.shape, arr.dtype
    reply.content.array_records[name][key] = small


def huge(reply: Message) -> None:
    """A 64 MB payload under the real array's header."""
    name, key, arr = _first(reply)
    big = Array(np.zeros(16 * 2**20, np.float32))
    big.shape, big.dtype = arr.shape, arr.dtype
    reply.content.array_records[name][key] = big


def garbage(reply: Message) -> None:
    _first(reply)[2].data = b"\x93NUMPY\x01\x00garbage"


def missing_array(reply: Message) -> None:
    name, key, _ = _first(reply)
    del reply.content.array_records[name][key]


def extra_array(reply: Message) -> None:
    name = _record(reply)
    reply.content.array_records[name]["extra"] = Array(np.zeros(3, np.float32))


def missing_record(reply: Message) -> None:
    del reply.content[_record(reply)]


def extra_record(reply: Message) -> None:
    reply.content["smuggled"] = ArrayRecord({"w": Array(np.zeros(2, np.float32))})


def reordered(reply: Message) -> None:
    name = _record(reply)
    record = reply.content.array_records[name]
    reply.content[name] = ArrayRecord({k: record[k] for k in reversed(list(record.keys()))})


def _metric(key: str, value: Any) -> Edit:
    def edit(reply: Message) -> None:
        reply.content[METRICS] = MetricRecord({**dict(reply.content[METRICS]), key: value})

    return edit


def negated_curvature(reply: Message) -> None:
    """FedPM curvature that is not positive semi-definite (class 8)."""
    record = reply.content.array_records[CURVATURE]
    for key in list(record.keys()):
        record[key] = Array(-record[key].numpy() - 1.0)


GENERIC: dict[str, Edit] = {
    "nan": nan,
    "inf": inf,
    "wrong-shape": wrong_shape,
    "float64": float64,
    "header-lies": header_lies,
    "huge": huge,
    "garbage": garbage,
    "missing-array": missing_array,
    "extra-array": extra_array,
    "missing-record": missing_record,
    "extra-record": extra_record,
    "other-partition": _metric("partition-id", 1),
    "partition-nan": _metric("partition-id", math.nan),
    "num-examples-1e300": _metric("num-examples", 1e300),
    "train-loss-inf": _metric("train-loss", math.inf),
}
RULES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "fedavg": ({"algorithm": "fedavg"}, []),
    "fedadmm": ({"algorithm": "fedadmm"}, []),
    "fedapm": ({"algorithm": "fedapm"}, []),
    "bayes-admm": ({"algorithm": "bayes-admm"}, []),
    "ivon-admm": ({"algorithm": "ivon-admm", "eval-samples": 2}, []),
    "fedpm-hessian": (
        {"algorithm": "fedpm", "curvature": "hessian", "task": "breast-cancer"},
        ["negated-curvature"],
    ),
    "fedpm-diagonal": ({"algorithm": "fedpm", "curvature": "diagonal"}, ["negated-curvature"]),
    "scaffold": ({"algorithm": "scaffold"}, ["reordered"]),
}
SPECIFIC: dict[str, Edit] = {"negated-curvature": negated_curvature, "reordered": reordered}


def per_round(edits: list[Edit]) -> Callable[[Message], Message]:
    """Apply ``edits[r - 1]`` to partition 0's training reply of round ``r``."""

    def tamper(reply: Message) -> Message:
        if reply.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        if reply.content.metric_records[METRICS].get("partition-id") == 0:
            edits[int(reply.metadata.group_id) - 1](reply)
        return reply

    return tamper


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = {"wall-time", "bytes-up", "bytes-up-per-client"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_malformed_reply_is_dropped_and_the_rest_is_bit_identical(
    tmp_path: Path, rule: str, caplog: pytest.LogCaptureFixture
) -> None:
    overrides, specific = RULES[rule]
    names = [*GENERIC, *specific]
    edits = [GENERIC.get(n) or SPECIFIC[n] for n in names]
    short = {} if overrides["algorithm"] == "fedpm" else {"local-epochs": 1}
    config = {**overrides, **short, "num-server-rounds": len(edits), "device": "cpu"}
    fuzzed = run_in_process(
        config | {"output-dir": str(tmp_path / "fuzzed")}, 3, tamper=per_round(edits)
    )
    lost = run_in_process(
        config | {"output-dir": str(tmp_path / "lost")},
        3,
        tamper=per_round([missing_record] * len(edits)),
    )
    train_rows = [r for r in fuzzed.rows if r["round"] >= 1]
    assert [r["dropped-replies"] for r in train_rows] == [1.0] * len(edits), names
    drops = [line for line in caplog.text.splitlines() if "dropped train reply" in line]
    assert len(drops) == 2 * len(edits)  # each bad reply once, in each of the two runs
    assert all("(partition 0)" in line for line in drops)
    assert comparable(fuzzed.rows) == comparable(lost.rows)
