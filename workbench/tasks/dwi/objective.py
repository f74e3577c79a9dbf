"""The DWI training objective: the supervised loss against the held-out noisy volume.

The network never sees the volume it predicts (J-invariance, Batson & Royer 2019), so
the loss against the noisy target is Noise2Self's self-supervised loss, and its mean
squared part on validation patches (``heldout_mse``) estimates error-to-clean + sigma^2.
"""

from __future__ import annotations

from workbench.losses import mse
from workbench.training.steps import StepContext, StepOutput, prediction_previews


def jinvariant_step(model, batch, ctx: StepContext) -> StepOutput:
    """``criterion(model(input, volume index), noisy target)``; validation adds ``heldout_mse``."""
    pred = model(batch.input, batch.cond).float()
    loss, terms = ctx.criterion(pred, batch.target, batch.mask)
    if ctx.training:
        return StepOutput(loss, terms)
    terms = {**terms, "heldout_mse": float(mse(pred, batch.target, batch.mask))}
    return StepOutput(loss, terms, prediction_previews(batch, pred))
