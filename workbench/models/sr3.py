"""SR3: conditional diffusion super-resolution (Saharia et al. 2021), with cross-attention to the LR image.

Saharia, Ho, Chan, Salimans, Fleet, Norouzi, "Image Super-Resolution via Iterative
Refinement", IEEE TPAMI 2022 (arXiv:2104.07636): a UNet denoises ``x_t`` (the HR image
with noise of level ``t``) given the LR image upsampled to the HR grid and concatenated
to its input. Seed 004 (SR3-XCT, soil micro-CT) adds cross-attention: queries from the
UNet features, keys and values from an encoder of the LR image, at the attention
resolutions of the encoder, in the bottleneck and in the decoder; switchable.

The denoiser is MONAI's :class:`~monai.networks.nets.DiffusionModelUNet` (timestep
embedding, residual blocks, spatial transformers whose cross-attention takes a
``context`` sequence), so only the LR token encoder is written here. The noise
schedule and the DDIM sampler are MONAI's too (:mod:`workbench.tasks.sr.diffusion`):
MONAI is already a dependency, its schedulers take a ``torch.Generator`` (seeded,
reproducible sampling) and support epsilon and v prediction; ``diffusers`` would add a
second, larger dependency for the same schedulers.

Cross-attention here is global: the LR tokens carry a sinusoidal position code, the
queries (convolutional features) only the position their receptive field implies, so
the attention pools LR context by content. Local alignment comes from the
concatenated upsampled LR, as in SR3.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.resample import upsample

Tensor = torch.Tensor


def sinusoidal_positions_2d(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """A (h * w, dim) sinusoidal code of 2D grid positions (Vaswani et al. 2017, per axis)."""
    if dim % 4:
        raise ValueError(f"position code needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freq = torch.exp(-math.log(10_000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for pos in (ys.reshape(-1, 1) * freq, xs.reshape(-1, 1) * freq):
        parts += [pos.sin(), pos.cos()]
    return torch.cat(parts, dim=1).to(dtype)


class LREncoder(nn.Module):
    """LR image -> a sequence of context tokens (B, h * w, dim) for cross-attention.

    Three 3x3 convolutions with SiLU (a residual pair after the stem) at the LR
    resolution, then a sinusoidal code of each LR pixel's position is added.
    """

    def __init__(self, in_channels: int = 1, dim: int = 64):
        super().__init__()
        self.dim = int(dim)
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(dim, dim, 3, padding=1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, lr: Tensor) -> Tensor:
        f = self.stem(lr)
        f = f + self.body(f)
        b, c, h, w = f.shape
        tokens = f.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.norm(tokens) + sinusoidal_positions_2d(h, w, c, f.device, tokens.dtype)[None]


class SR3UNet(nn.Module):
    """The SR3 denoiser: ``model(x_t, t, lr) -> epsilon or v`` on 2D slices.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1 for CT).
    scale : int or sequence of int
        In-plane upscaling; the LR input is ``scale`` times smaller per axis than ``x_t``.
    channels : sequence of int
        UNet widths per level (multiples of ``norm_groups``); the image edge must be a
        multiple of ``2 ** (len(channels) - 1)`` (:attr:`size_multiple`).
    attention_levels : sequence of bool
        Levels with spatial transformers (self-attention, plus cross-attention when on).
    cross_attention : bool
        Attend to the LR encoder's tokens (seed 004's ``use_cross_attn``); off gives plain SR3.
    context_slices : int
        ``n``: the LR condition holds the slice and its ``n`` neighbours on each side (2n + 1
        channels, "2.5D"). In-plane super-resolution leaves the slice axis at full resolution, so
        the neighbouring LR slices are other cuts through the same structures: information a
        single slice lacks. 0 is the seed's single-slice SR3.
    context_dim : int
        Width of the LR tokens.
    num_res_blocks : int
        Residual blocks per level.
    prediction : {"v_prediction", "epsilon"}
        What the network predicts: v (Salimans & Ho 2022, stable at every noise level of a
        cosine schedule) or the noise (Ho et al. 2020).
    timesteps : int
        Length of the training noise schedule.
    noise_schedule : str
        MONAI noise schedule name: "cosine" (Nichol & Dhariwal 2021) by default.
    """

    size_multiple: int
    works_on_slices = True  # trained on, and applied to, 2D axial slices (in-plane super-resolution)

    def __init__(self, in_channels: int = 1, out_channels: int = 1, scale: int | Sequence[int] = 8,
                 channels: Sequence[int] = (32, 64, 64, 128), attention_levels: Sequence[bool] = (False, False, True, True),
                 cross_attention: bool = True, context_slices: int = 0, context_dim: int = 64,
                 num_res_blocks: int = 1,
                 num_head_channels: int = 32, norm_groups: int = 16,
                 prediction: Literal["v_prediction", "epsilon"] = "v_prediction", timesteps: int = 1000,
                 noise_schedule: str = "cosine"):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        if prediction not in ("v_prediction", "epsilon"):
            raise ValueError(f"unknown prediction {prediction!r}; known: v_prediction, epsilon")
        s = (int(scale),) * 2 if isinstance(scale, (int, float)) else tuple(int(v) for v in scale)[:2]
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.scale = s
        self.cross_attention = bool(cross_attention)
        self.context_slices = int(context_slices)
        cond_channels = in_channels * (2 * self.context_slices + 1)
        self.prediction = prediction
        self.timesteps = int(timesteps)
        self.noise_schedule = str(noise_schedule)
        self.size_multiple = 2 ** (len(channels) - 1)
        self.encoder = LREncoder(cond_channels, context_dim) if self.cross_attention else None
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=in_channels + cond_channels, out_channels=out_channels, channels=tuple(channels),
            attention_levels=tuple(attention_levels), num_res_blocks=num_res_blocks, norm_num_groups=norm_groups,
            num_head_channels=num_head_channels, with_conditioning=self.cross_attention,
            cross_attention_dim=context_dim if self.cross_attention else None)

    def condition(self, lr: Tensor) -> tuple[Tensor, Tensor | None]:
        """The upsampled LR (bicubic, on the HR grid) and the LR context tokens (None when off)."""
        up = upsample(lr.float(), self.scale, "cubic").to(lr.dtype)
        return up, (self.encoder(lr) if self.encoder is not None else None)

    def forward(self, x_t: Tensor, t: Tensor, lr: Tensor, cond: tuple[Tensor, Tensor | None] | None = None
                ) -> Tensor:
        """Predict epsilon or v for ``x_t`` (B, C, H, W) at timesteps ``t`` (B,) given ``lr`` (B, C (2n+1), H/s, W/s).

        ``cond`` may hold :meth:`condition`'s output, computed once for every sampling step.
        """
        up, context = cond if cond is not None else self.condition(lr)
        if x_t.shape[-2:] != up.shape[-2:]:
            raise ValueError(f"x_t {tuple(x_t.shape[-2:])} is not the LR {tuple(lr.shape[-2:])} x {self.scale}")
        bad = [n for n in x_t.shape[-2:] if n % self.size_multiple]
        if bad:
            raise ValueError(f"image edges {tuple(x_t.shape[-2:])} must be multiples of {self.size_multiple}")
        return self.unet(torch.cat([x_t, up], dim=1), t, context=context)

    @staticmethod
    def objective(model, batch, ctx):
        """The training step: :func:`workbench.tasks.sr.diffusion.diffusion_step`."""
        from workbench.tasks.sr.diffusion import diffusion_step

        return diffusion_step(model, batch, ctx)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes at the far end to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
