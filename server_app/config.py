"""The run-config schema: every key's type and allowed values, checked before round 1.

Flower merges ``[tool.flwr.app.config]`` with ``--run-config`` overrides; this module turns
that dict into a validated, fully resolved mapping (the same kebab-case keys) that the
strategy sends to every client in its ConfigRecord.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from strategies.registry import ALGORITHMS
from tasks.data import PARTITIONERS
from tasks.personalization import MODES
from tasks.registry import TASKS

Scalar = int | float | str | bool


class ConfigError(ValueError):
    """A run-config value is unknown, out of range or contradicts another one."""


@dataclass(frozen=True)
class Key:
    """One run-config key: its type, a predicate on the value and the allowed values in words.

    ``describe`` is called when an error is reported, so registries extended at run time
    (e.g. a task added by a plugin or a test) are listed as they are then.
    """

    kind: type
    check: Callable[[Any], bool]
    describe: Callable[[], str]

    @property
    def allowed(self) -> str:
        """The allowed values, in words."""
        return self.describe()


def _choice(options: Collection[str]) -> Key:
    """A string key whose value must be in ``options`` (looked up at check time)."""
    return Key(str, lambda v: v in options, lambda: "one of " + ", ".join(map(repr, options)))


def _num(kind: type, low: float, high: float = math.inf, low_open: bool = False) -> Key:
    def check(v: Any) -> bool:
        if not math.isfinite(float(v)):
            return False
        return bool((v > low if low_open else v >= low) and v <= high)

    left = "(" if low_open else "["
    right = "]" if high != math.inf else ")"
    text = f"a{'n integer' if kind is int else ' number'} in {left}{low}, {high}{right}"
    return Key(kind, check, lambda: text)


def _any(kind: type, allowed: str) -> Key:
    return Key(kind, lambda v: True, lambda: allowed)


SCHEMA: dict[str, Key] = {
    "algorithm": _choice(ALGORITHMS),
    "task": _choice(TASKS),
    "num-server-rounds": _num(int, 1),
    "fraction-train": _num(float, 0.0, 1.0, low_open=True),
    "fraction-evaluate": _num(float, 0.0, 1.0),
    "min-train-nodes": _num(int, 1),
    "local-epochs": _num(int, 1),
    "batch-size": _num(int, 1),
    "lr": _num(float, 0.0, low_open=True),
    "lr-schedule": _choice(("constant", "cosine")),
    "momentum": _num(float, 0.0, 0.999),
    "weight-decay": _num(float, 0.0),
    "seed": _num(int, 0, 2**31 - 1),
    "device": _choice(("auto", "cpu", "cuda")),
    "partitioner": _choice(PARTITIONERS),
    "dirichlet-alpha": _num(float, 0.0, low_open=True),
    "classes-per-client": _num(int, 1),
    "personalization": _choice(("auto", *MODES)),
    "local-test-fraction": _num(float, 0.0, 0.9),
    "proximal-mu": _num(float, 0.0),
    "rho": _num(float, 0.0, low_open=True),
    "sigma": _num(float, 0.0),
    "xi0": _num(float, 0.0),
    "mu-xi": _num(float, 0.0, 1.0, low_open=True),
    "personal-epochs": _num(int, 0),
    "shared-epochs": _num(int, 0),
    "warm-start": _choice(("server", "local")),
    "client-weighting": _choice(("uniform", "examples")),
    "data-dir": _any(str, "a directory path ('' = none)"),
    "download": _any(bool, "true or false"),
    "output-dir": Key(str, lambda v: bool(v.strip()), lambda: "a non-empty directory path"),
    "run-name": _any(str, "a name ('' = algorithm-task-seed-time)"),
    "round-timeout": _num(float, 0.0, low_open=True),
    "state-dir": _any(str, "a directory path ('' = keep client state in memory only)"),
    "resume-from": Key(
        str,
        lambda v: not v or Path(v).expanduser().exists(),
        lambda: (
            "'' (start fresh) or an existing run directory, its checkpoint/ directory or "
            "a checkpoint/round-<k> directory"
        ),
    ),
    "min-available-nodes": _num(int, 1),
    # Bayesian ADMM / IVON-ADMM (ALGORITHMS.md §2)
    "gamma": _num(float, 0.0, 1.0, low_open=True),
    "tau": _num(float, 0.0, low_open=True),
    "prior-precision": _num(float, 0.0, low_open=True),
    "server-step": _num(float, 0.0, 1.0),
    "hess-init": _num(float, 0.0),
    "beta1": _num(float, 0.0, 0.999),
    "beta2": _num(float, 0.0, 1.0),
    "mc-samples": _num(int, 0),
    "eval-samples": _num(int, 0),
    "precision-floor": _num(float, 0.0, low_open=True),
    # FedPM / LocalNewton / FedNL (ALGORITHMS.md §3)
    "eta": _num(float, 0.0, low_open=True),
    "newton-steps": _num(int, 1),
    "curvature": _choice(("hessian", "foof", "diagonal")),
    "damping": _num(float, 0.0),
    "line-search": _choice(("armijo", "none")),
    "foof-ema": _num(float, 0.0, 0.999),
    "foof-refresh": _num(int, 1),
    "curvature-cap-mb": _num(float, 0.0, low_open=True),
    # SCAFFOLD (issue 5)
    "server-lr": _num(float, 0.0, low_open=True),
}


def _typed(name: str, value: Any, key: Key) -> Scalar:
    if key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, key.kind) and not (key.kind is not bool and isinstance(value, bool)):
        return cast(Scalar, value)
    raise ConfigError(
        f"run config {name}={value!r} has type {type(value).__name__}; expected {key.allowed}"
    )


def validate_run_config(raw: Mapping[str, Any]) -> dict[str, Scalar]:
    """Check every key of ``raw`` and return the resolved config; raise ConfigError otherwise.

    The error names the key, the value and what is allowed. ``personalization='auto'``
    resolves to the algorithm preset's own mode. Cross-key rules: the
    personalization mode must exist for the task's model, ``partitioner='natural'`` needs a
    task with natural clients, ``device='cuda'`` needs CUDA, a task whose data lives on
    disk needs ``data-dir`` or ``download=true``, and the preset's own ``check`` must pass.
    """
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; known keys: {', '.join(SCHEMA)}"
        )
    missing = sorted(set(SCHEMA) - set(raw))
    if missing:
        raise ConfigError(f"run config lacks key(s) {', '.join(missing)} (see pyproject.toml)")
    cfg: dict[str, Scalar] = {}
    for name, key in SCHEMA.items():
        value = _typed(name, raw[name], key)
        if not key.check(value):
            raise ConfigError(f"run config {name}={value!r} is not allowed; expected {key.allowed}")
        cfg[name] = value
    if cfg["personalization"] == "auto":
        cfg["personalization"] = ALGORITHMS[str(cfg["algorithm"])].personalization[0]
    _check_combinations(cfg)
    return cfg


def _check_combinations(cfg: Mapping[str, Scalar]) -> None:
    from tasks.personalization import PersonalizationError, split_names
    from tasks.registry import get_task

    algorithm = ALGORITHMS[str(cfg["algorithm"])]
    task = get_task(str(cfg["task"]))
    mode = str(cfg["personalization"])
    if mode not in algorithm.personalization:
        raise ConfigError(
            f"run config personalization={mode!r} is not defined for algorithm="
            f"{cfg['algorithm']!r}; allowed: {', '.join(algorithm.personalization)}"
        )
    try:
        model = task.build_model(mode)
        shared, _ = split_names(model, mode)
    except PersonalizationError as err:
        raise ConfigError(f"run config personalization: {err}") from None
    if algorithm.check is not None:
        params = model.state_dict()
        problem = algorithm.check(cfg, sum(params[name].numel() for name in shared))
        if problem:
            raise ConfigError(f"run config: {problem}")
    if cfg["partitioner"] == "natural" and not task.natural_clients:
        raise ConfigError(
            f"run config partitioner='natural' needs a task with natural clients; task="
            f"{cfg['task']!r} has none; allowed: 'iid', 'dirichlet', 'pathological'"
        )
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run config device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
