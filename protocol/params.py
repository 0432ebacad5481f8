"""Declared run-config keys: a typed value with a default, an allowed range and a meaning.

A method's hyper-parameters are frozen dataclasses whose fields are declared with ``param``
(``methods/hyper.py``); the run-config schema, the pyproject defaults check, the README key
table check and the bad-value tests are all derived from those declarations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

Scalar = int | float | str | bool

AUTO = "auto"
"""A run-config value meaning "the method's own value" (its preset, else the key's default)."""


@dataclass(frozen=True)
class Param:
    """One run-config key: type, default, a predicate on values, and what is allowed in words.

    ``describe`` is called when an error is reported, so registries extended at run time (a task
    added by a test) are listed as they are then. ``bad`` are values the check must refuse
    (the generated bad-value tests).
    """

    key: str
    kind: type
    default: Scalar
    check: Callable[[Any], bool]
    describe: Callable[[], str]
    doc: str
    bad: tuple[Any, ...] = ()

    @property
    def allowed(self) -> str:
        """The allowed values, in words."""
        return self.describe()

    def typed(self, value: Any) -> Scalar:
        """``value`` as this key's type (an int is a float where a float is expected); TypeError
        if it has another type.
        """
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool)):
            return cast(Scalar, value)
        raise TypeError(f"has type {type(value).__name__}; expected {self.allowed}")


def choice(key: str, default: str, options: Collection[str], doc: str) -> Param:
    """A string key whose value must be in ``options`` (looked up at check time)."""
    return Param(
        key,
        str,
        default,
        lambda v: v in options,
        lambda: "one of " + ", ".join(map(repr, options)),
        doc,
        ("no-such-value", 1),
    )


def num(
    key: str,
    kind: type,
    default: float,
    low: float,
    high: float = math.inf,
    doc: str = "",
    low_open: bool = False,
) -> Param:
    """A number in ``[low, high]`` (``(low, high]`` with ``low_open``), finite."""

    def check(v: Any) -> bool:
        if not math.isfinite(float(v)):
            return False
        return bool((v > low if low_open else v >= low) and v <= high)

    left = "(" if low_open else "["
    right = "]" if high != math.inf else ")"
    text = f"a{'n integer' if kind is int else ' number'} in {left}{low}, {high}{right}"
    bad: list[Any] = [low - 1 if kind is int else (low if low_open else low - 1.0), "x"]
    if high != math.inf:
        bad.append(high + 1)
    if kind is float:
        bad.append(math.nan)
    if kind is int:
        bad.append(1.5)
    return Param(key, kind, kind(default), check, lambda: text, doc, tuple(bad))


def text(
    key: str,
    default: str,
    allowed: str,
    doc: str,
    check: Callable[[Any], bool] | None = None,
    bad: tuple[Any, ...] = (3,),
) -> Param:
    """A free string (optionally checked)."""
    return Param(key, str, default, check or (lambda v: True), lambda: allowed, doc, bad)


def flag(key: str, default: bool, doc: str) -> Param:
    """A boolean."""
    return Param(key, bool, default, lambda v: True, lambda: "true or false", doc, ("yes", 1))


def field(spec: Param) -> Any:
    """A dataclass field declared by ``spec`` (its default; the Param kept in the metadata)."""
    return dataclasses.field(default=spec.default, metadata={"param": spec})


def params_of(hyper: type) -> dict[str, Param]:
    """The declared keys of a hyper-parameter dataclass, by key, in field order."""
    out: dict[str, Param] = {}
    for f in dataclasses.fields(hyper):
        spec = f.metadata.get("param")
        if spec is None:
            raise TypeError(f"{hyper.__name__}.{f.name} is not declared with protocol.params.field")
        out[spec.key] = spec
    return out
