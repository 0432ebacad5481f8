"""Record and array names both sides agree on, and conversions between records and tensors.

The one place where a message's layout is written down: the records every message carries, the
records one rule family sends or expects (ADMM's ``z``, SCAFFOLD's control variates, FedPM's
curvature, Bayesian ADMM's Gaussians), and the metric names the server reads.
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

SHARED = "shared"
"""ArrayRecord server -> client: the current shared block ``u`` (global model part)."""
CONFIG = "config"
"""ConfigRecord server -> client: the resolved run config plus ``server-round``."""
METRICS = "metrics"
"""MetricRecord client -> server: ``num-examples``, ``partition-id`` and the solver's metrics."""
EVALUATION = "evaluation"
"""MetricRecord client -> server in a fused train reply (``RoundValues.evaluate``): the
personalized evaluation of the model the message carried, made before training, with the same
keys as an evaluate reply's ``METRICS``."""
STATE_SCOPE = "state-scope"
"""Round value server -> client: the directory name of the client state mirror (the original
run's name; a resumed run sends its checkpoint's)."""
ROUND = "round"
"""ConfigRecord server -> client: this message's per-round values (``protocol.round``)."""
INFO_ACTION = "info"
"""Custom query action (``query.info``): the node reports its partition and data sizes."""
STATE_ACTION = "state"
"""``query.state``: a resumed run asks each node which round of its client state it holds
(``state-round``; -1: none), before round 1, so that state lost with a SuperNode that kept no
disk mirror is refused rather than silently restarted from zero."""


# ----------------------------------------------------------------- rule-specific records
Z = "z"
"""ArrayRecord client -> server (consensus ADMM): ``z_i = u_i + π_i/ρ`` over the shared block."""
CONTROL = "control"
"""ArrayRecord server -> client (SCAFFOLD): the global control variate ``c`` (shared layout)."""
DELTA_CONTROL = "delta-control"
"""ArrayRecord client -> server (SCAFFOLD): ``Δc_i = c_i⁺ − c_i`` (shared-block layout)."""
CURVATURE = "curvature"
"""ArrayRecord client -> server (FedPM): the last damped local preconditioner (kind layout)."""
TRIU = "hessian-triu"
"""The one array of a ``hessian`` curvature record: the upper triangle of ``P_i`` (row-major)."""
MEAN = "mean"
"""ArrayRecord client -> server (Bayesian ADMM): the local posterior mean ``m_k``."""
PRECISION = "precision"
"""ArrayRecord client -> server (Bayesian ADMM): the local posterior precision ``S_k``."""
DUAL_MEAN = "dual-mean"
"""ArrayRecord client -> server (Bayesian ADMM): the dual ``v_k`` (shared-block layout)."""
DUAL_PRECISION = "dual-precision"
"""ArrayRecord client -> server (Bayesian ADMM): the dual ``V_k`` (family layout)."""
GLOBAL_PRECISION = "global-precision"
"""ArrayRecord server -> client: ``S_g`` (family layout; not sent for the isotropic family)."""
GLOBAL_MEAN = "global-mean"
"""ArrayRecord server -> client: ``m_g`` while ``SHARED`` is not ``m_g`` (round 1: the prior
mean 0, while ``SHARED`` holds the initial weights that local training starts from)."""
MATRIX = "matrix"
"""The one array of a full-covariance precision record: ``d×d`` over the flattened block."""
BYTES_PER_CLIENT = "bytes-up-per-client"
"""Round metric: mean payload bytes one client uploaded (its reply records as received)."""
FLOORED = "precision-floored"
"""Metric: precision entries (eigenvalues) raised to ``precision-floor`` in this round."""


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
