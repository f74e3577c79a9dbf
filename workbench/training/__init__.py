"""Training: the loop (:mod:`.trainer`), checkpoints, distributed helpers, events and sampling contracts.

Names are imported lazily so that ``import workbench.training.events`` (used by GUI
code) does not pull in TensorBoard or the losses.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Trainer": "trainer", "TrainResult": "trainer", "NonFiniteLossError": "trainer",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "check_compatible": "checkpoint",
    "DistInfo": "distributed", "init_distributed": "distributed", "cleanup": "distributed",
    "all_reduce_mean": "distributed",
    "Batch": "sampling", "PatchSampler": "sampling",
    "StepEnd": "events", "Validation": "events", "WeightsChanged": "events", "Finished": "events",
    "Failed": "events", "Event": "events", "Callback": "events",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
