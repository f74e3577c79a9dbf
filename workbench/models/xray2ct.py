"""Biplanar X-ray -> CT: per-view 2D encoders, features lifted along the rays, a 3D decoder with deep supervision.

Stage 1 of seed 003 (two orthogonal radiographs -> a 64^3 volume), in the family of
X2CT-GAN (Ying et al. 2019, "X2CT-GAN: Reconstructing CT from Biplanar X-Rays with
Generative Adversarial Networks", CVPR), whose generator also fuses two 2D encoders into
one 3D decoder. Here the 2D -> 3D step is not learned: each view's feature maps are
back-projected along that view's rays (:func:`workbench.tasks.xray2ct.geometry.lift`,
parallel or cone beam), so the geometry places features and the 3D decoder only has to
decide *where along the ray* attenuation sits. Coordinates (CoordConv; Liu et al. 2018)
and the plain back-projection of the two views enter every 3D level. The decoder
predicts at 1/4, 1/2 and full resolution (deep supervision, seed 003's multi-scale
loss).

The model never sees a geometry object: :meth:`BiplanarLiftNet.set_geometry` takes the
per-view detector coordinates of each 3D level (buffers rebuilt from the geometry a
checkpoint records, not saved with the weights).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


def _norm2d(c: int) -> nn.Module:
    return nn.GroupNorm(_groups(c), c)


def _norm3d(c: int) -> nn.Module:
    return nn.GroupNorm(_groups(c), c)


class ConvBlock2d(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _norm2d(cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), _norm2d(cout), nn.GELU())


class ConvBlock3d(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv3d(cin, cout, 3, padding=1), _norm3d(cout), nn.GELU(),
                         nn.Conv3d(cout, cout, 3, padding=1), _norm3d(cout), nn.GELU())


class ViewEncoder(nn.Module):
    """A 2D U-Net over one X-ray: features at full, 1/2 and 1/4 detector resolution, all with global context."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        w0, w1, w2 = widths
        self.e0 = ConvBlock2d(in_channels, w0)
        self.e1 = ConvBlock2d(w0, w1, stride=2)
        self.e2 = ConvBlock2d(w1, w2, stride=2)
        self.e3 = ConvBlock2d(w2, 2 * w2, stride=2)
        self.d2 = ConvBlock2d(2 * w2 + w2, w2)
        self.d1 = ConvBlock2d(w2 + w1, w1)
        self.d0 = ConvBlock2d(w1 + w0, w0)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        f0 = self.e0(x)
        f1 = self.e1(f0)
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        g2 = self.d2(torch.cat([self._up(f3, f2), f2], 1))
        g1 = self.d1(torch.cat([self._up(g2, f1), f1], 1))
        g0 = self.d0(torch.cat([self._up(g1, f0), f0], 1))
        return [g2, g1, g0]          # coarse to fine


def _coords(grid: int) -> Tensor:
    r = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"))[None]


class BiplanarLiftNet(nn.Module):
    """Two X-rays (B, 2, nu, nv) -> a CT volume (B, 1, G, G, G) in normalised units.

    Parameters
    ----------
    in_channels : int
        Number of views (2: AP and lateral); each view is one channel of the input.
    out_channels : int
        1 (attenuation in the task's normalised HU units).
    output_grid : int
        G, voxels per axis of the output (64); the decoder levels are G/4, G/2, G.
    base_filters : int
        Channels of the finest level; the coarser levels have 2x and 4x.
    view_channels : int
        Channels each view contributes at the finest lifted level (coarser: 2x, 4x).
    out_bias : float
        Initial output value (the mean of the training targets).
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, output_grid: int = 64, base_filters: int = 12,
                 view_channels: int = 8, out_bias: float = 0.3, **_: object):
        super().__init__()
        if output_grid % 4:
            raise ValueError(f"output_grid must be a multiple of 4, got {output_grid}")
        self.in_channels, self.out_channels, self.output_grid = int(in_channels), int(out_channels), int(output_grid)
        self.grids = (output_grid // 4, output_grid // 2, output_grid)
        vc = (4 * view_channels, 2 * view_channels, view_channels)
        self.encoders = nn.ModuleList(ViewEncoder(1, vc[::-1]) for _ in range(self.in_channels))
        widths = (4 * base_filters, 2 * base_filters, base_filters)
        extra = 3 + self.in_channels          # coordinates + the views' plain back-projections
        blocks, heads = [], []
        prev = 0
        for w, c in zip(widths, vc):
            blocks.append(ConvBlock3d(prev + self.in_channels * c + extra, w))
            heads.append(nn.Conv3d(w, out_channels, 1))
            prev = w
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)
        for h in self.heads:
            nn.init.normal_(h.weight, std=1e-3)
            nn.init.constant_(h.bias, out_bias)
        for k, g in enumerate(self.grids):
            self.register_buffer(f"coords{k}", _coords(g), persistent=False)
            # rebuilt from the geometry recorded with the weights, so checkpoints stay small
            self.register_buffer(f"lift{k}", torch.zeros(self.in_channels, g, g, g, 2), persistent=False)
        self._has_geometry = False

    def set_geometry(self, lift_coords: Sequence[Sequence[Tensor]]) -> None:
        """Per level (coarse to fine), per view: detector coordinates (G, G, G, 2) of each voxel's ray."""
        for k, per_view in enumerate(lift_coords):
            getattr(self, f"lift{k}").copy_(torch.stack(list(per_view)))
        self._has_geometry = True

    @staticmethod
    def _lift(feats: Tensor, coords: Tensor) -> Tensor:
        B, C = feats.shape[:2]
        g = coords.shape[0]
        grid = coords.to(feats.dtype).reshape(1, g, g * g, 2).expand(B, -1, -1, -1)
        return F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=False
                             ).reshape(B, C, g, g, g)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Predictions at G/4, G/2 and G (coarse to fine)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BiplanarLiftNet expects X-rays of shape (B, {self.in_channels}, U, V), "
                             f"got {tuple(x.shape)}")
        if not self._has_geometry:
            raise RuntimeError("call set_geometry() (or load a checkpoint) before using BiplanarLiftNet")
        feats = [enc(x[:, v:v + 1]) for v, enc in enumerate(self.encoders)]
        outs, h = [], None
        B = x.shape[0]
        for k, (block, head, g) in enumerate(zip(self.blocks, self.heads, self.grids)):
            lift = getattr(self, f"lift{k}")
            parts = [self._lift(feats[v][k], lift[v]) for v in range(self.in_channels)]
            parts += [self._lift(x[:, v:v + 1], lift[v]) for v in range(self.in_channels)]
            parts.append(getattr(self, f"coords{k}").to(x.dtype).expand(B, -1, -1, -1, -1))
            if h is not None:
                parts.insert(0, F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False))
            h = block(torch.cat(parts, 1))
            outs.append(head(h))
        return outs

    def forward(self, x: Tensor, cond: Optional[Tensor] = None, all_scales: bool = False):
        """``x`` (B, views, U, V) scaled line integrals -> (B, 1, G, G, G); ``cond`` is ignored.

        With ``all_scales`` the list of the G/4, G/2 and G outputs (training calls it so,
        through ``forward``, which DDP needs to synchronise gradients).
        """
        outs = self.forward_all(x)
        return outs if all_scales else outs[-1]
