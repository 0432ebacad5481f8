"""Task names -> task objects. The only place that knows every task."""

from __future__ import annotations

from collections.abc import Callable

from tasks.base import Task
from tasks.breast_cancer import BreastCancerTask
from tasks.digits import DigitsTask
from tasks.synthetic import SyntheticTask


def _vision(name: str) -> Callable[[], Task]:
    def make() -> Task:
        from tasks.vision import VISION_TASKS

        return VISION_TASKS[name]()

    return make


def _multimodal(name: str) -> Callable[[], Task]:
    def make() -> Task:
        from tasks.multimodal import MULTIMODAL_TASKS

        return MULTIMODAL_TASKS[name]()

    return make


TASKS: dict[str, Callable[[], Task]] = {
    "digits": DigitsTask,
    "synthetic": SyntheticTask,
    "breast-cancer": BreastCancerTask,
    "fashion-mnist": _vision("fashion-mnist"),
    "cifar10": _vision("cifar10"),
    "cifar100": _vision("cifar100"),
    "mfeat": _multimodal("mfeat"),
    "ku-har": _multimodal("ku-har"),
    "ku-har-subsamples": _multimodal("ku-har-subsamples"),
    "crema-d": _multimodal("crema-d"),
    "crisismmd": _multimodal("crisismmd"),
}


def get_task(name: str) -> Task:
    """The task called ``name``; raises ValueError listing the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; allowed: {', '.join(TASKS)}")
    return TASKS[name]()
