"""Tasks: the pluggable kinds of reconstruction job, one registry like MODELS and LOSSES.

A task (:class:`~workbench.tasks.base.Task`) supplies what differs between jobs: how
to simulate data with ground truth, how to load a user's files, its default model,
losses and config, the training objective, whole-volume prediction, metrics,
classical baselines, its command-line verbs and what the viewers show. The trainer,
checkpoints, schedules, tiling, the napari panels and the notebook helpers stay
generic and look a task up here by name.

Task modules are imported on first use, so ``workbench tasks`` and config validation
stay fast and a task's optional dependencies are only needed when it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from workbench.tasks.base import Task

#: name -> "module:attribute" of the task object
TASK_MODULES: dict[str, str] = {
    "dwi": "workbench.tasks.dwi.task:TASK",
    "sr": "workbench.tasks.sr.task:TASK",
    "dot": "workbench.tasks.dot.task:TASK",
    "xray2ct": "workbench.tasks.xray2ct.task:TASK",
}

#: older names still accepted (configs and checkpoints written before the task layer)
TASK_ALIASES: dict[str, str] = {"dwi_denoise": "dwi"}

_loaded: dict[str, "Task"] = {}


def canonical_task_name(name: str) -> str:
    """``name`` with aliases resolved; unknown names list the known ones."""
    name = TASK_ALIASES.get(str(name), str(name))
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASK_MODULES))}")
    return name


def get_task(name: str) -> "Task":
    """The registered task called ``name`` (or one of its aliases)."""
    name = canonical_task_name(name)
    if name not in _loaded:
        module, attr = TASK_MODULES[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), attr)
    return _loaded[name]


class _TaskRegistry(dict):
    """``TASKS[name]`` -> Task, imported lazily; iteration gives the names."""

    def __getitem__(self, name: str) -> "Task":
        return get_task(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and TASK_ALIASES.get(name, name) in TASK_MODULES

    def __iter__(self):
        return iter(TASK_MODULES)

    def __len__(self) -> int:
        return len(TASK_MODULES)

    def keys(self):
        return TASK_MODULES.keys()

    def values(self):
        return [get_task(n) for n in TASK_MODULES]

    def items(self):
        return [(n, get_task(n)) for n in TASK_MODULES]

    def get(self, name, default=None):
        return get_task(name) if name in self else default


TASKS = _TaskRegistry()

__all__ = ["TASKS", "TASK_MODULES", "TASK_ALIASES", "get_task", "canonical_task_name"]
