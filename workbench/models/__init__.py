"""Conditioned 3-D reconstruction networks, their registry and introspection helpers.

Every model follows the contract of docs/CONTRIBUTING_CORE.md: ``Net(in_channels,
out_channels=1, num_conditions=1, base_filters=24, embedding_dim=32, use_cbam=True,
residual_channel=None)`` and ``forward(x (B, C_in, D, H, W), cond (B,) long)``.
This package never imports :mod:`workbench.config`; :func:`build_model` accepts any
object with ``name``, ``base_filters``, ``embedding_dim`` and ``use_cbam`` attributes.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.models.base import ConditionedReconNet
from workbench.models.blocks import CBAM3d
from workbench.models.denoiser import DenoiserNet
from workbench.models.dot import DotNet
from workbench.models.frequency import FrequencyDomainNet
from workbench.models.fusion import EstimateFusionNet
from workbench.models.multiscale import MultiScaleDetailNet
from workbench.models.progressive import ProgressiveDetailNet
from workbench.models.sr import RRDBSuperResNet
from workbench.models.sr3 import SR3UNet
from workbench.models.xray2ct import BiplanarLiftNet

Tensor = torch.Tensor

MODELS: dict[str, type[nn.Module]] = {
    "denoiser": DenoiserNet,
    "multiscale": MultiScaleDetailNet,
    "progressive": ProgressiveDetailNet,
    "frequency": FrequencyDomainNet,
    "rrdb_sr": RRDBSuperResNet,
    "sr3": SR3UNet,
    "dot_net": DotNet,
    "biplanar_lift": BiplanarLiftNet,
    "estimate_fusion": EstimateFusionNet,
}

__all__ = [
    "MODELS", "build_model", "collect_attention_maps", "model_summary", "ConditionedReconNet",
    "DenoiserNet", "MultiScaleDetailNet", "ProgressiveDetailNet", "FrequencyDomainNet", "RRDBSuperResNet", "SR3UNet",
    "DotNet", "BiplanarLiftNet", "EstimateFusionNet",
]


def build_model(cfg: Any, **spec: Any) -> nn.Module:
    """Build ``MODELS[cfg.name]`` from a model config and the task's model spec.

    ``spec`` holds what the task's data decides (``in_channels``, ``out_channels``,
    ``num_conditions``, ``residual_channel``, ``scale`` ...); the config gives the size
    (``base_filters``, ``embedding_dim``, ``use_cbam``) and ``cfg.options`` any further
    constructor arguments. Keys the model's constructor does not take are dropped from
    the generic settings; an unknown key in ``cfg.options`` is an error naming the known ones.
    """
    name = str(cfg.name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    params = inspect.signature(cls).parameters
    options = dict(getattr(cfg, "options", None) or {})
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"model {name!r} takes no option(s) {unknown}; its arguments: {', '.join(params)}")
    generic = {"base_filters": int(cfg.base_filters), "embedding_dim": int(cfg.embedding_dim),
               "use_cbam": bool(cfg.use_cbam), **spec}
    kwargs = {k: v for k, v in generic.items() if k in params}
    return cls(**kwargs, **options)


def _to_input_size(m: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Bring a map of a padded (and possibly downsampled) grid back to the input grid.

    Models pad at the far end to a multiple of 2**k, so a map of edge ``s`` covers
    ``s * f`` input voxels, ``f`` a power of two; upsample by ``f`` then crop.
    """
    target = []
    for s_in, s_map in zip(size, m.shape[-3:]):
        f = 2 ** max(0, round(math.log2(s_in / s_map))) if s_map < s_in else 1
        target.append(s_map * f)
    if tuple(target) != tuple(m.shape[-3:]):
        m = F.interpolate(m, size=tuple(target), mode="trilinear", align_corners=False)
    return m[..., : size[0], : size[1], : size[2]]


def collect_attention_maps(model: nn.Module, x: Tensor, cond: Tensor, *, resize: bool = True,
                           return_output: bool = False):
    """CBAM spatial attention maps of one forward pass, ``{block_name: (B, 1, D, H, W)}``.

    A forward hook on the ``spatial_gate`` of every :class:`CBAM3d` records its output;
    the hooks are removed afterwards, the pass runs under ``torch.no_grad`` and the hooks
    only read, so the model output is unchanged. Keys are the qualified module names of
    the CBAM blocks (e.g. ``"cbam1"``); maps are detached float32 in [0, 1]. With
    ``resize`` (default) maps of padded or half-resolution blocks are upsampled and
    cropped to the spatial size of ``x``; otherwise they are returned as computed.
    With ``return_output`` the result is ``(maps, model_output)``. A model without
    CBAM blocks gives an empty dict.
    """
    maps: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            maps[name] = output.detach().float()
        return hook

    try:
        for name, module in model.named_modules():
            if isinstance(module, CBAM3d):
                handles.append(module.spatial_gate.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            out = model(x, cond)
    finally:
        for h in handles:
            h.remove()
    if resize:
        size = tuple(int(s) for s in x.shape[-3:])
        maps = {k: _to_input_size(v, size).contiguous() for k, v in maps.items()}
    return (maps, out) if return_output else maps


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Class, parameter counts, size and constructor settings of ``model``."""
    params = list(model.parameters())
    summary: dict[str, Any] = {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "size_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
        "cbam_blocks": [n for n, m in model.named_modules() if isinstance(m, CBAM3d)],
    }
    for key in ("in_channels", "out_channels", "num_conditions", "base_filters", "embedding_dim", "use_cbam",
                "residual_channel", "size_multiple"):
        if hasattr(model, key):
            summary[key] = getattr(model, key)
    return summary
