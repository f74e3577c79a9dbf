"""Seeded, documented degradation of an HR volume into its LR counterpart, and the grids' affines.

The acquisition model (as in most CT/MRI super-resolution work, e.g. Chen et al. 2018,
"Brain MRI super resolution using 3D deep densely connected neural networks"):

1. scanner point-spread function: a Gaussian of ``psf_fwhm`` LR voxels per axis (0 along
   axes that are not downsampled), i.e. ``sigma = fwhm * scale / 2.3548`` HR voxels,
2. area downsampling: the mean over each ``scale`` block (a detector integrates over its cell),
3. noise: additive Gaussian of ``noise_std`` (in units of the volume's [0, 1] range).

The random transform follows the torchio pattern: :func:`sample_degrade_params` draws the
parameters, :func:`degrade` applies them deterministically (noise from its own seed).

Grids: LR voxel ``i`` covers HR voxels ``i*s .. i*s+s-1``; the LR affine has the HR voxel
size times the scale and its origin at the centre of the first HR block, so LR and HR
voxel centres line up in world coordinates (and in every viewer). This is the convention
of :func:`workbench.resample.upsample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from workbench.io_utils import InputError

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # 1 / 2.3548


@dataclass(frozen=True)
class DegradeParams:
    """``scale`` per axis, PSF FWHM per axis in LR voxels, noise std relative to a [0, 1] range."""

    scale: tuple[int, int, int]
    psf_fwhm: tuple[float, float, float]
    noise_std: float


def _scale3(scale: int | Sequence[int]) -> tuple[int, int, int]:
    s = (int(scale),) * 3 if np.isscalar(scale) else tuple(int(v) for v in scale)
    if len(s) != 3 or min(s) < 1:
        raise InputError(f"scale {scale} must be one positive integer or three (e.g. 4 or 4,4,1)")
    return s  # type: ignore[return-value]


def _fmt_scale(s: tuple[int, ...]) -> str:
    return str(s[0]) if len(set(s)) == 1 else str(tuple(s))


def sample_degrade_params(rng: np.random.Generator, scale: int | Sequence[int],
                          fwhm_range: tuple[float, float] = (0.8, 1.2),
                          noise_range: tuple[float, float] = (0.005, 0.02)) -> DegradeParams:
    """Draw a PSF FWHM per downsampled axis (0 where the scale is 1) and a noise level, uniformly."""
    s = _scale3(scale)
    fwhm = tuple(float(rng.uniform(*fwhm_range)) if f > 1 else 0.0 for f in s)
    return DegradeParams(s, fwhm, float(rng.uniform(*noise_range)))  # type: ignore[arg-type]


def degrade(hr: np.ndarray, params: DegradeParams, seed: int = 0) -> np.ndarray:
    """HR (X, Y, Z) -> LR float32 (X//sx, Y//sy, Z//sz): crop to a multiple, blur, block-mean, noise.

    The far end of each axis is cropped to a multiple of the scale, so the LR covers HR
    ``[0, lr_shape * scale)``. Same ``hr``, ``params`` and ``seed`` give the same LR bit for bit.
    """
    s = _scale3(params.scale)
    hr = np.asarray(hr, np.float32)
    if hr.ndim != 3:
        raise InputError(f"degrade needs a 3D volume, got shape {hr.shape}")
    if any(n < f for n, f in zip(hr.shape, s)):
        raise InputError(f"volume {hr.shape} is smaller than the scale {s}: use a smaller scale")
    hr = hr[tuple(slice(0, (n // f) * f) for n, f in zip(hr.shape, s))]
    sigma = [float(fw) * f * FWHM_TO_SIGMA for fw, f in zip(params.psf_fwhm, s)]
    blurred = ndimage.gaussian_filter(hr, sigma, mode="nearest") if any(sigma) else hr
    n = [d // f for d, f in zip(hr.shape, s)]
    lr = blurred.reshape(n[0], s[0], n[1], s[1], n[2], s[2]).mean(axis=(1, 3, 5), dtype=np.float64)
    if params.noise_std > 0:
        lr = lr + np.random.default_rng(seed).normal(0.0, params.noise_std, lr.shape)
    return lr.astype(np.float32)


def lr_affine(hr_affine: np.ndarray, scale: int | Sequence[int]) -> np.ndarray:
    """The LR grid's affine: voxel size x scale, origin at the centre of the first HR block.

    Columns of the 3x3 are multiplied by the scale; the new origin is
    ``hr_affine @ [(sx-1)/2, (sy-1)/2, (sz-1)/2, 1]``.
    """
    s = np.asarray(_scale3(scale), float)
    hr_affine = np.asarray(hr_affine, float)
    out = hr_affine.copy()
    out[:3, :3] = hr_affine[:3, :3] * s[None, :]
    out[:3, 3] = hr_affine[:3, :3] @ ((s - 1) / 2) + hr_affine[:3, 3]
    return out


def hr_affine(lr_aff: np.ndarray, scale: int | Sequence[int]) -> np.ndarray:
    """The HR grid's affine of an LR grid (the exact inverse of :func:`lr_affine`)."""
    s = np.asarray(_scale3(scale), float)
    lr_aff = np.asarray(lr_aff, float)
    out = lr_aff.copy()
    out[:3, :3] = lr_aff[:3, :3] / s[None, :]
    out[:3, 3] = lr_aff[:3, 3] - out[:3, :3] @ ((s - 1) / 2)
    return out


def check_grids(lr_shape, lr_aff, hr_shape, hr_aff, scale) -> None:
    """Refuse an LR/HR pair that does not match at ``scale``: one-line :class:`InputError` naming the fix.

    Shapes: ``hr_shape[i] // scale[i] == lr_shape[i]`` on every axis (an HR longer by less
    than one LR voxel is accepted: :func:`degrade` crops that remainder, and so must the
    caller). Affines: ``lr_aff`` must equal ``lr_affine(hr_aff, scale)`` within 1e-3 relative
    per axis (voxel size and direction) and 0.01 HR voxel on the origin.
    """
    s = _scale3(scale)
    lr_shape, hr_shape = tuple(int(n) for n in lr_shape), tuple(int(n) for n in hr_shape)
    fix = "degrade it with `workbench sr degrade`"
    if len(lr_shape) != 3 or len(hr_shape) != 3:
        raise InputError(f"LR {lr_shape} and HR {hr_shape} must both be 3D volumes: {fix}")
    want = tuple(n * f for n, f in zip(lr_shape, s))
    if any(h // f != n for h, f, n in zip(hr_shape, s, lr_shape)):
        crop = ("crop the HR to " + str(want)) if all(h >= w for h, w in zip(hr_shape, want)) else \
            f"the HR must be at least {want}: use the HR the LR was made from"
        raise InputError(f"LR grid {lr_shape} does not match HR {hr_shape} at scale {_fmt_scale(s)}: "
                         f"{crop} or {fix}")
    lr_aff, hr_aff = np.asarray(lr_aff, float), np.asarray(hr_aff, float)
    expect = lr_affine(hr_aff, s)
    vox_lr = np.linalg.norm(lr_aff[:3, :3], axis=0)
    vox_exp = np.linalg.norm(expect[:3, :3], axis=0)
    if not np.allclose(vox_lr, vox_exp, rtol=1e-3, atol=0):
        raise InputError(f"LR voxel size {np.round(vox_lr, 4).tolist()} mm is not the HR voxel size x "
                         f"{_fmt_scale(s)} ({np.round(vox_exp, 4).tolist()} mm): the LR was made at another "
                         f"scale or from another HR; pass the right --scale or {fix}")
    if np.any(np.linalg.norm(lr_aff[:3, :3] - expect[:3, :3], axis=0) > 1e-3 * vox_exp):
        raise InputError(f"LR and HR axes point in different directions (another orientation or flip): "
                         f"reorient one to the other or {fix}")
    shift = np.linalg.solve(hr_aff[:3, :3], lr_aff[:3, 3] - expect[:3, 3])  # in HR voxels
    if np.any(np.abs(shift) > 0.01):
        raise InputError(f"LR origin is off by {np.round(shift, 2).tolist()} HR voxels (LR voxel centres must sit "
                         f"at the centres of their HR blocks): {fix}")


__all__ = ["DegradeParams", "sample_degrade_params", "degrade", "lr_affine", "hr_affine", "check_grids"]
