"""Live loss-term weights and the weighted sum the trainer minimises.

:class:`LossWeights` is shared between the training thread and a GUI (napari sliders,
notebook sliders) that may change a weight while training runs; :class:`CompositeLoss`
reads the weights afresh at every step. The terms themselves are in :mod:`workbench.losses`.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Collection, Mapping

import torch

from workbench.losses import LOSSES, charbonnier


def _check_weight(name: str, value) -> float:
    if name not in LOSSES:
        raise ValueError(f"unknown loss term {name!r}; known terms: {', '.join(LOSSES)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"weight for {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"weight for {name!r} must be finite and >= 0, got {value!r}")
    return v


class LossWeights:
    """Loss-term weights (name in :data:`LOSSES` -> finite weight >= 0) that a GUI
    thread may change while training runs; every access holds a ``threading.Lock``.
    Each successful :meth:`set` bumps :attr:`version` and appends
    ``{"step", "name", "old", "new"}`` to :attr:`history`.
    """

    def __init__(self, weights: Mapping[str, float]):
        self._lock = threading.Lock()
        self._weights = {name: _check_weight(name, w) for name, w in dict(weights).items()}
        self._history: list[dict] = []
        self._version = 0

    def get(self) -> dict[str, float]:
        """A copy of the current weights."""
        with self._lock:
            return dict(self._weights)

    as_dict = get

    def set(self, name: str, value: float, step: int | None = None) -> float:
        """Set ``name`` to ``value`` (a known term, >= 0); returns the old weight (0 if unset)."""
        v = _check_weight(name, value)
        with self._lock:
            old = self._weights.get(name, 0.0)
            self._weights[name] = v
            self._version += 1
            self._history.append({"step": step, "name": name, "old": old, "new": v})
        return old

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    @property
    def history(self) -> list[dict]:
        """A copy of the change log, oldest first."""
        with self._lock:
            return [dict(h) for h in self._history]

    def __repr__(self) -> str:
        return f"LossWeights({self.get()!r}, version={self.version})"


class CompositeLoss:
    """Weighted sum of loss terms, reading the weights afresh at every call.

    Parameters
    ----------
    weights : LossWeights or Mapping[str, float]
        A mapping is wrapped into a new :class:`LossWeights`.
    charbonnier_eps : float
        ``eps`` of the Charbonnier term.

    Calling ``loss(pred, target, mask=None, skip=())`` returns ``(total, terms)``: ``total`` is
    the float32 tensor ``sum(w * term)``; ``terms`` maps each computed term name to its
    unweighted, detached float value.  Terms with weight 0 are neither computed nor
    reported, nor are those in ``skip`` (terms an objective computes itself, such as a
    diffusion model's denoising loss). ``terms`` supplies stateful terms by name (a perceptual loss with its feature
    network), used in place of the registry's entry.
    """

    def __init__(self, weights: LossWeights | Mapping[str, float], charbonnier_eps: float = 1e-3,
                 terms: Mapping[str, Callable[..., torch.Tensor]] | None = None):
        self.weights = weights if isinstance(weights, LossWeights) else LossWeights(weights)
        self.charbonnier_eps = float(charbonnier_eps)
        self.terms = dict(terms or {})  # stateful terms that replace a registry entry (e.g. perceptual)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 skip: Collection[str] = ()):
        weights = self.weights.get()
        total = None
        terms: dict[str, float] = {}
        for name, w in weights.items():
            if w == 0 or name in skip:
                continue
            if name in self.terms:
                value = self.terms[name](pred, target, mask)
            elif name == "charbonnier":
                value = charbonnier(pred, target, mask, eps=self.charbonnier_eps)
            else:
                value = LOSSES[name](pred, target, mask)
            terms[name] = float(value.detach())
            total = w * value if total is None else total + w * value
        if total is None:  # every weight is 0: a zero that still backpropagates
            total = pred.float().sum() * 0.0
        return total, terms
