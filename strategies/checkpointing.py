"""Flat array maps for a rule's ``checkpoint_state`` / ``restore_state``.

A checkpoint holds named numpy arrays only (no pickles). Per-node caches are keyed by
partition id, never by Flower's node id, which changes between runs and restarts:
``"<prefix>/<partition>/<name>"``; a rule's global server state (SCAFFOLD's ``c``, FedDyn's
``h``) is ``"<prefix>/<name>"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def pack_global(prefix: str, arrays: Mapping[str, np.ndarray]) -> RuleState:
    """``{f"{prefix}/{name}": copy}``: a rule's global (non-partition) arrays."""
    return {f"{prefix}/{name}": np.array(array) for name, array in arrays.items()}


def unpack_global(
    prefix: str, state: Mapping[str, np.ndarray], expected: Iterable[str], what: str
) -> dict[str, np.ndarray]:
    """Inverse of ``pack_global`` in float64 (entries under other prefixes are ignored);
    ValueError naming ``what`` if the names are not exactly ``expected``.
    """
    head = f"{prefix}/"
    out = {
        key.removeprefix(head): np.array(array, np.float64)
        for key, array in state.items()
        if key.startswith(head)
    }
    names = sorted(expected)
    if sorted(out) != names:
        raise ValueError(f"checkpoint holds {what} {sorted(out)}, not {names}")
    return out


def float64_zeros(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zeros shaped like ``arrays`` in float64: a global server state at its start."""
    return {k: np.zeros(np.shape(v), np.float64) for k, v in arrays.items()}
