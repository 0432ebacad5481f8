"""Server checkpoints: written after every round, read back by ``resume-from``.

Layout (one directory per round, the newest ``KEEP`` kept)::

    <run dir>/checkpoint/round-<k>/state.json   round, state scope, resolved run config,
                                                 rule class, array names, RNG states
    <run dir>/checkpoint/round-<k>/arrays.npz   "global/<name>": the global arrays after round
                                                 k; "rule/<key>": the rule's checkpoint_state()

Each round directory is written under a temporary name and renamed into place, so a reader
sees complete checkpoints only. Nothing is pickled (``np.load(allow_pickle=False)``).
Per-node state is keyed by partition id, never by Flower's node ids (new in every run).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common import log

from protocol.records import numpy_to_record, record_to_numpy
from server_app.config import ConfigError
from strategies.base import FederatedStrategy

FORMAT = 1
KEEP = 2
"""Round checkpoints kept per run."""
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
GLOBAL, RULE, RNG_TORCH = "global/", "rule/", "rng/torch"
_ROUND_DIR = re.compile(r"round-(\d+)")

OPERATIONAL_KEYS = frozenset(
    {
        "output-dir",
        "run-name",
        "resume-from",
        "state-dir",
        "data-dir",
        "download",
        "device",
        "round-timeout",
        "min-available-nodes",
        "num-server-rounds",
    }
)
"""Run-config keys a resumed run may change; every other key must equal the checkpoint's
(``num-server-rounds`` too with ``lr-schedule='cosine'``, whose rate depends on it)."""


@dataclass
class Checkpoint:
    """Everything the server needs to continue after ``round``."""

    round: int
    arrays: dict[str, np.ndarray]
    """The global arrays (shared block) after ``round``, in record order."""
    rule_state: dict[str, np.ndarray]
    """The aggregation rule's ``checkpoint_state()``."""
    scope: str
    """``state-scope`` of the clients' state mirror (the original run's name)."""
    config: dict[str, Any]
    """The resolved run config of the run that wrote it."""
    rule: str
    num_clients: int
    rng: dict[str, Any]
    """Global RNG states of the ServerApp process (python, numpy, torch)."""
    path: Path | None = None

    @property
    def run_dir(self) -> Path:
        """The run directory the checkpoint belongs to (``<run dir>/checkpoint/round-<k>``)."""
        assert self.path is not None
        return self.path.parent.parent

    def global_record(self) -> ArrayRecord:
        """The global arrays as an ArrayRecord."""
        return numpy_to_record(self.arrays)


# ----------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """The ServerApp process's global RNG states (python ``random``, numpy legacy, torch CPU)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().numpy(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to ``state`` (from ``capture_rng``)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))


# ----------------------------------------------------------------------- writing
def round_dirs(root: Path) -> dict[int, Path]:
    """Complete round checkpoints under ``root`` (a ``checkpoint`` directory), by round."""
    if not root.is_dir():
        return {}
    found = {}
    for path in root.iterdir():
        match = _ROUND_DIR.fullmatch(path.name)
        if match and (path / STATE_FILE).is_file() and (path / ARRAYS_FILE).is_file():
            found[int(match.group(1))] = path
    return found


def write_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``<run_dir>/checkpoint/round-<k>`` atomically; keep the newest KEEP."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"round-{ckpt.round}"
    tmp = root / f".round-{ckpt.round}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {
        "format": FORMAT,
        "round": ckpt.round,
        "state-scope": ckpt.scope,
        "rule": ckpt.rule,
        "num-clients": ckpt.num_clients,
        "global-arrays": list(ckpt.arrays),
        "rule-arrays": list(ckpt.rule_state),
        "rng": {k: v for k, v in ckpt.rng.items() if k != "torch"},
        "run-config": ckpt.config,
    }
    arrays = {
        **{GLOBAL + k: v for k, v in ckpt.arrays.items()},
        **{RULE + k: v for k, v in ckpt.rule_state.items()},
        RNG_TORCH: np.asarray(ckpt.rng["torch"], dtype=np.uint8),
    }
    with (tmp / ARRAYS_FILE).open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    if target.exists():  # a resumed run rewrites a round it had reached before the kill
        shutil.rmtree(target)
    tmp.rename(target)
    for old in sorted(round_dirs(root))[:-KEEP]:
        shutil.rmtree(round_dirs(root)[old], ignore_errors=True)
    return target


def drop_after(run_dir: Path, last_round: int) -> None:
    """Remove checkpoints of rounds after ``last_round`` (a resume rewrites them)."""
    for rnd, path in round_dirs(run_dir / CHECKPOINT_DIR).items():
        if rnd > last_round:
            shutil.rmtree(path)


def make_checkpoint(
    server_round: int,
    arrays: ArrayRecord,
    strategy: FederatedStrategy,
    config: Mapping[str, Any],
) -> Checkpoint:
    """A checkpoint of the current server state after ``server_round``."""
    return Checkpoint(
        round=server_round,
        arrays=record_to_numpy(arrays),
        rule_state=strategy.checkpoint_state(),
        scope=strategy.state_scope,
        config=dict(config),
        rule=type(strategy).__name__,
        num_clients=strategy.num_clients,
        rng=capture_rng(),
    )


# ----------------------------------------------------------------------- reading
def find_checkpoint(path: Path) -> Path:
    """The newest round checkpoint at ``path``: a run dir, its ``checkpoint`` dir or a
    ``round-<k>`` dir. FileNotFoundError if there is none.
    """
    if _ROUND_DIR.fullmatch(path.name) and (path / STATE_FILE).is_file():
        return path
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    found = round_dirs(root)
    if not found:
        raise FileNotFoundError(
            f"{path} holds no checkpoint (expected <run dir>/{CHECKPOINT_DIR}/round-<k>/"
            f"{STATE_FILE})"
        )
    return found[max(found)]


def read_checkpoint(path: Path) -> Checkpoint:
    """Load the checkpoint ``find_checkpoint(path)`` names."""
    directory = find_checkpoint(path)
    meta = json.loads((directory / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} has checkpoint format {meta.get('format')}, not {FORMAT}")
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
        stored = {k: npz[k] for k in npz.files}
    return Checkpoint(
        round=int(meta["round"]),
        arrays={k: stored[GLOBAL + k] for k in meta["global-arrays"]},
        rule_state={k: stored[RULE + k] for k in meta["rule-arrays"]},
        scope=str(meta["state-scope"]),
        config=dict(meta["run-config"]),
        rule=str(meta["rule"]),
        num_clients=int(meta["num-clients"]),
        rng={**meta["rng"], "torch": stored[RNG_TORCH]},
        path=directory,
    )


def load_resume(config: Mapping[str, Any]) -> Checkpoint:
    """The checkpoint ``resume-from`` names, checked against ``config``; ConfigError naming
    the problem (missing, unreadable, or a math-relevant key that differs) otherwise.
    """
    where = Path(str(config["resume-from"])).expanduser().resolve()
    prefix = f"run config resume-from={str(config['resume-from'])!r}"
    if not where.exists():
        raise ConfigError(f"{prefix}: no such file or directory")
    try:
        ckpt = read_checkpoint(where)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{prefix}: cannot read the checkpoint: {err}") from None
    saved = ckpt.config
    cosine = saved.get("lr-schedule") == "cosine"
    for key in sorted(set(config) | set(saved)):
        if key in OPERATIONAL_KEYS and not (key == "num-server-rounds" and cosine):
            continue
        if key not in saved or key not in config or saved[key] != config[key]:
            raise ConfigError(
                f"{prefix}: run config {key}={config.get(key)!r} differs from the checkpoint's "
                f"{key}={saved.get(key)!r} ({ckpt.path}); a resumed run keeps every key that "
                f"changes the math (only {', '.join(sorted(OPERATIONAL_KEYS))} may differ)"
            )
    if int(config["num-server-rounds"]) <= ckpt.round:
        raise ConfigError(
            f"{prefix}: the checkpoint is already at round {ckpt.round}; num-server-rounds="
            f"{config['num-server-rounds']} leaves nothing to run"
        )
    log(INFO, "Resuming after round %d from %s", ckpt.round, ckpt.path)
    return ckpt
