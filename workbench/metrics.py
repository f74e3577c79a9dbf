"""Evaluation metrics for reconstructed volumes (numpy, float64 accumulation).

``pred`` / ``ref`` are numpy arrays shaped (X, Y, Z) or (X, Y, Z, N); ``mask`` is a
3D boolean array (X, Y, Z) applied to every volume, or None (every voxel).

Default data range.  Diffusion-weighted (and most reconstructed) signal
magnitudes are >= 0, so the data range defaults to ``max(ref inside the mask) - 0``
over all the volumes given, rather than ``max - min`` (which would shrink with a
background-free mask and inflate PSNR).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from workbench.losses import sobel_magnitude_3d

__all__ = ["psnr", "rmse", "ssim3d", "edge_sharpness", "DTIMaps", "dti_metrics", "evaluate_dwi"]


def _mask3d(mask, shape3) -> np.ndarray:
    if mask is None:
        return np.ones(shape3, dtype=bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape3):
        raise ValueError(f"mask shape {mask.shape} does not match volume shape {tuple(shape3)}")
    if not mask.any():
        raise ValueError("mask is empty")
    return mask


def _pair(pred, ref, mask):
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape or pred.ndim not in (3, 4):
        raise ValueError(f"pred and ref must have the same 3D or 4D shape, got {pred.shape} and {ref.shape}")
    return pred, ref, _mask3d(mask, pred.shape[:3])


def _default_range(ref_in_mask: np.ndarray, data_range):
    dr = float(np.max(ref_in_mask)) if data_range is None else float(data_range)
    if not np.isfinite(dr) or dr <= 0:
        raise ValueError(f"data range must be finite and > 0, got {dr} "
                         "(is the reference <= 0 everywhere inside the mask?)")
    return dr


def psnr(pred, ref, mask=None, data_range=None) -> float:
    """Peak signal-to-noise ratio ``10 log10(range^2 / mse)`` in dB.

    Parameters
    ----------
    pred, ref : ndarray
        (X, Y, Z) or (X, Y, Z, N).
    mask : ndarray of bool, optional
        (X, Y, Z); the MSE runs over the voxels inside it, all volumes pooled.
    data_range : float, optional
        Defaults to ``max(ref[mask]) - 0`` over all volumes (signal magnitudes >= 0).

    Returns
    -------
    float
        ``inf`` when ``pred == ref`` inside the mask.
    """
    pred, ref, mask = _pair(pred, ref, mask)
    p, r = pred[mask], ref[mask]
    dr = _default_range(r, data_range)
    mse = float(np.mean((p - r) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(dr * dr / mse))


def rmse(pred, ref, mask=None) -> float:
    """Root mean squared error inside the mask, all volumes pooled."""
    pred, ref, mask = _pair(pred, ref, mask)
    return float(np.sqrt(np.mean((pred[mask] - ref[mask]) ** 2)))


def _ssim_map(x: np.ndarray, y: np.ndarray, dr: float, sigma: float = 1.5) -> np.ndarray:
    # truncate=2.0 with sigma=1.5 gives a radius of int(2.0 * 1.5 + 0.5) = 3 (a 7-wide window)
    def g(v):
        return gaussian_filter(v, sigma=sigma, truncate=2.0, mode="reflect")

    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    mx, my = g(x), g(y)
    vx = g(x * x) - mx * mx
    vy = g(y * y) - my * my
    cxy = g(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim3d(pred, ref, mask=None, data_range=None) -> float:
    """Structural similarity in 3D with a Gaussian window (Wang et al. 2004).

    Per volume: local statistics with ``scipy.ndimage.gaussian_filter`` (sigma 1.5,
    radius 3, reflect borders, population covariances), ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``; the SSIM map is averaged inside the mask.  For 4D input the
    per-volume values are averaged.

    Parameters
    ----------
    pred, ref : ndarray
        (X, Y, Z) or (X, Y, Z, N).
    mask : ndarray of bool, optional
        (X, Y, Z).
    data_range : float, optional
        ``L``; defaults to ``max(ref[mask]) - 0`` over all volumes given.

    References
    ----------
    Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment:
    from error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    pred, ref, mask = _pair(pred, ref, mask)
    dr = _default_range(ref[mask], data_range)
    if pred.ndim == 3:
        pred, ref = pred[..., None], ref[..., None]
    vals = [_ssim_map(pred[..., i], ref[..., i], dr)[mask].mean() for i in range(pred.shape[3])]
    return float(np.mean(vals))


def edge_sharpness(vol, mask=None) -> float:
    """Mean 3D Sobel gradient magnitude inside the mask.

    Uses :func:`workbench.losses.sobel_magnitude_3d` (same kernel as the edge loss
    and the viewers), run in float64 one volume at a time; 4D input gives the mean
    over volumes.
    """
    vol = np.asarray(vol, dtype=np.float64)
    if vol.ndim not in (3, 4):
        raise ValueError(f"edge_sharpness expects a 3D or 4D array, got shape {vol.shape}")
    mask = _mask3d(mask, vol.shape[:3])
    if vol.ndim == 3:
        vol = vol[..., None]
    vals = []
    with torch.no_grad():
        for i in range(vol.shape[3]):
            mag = sobel_magnitude_3d(torch.from_numpy(np.ascontiguousarray(vol[..., i]))).numpy()
            vals.append(mag[mask].mean())
    return float(np.mean(vals))


class DTIMaps(NamedTuple):
    """Fractional anisotropy (in [0, 1]) and mean diffusivity (mm^2/s when b is in s/mm^2)."""

    fa: np.ndarray
    md: np.ndarray


def _bvecs(bvecs, n: int) -> np.ndarray:
    b = np.asarray(bvecs, dtype=np.float64)
    if b.shape == (3, n) and n != 3:
        b = b.T
    if b.shape != (n, 3):
        raise ValueError(f"bvecs must be (N, 3) with N = {n}, got {np.asarray(bvecs).shape}")
    norms = np.linalg.norm(b, axis=1, keepdims=True)
    return np.where(norms > 0, b / np.where(norms > 0, norms, 1.0), 0.0)


def dti_metrics(data4d, bvals, bvecs, mask=None, b0_threshold: float = 50, max_bval: float = 1500) -> DTIMaps:
    """FA and MD maps from a DIPY diffusion-tensor fit (weighted least squares).

    Only volumes with ``b <= max_bval`` (1500) are used: the Gaussian (tensor)
    signal model is biased at higher b (e.g. 2000) by non-Gaussian diffusion.  If that
    leaves fewer than 6 diffusion-weighted volumes (``b > b0_threshold``), the
    minimum for a tensor, all volumes are used.

    Parameters
    ----------
    data4d : ndarray (X, Y, Z, N)
    bvals : array (N,)
    bvecs : array (N, 3) (or (3, N)); rows are normalised, b0 rows may be zero.
    mask : ndarray of bool (X, Y, Z), optional
    b0_threshold, max_bval : float

    Returns
    -------
    DTIMaps
        ``(fa, md)`` float64 maps, NaN replaced by 0, FA clipped to [0, 1]; 0 outside
        the mask.

    References
    ----------
    P. J. Basser, J. Mattiello, D. Le Bihan, "MR diffusion tensor spectroscopy and
    imaging", Biophys J 66, 1994; E. Garyfallidis et al., "Dipy, a library for the
    analysis of diffusion MRI data", Front Neuroinform 8, 2014.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    data = np.asarray(data4d, dtype=np.float64)
    if data.ndim != 4:
        raise ValueError(f"dti_metrics expects (X, Y, Z, N) data, got shape {data.shape}")
    n = data.shape[3]
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    if bvals.size != n:
        raise ValueError(f"{bvals.size} bvals for {n} volumes")
    bvecs = _bvecs(bvecs, n)
    mask = _mask3d(mask, data.shape[:3])
    keep = bvals <= max_bval
    if np.count_nonzero(keep & (bvals > b0_threshold)) < 6:
        keep = np.ones(n, dtype=bool)
    gtab = gradient_table(bvals[keep], bvecs=bvecs[keep], b0_threshold=b0_threshold)
    fit = TensorModel(gtab).fit(data[..., keep], mask=mask)
    fa = np.clip(np.nan_to_num(np.asarray(fit.fa, dtype=np.float64)), 0.0, 1.0)
    md = np.nan_to_num(np.asarray(fit.md, dtype=np.float64))
    return DTIMaps(fa * mask, md * mask)


def evaluate_dwi(pred4d, ref4d, bvals, bvecs, mask=None, b0_threshold: float = 50) -> dict[str, float]:
    """Image and diffusion-model metrics of a reconstructed DWI series.

    Returns a dict of floats:

    - ``psnr_dwi``, ``ssim_dwi``, ``rmse_dwi``: over the diffusion-weighted volumes
      (``b > b0_threshold``), data range ``max(ref dwi volumes inside the mask)``;
    - ``psnr_all``, ``ssim_all``, ``rmse_all``: over all volumes, data range
      ``max(ref inside the mask)``;
    - ``fa_rmse``: FA RMSE inside the mask (:func:`dti_metrics` fits on both);
    - ``fa_rmse_wm``: FA RMSE in "white matter", defined here as the voxels inside
      the mask where the *reference* FA >= 0.25 (NaN if there are none);
    - ``md_rmse``: MD RMSE inside the mask in units of 1e-3 mm^2/s (MD * 1e3);
    - ``edge_sharpness_ratio``: :func:`edge_sharpness` of pred / of ref over the dwi
      volumes inside the mask (< 1: blurrier than the reference).

    Metrics that cannot be computed (no dwi volumes; fewer than 6 for DTI) are NaN.
    """
    pred, ref, mask = _pair(pred4d, ref4d, mask)
    if pred.ndim != 4:
        raise ValueError(f"evaluate_dwi expects (X, Y, Z, N) arrays, got shape {pred.shape}")
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    if bvals.size != pred.shape[3]:
        raise ValueError(f"{bvals.size} bvals for {pred.shape[3]} volumes")
    dwi = bvals > b0_threshold
    nan = float("nan")
    out: dict[str, float] = {}
    if dwi.any():
        p, r = pred[..., dwi], ref[..., dwi]
        dr = _default_range(r[mask], None)
        out["psnr_dwi"] = psnr(p, r, mask, dr)
        out["ssim_dwi"] = ssim3d(p, r, mask, dr)
        out["rmse_dwi"] = rmse(p, r, mask)
    else:
        out.update(psnr_dwi=nan, ssim_dwi=nan, rmse_dwi=nan)
    dr_all = _default_range(ref[mask], None)
    out["psnr_all"] = psnr(pred, ref, mask, dr_all)
    out["ssim_all"] = ssim3d(pred, ref, mask, dr_all)
    out["rmse_all"] = rmse(pred, ref, mask)
    if np.count_nonzero(dwi) >= 6:
        fa_p, md_p = dti_metrics(pred, bvals, bvecs, mask, b0_threshold=b0_threshold)
        fa_r, md_r = dti_metrics(ref, bvals, bvecs, mask, b0_threshold=b0_threshold)
        out["fa_rmse"] = float(np.sqrt(np.mean((fa_p[mask] - fa_r[mask]) ** 2)))
        wm = mask & (fa_r >= 0.25)
        out["fa_rmse_wm"] = float(np.sqrt(np.mean((fa_p[wm] - fa_r[wm]) ** 2))) if wm.any() else nan
        out["md_rmse"] = float(np.sqrt(np.mean((1e3 * (md_p[mask] - md_r[mask])) ** 2)))
    else:
        out.update(fa_rmse=nan, fa_rmse_wm=nan, md_rmse=nan)
    if dwi.any():
        ref_sharp = edge_sharpness(ref[..., dwi], mask)
        out["edge_sharpness_ratio"] = edge_sharpness(pred[..., dwi], mask) / ref_sharp if ref_sharp > 0 else nan
    else:
        out["edge_sharpness_ratio"] = nan
    return out
