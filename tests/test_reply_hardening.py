"""No reply can crash the server or silently change a result (issue 11, items 1, 2, 8, 9, 10):
decoded payloads are checked, every malformed field drops the reply with a reason, FedPM
curvature must be PSD, a non-finite aggregate is rejected, and a run with no usable round fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, Message, MessageType, MetricRecord

from protocol.records import CURVATURE, METRICS, SHARED
from protocol.symmetric import pack_symmetric, unpack_symmetric
from server_app.api import run_in_process
from strategies.base import RunFailedError

Edit = Callable[[Message], None]
BASE = {"num-server-rounds": 2, "fraction-evaluate": 1.0, "device": "cpu"}


def on_partition(kind: str, edit: Edit, pid: int = 0) -> Callable[[Message], Message]:
    """Apply ``edit`` to the ``kind`` replies of the node holding partition ``pid``."""

    def tamper(reply: Message) -> Message:
        if reply.metadata.message_type == kind and not reply.has_error():
            metrics = reply.content.metric_records.get(METRICS)
            if metrics is not None and metrics.get("partition-id") == pid:
                edit(reply)
        return reply

    return tamper


def first_array(reply: Message, record: str = SHARED) -> tuple[str, Array]:
    key = next(iter(reply.content[record].keys()))
    return key, reply.content[record][key]


def _one_element_payload(reply: Message) -> None:
    key, arr = first_array(reply)
    small = Array(np.zeros(1, np.float32))
    small.shape, small.dtype = arr.shape, arr.dtype  # header of the real array, 1-value payload
    reply.content[SHARED][key] = small


def _float64_payload(reply: Message) -> None:
    key, arr = first_array(reply)
    wide = Array(arr.numpy().astype(np.float64))
    wide.dtype = arr.dtype
    reply.content[SHARED][key] = wide


def _bigger_payload(reply: Message) -> None:
    key, arr = first_array(reply)
    big = Array(np.zeros(10 * int(np.prod(arr.shape)) + 10, np.float32))
    big.shape, big.dtype = arr.shape, arr.dtype
    reply.content[SHARED][key] = big


def _garbage(reply: Message) -> None:
    _, arr = first_array(reply)
    arr.data = b"\x93NUMPY garbage"


def _empty(reply: Message) -> None:
    _, arr = first_array(reply)
    arr.data = b""


def _stype(reply: Message) -> None:
    _, arr = first_array(reply)
    arr.stype = "pickle"


def _metric(key: str, value: Any) -> Edit:
    def edit(reply: Message) -> None:
        values = dict(reply.content[METRICS])
        values[key] = value
        reply.content[METRICS] = MetricRecord(values)

    return edit


def _no_partition(reply: Message) -> None:
    values = dict(reply.content[METRICS])
    del values["partition-id"]
    reply.content[METRICS] = MetricRecord(values)


TRAIN_EDITS = {
    "one-element-payload": _one_element_payload,
    "float64-payload": _float64_payload,
    "bigger-payload": _bigger_payload,
    "garbage-data": _garbage,
    "empty-data": _empty,
    "bogus-stype": _stype,
    "partition-inf": _metric("partition-id", math.inf),
    "partition-nan": _metric("partition-id", math.nan),
    "partition-half": _metric("partition-id", 0.5),
    "partition-list": _metric("partition-id", [0, 1]),
    "num-examples-1e6": _metric("num-examples", 1_000_000),
    "num-examples-1e300": _metric("num-examples", 1e300),
    "num-examples-zero": _metric("num-examples", 0),
}
EVAL_EDITS = {
    "no-partition-id": _no_partition,
    "partition-list": _metric("partition-id", [0]),
    "num-examples-inf": _metric("num-examples", math.inf),
    "accuracy-5": _metric("accuracy", 5.0),
    "loss-inf": _metric("loss", math.inf),
    "loss-negative": _metric("loss", -1.0),
}


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """FedAvg where partition 0's training reply lacks its model (a drop the server always
    made): what dropping any malformed reply of that client must equal.
    """
    result = run_in_process(
        {**BASE, "algorithm": "fedavg", "output-dir": str(tmp_path_factory.mktemp("honest"))},
        3,
        tamper=on_partition(MessageType.TRAIN, lambda r: r.content.__delitem__(SHARED)),
    )
    return result.rows


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drop = {"wall-time", "bytes-up", "bytes-up-per-client"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


@pytest.mark.parametrize("name", sorted(TRAIN_EDITS))
def test_malformed_train_reply_is_dropped_and_the_rest_unchanged(
    tmp_path: Path, name: str, honest: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    result = run_in_process(
        {**BASE, "algorithm": "fedavg", "output-dir": str(tmp_path)},
        3,
        tamper=on_partition(MessageType.TRAIN, TRAIN_EDITS[name]),
    )
    assert [r["dropped-replies"] for r in result.rows[1:]] == [1.0, 1.0]
    assert "dropped train reply" in caplog.text and "(partition 0)" in caplog.text
    assert _comparable(result.rows) == _comparable(honest)  # the honest clients' math as without it


@pytest.mark.parametrize("name", sorted(EVAL_EDITS))
def test_malformed_evaluate_reply_is_dropped(tmp_path: Path, name: str) -> None:
    result = run_in_process(
        {**BASE, "algorithm": "fedavg", "output-dir": str(tmp_path)},
        3,
        tamper=on_partition(MessageType.EVALUATE, EVAL_EDITS[name]),
    )
    row = result.rows[-1]
    assert row["dropped-replies"] == 1.0
    assert 0.0 <= row["personal-accuracy"] <= 1.0 and math.isfinite(row["personal-loss"])


def _curvature(edit: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    def change(reply: Message) -> None:
        record = reply.content[CURVATURE]
        for key in list(record.keys()):
            values = torch.from_numpy(record[key].numpy().copy())
            record[key] = Array(edit(values).numpy())

    return change


def _negate_hessian(packed: torch.Tensor) -> torch.Tensor:
    return pack_symmetric(-unpack_symmetric(packed))


@pytest.mark.parametrize(
    ("extra", "edit"),
    [
        ({"task": "breast-cancer"}, _curvature(_negate_hessian)),
        ({"curvature": "diagonal"}, _curvature(lambda d: -d)),
        ({"curvature": "foof"}, _curvature(_negate_hessian)),
    ],
    ids=["hessian-negated", "diagonal-negative", "foof-negated"],
)
def test_fedpm_curvature_must_be_positive_semidefinite(
    tmp_path: Path, extra: dict[str, Any], edit: Edit, caplog: pytest.LogCaptureFixture
) -> None:
    result = run_in_process(
        {**BASE, "algorithm": "fedpm", "output-dir": str(tmp_path), **extra},
        3,
        tamper=on_partition(MessageType.TRAIN, edit),
    )
    assert [r["dropped-replies"] for r in result.rows[1:]] == [1.0, 1.0]
    assert "positive" in caplog.text
    assert all(math.isfinite(r["global-loss"]) for r in result.rows)


def test_run_without_any_usable_round_fails(tmp_path: Path) -> None:
    with pytest.raises(RunFailedError, match=r"3 consecutive rounds.*max-failed-rounds=3"):
        run_in_process(
            {**BASE, "algorithm": "fedavg", "lr": 1e308, "num-server-rounds": 5,
             "output-dir": str(tmp_path)},
            3,
        )


def test_non_finite_aggregate_is_rejected_and_state_kept(tmp_path: Path) -> None:
    def huge(reply: Message) -> None:
        record = reply.content[SHARED]
        for key in list(record.keys()):
            record[key] = Array(np.full(record[key].shape, 3e38, dtype=np.float32))

    def every(reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.TRAIN and not reply.has_error():
            huge(reply)
        return reply

    result = run_in_process(
        {**BASE, "algorithm": "scaffold", "server-lr": 10.0, "output-dir": str(tmp_path)},
        3,
        tamper=every,
    )
    rows = result.rows
    assert [r.get("round-rejected") for r in rows[1:]] == [1.0, 1.0]
    assert rows[2]["global-accuracy"] == rows[0]["global-accuracy"]  # model kept at u^0


def test_undefined_evaluate_metric_is_kept_and_skipped(tmp_path: Path) -> None:
    """NaN (e.g. AUC of a one-class local test split) is no defect: the reply counts."""
    result = run_in_process(
        {**BASE, "algorithm": "fedavg", "output-dir": str(tmp_path)},
        3,
        tamper=on_partition(MessageType.EVALUATE, _metric("auc", math.nan)),
    )
    assert result.rows[-1]["dropped-replies"] == 0.0
    assert math.isfinite(result.rows[-1]["personal-auc"])
