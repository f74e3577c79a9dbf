"""Upsampling and area downsampling on voxel-centre-aligned grids, differentiable, any integer scale.

Grid convention (``align_corners=False``): LR voxel ``i`` covers HR voxels ``i*s .. i*s+s-1``
and its centre sits at HR coordinate ``i*s + (s-1)/2``; the affines of
:mod:`workbench.tasks.sr.degrade` follow the same convention, so every interpolation here
and the network's output land on the HR grid of the reference.

Why tricubic is hand-written: torch has no 3D cubic mode (``F.interpolate`` offers
``bicubic`` for 2D only), and ``scipy.ndimage.zoom`` aligns the grids differently (it maps
the first and last voxel *centres* onto each other, ``align_corners=True``-like, so its
output is shifted against the HR grid by a fraction of a voxel) and is neither
differentiable nor usable on the GPU. Here the Keys (1981) cubic convolution kernel
("Cubic convolution interpolation for digital image processing", IEEE TASSP 29(6)) with
``a = -0.5`` is applied separably, one axis at a time, as a single transposed 1D convolution
of stride ``s`` (a fixed ``4s``-tap kernel) after replicate padding by two LR voxels. That is
exact (the taps are the kernel's values at the HR offsets), differentiable, dtype-agnostic
(float32, and bfloat16 under autocast), and memory-frugal: besides the input and the output
only one padded intermediate volume exists at a time, and no gather indices are built.
Keys' kernel with ``a = -0.5`` reproduces polynomials up to degree 2 exactly.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _scales(scale: int | Sequence[int], nd: int) -> tuple[int, ...]:
    if nd not in (1, 2, 3):
        raise ValueError(f"expected (N, C, *spatial) with 1-3 spatial dims, got {nd} spatial dims")
    s = (int(scale),) * nd if isinstance(scale, int) else tuple(int(v) for v in scale)
    if len(s) != nd or any(v < 1 for v in s):
        raise ValueError(f"scale {scale} must be one positive integer or {nd} of them")
    return s


def keys_kernel(d: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel ``W(d)`` (support ``|d| < 2``, ``W(0) = 1``, ``W(k) = 0``)."""
    d = d.abs()
    inner = (a + 2) * d**3 - (a + 3) * d**2 + 1
    outer = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return torch.where(d <= 1, inner, torch.where(d < 2, outer, torch.zeros_like(d)))


@functools.lru_cache(maxsize=32)
def _taps(s: int) -> tuple[Tensor, int]:
    """Transposed-conv taps for scale ``s`` and the output crop (``padding``) that aligns the grids.

    HR voxel ``j`` sits at LR coordinate ``(j + 0.5)/s - 0.5``; its weight from LR voxel ``i``
    is ``W((j - i*s - (s-1)/2) / s)``. Tap ``m`` holds ``W((m - c)/s)`` with ``c = (K-1)/2``, which
    has the right fractional part for odd and even ``s``.
    """
    k = 4 * s - (s % 2)
    c = (k - 1) / 2
    taps = keys_kernel((torch.arange(k, dtype=torch.float64) - c) / s)
    crop = int(round(c + 2 * s - (s - 1) / 2))  # 2 LR voxels of replicate padding on each side
    return taps, crop


def _cubic_axis(x: Tensor, s: int, axis: int) -> Tensor:
    """Keys upsampling of ``x`` (B, 1, *spatial) by ``s`` along spatial ``axis``."""
    if s == 1:
        return x
    nd = x.dim() - 2
    taps, crop = _taps(s)
    pad = [0] * (2 * nd)
    pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = 2  # F.pad lists the last axis first
    xp = F.pad(x, pad, mode="replicate")
    shape, stride, padding = [1, 1] + [1] * nd, [1] * nd, [0] * nd
    shape[2 + axis], stride[axis], padding[axis] = taps.numel(), s, crop
    weight = taps.to(device=x.device, dtype=x.dtype).view(shape)
    return _CONV_T[nd](xp, weight, stride=stride, padding=padding)


def upsample(x: Tensor, scale: int | Sequence[int], mode: str = "cubic") -> Tensor:
    """Upsample ``x`` by an integer factor per spatial axis on a voxel-centre-aligned grid.

    Parameters
    ----------
    x : torch.Tensor
        (N, C, *spatial) with 1-3 spatial dims. Integer tensors are converted to float32.
    scale : int or tuple of int
        Factor per spatial axis (one int for all); 1 leaves an axis unchanged, e.g. ``(4, 4, 1)``.
    mode : {"cubic", "linear", "nearest"}
        ``"cubic"``: separable Keys cubic convolution (``a = -0.5``, replicate borders);
        ``"linear"``: ``F.interpolate`` (bi/tri)linear with ``align_corners=False``;
        ``"nearest"``: each LR voxel repeated ``scale`` times.

    Returns
    -------
    torch.Tensor
        (N, C, *(spatial * scale)), differentiable with respect to ``x``.
    """
    nd = x.dim() - 2
    s = _scales(scale, nd)
    if not (x.dtype.is_floating_point or x.dtype.is_complex) and mode != "nearest":
        x = x.float()
    if mode == "nearest":
        for d, f in enumerate(s):
            x = x.repeat_interleave(f, dim=2 + d) if f > 1 else x
        return x
    if mode == "linear":
        size = [n * f for n, f in zip(x.shape[2:], s)]
        return F.interpolate(x, size=size, mode=_LINEAR[nd], align_corners=False)
    if mode == "cubic":
        n, c = x.shape[:2]
        y = x.reshape(n * c, 1, *x.shape[2:])
        for d, f in enumerate(s):
            y = _cubic_axis(y, f, d)
        return y.reshape(n, c, *y.shape[2:])
    raise ValueError(f"unknown mode {mode!r}; known modes: nearest, linear, cubic")


def downsample_area(x: Tensor, scale: int | Sequence[int]) -> Tensor:
    """Mean over non-overlapping ``scale`` blocks (``avg_pool`` with kernel = stride = scale).

    Parameters
    ----------
    x : torch.Tensor
        (N, C, *spatial) with 1-3 spatial dims; the far end of each axis is cropped to a
        multiple of the scale first.
    scale : int or tuple of int
        Block size per spatial axis.

    Returns
    -------
    torch.Tensor
        (N, C, *(spatial // scale)).
    """
    nd = x.dim() - 2
    s = _scales(scale, nd)
    x = x[(...,) + tuple(slice(0, (n // f) * f) for n, f in zip(x.shape[2:], s))]
    return _POOL[nd](x, kernel_size=s, stride=s)


__all__ = ["upsample", "downsample_area", "keys_kernel"]
