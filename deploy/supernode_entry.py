"""``python -m deploy.supernode_entry <flower-supernode args>``: Flower's own ``flower-supernode``
with a shorter idle poll.

flwr 1.39's SuperNode loop (``flwr.supernode.start_client_internal.start_client_internal``)
sleeps a hard-coded ``time.sleep(3)`` after every pull that found no message, and polls its own
state every 0.5 s while a ClientApp works (``_push_messages``); there is no option for either.
So every phase of a round waits up to 3 s on every node before it starts. This entry point
replaces the ``time`` module *seen by that one Flower module* with a stand-in whose ``sleep``
waits at most ``DUALFLOWER_SUPERNODE_POLL_INTERVAL`` seconds (default ``DEFAULT_INTERVAL``),
then calls Flower's entry point unchanged; nothing else in the process is touched.

Cost: an idle SuperNode pulls ``1 / interval`` times a second (one small gRPC call each). For
hundreds of nodes on one SuperLink raise the interval (``3`` restores Flower's behaviour).

``tests/test_supernode_interval.py`` fails if the pinned Flower's loop no longer calls
``time.sleep(3)`` through the module global ``time`` (then the patch would do nothing).
"""

from __future__ import annotations

import dis
import importlib
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

ENV = "DUALFLOWER_SUPERNODE_POLL_INTERVAL"
DEFAULT_INTERVAL = 0.1
BOUNDS = (0.01, 3.0)
"""Allowed interval in seconds; 3 s is Flower's own idle sleep."""
SCRIPT = "flower-supernode"
"""Flower's console script whose entry point runs after the patch."""
LOOP_MODULE = "flwr.supernode.start_client_internal"
IDLE_SLEEP = 3
"""The constant of ``time.sleep(3)`` in Flower 1.39's SuperNode loop."""


class _ShortSleep:
    """Stands in for the ``time`` module inside ``LOOP_MODULE``: ``sleep`` is capped at
    ``interval``, every other attribute is the real module's.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, interval)``."""
        time.sleep(min(seconds, self.interval))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def check_interval(value: float, name: str = ENV) -> float:
    """``value`` if it is a number of seconds within ``BOUNDS``, else ValueError naming ``name``."""
    if not BOUNDS[0] <= value <= BOUNDS[1]:
        raise ValueError(f"{name}={value!r}: use seconds in [{BOUNDS[0]}, {BOUNDS[1]}]")
    return value


def interval_from_env(env: dict[str, str] | None = None) -> float:
    """The configured interval: ``ENV`` (checked by ``check_interval``), else
    ``DEFAULT_INTERVAL``.
    """
    raw = (os.environ if env is None else env).get(ENV, "")
    try:
        return check_interval(float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: use seconds in [{BOUNDS[0]}, {BOUNDS[1]}]") from None


def loop_module() -> ModuleType:
    """Flower's SuperNode loop module."""
    return importlib.import_module(LOOP_MODULE)


def idle_sleep_is_patchable(module: ModuleType) -> bool:
    """Whether ``module``'s SuperNode loop still calls ``time.sleep(IDLE_SLEEP)`` through its
    module global ``time`` (the real ``time`` module or our stand-in).
    """
    if not isinstance(module.__dict__.get("time"), ModuleType | _ShortSleep):
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(module.start_client_internal)]
    pattern = [("LOAD_GLOBAL", "time"), ("LOAD_ATTR", "sleep"), ("LOAD_CONST", IDLE_SLEEP)]
    return any(ops[k : k + 3] == pattern for k in range(len(ops) - 2))


def install(interval: float) -> bool:
    """Cap the sleeps of Flower's SuperNode loop at ``interval`` seconds; False (and nothing
    changed) when the loop does not look like flwr 1.39's.
    """
    module = loop_module()
    if not idle_sleep_is_patchable(module):
        return False
    module.time = _ShortSleep(interval)  # type: ignore[attr-defined]
    return True


def main(entry: Callable[[], None] | None = None) -> None:
    """Install the short poll, then run ``flower-supernode`` with this process's arguments."""
    interval = interval_from_env()
    if not install(interval):
        print(
            f"dualflower: {LOOP_MODULE} has no `time.sleep({IDLE_SLEEP})` idle wait (not flwr "
            f"1.39?); running Flower's SuperNode unpatched, {ENV} has no effect",
            file=sys.stderr,
            flush=True,
        )
    if entry is None:
        (script,) = entry_points(group="console_scripts", name=SCRIPT)
        entry = script.load()
    sys.argv[0] = SCRIPT
    entry()


if __name__ == "__main__":
    main()
