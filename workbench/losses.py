"""Training losses for 3D volumes (see ``docs/CONTRIBUTING_CORE.md``, "Losses").

Every loss is a pure function ``fn(pred, target, mask=None) -> scalar tensor`` on
tensors shaped (B, C, D, H, W).  ``mask`` is (B, 1, D, H, W) with values in [0, 1]
(broadcast over C) or None.  Masked means divide by ``sum(mask) * C + eps``.  All
losses run in float32 with autocast disabled, whatever the input dtype.

Masks are honoured strictly: a voxel whose mask is 0 never influences any loss,
including the neighbourhood losses (``edge`` uses an eroded mask, ``gradient`` only
pairs of in-mask voxels, ``ssim`` and ``multiscale`` normalised/masked filtering,
``fft`` multiplies its inputs by the mask).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "l1", "mse", "rmse", "charbonnier", "edge", "gradient", "ssim", "multiscale", "fft",
    "sobel_magnitude_3d", "sobel_kernels_3d", "LOSSES", "get_loss",
]  # LossWeights and CompositeLoss: workbench.loss_weights (also importable from here)

_EPS = 1e-8          # denominators of masked means
_RMSE_EPS = 1e-12    # inside the square root of rmse


def _no_autocast(t: torch.Tensor):
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def _float32_loss(fn: Callable) -> Callable:
    """Check shapes, cast to float32 and disable autocast around a loss."""

    @functools.wraps(fn)
    def wrapper(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, **kw):
        if pred.shape != target.shape or pred.dim() != 5:
            raise ValueError(f"{fn.__name__}: pred and target must both be (B, C, D, H, W), "
                             f"got {tuple(pred.shape)} and {tuple(target.shape)}")
        if mask is not None and (mask.dim() != 5 or mask.shape[0] != pred.shape[0]
                                 or mask.shape[1] not in (1, pred.shape[1])
                                 or mask.shape[2:] != pred.shape[2:]):
            raise ValueError(f"{fn.__name__}: mask must be (B, 1, D, H, W) matching pred "
                             f"{tuple(pred.shape)}, got {tuple(mask.shape)}")
        with _no_autocast(pred):
            return fn(pred.float(), target.float(), None if mask is None else mask.float(), **kw)

    return wrapper


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, C, ...) weighted by ``mask`` (B, 1|C, ...): sum(x m) / (sum(m) C + eps)."""
    if mask is None:
        return x.mean()
    m = mask.expand_as(x)
    return (x * m).sum() / (m.sum() + _EPS)


# --------------------------------------------------------------------------- pointwise
@_float32_loss
def l1(pred, target, mask=None):
    """Mean absolute error, masked mean of ``|pred - target|``."""
    return _masked_mean((pred - target).abs(), mask)


@_float32_loss
def mse(pred, target, mask=None):
    """Mean squared error, masked mean of ``(pred - target) ** 2``."""
    return _masked_mean((pred - target).pow(2), mask)


@_float32_loss
def rmse(pred, target, mask=None):
    """Root mean squared error ``sqrt(mse + 1e-12)``; the epsilon keeps the gradient finite at 0."""
    return torch.sqrt(_masked_mean((pred - target).pow(2), mask) + _RMSE_EPS)


@_float32_loss
def charbonnier(pred, target, mask=None, eps: float = 1e-3):
    """Charbonnier penalty ``sqrt((pred - target)^2 + eps^2)``, a differentiable L1.

    References
    ----------
    W.-S. Lai, J.-B. Huang, N. Ahuja, M.-H. Yang, "Deep Laplacian Pyramid Networks for
    Fast and Accurate Super-Resolution", CVPR 2017 (eq. 2, eps = 1e-3).
    """
    return _masked_mean(torch.sqrt((pred - target).pow(2) + eps * eps), mask)


# --------------------------------------------------------------------------- Sobel / edges
def sobel_kernels_3d(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The three 3x3x3 Sobel kernels (derivative along D, H, W), shape (3, 3, 3, 3).

    Outer products of the derivative ``[-1, 0, 1]`` along one axis and the smoothing
    ``[1, 2, 1]`` along the two others, divided by 32 (a unit-slope ramp: central
    difference 2 times the smoothing sums 4 * 4).  For cross-correlation
    (``F.conv3d``); :func:`sobel_magnitude_3d` applies them separably.
    """
    d = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = torch.stack([torch.einsum("i,j,k->ijk", d, s, s), torch.einsum("i,j,k->ijk", s, d, s),
                     torch.einsum("i,j,k->ijk", s, s, d)])
    return (k / 32.0).to(dtype)


def _diff(v: torch.Tensor, dim: int) -> torch.Tensor:  # [-1, 0, 1], 'valid'
    return v.narrow(dim, 2, v.shape[dim] - 2) - v.narrow(dim, 0, v.shape[dim] - 2)


def _smooth(v: torch.Tensor, dim: int) -> torch.Tensor:  # [1, 2, 1], 'valid'
    n = v.shape[dim] - 2
    return v.narrow(dim, 0, n) + 2 * v.narrow(dim, 1, n) + v.narrow(dim, 2, n)


def sobel_magnitude_3d(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude from the true 3D Sobel operator, per channel.

    The kernels of :func:`sobel_kernels_3d` (a unit-slope ramp along any axis gives
    magnitude 1) applied separably: differences first, so a constant gives exactly
    0, and cheaper than a 27-tap convolution.  Replicate padding: borders create no
    spurious edges.  ``sqrt`` is guarded ("double where": sqrt(s) where s > 0, else
    0) instead of ``sqrt(s + eps)``, so values carry no ``sqrt(eps)`` offset and the
    gradient is finite everywhere (0 at s = 0).  Equals ``scipy.ndimage.sobel(v, a,
    mode="nearest") / 32`` combined over the three axes a.

    Parameters
    ----------
    x : torch.Tensor
        (B, C, D, H, W), (C, D, H, W) or (D, H, W); any sizes.  float64 stays
        float64, anything else is computed in float32.

    Returns
    -------
    torch.Tensor
        Magnitude, shaped like ``x``.

    References
    ----------
    I. Sobel, G. Feldman, "A 3x3 isotropic gradient operator for image processing"
    (1968); the nD form of ``scipy.ndimage.sobel``.
    """
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"sobel_magnitude_3d expects 3D, 4D or 5D input, got {tuple(x.shape)}")
    shape = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with _no_autocast(x):
        v = x.to(dtype).reshape(-1, 1, *shape[-3:])
        v = F.pad(v, (1, 1, 1, 1, 1, 1), mode="replicate")
        sq = None
        for axis in (2, 3, 4):
            g = _diff(v, axis)
            for other in (2, 3, 4):
                if other != axis:
                    g = _smooth(g, other)
            sq = g.pow(2) if sq is None else sq + g.pow(2)
        sq = sq[:, 0] / 1024.0  # (1/32)^2, exact
        pos = sq > 0
        mag = torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    return mag.reshape(shape)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3x3 min-filter (implicit padding is neutral): 1 only where the whole neighbourhood is in."""
    return -F.max_pool3d(-mask, kernel_size=3, stride=1, padding=1)


@_float32_loss
def edge(pred, target, mask=None):
    """L1 between 3D Sobel magnitudes (:func:`sobel_magnitude_3d`).

    With a mask, the average runs over the eroded mask (voxels whose 3x3x3 Sobel
    support lies inside the mask), so out-of-mask voxels never matter.
    """
    diff = (sobel_magnitude_3d(pred) - sobel_magnitude_3d(target)).abs()
    return _masked_mean(diff, None if mask is None else _erode(mask))


@_float32_loss
def gradient(pred, target, mask=None):
    """Gradient difference loss with alpha = 1, summed over the three spatial axes.

    Per axis: masked mean of ``| |d pred| - |d target| |`` with forward differences
    ``d``; a difference is weighted by the product of the mask at its two voxels.

    References
    ----------
    M. Mathieu, C. Couprie, Y. LeCun, "Deep multi-scale video prediction beyond mean
    square error", ICLR 2016 (eq. 5).
    """
    total = pred.new_zeros(())
    for dim in (2, 3, 4):
        n = pred.shape[dim]
        if n < 2:
            continue
        dp = (pred.narrow(dim, 1, n - 1) - pred.narrow(dim, 0, n - 1)).abs()
        dt = (target.narrow(dim, 1, n - 1) - target.narrow(dim, 0, n - 1)).abs()
        m = None if mask is None else mask.narrow(dim, 1, n - 1) * mask.narrow(dim, 0, n - 1)
        total = total + _masked_mean((dp - dt).abs(), m)
    return total


# --------------------------------------------------------------------------- SSIM
def _gaussian_blur3d(x: torch.Tensor, sizes: tuple[int, int, int], sigma: float = 1.5) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, D, H, W) with zero padding ('same' size).

    Each axis is a weighted sum of ``k`` shifted views of the padded volume: on CPU this
    is ~5x faster (forward + backward) than a 1-channel ``conv3d`` per axis, which oneDNN
    runs poorly, and equal to it within float rounding.
    """
    for axis, k in enumerate(sizes):
        if k <= 1:
            continue
        r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        g = torch.exp(-r.pow(2) / (2 * sigma * sigma))
        g = (g / g.sum()).tolist()
        dim = 2 + axis
        pad = [0] * 6
        pad[2 * (4 - dim)] = pad[2 * (4 - dim) + 1] = k // 2   # F.pad lists the last axis first
        xp = F.pad(x, pad)
        n = x.shape[dim]
        out = g[0] * xp.narrow(dim, 0, n)
        for i in range(1, k):
            out = out + g[i] * xp.narrow(dim, i, n)
        x = out
    return x


@_float32_loss
def ssim(pred, target, mask=None):
    """``1 - SSIM`` in 3D with a separable Gaussian window (sigma 1.5, size 7).

    The window size along an axis shrinks to the largest odd number <= that axis
    when the volume is smaller than 7.  Local statistics are normalised
    convolutions, ``G(m x) / G(m)`` with ``m`` the mask (all ones without one), so
    borders are renormalised and out-of-mask voxels are ignored; the SSIM map is then
    averaged with the mask.  The data range ``L`` is ``max - min`` of the target
    inside the mask, detached (1 if the target is constant); ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment:
    from error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    B, C, D, H, W = pred.shape
    m = pred.new_ones(B, 1, D, H, W) if mask is None else mask
    m = m.expand(B, C, D, H, W)
    with torch.no_grad():
        inside = target[m > 0]
        rng = (inside.max() - inside.min()) if inside.numel() else target.new_tensor(0.0)
        rng = torch.where(rng > 0, rng, torch.ones_like(rng))
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    sizes = tuple(min(7, n if n % 2 else n - 1) for n in (D, H, W))
    stack = torch.cat([m, m * pred, m * target, m * pred * pred, m * target * target,
                       m * pred * target], dim=1)
    blurred = _gaussian_blur3d(stack.reshape(B * 6 * C, 1, D, H, W), sizes).view(B, 6, C, D, H, W)
    wm = blurred[:, 0].clamp_min(1e-6)
    mu_p, mu_t = blurred[:, 1] / wm, blurred[:, 2] / wm
    var_p = (blurred[:, 3] / wm - mu_p * mu_p).clamp_min(0.0)
    var_t = (blurred[:, 4] / wm - mu_t * mu_t).clamp_min(0.0)
    cov = blurred[:, 5] / wm - mu_p * mu_t
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return 1.0 - _masked_mean(ssim_map, mask)


# --------------------------------------------------------------------------- multiscale / fft
@_float32_loss
def multiscale(pred, target, mask=None):
    """Mean of the L1 loss at scales 1, 1/2 and 1/4 (``avg_pool3d`` by 2 and 4).

    Each axis is pooled only where it keeps at least 2 voxels (a 2D slice stored with depth 1
    pools in-plane); a scale that would pool no axis is skipped (scale 1 is always
    used).  With a mask, pooling is masked (``pool(m x) / pool(m)``) and the pooled
    mask weights the L1, so out-of-mask voxels are ignored.

    References
    ----------
    Multi-scale reconstruction losses, e.g. H. Zhao, O. Gallo, I. Frosio, J. Kautz,
    "Loss Functions for Image Restoration with Neural Networks", IEEE TCI 2017.
    """
    terms = []
    for f in (1, 2, 4):
        # pool the axes long enough for it (a 2D slice stored as depth 1 pools in-plane only)
        k = tuple(f if n // f >= 2 else 1 for n in pred.shape[2:])
        if f > 1 and k == (1, 1, 1):
            continue
        if f == 1:
            terms.append(_masked_mean((pred - target).abs(), mask))
        elif mask is None:
            terms.append((F.avg_pool3d(pred, k) - F.avg_pool3d(target, k)).abs().mean())
        else:
            m = mask.expand_as(pred)
            pm = F.avg_pool3d(m, k)
            # sum(pool(m) * |pool(m p)/pool(m) - pool(m t)/pool(m)|) == sum |pool(m (p - t))|
            num = F.avg_pool3d(m * (pred - target), k).abs().sum()
            terms.append(num / (pm.sum() + _EPS))
    return torch.stack(terms).mean()


@_float32_loss
def fft(pred, target, mask=None):
    """L1 between spectral magnitudes: mean ``| |F(p m)| - |F(t m)| |``.

    ``F`` is ``torch.fft.rfftn`` over the three spatial dims with ``norm="ortho"``
    (Parseval: energy equals the voxel-domain energy); the mask multiplies the inputs
    and the mean runs over all frequency bins.

    References
    ----------
    L. Jiang, B. Dai, W. Wu, C. C. Loy, "Focal Frequency Loss for Image Reconstruction
    and Synthesis", ICCV 2021 (frequency-domain reconstruction losses).
    """
    if mask is not None:
        pred, target = pred * mask, target * mask
    fp = torch.fft.rfftn(pred, dim=(-3, -2, -1), norm="ortho")
    ft = torch.fft.rfftn(target, dim=(-3, -2, -1), norm="ortho")
    return (fp.abs() - ft.abs()).abs().mean()


# --------------------------------------------------------------------------- registry
def _perceptual(pred, target, mask=None):
    from workbench.perceptual import perceptual_unavailable

    return perceptual_unavailable(pred, target, mask)


def _projection(pred, target, mask=None):
    raise ValueError("the 'projection' term re-projects a CT volume through its X-ray geometry: only the xray2ct "
                     "task's training step computes it; set its weight to 0 for other tasks")


def _diffusion(pred, target, mask=None):
    raise ValueError("the 'diffusion' term is the denoising loss of a diffusion model: only the training step of "
                     "the sr3 model computes it; set its weight to 0 for other models")


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1": l1, "mse": mse, "rmse": rmse, "charbonnier": charbonnier, "edge": edge,
    "gradient": gradient, "ssim": ssim, "multiscale": multiscale, "fft": fft,
    # a stateful term: a task supplies it (CompositeLoss(terms=...)) when the user gives a feature network
    "perceptual": _perceptual,
    # the denoising loss of a diffusion model (sr3): its objective computes it, the weight is live like any other
    "diffusion": _diffusion,
    # projection consistency of a CT predicted from X-rays: the xray2ct step computes it
    "projection": _projection,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """The loss function called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}") from None


def __getattr__(name: str):
    """``LossWeights`` and ``CompositeLoss`` live in :mod:`workbench.loss_weights` (imported on first use)."""
    if name in ("LossWeights", "CompositeLoss"):
        from workbench import loss_weights

        return getattr(loss_weights, name)
    raise AttributeError(f"module 'workbench.losses' has no attribute {name!r}")
