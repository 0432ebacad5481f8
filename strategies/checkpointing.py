"""Flat, partition-keyed array maps for a rule's ``checkpoint_state`` / ``restore_state``.

A checkpoint holds named numpy arrays only (no pickles). Per-node caches are keyed by
partition id, never by Flower's node id, which changes between runs and restarts:
``"<prefix>/<partition>/<name>"``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

RuleState = dict[str, np.ndarray]
"""What ``checkpoint_state`` returns: flat array names -> arrays."""


def pack_partitions(
    prefix: str, per_partition: Mapping[int, Mapping[str, np.ndarray]]
) -> RuleState:
    """``{f"{prefix}/{pid}/{name}": array}`` for every partition's named arrays."""
    return {
        f"{prefix}/{pid}/{name}": np.asarray(array)
        for pid, arrays in per_partition.items()
        for name, array in arrays.items()
    }


def unpack_partitions(
    prefix: str, state: Mapping[str, np.ndarray]
) -> dict[int, dict[str, np.ndarray]]:
    """Inverse of ``pack_partitions`` (entries under other prefixes are ignored)."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, array in state.items():
        head, _, rest = key.partition("/")
        if head != prefix:
            continue
        pid, _, name = rest.partition("/")
        out.setdefault(int(pid), {})[name] = np.array(array)
    return out
