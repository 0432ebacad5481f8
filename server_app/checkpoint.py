"""Server checkpoints: written after every round, read back by ``resume-from``.

Layout (one directory per round, the newest ``KEEP`` kept)::

    <run dir>/checkpoint/round-<k>/state.json   round, state scope, resolved run config,
                                                 rule class, array names, RNG states
    <run dir>/checkpoint/round-<k>/arrays.npz   "global/<name>": the global arrays after round
                                                 k; "rule/<key>": the rule's checkpoint_state()

Each round directory is written under a temporary name and renamed into place, so a reader
sees complete checkpoints only. Nothing is pickled (``np.load(allow_pickle=False)``).
Per-node state is keyed by partition id, never by Flower's node ids (new in every run).

A resume changes nothing before the checkpoint has passed every check: ``read_checkpoint``
(round >= 1 and that of its directory, state scope one path component, run config of
scalars, RNG states, every array listed, real-valued and finite), ``load_resume`` (the run
config) and ``check_restorable`` (the global arrays are the model's shared block, the rule
state restores into a copy of the rule). A failure is a ``CheckpointError`` naming the file
and the field and saying what to do.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common import log

from methods.hyper import is_path_component
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
        "max-failed-rounds",
        "num-server-rounds",
    }
)
"""Run-config keys a resumed run may change; every other key must equal the checkpoint's
(``num-server-rounds`` too with ``lr-schedule='cosine'``, whose rate depends on it)."""


class CheckpointError(ConfigError):
    """A checkpoint (or the run directory) that ``resume-from`` names cannot be resumed from:
    damaged, edited, or not of this run. Raised before anything is deleted or rewritten.
    """


def checkpoint_error(file: Path, field: str, problem: str, advice: str = "") -> CheckpointError:
    """``resume-from: <file>: <field> <problem>; nothing was deleted or changed. <advice>``;
    the advice defaults to resuming from another complete checkpoint of the run (the newest
    other ``round-<k>`` beside ``file``'s directory), restoring the file, or starting anew.
    """
    if not advice:
        found = round_dirs(file.parent.parent) if _ROUND_DIR.fullmatch(file.parent.name) else {}
        others = [k for k in sorted(found, reverse=True) if found[k] != file.parent]
        advice = (
            f"Resume from another checkpoint of this run (resume-from='{found[others[0]]}'; "
            f"rounds after {others[0]} are run again), restore the file, or start a new run "
            "(resume-from='')"
            if others
            else "Restore the file from a backup, or start a new run (resume-from='')"
        )
    return CheckpointError(
        f"resume-from: {file}: {field} {problem}; nothing was deleted or changed. {advice}"
    )


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


def _set_python(state: Any) -> None:
    version, internal, gauss_next = state
    random.setstate((version, tuple(internal), gauss_next))


def _set_numpy(state: Any) -> None:
    kind, keys, pos, has_gauss, cached = state
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _set_torch(state: Any) -> None:
    torch.set_rng_state(torch.from_numpy(np.asarray(state, dtype=np.uint8).copy()))


_RNG_SETTERS: dict[str, Callable[[Any], None]] = {
    "python": _set_python,
    "numpy": _set_numpy,
    "torch": _set_torch,
}


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to ``state`` (from ``capture_rng``)."""
    for name, setter in _RNG_SETTERS.items():
        setter(state[name])


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _words(values: Any, count: int) -> bool:
    """``values`` is a list of ``count`` unsigned 32-bit integers (a Mersenne Twister key)."""
    return (
        isinstance(values, list)
        and len(values) == count
        and all(_is_int(v, 0, 2**32 - 1) for v in values)
    )


_RNG_FORMATS = {
    "python": "[3, 625 integers in [0, 2^32) of which the last (the position) is <= 624, "
    "null or a number]",
    "numpy": "['MT19937', 624 integers in [0, 2^32), a position in [0, 624], 0 or 1, a number]",
}


def _rng_layout_ok(name: str, value: Any) -> bool:
    """Whether the saved ``name`` state (``python`` / ``numpy``) has ``_RNG_FORMATS[name]``."""
    if name == "python":
        return (
            isinstance(value, list)
            and len(value) == 3
            and value[0] == 3
            and _words(value[1], 625)
            and value[1][-1] <= 624
            and (value[2] is None or _is_real(value[2]))
        )
    return (
        isinstance(value, list)
        and len(value) == 5
        and value[0] == "MT19937"
        and _words(value[1], 624)
        and _is_int(value[2], 0, 624)
        and _is_int(value[3], 0, 1)
        and _is_real(value[4])
    )


def _check_rng(rng: Mapping[str, Any], directory: Path) -> None:
    """CheckpointError unless every saved RNG state has its layout and is accepted by its
    generator (set, then the process's own states put back).
    """
    where = {
        "python": (directory / STATE_FILE, "field 'rng.python'"),
        "numpy": (directory / STATE_FILE, "field 'rng.numpy'"),
        "torch": (directory / ARRAYS_FILE, f"entry {RNG_TORCH!r}"),
    }
    for name in _RNG_FORMATS:
        if not _rng_layout_ok(name, rng.get(name)):
            file, field = where[name]
            raise checkpoint_error(
                file, field, f"is not a {name} RNG state; expected {_RNG_FORMATS[name]}"
            )
    own = capture_rng()
    try:
        for name, setter in _RNG_SETTERS.items():
            try:
                setter(rng[name])
            except (TypeError, ValueError, OverflowError, RuntimeError) as err:
                file, field = where[name]
                raise checkpoint_error(
                    file, field, f"is refused by the {name} generator ({err})"
                ) from None
    finally:
        restore_rng(own)


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


def _field(meta: Mapping[str, Any], file: Path, key: str, kind: type, expected: str) -> Any:
    """``meta[key]`` if it is a ``kind`` (a bool is no int); CheckpointError otherwise."""
    value = meta.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise checkpoint_error(file, f"field {key!r}", f"is {value!r}; expected {expected}")
    return value


def _names(meta: Mapping[str, Any], file: Path, key: str) -> list[str]:
    """``meta[key]``: a list of distinct array names."""
    names: list[str] = _field(meta, file, key, list, "a list of array names")
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise checkpoint_error(file, f"field {key!r}", f"is {names!r}; expected distinct names")
    return names


def _read_meta(directory: Path) -> dict[str, Any]:
    """``state.json`` of ``directory``, checked field by field (not yet against the run)."""
    file = directory / STATE_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise checkpoint_error(file, "the file", f"is not readable JSON ({err})") from None
    if not isinstance(meta, dict):
        raise checkpoint_error(file, "the file", f"holds {meta!r:.60}, not a JSON object")
    if meta.get("format") != FORMAT:
        raise checkpoint_error(
            file, "field 'format'", f"is {meta.get('format')!r}; this version reads {FORMAT}"
        )
    named = int(directory.name.removeprefix("round-"))
    rnd = _field(meta, file, "round", int, f"{named} (the directory is {directory.name})")
    if rnd != named:
        raise checkpoint_error(
            file, "field 'round'", f"is {rnd}, but the directory is {directory.name}"
        )
    scope = _field(meta, file, "state-scope", str, "a directory name")
    if not is_path_component(scope):
        raise checkpoint_error(
            file,
            "field 'state-scope'",
            f"is {scope!r}; expected one directory name (clients keep their state in "
            "<state-dir>/<state-scope>): not '.' or '..', no '/', '\\' or control characters",
        )
    _field(meta, file, "rule", str, "the name of the aggregation rule")
    clients = _field(meta, file, "num-clients", int, "a number of partitions")
    if clients < 1:
        raise checkpoint_error(file, "field 'num-clients'", f"is {clients}; expected >= 1")
    _names(meta, file, "global-arrays")
    _names(meta, file, "rule-arrays")
    _field(meta, file, "rng", dict, "the python and numpy RNG states")
    config = _field(meta, file, "run-config", dict, "the resolved run config")
    for key, value in config.items():
        if not isinstance(value, bool | int | float | str):
            raise checkpoint_error(
                file, f"field 'run-config.{key}'", f"is {value!r}; expected a scalar value"
            )
    return meta


def _read_arrays(file: Path, expected: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``arrays.npz``: exactly ``expected``, real-valued and finite (but the
    uint8 torch RNG state).
    """
    try:
        if not zipfile.is_zipfile(file):
            raise ValueError(
                f"{file.stat().st_size} bytes, not a zip archive: truncated or overwritten"
            )
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it does not start as a zip archive")
        with loaded as npz:
            stored = {k: npz[k] for k in npz.files}
    except (
        OSError,
        EOFError,
        ValueError,
        NotImplementedError,
        zipfile.BadZipFile,
        zlib.error,
    ) as err:
        raise checkpoint_error(
            file, "the file", f"is not a readable .npz archive ({err})"
        ) from None
    missing = [k for k in expected if k not in stored]
    if missing:
        raise checkpoint_error(file, f"entry {missing[0]!r}", "is missing (state.json lists it)")
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise checkpoint_error(file, f"entry {extra[0]!r}", "is not listed in state.json")
    for name, array in stored.items():
        if name == RNG_TORCH:
            if array.dtype != np.uint8 or array.ndim != 1:
                raise checkpoint_error(
                    file,
                    f"entry {name!r}",
                    f"has dtype {array.dtype} and shape {array.shape}; expected 1-d uint8",
                )
        elif array.dtype.kind not in "biuf":
            raise checkpoint_error(
                file, f"array {name!r}", f"has dtype {array.dtype}; expected real numbers"
            )
        elif not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise checkpoint_error(
                file, f"array {name!r}", f"holds {bad} non-finite value(s) (NaN or inf)"
            )
    return stored


def read_checkpoint(path: Path) -> Checkpoint:
    """Load the checkpoint ``find_checkpoint(path)`` names, checked on its own (not yet
    against a run): CheckpointError naming the file and field of the first problem. The
    process's RNG states are left as they were.
    """
    directory = find_checkpoint(path)
    meta = _read_meta(directory)
    global_names, rule_names = meta["global-arrays"], meta["rule-arrays"]
    stored = _read_arrays(
        directory / ARRAYS_FILE,
        [GLOBAL + k for k in global_names] + [RULE + k for k in rule_names] + [RNG_TORCH],
    )
    rng = {**meta["rng"], "torch": stored[RNG_TORCH]}
    _check_rng(rng, directory)
    return Checkpoint(
        round=meta["round"],
        arrays={k: stored[GLOBAL + k] for k in global_names},
        rule_state={k: stored[RULE + k] for k in rule_names},
        scope=meta["state-scope"],
        config=dict(meta["run-config"]),
        rule=meta["rule"],
        num_clients=meta["num-clients"],
        rng=rng,
        path=directory,
    )


def check_restorable(ckpt: Checkpoint, initial: ArrayRecord, strategy: FederatedStrategy) -> None:
    """CheckpointError unless the run can continue from ``ckpt``: its global arrays are the
    model's shared block (``initial``: names in order, shapes, dtypes) with a squared norm the
    dtype can hold, it is of ``strategy``'s rule, and its rule state has the names, shapes and
    dtypes of a fresh rule's and is accepted by ``restore_state``. The rule state is restored
    into a copy of ``strategy`` (discovered, not yet run), which is left untouched.
    """
    assert ckpt.path is not None
    state_file, arrays_file = ckpt.path / STATE_FILE, ckpt.path / ARRAYS_FILE
    model = record_to_numpy(initial)
    if list(ckpt.arrays) != list(model):
        raise checkpoint_error(
            state_file,
            "field 'global-arrays'",
            f"is {list(ckpt.arrays)}; the model's shared block is {list(model)}",
        )
    for name, array in ckpt.arrays.items():
        want = model[name]
        if array.shape != want.shape or array.dtype != want.dtype:
            raise checkpoint_error(
                arrays_file,
                f"array {GLOBAL + name!r}",
                f"has shape {array.shape} and dtype {array.dtype}; the model's shared block "
                f"has {want.shape} and {want.dtype}",
            )
        if want.dtype.kind == "f":
            limit = float(np.finfo(want.dtype).max)
            squared = float(np.square(array, dtype=np.float64).sum())
            if squared > limit:
                raise checkpoint_error(
                    arrays_file,
                    f"array {GLOBAL + name!r}",
                    f"has squared norm {squared:.3g}, beyond the largest {want.dtype} "
                    f"({limit:.3g}): training from it overflows",
                )
    rule = type(strategy).__name__
    if ckpt.rule != rule:
        raise checkpoint_error(
            state_file, "field 'rule'", f"is {ckpt.rule!r}; this run's algorithm uses {rule}"
        )
    trial = copy.deepcopy(strategy)
    trial.shared_template = {k: (tuple(a.shape), a.dtype) for k, a in initial.items()}
    trial.init_state(initial)
    fresh = trial.checkpoint_state()
    missing = sorted(set(fresh) - set(ckpt.rule_state))
    extra = sorted(set(ckpt.rule_state) - set(fresh))
    if missing or extra:
        raise checkpoint_error(
            state_file,
            "field 'rule-arrays'",
            f"lacks {missing} and holds unknown {extra} ({rule} with {strategy.num_clients} "
            "partitions)",
        )
    for name, array in ckpt.rule_state.items():
        want = np.asarray(fresh[name])
        if array.shape != want.shape or array.dtype != want.dtype:
            raise checkpoint_error(
                arrays_file,
                f"array {RULE + name!r}",
                f"has shape {array.shape} and dtype {array.dtype}; {rule} keeps {want.shape} "
                f"and {want.dtype}",
            )
    try:
        trial.restore_state(ckpt.rule_state)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
        raise checkpoint_error(
            arrays_file, "the rule state", f"is refused by {rule}.restore_state: {err}"
        ) from None


def load_resume(config: Mapping[str, Any]) -> Checkpoint:
    """The checkpoint ``resume-from`` names, checked on its own and against ``config``:
    ConfigError if there is none, CheckpointError naming the file and field if it is damaged
    or a math-relevant key differs, before anything is changed.
    """
    where = Path(str(config["resume-from"])).expanduser().resolve()
    prefix = f"run config resume-from={str(config['resume-from'])!r}"
    if not where.exists():
        raise ConfigError(f"{prefix}: no such file or directory")
    try:
        ckpt = read_checkpoint(where)
    except OSError as err:  # find_checkpoint: no checkpoint there, or not listable
        raise ConfigError(f"{prefix}: cannot read the checkpoint: {err}") from None
    saved = ckpt.config
    cosine = saved.get("lr-schedule") == "cosine"
    for key in sorted(set(config) | set(saved)):
        if key in OPERATIONAL_KEYS and not (key == "num-server-rounds" and cosine):
            continue
        if key not in saved or key not in config or saved[key] != config[key]:
            raise CheckpointError(
                f"{prefix}: run config {key}={config.get(key)!r} differs from the checkpoint's "
                f"{key}={saved.get(key)!r} ({ckpt.path}/{STATE_FILE}, field 'run-config'); a "
                "resumed run keeps every key that changes the math (only "
                f"{', '.join(sorted(OPERATIONAL_KEYS))} may differ); nothing was deleted or "
                "changed"
            )
    if int(config["num-server-rounds"]) <= ckpt.round:
        raise ConfigError(
            f"{prefix}: the checkpoint is already at round {ckpt.round}; num-server-rounds="
            f"{config['num-server-rounds']} leaves nothing to run"
        )
    log(INFO, "Resuming after round %d from %s", ckpt.round, ckpt.path)
    return ckpt
