"""Metrics of a reconstructed CT against its reference: PSNR, SSIM, Dice of lungs and bone, re-projection error.

PSNR and SSIM (3D, Gaussian window) are computed on the HU window [-1000, 1000] mapped to
[0, 1] (values outside clipped), the convention of X2CT-GAN and its successors. Lungs
and bone are segmented the same way in both volumes by thresholds (lung: below -400 HU
inside the body, i.e. not connected to the outside air; bone: above 250 HU), and
compared by Dice. The re-projection error is the mean absolute difference between the
X-rays of the result and the input X-rays (line integrals), relative to the mean input.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from workbench.metrics import psnr, ssim3d
from workbench.tasks.xray2ct.data import HU_WINDOW

LUNG_HU, BONE_HU = -400.0, 250.0
LABEL_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "dice_lung": "Dice lungs", "dice_bone": "Dice bone",
               "reprojection_error": "re-projection error (relative)", "mae_hu": "MAE (HU)"}


def window(hu: np.ndarray) -> np.ndarray:
    lo, hi = HU_WINDOW
    return np.clip((np.asarray(hu, np.float32) - lo) / (hi - lo), 0, 1)


def lungs(hu: np.ndarray) -> np.ndarray:
    """Voxels below -400 HU that are not connected to the air around the body (3D, 6-connected)."""
    from scipy import ndimage

    low = np.asarray(hu) < LUNG_HU
    lab, _ = ndimage.label(low)
    border = np.unique(np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel()]))
    return low & ~np.isin(lab, border[border > 0])


def bone(hu: np.ndarray) -> np.ndarray:
    return np.asarray(hu) > BONE_HU


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def reprojection_error(hu: np.ndarray, xrays: np.ndarray, geometry) -> float:
    """Mean |X-rays of ``hu`` - ``xrays``| / mean |xrays| (both views)."""
    from workbench.tasks.xray2ct.geometry import project_hu

    p = project_hu(hu, geometry)
    return float(np.abs(p - xrays).mean() / max(np.abs(xrays).mean(), 1e-9))


def evaluate_ct(result: np.ndarray, reference: np.ndarray, *, xrays: Optional[np.ndarray] = None, geometry=None,
                rows: Optional[slice] = None) -> dict[str, float]:
    """Metrics of ``result`` against ``reference`` (HU, same grid); ``rows`` restricts them to a slab of Z.

    The re-projection error needs the input ``xrays`` (2, nu, nv) and their ``geometry``
    and is always of the whole volume (the X-rays see all of it).
    """
    if result.shape != reference.shape:
        raise ValueError(f"result {result.shape} and reference {reference.shape} are not on the same grid")
    out: dict[str, float] = {}
    if xrays is not None and geometry is not None and tuple(result.shape) == (geometry.size,) * 3:
        out["reprojection_error"] = reprojection_error(result, xrays, geometry)
    res, ref = np.asarray(result, np.float32), np.asarray(reference, np.float32)
    seg_res, seg_ref = lungs(res), lungs(ref)
    if rows is not None:
        res, ref, seg_res, seg_ref = res[..., rows], ref[..., rows], seg_res[..., rows], seg_ref[..., rows]
    a, b = window(res), window(ref)
    out = {"psnr": psnr(a, b, data_range=1.0), "ssim": ssim3d(a, b, data_range=1.0),
           "mae_hu": float(np.abs(res - ref).mean()), "dice_lung": dice(seg_res, seg_ref),
           "dice_bone": dice(bone(res), bone(ref)), **out}
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each metric over cases (NaN ignored)."""
    keys = rows[0].keys() if rows else []
    return {k: (float(np.nanmean([r[k] for r in rows])), float(np.nanstd([r[k] for r in rows]))) for k in keys}
