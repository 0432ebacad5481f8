"""Reply validation: what a client sent is decoded and checked before any rule sees it.

A SuperNode is someone else's machine: every check here reads the *decoded* data (never only
an Array's header), and every failure is a ``ReplyError`` naming the record and the array, so
that the round loop drops the reply with a reason and nothing in a reply can raise out of
aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from protocol.records import METRICS

Template = dict[str, tuple[tuple[int, ...], str]]
"""Expected arrays of one record: name -> (shape, dtype), in record order."""

HEADER_SLACK = 4096
"""Bytes an ``.npy`` payload may hold beyond its values (its header)."""
UNIT_METRICS = ("accuracy", "macro-f1", "auc", "ece")
"""Evaluation metrics (by name suffix) that are fractions in [0, 1]."""
NONNEGATIVE_METRICS = ("loss", "nll")
"""Evaluation metrics (by name suffix) that are never negative."""


class ReplyError(ValueError):
    """A reply that cannot be used; the message says what is wrong with it."""


def decode_array(
    record: str, key: str, array: Array, shape: tuple[int, ...], dtype: str
) -> np.ndarray:
    """The values of ``array``, checked: the payload's own shape and dtype are ``shape`` and
    ``dtype`` (header and payload agree), its size is bounded before decoding, all finite.
    """
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if not isinstance(array, Array):
        raise ReplyError(f"{record}[{key}] is not an Array")
    if len(array.data) > expected + HEADER_SLACK:
        raise ReplyError(
            f"{record}[{key}] carries {len(array.data)} bytes; {shape} {dtype} needs {expected}"
        )
    try:
        values = array.numpy()
    except Exception as err:  # a malformed payload may raise anything numpy can
        raise ReplyError(
            f"{record}[{key}] cannot be decoded: {type(err).__name__}: {err}"
        ) from None
    if tuple(values.shape) != shape or str(values.dtype) != dtype:
        raise ReplyError(
            f"{record}[{key}] has shape {tuple(values.shape)} {values.dtype}, expected "
            f"{shape} {dtype}"
        )
    if tuple(array.shape) != shape or array.dtype != dtype:
        raise ReplyError(f"{record}[{key}]: header {tuple(array.shape)} {array.dtype} != payload")
    if not np.isfinite(values).all():
        raise ReplyError(f"{record}[{key}] has non-finite values")
    return values


def decode_records(
    records: Mapping[str, ArrayRecord], names: tuple[str, ...], template: Callable[[str], Template]
) -> dict[str, dict[str, np.ndarray]]:
    """The expected ArrayRecords ``names``, each exactly the arrays of ``template(name)``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        if name not in records:
            raise ReplyError(f"ArrayRecord {name!r} missing")
        record, expected = records[name], template(name)
        if list(record.keys()) != list(expected):
            raise ReplyError(f"ArrayRecord {name!r} does not hold exactly the expected arrays")
        out[name] = {key: decode_array(name, key, record[key], *expected[key]) for key in expected}
    return out


def numbers(record: MetricRecord) -> dict[str, float]:
    """The record's scalar metrics as floats; ReplyError for a list or another type."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReplyError(f"metric {key!r} is {type(value).__name__}, expected a number")
        out[key] = float(value)
    return out


def reply_metrics(reply: Message, name: str = METRICS) -> dict[str, float]:
    """The reply's MetricRecord ``name`` as numbers; ReplyError for an error reply or no
    such record.
    """
    if reply.has_error():
        raise ReplyError(f"client error: {reply.error.reason}")
    record = reply.content.metric_records.get(name)
    if record is None:
        raise ReplyError(f"no MetricRecord {name!r}")
    return numbers(record)


def whole(metrics: Mapping[str, float], key: str, low: int, high: int) -> int:
    """Metric ``key`` as an integer in ``[low, high]``; ReplyError otherwise."""
    value = metrics.get(key)
    if value is None or not math.isfinite(value) or value != int(value):
        raise ReplyError(f"metric {key!r} is {value!r}, expected an integer")
    if not low <= int(value) <= high:
        raise ReplyError(f"metric {key!r} is {int(value)}, expected one in [{low}, {high}]")
    return int(value)


def check_metric_values(metrics: Mapping[str, float]) -> None:
    """No value infinite (NaN is allowed: undefined, e.g. AUC on a one-class test split, and
    skipped by the weighted means); fractions in [0, 1]; losses non-negative.
    """
    for key, value in metrics.items():
        if math.isnan(value):
            continue
        if math.isinf(value):
            raise ReplyError(f"metric {key!r} is infinite ({value})")
        if key.endswith(UNIT_METRICS) and not 0.0 <= value <= 1.0:
            raise ReplyError(f"metric {key!r} is {value}, expected a fraction in [0, 1]")
        if key.endswith(NONNEGATIVE_METRICS) and value < 0.0:
            raise ReplyError(f"metric {key!r} is {value}, expected >= 0")
