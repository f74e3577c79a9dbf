"""Low-level helpers of the model package: normalisation, padding, initialisation."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["group_count", "GroupNorm32", "norm3d", "pad_to_multiple", "crop_to", "small_init_", "autocast_on",
           "first_conv_dtype", "spatial_mean_max"]


def group_count(channels: int, max_groups: int = 8) -> int:
    """Largest number of GroupNorm groups <= ``max_groups`` that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is active for the device of ``x``."""
    return torch.is_autocast_enabled(x.device.type)


def first_conv_dtype(x: Tensor) -> torch.dtype:
    """The dtype a convolution reading ``x`` computes in: autocast's lower-precision dtype for a
    float32 ``x`` while autocast is on for its device, else ``x.dtype``."""
    if x.dtype == torch.float32 and autocast_on(x):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def spatial_mean_max(x: Tensor, row: int = 16) -> tuple[Tensor, Tensor]:
    """Mean and max of ``x`` (B, C, *spatial) over its spatial dims, each (B, C, 1, ...).

    On a ``channels_last_3d`` tensor (the layout the networks run in) ATen reduces over
    every dim but the innermost one, the channels, which for 24 channels is ~30x slower on
    CPU than the same reduction in the contiguous layout (measured 207 ms vs 4 ms for
    24 x 72 x 72 x 80). Read as (B, voxels, C) rows, which is a view, the reduction is
    done in two steps over rows of ``row * C`` values: as fast as the contiguous one, no
    copy, and the same max (the mean differs only by float summation order). Other
    layouts and devices use the plain reduction.
    """
    dims = tuple(range(2, x.dim()))
    if (x.dim() != 5 or x.device.type != "cpu" or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last_3d)):
        return x.mean(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    b, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 4, 1).reshape(b, -1, c)
    n = rows.shape[1]
    head = n // row * row
    wide = rows[:, :head].reshape(b, -1, row * c)
    total = wide.sum(1, dtype=torch.float32 if x.dtype != torch.float64 else None).view(b, row, c).sum(1)
    peak = wide.amax(1).view(b, row, c).amax(1)
    if head < n:
        total = total + rows[:, head:].sum(1, dtype=total.dtype)
        peak = torch.maximum(peak, rows[:, head:].amax(1))
    shape = (b, c) + (1,) * len(dims)
    return (total / n).to(x.dtype).view(shape), peak.view(shape)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (Wu & He 2018) that stays fast and accurate under autocast.

    - CUDA autocast already runs ``group_norm`` in float32; a half-precision input is
      normalised in float32 here too.
    - CPU bfloat16 autocast (only chosen on CPUs with native bfloat16, see
      :func:`workbench.training.schedules.amp_settings`): the input stays bfloat16 (ATen's CPU
      kernel accumulates the group statistics in float32: error within bfloat16
      rounding) and is normalised in the contiguous layout. ATen's GroupNorm backward on
      a ``channels_last_3d`` tensor is 2-10x slower than on a contiguous one
      (``benchmarks/train_speed.py`` prints both), and float32 GroupNorm would make every
      following elementwise op (FiLM, SiLU, gates) run on twice the bytes. The output
      keeps the input's memory format.
    - Otherwise the input dtype and layout are kept.

    Parameters
    ----------
    num_groups, num_channels, eps, affine
        As for :class:`torch.nn.GroupNorm`.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not autocast_on(x) or x.dtype == torch.float32:
            return super().forward(x)
        dtype = x.dtype if (x.device.type == "cpu" and x.dtype == torch.bfloat16) else torch.float32
        w = None if self.weight is None else self.weight.to(dtype)
        b = None if self.bias is None else self.bias.to(dtype)
        channels_last = x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
        y = F.group_norm(x.to(dtype).contiguous(), self.num_groups, w, b, self.eps)
        return y.contiguous(memory_format=torch.channels_last_3d) if channels_last else y


def norm3d(channels: int) -> GroupNorm32:
    """GroupNorm with :func:`group_count` groups, float32 under autocast."""
    return GroupNorm32(group_count(channels), channels)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Pad the three spatial dims of ``x`` at their far end up to a multiple of ``multiple``.

    Replicate padding (edge values) is used so no artificial zero border enters the
    network. Returns the padded tensor and the original spatial size for :func:`crop_to`.
    ``multiple`` is normally ``2 ** levels`` for a network with ``levels`` stride-2 stages.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    size = (int(x.shape[-3]), int(x.shape[-2]), int(x.shape[-1]))
    pads = [(-s) % multiple for s in size]
    if not any(pads):
        return x, size
    # F.pad lists the last dimension first.
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate"), size


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: keep the first ``size`` voxels of each spatial dim."""
    return x[..., : size[0], : size[1], : size[2]]


def small_init_(conv: nn.Conv3d, std: float = 1e-3) -> nn.Conv3d:
    """Initialise an output layer near zero so a residual network starts near the identity."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv
