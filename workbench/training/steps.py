"""Training objectives: what one forward pass and its loss are, outside the loop.

The trainer (:mod:`workbench.training.trainer`) owns the optimiser, mixed precision,
accumulation, DDP, checkpoints and events; it calls a *step function*
``step(model, batch, ctx) -> StepOutput`` inside ``torch.autocast`` and back-propagates
``StepOutput.loss``. This is nanoGPT's ``logits, loss = model(X, Y)`` split one level
up: the model or the task decides what the loss is, so a regression network, a
network with deep supervision and a diffusion model (which draws a noise level and
noise from ``ctx.generator``) all train through the same loop.

Which step a run uses: the trainer's ``step=`` argument (a task passes it), else the
model's own ``objective`` when its class has one, else :func:`supervised_step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from workbench.loss_weights import CompositeLoss
from workbench.training.sampling import Batch

Tensor = torch.Tensor


@dataclass
class StepContext:
    """What a step function may use besides the model and the batch.

    Attributes
    ----------
    criterion : CompositeLoss
        The live-weighted composite loss (its weights can change between steps).
    generator : torch.Generator
        Trainer-owned during training (checkpointed, so resume is exact); a fixed-seed
        generator during validation, so the validation loss is deterministic.
    training : bool
        False during validation.
    step : int
        Optimizer steps done so far.
    """

    criterion: CompositeLoss
    generator: torch.Generator
    training: bool
    step: int


@dataclass
class StepOutput:
    """A step's result: the scalar to back-propagate and what to log and preview.

    ``terms`` are plain floats (the loss terms and any extra diagnostics); ``images``
    maps a name to a 2D float32 array shown as a preview (validation only).
    """

    loss: Tensor
    terms: dict[str, float]
    images: dict[str, np.ndarray] = field(default_factory=dict)


class StepFn(Protocol):
    def __call__(self, model: torch.nn.Module, batch: Batch, ctx: StepContext) -> StepOutput: ...


def preview_slice(t: Tensor) -> np.ndarray:
    """A 2D float32 preview of the first item and channel of ``t``: (B, C, *spatial).

    2D images are returned as they are; 3D volumes are cut at the middle of the last
    axis (NIfTI z); 1D signals are returned as a one-row image.
    """
    v = t[0, 0].detach().float().cpu()
    if v.dim() == 3:
        v = v.select(-1, v.shape[-1] // 2)
    elif v.dim() == 1:
        v = v[None]
    return v.numpy().astype(np.float32, copy=True)


def prediction_previews(batch: Batch, pred: Tensor) -> dict[str, np.ndarray]:
    """Input, prediction and target previews; the input is skipped when not image-like."""
    out = {"prediction": preview_slice(pred), "target": preview_slice(batch.target)}
    if batch.input.dim() == pred.dim():
        out = {"input": preview_slice(batch.input), **out}
    return out


def supervised_step(model: torch.nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
    """The default objective: ``criterion(model(input, cond), target, mask)``.

    The prediction is cast to float32 before the loss, so the loss is computed in
    float32 under autocast (Micikevicius et al. 2018, mixed-precision training).
    """
    pred = model(batch.input, batch.cond).float()
    loss, terms = ctx.criterion(pred, batch.target, batch.mask)
    images = {} if ctx.training else prediction_previews(batch, pred)
    return StepOutput(loss, terms, images)


def resolve_step(model: torch.nn.Module, step: Optional[Callable] = None) -> Callable:
    """The step function a run uses: ``step``, else the model's ``objective``, else supervised.

    A model brings its own objective as a class attribute ``objective`` holding a step
    function (e.g. ``objective = staticmethod(diffusion_step)``). It receives the model as
    the trainer calls it (DDP- or compile-wrapped), so it must call ``model(...)`` rather
    than a method of the bare module: DDP synchronises gradients only through ``forward``.
    """
    if step is not None:
        return step
    own = getattr(type(model), "objective", None)
    return own if callable(own) else supervised_step
