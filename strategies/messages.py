"""Names of the records every message carries, and conversions between records and tensors.

Arrays that belong to one aggregation rule (e.g. ADMM's ``"z"``) are named in that rule's
module; the ones here are common to all rules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import cast

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    MetricRecord,
    MetricRecordValues,
)

from tasks.functional import flatten as flatten  # re-exported: a block's flat layout
from tasks.functional import unflatten as unflatten

SHARED = "shared"
"""ArrayRecord server -> client: the current shared block ``u`` (global model part)."""
CONFIG = "config"
"""ConfigRecord server -> client: the resolved run config plus ``server-round``."""
METRICS = "metrics"
"""MetricRecord client -> server: ``num-examples``, ``partition-id`` and the solver's metrics."""
STATE_SCOPE = "state-scope"
"""Config value server -> client: the directory name of the client state mirror (the original
run's name; a resumed run sends its checkpoint's)."""
INFO_ACTION = "info"
"""Custom query action (``query.info``): the node reports its partition and data sizes."""


def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord holding ``tensors`` in their order (detached, on CPU)."""
    return ArrayRecord(
        OrderedDict((k, Array(v.detach().cpu().contiguous().numpy())) for k, v in tensors.items())
    )


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of ``record`` as numpy arrays, in record order."""
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy ``arrays``, in their order."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays.items()))


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays in ``record`` (what the transport must carry)."""
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in record.values()))


def config_record(values: Mapping[str, int | float | str | bool]) -> ConfigRecord:
    """A ConfigRecord of scalar ``values`` (typed entry point for Flower's constructor)."""
    return ConfigRecord(cast(dict[str, ConfigRecordValues], dict(values)))


def metric_record(values: Mapping[str, int | float]) -> MetricRecord:
    """A MetricRecord of scalar ``values``."""
    return MetricRecord(cast(dict[str, MetricRecordValues], dict(values)))


def scalar(record: MetricRecord | ConfigRecord, key: str) -> float:
    """The numeric scalar ``record[key]``; TypeError if it is a list or text."""
    value = record[key]
    if isinstance(value, bool | int | float):
        return float(value)
    raise TypeError(f"{key!r} is {type(value).__name__}, expected a number")
