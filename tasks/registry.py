"""Task names -> task objects. The only place that knows every task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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


def get_task(name: str, model: str = "") -> Task:
    """The task called ``name`` with ``model`` (one of its ``models``; ``''`` = its default);
    raises ValueError listing the known tasks, or the task's models, otherwise.
    """
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; allowed: {', '.join(TASKS)}")
    task = TASKS[name]()
    task.select_model(model)
    return task


def task_of(config: Mapping[str, Any]) -> Task:
    """The task and model a run config names (``task``, ``model``)."""
    return get_task(str(config["task"]), str(config.get("model", "")))
