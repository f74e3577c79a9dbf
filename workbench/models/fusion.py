"""A small 3D U-Net that fuses two reconstructions of one volume, voxel by voxel.

Given two estimates of the same volume with different errors (channel 0 and channel 1,
e.g. a learned reconstruction and a linear shape model) and any further context channels
(e.g. the plain back-projection), the network predicts a per-voxel weight ``w`` in (0, 1)
and a small residual ``r``::

    fused = w * x[:, 0] + (1 - w) * x[:, 1] + residual_scale * r

It is stacked generalisation (Wolpert 1992, "Stacked generalization", Neural Networks
5(2)) with a spatially varying combiner: trained on *out-of-sample* outputs of both
estimators, it learns where each one errs. The body is a 3D U-Net (Çiçek et al. 2016,
"3D U-Net: learning dense volumetric segmentation from sparse annotation", MICCAI) of
two poolings. The head starts at zero, so an untrained network returns the plain mean of
the two estimates, and training only has to learn departures from it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = next(g for g in (4, 2, 1) if cout % g == 0)
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU(),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU())


class EstimateFusionNet(nn.Module):
    """Per-voxel weighting of two estimates (channels 0 and 1) plus a residual, from ``in_channels`` inputs.

    Parameters
    ----------
    in_channels : int
        Two estimates followed by context channels (>= 2).
    out_channels : int
        Must be 1 (one fused volume).
    base_filters : int
        Width of the first level (16 in the shipped xray2ct fusion; 2x and 4x below).
    residual_scale : float
        Scale of the residual branch, in input units (keeps it a correction, not a second estimate).

    Any spatial shape works: inputs are padded (replicate) to a multiple of 4 and the
    output is cropped back.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_filters: int = 16,
                 residual_scale: float = 0.1):
        super().__init__()
        if in_channels < 2 or out_channels != 1:
            raise ValueError(f"EstimateFusionNet fuses two estimates into one volume: in_channels >= 2 and "
                             f"out_channels 1, got {in_channels} and {out_channels}")
        self.in_channels, self.out_channels, self.residual_scale = in_channels, out_channels, float(residual_scale)
        c = base_filters
        self.enc0, self.enc1, self.enc2 = _block(in_channels, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.dec1, self.dec0 = _block(6 * c, 2 * c), _block(3 * c, c)
        self.head = nn.Conv3d(c, 2, 1)          # (weight logit, residual)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def weight_and_residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The weight of estimate 0, in (0, 1), and the unscaled residual, each (B, 1, D, H, W)."""
        shape = x.shape[-3:]
        pad = [p for s in reversed(shape) for p in (0, (-s) % 4)]
        xp = F.pad(x, pad, mode="replicate") if any(pad) else x
        f0 = self.enc0(xp)
        f1 = self.enc1(F.avg_pool3d(f0, 2))
        f2 = self.enc2(F.avg_pool3d(f1, 2))
        g1 = self.dec1(torch.cat([F.interpolate(f2, scale_factor=2), f1], 1))
        g0 = self.dec0(torch.cat([F.interpolate(g1, scale_factor=2), f0], 1))
        h = self.head(g0)[..., :shape[0], :shape[1], :shape[2]]
        return torch.sigmoid(h[:, :1]), h[:, 1:2]

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """``x`` (B, in_channels, D, H, W) -> fused (B, 1, D, H, W); ``cond`` is ignored."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"EstimateFusionNet expects (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        w, r = self.weight_and_residual(x)
        return w * x[:, :1] + (1 - w) * x[:, 1:2] + self.residual_scale * r
