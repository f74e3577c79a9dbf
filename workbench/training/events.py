"""Typed events the trainer sends to callbacks (CLI progress bar, napari, notebooks).

Every front end consumes the same dataclasses, so a widget never parses log
lines. A callback is any callable taking one event; it runs on the training
thread, so GUI callbacks must hand the event over to their own thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np


@dataclass(frozen=True)
class StepEnd:
    """One optimizer step finished."""

    step: int
    total_steps: int
    loss: float
    terms: dict[str, float]
    lr: float
    grad_norm: float
    weights: dict[str, float]
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class Validation:
    """Loss on the fixed validation patches (held-out volumes: estimates MSE + sigma^2)."""

    step: int
    loss: float
    terms: dict[str, float]
    best_loss: float
    is_best: bool
    images: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsChanged:
    """A loss weight was changed while training ran (takes effect from ``step`` on)."""

    step: int
    name: str
    old: float
    new: float


@dataclass(frozen=True)
class Finished:
    """Training ended normally, by early stopping, or by a stop request."""

    step: int
    best_loss: float
    reason: str  # "completed" | "early_stopping" | "stopped"
    last_checkpoint: Optional[str]
    best_checkpoint: Optional[str]


@dataclass(frozen=True)
class Failed:
    """Training raised; the message is meant for the user, the traceback for a bug report."""

    step: int
    error: str
    traceback: str


Event = Union[StepEnd, Validation, WeightsChanged, Finished, Failed]
Callback = Callable[[Event], Any]
