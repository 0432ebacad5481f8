"""What a ClientApp handler needs before its solver runs: partition, device, data, model.

Data tensors and the model skeleton are cached per process (simulation workers serve many
nodes); the model's parameters are always overwritten from the message and the state. The
first message of a process also fixes torch's intra-op threads (``torch_threads``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from functools import lru_cache
from logging import DEBUG
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.common import log

from client_app.state import ClientState
from tasks.data import ArrayData, ClientSplit
from tasks.federation import build_federation, federation_spec
from tasks.materialize import Skeleton, Tensors, as_tensors, build_skeleton
from tasks.registry import get_task

HANDLER_STARTED = "dualflower: handler loads its partition"
"""DEBUG line of ``client_data`` (see there)."""
PERSONAL = "personal"
"""State key of the personal block ``v_i`` (never sent)."""


class NodeConfigError(RuntimeError):
    """The SuperNode was started without a usable partition in ``--node-config``."""


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) of this node, from its node config."""
    try:
        pid = int(context.node_config["partition-id"])
        num = int(context.node_config["num-partitions"])
    except (KeyError, ValueError) as err:
        raise NodeConfigError(
            "this SuperNode has no integer partition-id/num-partitions; start it with "
            "--node-config 'partition-id=<i> num-partitions=<N>'"
        ) from err
    return pid, num


CACHE = ".dualflower-cache"
"""Folder under a node's ``data-dir`` holding its cached partition (deployment starts a fresh
ClientApp process per message, so an in-process cache alone would reload and re-partition
the whole dataset for every message)."""


def source_fingerprint(task_name: str, data_dir: Path) -> str:
    """What a cached partition was built from besides the run config: the source files of the
    task's classes (a loader edited under the same task name, e.g. another subset size, is a
    different cache entry) and the name, size and modification time of each top-level entry of
    ``data_dir`` (replaced dataset files are too). Cheap enough for every message.
    """
    h = hashlib.sha256()
    for cls in type(get_task(task_name)).__mro__[:-1]:
        source = inspect.getsourcefile(cls)
        h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
        if source and os.path.isfile(source):
            h.update(Path(source).read_bytes())
    with os.scandir(data_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name != CACHE:
                st = entry.stat()
                h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _split(config_items: tuple[tuple[str, Any], ...], pid: int, num: int) -> ClientSplit:
    """This partition's split, from ``<data-dir>/.dualflower-cache/`` when cached there (keyed
    by the run config's data keys and ``source_fingerprint``).
    """
    config = dict(config_items)
    if not config["data-dir"]:
        return build_federation(federation_spec(config, num)).clients[pid]
    data_dir = Path(str(config["data-dir"]))
    if not data_dir.is_dir():  # the task's own loader names the problem
        return build_federation(federation_spec(config, num)).clients[pid]
    key = repr(config_items) + source_fingerprint(str(config["task"]), data_dir)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = data_dir / CACHE / digest / f"partition-{pid}-of-{num}.npz"
    if path.exists():
        with np.load(path) as f:
            return ClientSplit(
                ArrayData(f["train_x"], f["train_y"]), ArrayData(f["test_x"], f["test_y"])
            )
    split = build_federation(federation_spec(config, num)).clients[pid]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp, train_x=split.train.x, train_y=split.train.y, test_x=split.test.x, test_y=split.test.y
    )
    tmp.replace(path)
    return split


@lru_cache(maxsize=64)
def _client_tensors(
    config_items: tuple[tuple[str, Any], ...],
    pid: int,
    num: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensors, Tensors]:
    split = _split(config_items, pid, num)
    return as_tensors(split.train, device, dtype), as_tensors(split.test, device, dtype)


def _data_key(
    config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> tuple[tuple[str, Any], ...]:
    keys = (
        "task",
        "data-dir",
        "download",
        "seed",
        "partitioner",
        "dirichlet-alpha",
        "classes-per-client",
        "local-test-fraction",
    )
    values = {k: config[k] for k in keys}
    if node_config.get("data-dir"):
        values["data-dir"] = str(node_config["data-dir"])
    return tuple(values.items())


def cpu_budget() -> int:
    """CPUs this process may use: ``OMP_NUM_THREADS`` when set (Ray sets it to a simulation
    actor's ``client-resources-num-cpus``; set it in a SuperNode's environment to share a
    machine between nodes), else torch's default, at most the CPUs of the affinity mask.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    wanted = int(omp) if omp.isdigit() and int(omp) > 0 else torch.get_num_threads()
    return max(1, min(wanted, cpus))


@lru_cache(maxsize=1)
def torch_threads() -> int:
    """Set torch's intra-op threads to ``cpu_budget()`` once per process; return the count
    (two actors of one CPU each then use both cores of a 2-core box without oversubscription).
    """
    budget = cpu_budget()
    if torch.get_num_threads() != budget:
        torch.set_num_threads(budget)
    return budget


def client_data(
    config: Mapping[str, Any],
    context: Context,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensors, Tensors]:
    """This node's (train, test) tensors on ``device``. The node config's ``data-dir``
    (``--node-config data-dir=...``) overrides the run config's: each machine has its own path.
    Logs ``HANDLER_STARTED`` at DEBUG (``FLWR_LOG_LEVEL=DEBUG``): the end of the process's
    imports in the deployment benchmark's phase breakdown.
    """
    log(DEBUG, HANDLER_STARTED)
    torch_threads()
    pid, num = node_partition(context)
    return _client_tensors(_data_key(config, context.node_config), pid, num, device, dtype)


@lru_cache(maxsize=8)
def _skeleton(
    task_name: str, model: str, personalization: str, seed: int, device: torch.device
) -> Skeleton:
    sk = build_skeleton(get_task(task_name, model), personalization, seed)
    sk.model.to(device)
    return Skeleton(sk.model, {k: v.to(device) for k, v in sk.init.items()}, sk.shared, sk.personal)


def assemble_model(
    config: Mapping[str, Any],
    u: ArrayRecord,
    state: ClientState,
    device: torch.device,
    overlay: str = "",
) -> Skeleton:
    """The client's current model: shared block from ``u``, personal block from state, then
    the values of state group ``overlay`` if given and stored (a solver's evaluation model,
    ``Solver.evaluates``, e.g. Ditto's personal model).

    A client that never trained starts its personal block at the common initialisation (and
    has no ``overlay`` group yet). Raises ValueError if ``u`` does not hold exactly the shared
    parameters.
    """
    sk = _skeleton(
        str(config["task"]),
        str(config.get("model", "")),
        str(config["personalization"]),
        int(config["seed"]),
        device,
    )
    if list(u.keys()) != sk.shared:
        raise ValueError(
            f"received shared block {list(u.keys())[:4]}... does not match this model's "
            f"shared parameters {sk.shared[:4]}...; server and client disagree on task or "
            "personalization"
        )
    values = dict(sk.init)
    values.update({k: torch.as_tensor(a.numpy(), device=device) for k, a in u.items()})
    if sk.personal:
        values.update(state.get(PERSONAL, device) or {})
    if overlay:
        values.update(state.get(overlay, device) or {})
    sk.model.load_state_dict(values)
    return sk
