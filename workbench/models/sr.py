"""Super-resolution network: a 3D residual-in-residual dense trunk with PixelShuffle upsampling.

The refinement network of seed 003 (stage 2): ESRGAN's residual-in-residual dense
blocks (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial
Networks", ECCV workshops) in 3D, and sub-pixel convolution (Shi et al. 2016, "Real-Time
Single Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional
Neural Network") generalised to volumes: a convolution to ``C * f_x * f_y * f_z``
channels followed by :func:`pixel_shuffle_nd`, x2 per stage (64^3 -> 128^3 -> 256^3).
The network predicts a residual over tricubic interpolation (Kim et al. 2016, VDSR),
so an untrained network is tricubic and training only has to learn the detail.

Hand-written because neither torch nor MONAI has a 3D RRDB; MONAI's ``SubpixelUpsample``
handles isotropic factors only, and in-plane super-resolution needs (2, 2, 1).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn

from workbench.models.blocks import CBAM3d
from workbench.resample import upsample

Tensor = torch.Tensor


def pixel_shuffle_nd(x: Tensor, factors: Sequence[int]) -> Tensor:
    """Sub-pixel shuffle for any number of spatial dims and per-axis factors.

    ``x`` is (B, C * prod(factors), *spatial); the result is (B, C, *(spatial * factors)).
    Channel ``c * prod(f) + offset`` fills sub-voxel ``offset`` (row-major over the
    factors) of output channel ``c``, as :func:`torch.nn.functional.pixel_shuffle` does in 2D.
    """
    factors = [int(f) for f in factors]
    b, c_in, *spatial = x.shape
    nd = len(spatial)
    if len(factors) != nd:
        raise ValueError(f"{len(factors)} factors for {nd} spatial dims")
    prod = math.prod(factors)
    if c_in % prod:
        raise ValueError(f"{c_in} channels are not divisible by the shuffle volume {prod}")
    c = c_in // prod
    x = x.reshape(b, c, *factors, *spatial)
    # (b, c, f1..fn, s1..sn) -> (b, c, s1, f1, s2, f2, ...)
    order = [0, 1] + [i for d in range(nd) for i in (2 + nd + d, 2 + d)]
    x = x.permute(*order)
    return x.reshape(b, c, *(s * f for s, f in zip(spatial, factors)))


class DenseBlock3d(nn.Module):
    """Five densely connected 3x3x3 convolutions with a scaled residual (ESRGAN)."""

    def __init__(self, channels: int, growth: int, res_scale: float = 0.2):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv3d(channels + i * growth, growth if i < 4 else channels, 3, padding=1) for i in range(5)
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.res_scale = res_scale
        for conv in self.convs:  # ESRGAN's 0.1-scaled Kaiming init keeps deep residual trunks stable
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            h = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.act(h))
        return x + self.res_scale * h


class RRDB3d(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a scaled residual."""

    def __init__(self, channels: int, growth: int, res_scale: float = 0.2):
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock3d(channels, growth, res_scale) for _ in range(3)))
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.blocks(x)


def stage_factors(scale: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-stage factors: x2 along every axis that still needs it (x8 = three x2 stages)."""
    remaining = [int(s) for s in scale]
    for s in remaining:
        if s < 1 or s & (s - 1):
            raise ValueError(f"scale factors must be powers of two, got {tuple(scale)}")
    stages = []
    while any(r > 1 for r in remaining):
        f = tuple(2 if r > 1 else 1 for r in remaining)
        remaining = [r // g for r, g in zip(remaining, f)]
        stages.append(f)
    return stages


class RRDBSuperResNet(nn.Module):
    """3D super-resolution: RRDB trunk on the LR grid, PixelShuffle-3D stages, tricubic residual.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1 for CT).
    scale : int or sequence of int
        Upscaling per axis, powers of two (``4`` or ``(4, 4, 1)`` for in-plane only).
    base_filters : int
        Trunk width (ESRGAN uses 64; 24 keeps CPU training and the shipped weights small).
    growth : int
        Channels each dense convolution adds.
    num_blocks : int
        RRDB blocks in the trunk.
    use_cbam : bool
        A CBAM attention block (Woo et al. 2018) after the trunk; its spatial gate is what
        the viewers show as the attention map.
    spatial_dims : int
        Only 3 is supported (2D slices are volumes with one slice and scale 1 along z).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, scale: int | Sequence[int] = 4,
                 base_filters: int = 24, growth: int = 12, num_blocks: int = 2, use_cbam: bool = True,
                 spatial_dims: int = 3):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"RRDBSuperResNet is 3D (spatial_dims=3), got {spatial_dims}: give 2D data "
                             "as volumes with one slice and scale 1 along that axis")
        self.scale = tuple(int(s) for s in (scale if isinstance(scale, Sequence) else (scale,) * 3))
        self.stages = stage_factors(self.scale)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.base_filters, self.growth, self.num_blocks = int(base_filters), int(growth), int(num_blocks)
        self.use_cbam = bool(use_cbam)
        nf = self.base_filters
        self.conv_first = nn.Conv3d(in_channels, nf, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB3d(nf, self.growth) for _ in range(num_blocks)))
        self.conv_trunk = nn.Conv3d(nf, nf, 3, padding=1)
        self.attention: Optional[CBAM3d] = CBAM3d(nf) if use_cbam else None
        self.up = nn.ModuleList(nn.Conv3d(nf, nf * math.prod(f), 3, padding=1) for f in self.stages)
        self.conv_hr = nn.Conv3d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv3d(nf, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_last.weight)  # start as exact tricubic
        nn.init.zeros_(self.conv_last.bias)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    @torch.no_grad()
    def attention_map(self, x: Tensor) -> Optional[Tensor]:
        """The CBAM spatial attention on the LR grid, (B, 1, X, Y, Z) in [0, 1] (None without CBAM).

        Runs only the trunk (no upsampling), so it is cheap for whole volumes.
        """
        if self.attention is None:
            return None
        feats = self.conv_first(x)
        h = feats + self.conv_trunk(self.trunk(feats))
        return self.attention.spatial_gate(h * self.attention.channel_gate(h)).float()

    def forward(self, x: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """``x`` (B, C, X, Y, Z) on the LR grid -> (B, C_out, sX, sY, sZ); ``cond`` is ignored."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"RRDBSuperResNet expects x of shape (B, {self.in_channels}, X, Y, Z), "
                             f"got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):  # the tricubic base stays float32 under AMP
            base = upsample(x.float(), self.scale, "cubic")[:, : self.out_channels]
        feats = self.conv_first(x)
        h = feats + self.conv_trunk(self.trunk(feats))
        if self.attention is not None:
            h = self.attention(h)
        for conv, f in zip(self.up, self.stages):
            h = self.act(pixel_shuffle_nd(conv(h), f))
        residual = self.conv_last(self.act(self.conv_hr(h)))
        return base + residual.float()
