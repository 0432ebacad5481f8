"""Which parameters are personal: one predicate over parameter names, per model and mode.

A model declares, for each personalization mode it supports, the module-name prefixes of
its personal block (ALGORITHMS.md §1.8). Everything else is the shared block.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

MODES = ("none", "input", "output", "split-input", "paper")
"""``paper``: the FedAPM paper's own choice for the task (ALGORITHMS.md §1.8 table)."""


class PersonalizationError(ValueError):
    """The requested personalization mode is not defined for this model."""


def personal_prefixes(model: nn.Module, mode: str) -> tuple[str, ...]:
    """Module-name prefixes that are personal under ``mode`` for ``model``."""
    if mode not in MODES:
        raise PersonalizationError(
            f"personalization={mode!r} is not a mode; allowed: {', '.join(MODES)}"
        )
    if mode == "none":
        return ()
    presets: Mapping[str, tuple[str, ...]] = getattr(model, "personal_presets", {})
    if mode not in presets:
        allowed = ", ".join(("none", *presets))
        raise PersonalizationError(
            f"personalization={mode!r} is not defined for model {type(model).__name__}; "
            f"allowed for this task: {allowed}"
        )
    return presets[mode]


def is_personal(name: str, prefixes: tuple[str, ...]) -> bool:
    """True when parameter ``name`` lies under one of the personal module ``prefixes``."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def split_names(model: nn.Module, mode: str) -> tuple[list[str], list[str]]:
    """(shared, personal) state-dict names of ``model`` under ``mode``, in registration order."""
    prefixes = personal_prefixes(model, mode)
    names = list(model.state_dict().keys())
    personal = [n for n in names if is_personal(n, prefixes)]
    shared = [n for n in names if not is_personal(n, prefixes)]
    if not shared:
        raise PersonalizationError(
            f"personalization={mode!r} makes every parameter of {type(model).__name__} personal; "
            "nothing would be shared"
        )
    return shared, personal
