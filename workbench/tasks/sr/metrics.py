"""Super-resolution metrics on the HR grid: PSNR, 3D SSIM and, for soil, structure errors.

PSNR rewards blur (a smooth guess sits close to every sharp answer); the pore structure
does not: after one fixed 3-phase segmentation (multi-Otsu thresholds computed on the HR
reference and applied to both volumes), the porosity error and the two-point-correlation
error (Torquato 2002, "Random Heterogeneous Materials", ch. 2: S2(r), the probability that
two points r apart are both pore) show whether pores and throats were recovered.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
from scipy import fft

from workbench.io_utils import InputError
from workbench.metrics import psnr, ssim3d

KINDS = ("ct", "soil")

__all__ = ["KINDS", "segment_three_phase", "porosity", "two_point_correlation", "pore_size_curve", "evaluate_sr",
           "evaluate_slices"]


def segment_three_phase(vol: np.ndarray, thresholds: Optional[tuple[float, float]] = None
                        ) -> tuple[np.ndarray, tuple[float, float]]:
    """Three-phase segmentation by two intensity thresholds.

    Parameters
    ----------
    vol : ndarray
        Intensities (any shape).
    thresholds : (float, float), optional
        Increasing thresholds ``(t0, t1)``; multi-Otsu (``skimage.filters.threshold_multiotsu``,
        3 classes) on ``vol`` when not given.

    Returns
    -------
    labels : ndarray, uint8
        0 (pore) below ``t0``, 1 (matrix) in ``[t0, t1)``, 2 (mineral) from ``t1`` up.
    thresholds : (float, float)
        The thresholds used.
    """
    vol = np.asarray(vol, np.float32)
    if thresholds is None:
        from skimage.filters import threshold_multiotsu

        try:
            with warnings.catch_warnings():  # a 3D volume whose last size is 3 or 4 "looks like RGB"
                warnings.filterwarnings("ignore", message=".*looks like that of an RGB image")
                thresholds = threshold_multiotsu(vol, classes=3)
        except ValueError as exc:  # a constant (or two-valued) volume has no three classes
            raise InputError(f"cannot segment 3 phases: {exc}") from exc
    t = tuple(float(x) for x in np.asarray(thresholds, np.float64).ravel())
    if len(t) != 2 or not t[0] <= t[1]:
        raise InputError(f"thresholds must be two increasing numbers, got {thresholds!r}")
    return np.digitize(vol, t).astype(np.uint8), t


def porosity(labels: np.ndarray) -> float:
    """Fraction of pore voxels (label 0)."""
    return float(np.mean(np.asarray(labels) == 0))


def two_point_correlation(binary: np.ndarray, max_r: Optional[int] = None) -> np.ndarray:
    """Two-point correlation S2(r), r = 0 .. max_r voxels, of a binary 3D (or 2D) phase.

    S2(d) is the fraction of point pairs ``(x, x + d)`` inside the volume that are both in the
    phase (non-periodic: the volume is zero-padded so the FFT autocorrelation does not wrap,
    and each displacement is divided by its overlap count ``prod(n_i - |d_i|)``). S2(r) is the
    mean over the displacements with ``round(|d|) == r`` (1-voxel radial bins).

    Parameters
    ----------
    binary : ndarray
        3D; nonzero voxels are the phase.
    max_r : int, optional
        Largest distance, ``0 <= max_r < min(shape)``; default ``min(shape) // 4``.

    Returns
    -------
    ndarray, float64, shape (max_r + 1,)
        ``S2[0]`` is the phase fraction; for a random medium S2 decays toward fraction**2.
    """
    b = np.asarray(binary).astype(bool)
    if b.ndim not in (2, 3):
        raise InputError(f"two_point_correlation expects a 2D or 3D array, got shape {b.shape}")
    max_r = int(min(b.shape) // 4 if max_r is None else max_r)
    if not 0 <= max_r < min(b.shape):
        raise InputError(f"max_r must be in [0, {min(b.shape) - 1}] for shape {b.shape}, got {max_r}")
    # zero-padding each axis to n + max_r is enough (a full 2x pad gives the same values): the
    # circular lag d then only aliases lag d - pad, which has no overlapping pairs
    pad = [fft.next_fast_len(n + max_r, real=True) for n in b.shape]
    fb = fft.rfftn(b.astype(np.float64), pad)
    auto = fft.irfftn(fb * np.conj(fb), pad)
    lags = np.r_[0: max_r + 1, -max_r:0]
    sub = auto[np.ix_(*[lags % n for n in pad])]
    d = np.meshgrid(*[lags] * b.ndim, indexing="ij")
    count = np.prod([n - np.abs(g) for n, g in zip(b.shape, d)], axis=0)  # pairs at each lag
    bins = np.rint(np.sqrt(sum(g.astype(np.float64) ** 2 for g in d))).astype(int)
    ok = bins <= max_r
    sums = np.bincount(bins[ok], (sub / count)[ok], minlength=max_r + 1)
    return sums / np.bincount(bins[ok], minlength=max_r + 1)


def evaluate_sr(sr: np.ndarray, hr: np.ndarray, kind: str = "ct") -> dict[str, float]:
    """Image metrics of a super-resolved volume against the HR reference, on the HR grid.

    Parameters
    ----------
    sr, hr : ndarray
        3D volumes of the same shape, in any units: both are first mapped by the one affine
        map that takes the reference to [0, 1] (SSIM's luminance term depends on the offset, so
        every caller - CLI, notebook, benchmark - scores on the same scale).
    kind : {"ct", "soil"}
        ``"ct"``: ``psnr`` and ``ssim`` only (data range ``hr.max() - hr.min()``, 1 if zero).
        ``"soil"`` adds structure errors after one 3-phase segmentation (multi-Otsu thresholds
        of ``hr`` applied to both): ``porosity_error`` (absolute), ``tpc_error`` (mean absolute
        difference of the pore S2 curves, r = 0 .. min(shape) // 4) and ``phase_accuracy``
        (fraction of voxels with the same label).

    Returns
    -------
    dict of str to float

    Raises
    ------
    InputError
        An unknown kind, shapes that differ, a volume that is not 3D or not finite.
    """
    if kind not in KINDS:
        raise InputError(f"unknown metrics kind {kind!r}; known kinds: {', '.join(KINDS)}")
    sr, hr = np.asarray(sr, np.float32), np.asarray(hr, np.float32)
    if sr.shape != hr.shape:
        raise InputError(f"result {sr.shape} and reference {hr.shape} differ: compare volumes on the same grid")
    if hr.ndim != 3:
        raise InputError(f"evaluate_sr expects 3D volumes, got shape {hr.shape}")
    if not (np.isfinite(sr).all() and np.isfinite(hr).all()):
        raise InputError("result or reference has NaN or infinite values")
    lo, dr = float(hr.min()), float(hr.max() - hr.min()) or 1.0
    sr, hr = (sr - lo) / dr, (hr - lo) / dr
    dr = 1.0
    out = {"psnr": float(psnr(sr, hr, data_range=dr)), "ssim": float(ssim3d(sr, hr, data_range=dr))}
    if kind == "soil":
        hr_lab, th = segment_three_phase(hr)
        sr_lab, _ = segment_three_phase(sr, th)
        s2_hr = two_point_correlation(hr_lab == 0)
        s2_sr = two_point_correlation(sr_lab == 0)
        out.update(porosity_error=abs(porosity(sr_lab) - porosity(hr_lab)),
                   tpc_error=float(np.mean(np.abs(s2_sr - s2_hr))),
                   phase_accuracy=float(np.mean(sr_lab == hr_lab)))
    return out


def pore_size_curve(binary: np.ndarray, max_r: int = 8) -> np.ndarray:
    """Granulometry of a binary 2D phase: the fraction of it left after opening with discs of radius r.

    ``curve[r - 1]`` (r = 1 .. max_r) is the fraction of the phase inside pores that hold a disc
    of radius r (Matheron 1975, "Random Sets and Integral Geometry"; the pore-size distribution
    is its negative derivative). 0 where the phase is empty.
    """
    from scipy import ndimage

    b = np.asarray(binary, bool)
    if b.ndim != 2:
        raise InputError(f"pore_size_curve expects a 2D array, got shape {b.shape}")
    total = b.sum()
    out = np.zeros(max_r)
    if not total:
        return out
    for r in range(1, max_r + 1):
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        out[r - 1] = ndimage.binary_opening(b, structure=yy ** 2 + xx ** 2 <= r * r).sum() / total
    return out


def evaluate_slices(sr: np.ndarray, hr: np.ndarray, *, max_r: int = 32, psd_r: int = 8) -> dict[str, float]:
    """Metrics of an in-plane (slice-by-slice) result against the HR reference, over (X, Y, Z) stacks.

    Both stacks are mapped by the affine map that takes the reference to [0, 1]; ``psnr`` is over
    the whole stack, ``ssim`` the mean 2D SSIM of the slices (``skimage``, data range 1); after
    one fixed 3-phase segmentation (multi-Otsu thresholds of the reference stack, applied to
    both) ``porosity_error`` is the mean absolute per-slice porosity difference, ``tpc_error``
    the mean absolute difference of the 2D pore S2 curves (r = 0 .. ``max_r``) and
    ``psd_distance`` the mean absolute difference of the pore granulometry curves
    (:func:`pore_size_curve`, r = 1 .. ``psd_r``): a 1-Wasserstein distance between the two
    pore-size distributions, in units of ``psd_r`` pixels.
    """
    from skimage.metrics import structural_similarity

    sr, hr = np.asarray(sr, np.float32), np.asarray(hr, np.float32)
    if sr.shape != hr.shape or hr.ndim != 3:
        raise InputError(f"result {sr.shape} and reference {hr.shape} must be 3D stacks of the same shape")
    lo, dr = float(hr.min()), float(hr.max() - hr.min()) or 1.0
    sr, hr = (sr - lo) / dr, (hr - lo) / dr
    hr_lab, th = segment_three_phase(hr)
    sr_lab, _ = segment_three_phase(sr, th)
    max_r = min(max_r, min(hr.shape[:2]) - 1)
    per = {"ssim": [], "porosity_error": [], "tpc_error": [], "psd_distance": []}
    for z in range(hr.shape[2]):
        a, b = sr_lab[:, :, z] == 0, hr_lab[:, :, z] == 0
        per["ssim"].append(structural_similarity(sr[:, :, z], hr[:, :, z], data_range=1.0))
        per["porosity_error"].append(abs(a.mean() - b.mean()))
        per["tpc_error"].append(np.mean(np.abs(two_point_correlation(a, max_r) - two_point_correlation(b, max_r))))
        per["psd_distance"].append(np.mean(np.abs(pore_size_curve(a, psd_r) - pore_size_curve(b, psd_r))))
    return {"psnr": float(psnr(sr, hr, data_range=1.0)), **{k: float(np.mean(v)) for k, v in per.items()}}
