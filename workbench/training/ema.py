"""Exponential moving average of a model's weights, and which weights a checkpoint predicts with."""

from __future__ import annotations

import torch


def ema_model(model: torch.nn.Module, decay: float):
    """An exponential moving average of ``model``'s weights and buffers (None when ``decay`` is 0).

    ``torch.optim.swa_utils.AveragedModel`` with the EMA update ``p_ema = decay p_ema + (1 - decay) p``
    after every optimizer step (Polyak & Juditsky 1992; as diffusion models use it, Ho et al. 2020).
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


def model_weights(ckpt: dict) -> dict:
    """The weights to predict with: the averaged (EMA) ones when the checkpoint has them."""
    ema = ckpt.get("ema_state") or {}
    averaged = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return averaged or ckpt["model_state"]
