"""The run-config schema, derived from the declared keys, and its validation before round 1.

Flower merges ``[tool.flwr.app.config]`` with ``--run-config`` overrides; this module turns
that dict into a validated, fully resolved mapping (the same kebab-case keys) that the
strategy sends to every client in its ConfigRecord. The schema is ``RunConfig`` plus every
registered method's hyper-parameters (``methods``): one declaration per key.

Resolution of a key: ``'auto'`` (where it is not itself an allowed value, as for ``device``)
means the method's preset, else the key's default; a concrete value is the user's. A key that
the chosen method does not use must stay at ``'auto'`` or its default, otherwise the run is
refused (a value that would be silently ignored is an error).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from methods.hyper import RunConfig
from methods.registry import METHODS, Method
from protocol.params import AUTO, Param, Scalar, params_of


class ConfigError(ValueError):
    """A run-config value is unknown, out of range or contradicts another one."""


def schema() -> dict[str, Param]:
    """Every declared key: the run's own, then each method's, in declaration order."""
    out = dict(params_of(RunConfig))
    for method in METHODS.values():
        for key, spec in method.params.items():
            if out.setdefault(key, spec) is not spec:
                raise ConfigError(f"key {key!r} is declared twice, differently (methods.hyper)")
    return out


ORIGINS = "origins"
"""``config.json`` entry: where each resolved value came from (user, method, default)."""


def _method(raw: Mapping[str, Any]) -> Method:
    return METHODS[str(_checked(params_of(RunConfig)["algorithm"], raw["algorithm"]))]


def unused_as_auto(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with every key its algorithm does not use set to ``'auto'`` (its default): one
    shared protocol (a benchmark's batch size, weighting or curvature settings) can then be
    applied to methods that take different keys, where ``resolve`` refuses a non-default value
    of a key the method would ignore.
    """
    own = {**params_of(RunConfig), **_method(raw).params}
    return {k: (v if k in own else AUTO) for k, v in raw.items()}


def _checked(spec: Param, value: Any) -> Scalar:
    try:
        typed = spec.typed(value)
    except TypeError as err:
        raise ConfigError(f"run config {spec.key}={value!r} {err}") from None
    if not spec.check(typed):
        raise ConfigError(
            f"run config {spec.key}={value!r} is not allowed; expected {spec.allowed}"
        )
    return typed


def resolve(raw: Mapping[str, Any]) -> tuple[dict[str, Scalar], dict[str, str]]:
    """The resolved config and each key's origin (``user`` / ``method`` / ``default``).

    ConfigError names the key, the value and what is allowed: unknown or missing keys, bad
    types or ranges, a key the method does not use set to a non-default value, and the
    cross-key rules of ``validate_run_config``.
    """
    keys = schema()
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; known keys: {', '.join(keys)}"
        )
    missing = sorted(set(keys) - set(raw))
    if missing:
        raise ConfigError(f"run config lacks key(s) {', '.join(missing)} (see pyproject.toml)")
    method = _method(raw)
    own = {**params_of(RunConfig), **method.params}
    cfg: dict[str, Scalar] = {}
    origins: dict[str, str] = {}
    for key, spec in keys.items():
        value = raw[key]
        auto = value == AUTO and not (spec.kind is str and spec.check(AUTO))  # device: real
        if key not in own:
            if not auto and _checked(spec, value) != spec.default:
                raise ConfigError(
                    f"run config {key}={value!r} is not a hyper-parameter of algorithm="
                    f"{method.name!r}, so it would be ignored; leave it at {spec.default!r} "
                    f"(or 'auto'). {method.name!r} uses: {', '.join(method.params)}"
                )
            cfg[key], origins[key] = spec.default, "default"
        elif auto:
            cfg[key] = _checked(spec, method.value(key, spec.default, cfg))
            preset = (
                key in method.presets
                or key == "personalization"
                or (key == "model" and cfg[key] == method.model)
            )
            origins[key] = "method" if preset else "default"
        else:
            cfg[key] = _checked(spec, value)
            origins[key] = "user" if cfg[key] != spec.default else "default"
    _check_combinations(cfg, method)
    return cfg, origins


def validate_run_config(raw: Mapping[str, Any]) -> dict[str, Scalar]:
    """Check every key of ``raw`` and return the resolved config; raise ConfigError otherwise.

    Cross-key rules: the personalization mode must be allowed by the method and exist for
    the task's model, ``partitioner='natural'`` needs a task with natural clients,
    ``device='cuda'`` needs CUDA, and the method's own ``check`` must pass.
    """
    return resolve(raw)[0]


def _check_combinations(cfg: Mapping[str, Scalar], method: Method) -> None:
    from tasks.personalization import PersonalizationError, split_names
    from tasks.registry import task_of

    try:
        task = task_of(cfg)
    except ValueError as err:
        raise ConfigError(f"run config model: {err}") from None
    mode = str(cfg["personalization"])
    if mode not in method.personalization:
        raise ConfigError(
            f"run config personalization={mode!r} is not defined for algorithm="
            f"{method.name!r}; allowed: {', '.join(method.personalization)}"
        )
    try:
        model = task.build_model(mode)
        shared, _ = split_names(model, mode)
    except PersonalizationError as err:
        raise ConfigError(f"run config personalization: {err}") from None
    if method.check is not None:
        params = model.state_dict()
        problem = method.check(cfg, sum(params[name].numel() for name in shared))
        if problem:
            raise ConfigError(f"run config: {problem}")
    if cfg["partitioner"] == "natural" and not task.natural_clients:
        raise ConfigError(
            f"run config partitioner='natural' needs a task with natural clients; task="
            f"{cfg['task']!r} has none; allowed: 'iid', 'dirichlet', 'pathological'"
        )
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run config device='cuda' but CUDA is not available; use 'auto' or 'cpu'")


REMOTE_ONLY = ("resume-from", "device")
"""Keys whose check needs the machine that runs the ServerApp (a path there, its CUDA)."""


SERVERAPP = "server_app.app:app"
"""dualflower's ServerApp in an app's ``[tool.flwr.app.components]``."""


def check_overrides(app: Path, overrides: str, *, local: bool = True) -> dict[str, Scalar] | None:
    """Resolve the app's run-config defaults (``<app>/pyproject.toml``) with ``overrides``
    (``flwr run --run-config`` syntax) before anything is started, so that a refused key is
    shown on the console that submitted it with its value and allowed range (a bare ``flwr
    run`` shows only "Invalid run configuration" for an unknown key). ``local=False`` (a
    deployment, whose ServerApp runs elsewhere) leaves ``REMOTE_ONLY`` keys to the server.
    Another Flower app (its ServerApp is not ``SERVERAPP``, e.g. the overhead benchmark's stock
    FedAvg) is not checked here: None.
    """
    from flwr.common.config import parse_config_args

    try:
        with (app / "pyproject.toml").open("rb") as fh:
            flwr_app = tomllib.load(fh)["tool"]["flwr"]["app"]
        raw = dict(flwr_app["config"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{app} is not a dualflower app directory: its pyproject.toml has no readable "
            f"[tool.flwr.app.config] ({type(err).__name__}: {err})"
        ) from None
    components = flwr_app.get("components")
    if isinstance(components, dict) and components.get("serverapp") != SERVERAPP:
        return None
    try:
        given = parse_config_args([overrides]) if overrides else {}
    except Exception as err:  # Flower's parser raises on malformed TOML fragments
        raise ConfigError(f"--run-config {overrides!r} cannot be parsed: {err}") from None
    raw.update(given)
    if not local:
        raw.update({key: AUTO if key == "device" else "" for key in REMOTE_ONLY})
    return resolve(raw)[0]
