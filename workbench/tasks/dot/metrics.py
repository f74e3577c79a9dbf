"""Diffuse optical tomography (DOT) metrics: image errors and inclusion recovery per optical property.

An optical-property volume is an array (2, X, Y, Z): channel 0 is the absorption coefficient
mu_a, channel 1 the reduced scattering coefficient mu_s' (both 1/mm).  ``body`` (X, Y, Z) marks
the tissue; every metric looks only inside it (voxels outside never change a value).
``inclusions`` (X, Y, Z) labels the true inclusions 0 (none), 1 .. K.

Besides RMSE / PSNR / SSIM, DOT papers judge a reconstruction by how much of the inclusion
contrast comes back (contrast recovery), where the inclusion lands (localisation error of the
half-maximum region) and how much of an absorber shows up as a scatterer and vice versa
(cross-talk, which the diffusion model makes likely: Arridge & Lionheart 1998).

References
----------
S. R. Arridge, "Optical tomography in medical imaging", Inverse Problems 15(2), R41-R93, 1999.
S. R. Arridge, W. R. B. Lionheart, "Nonuniqueness in diffusion-based optical tomography",
Opt. Lett. 23(11), 882-884, 1998.
B. W. Pogue, T. O. McBride, J. Prewitt, U. L. Osterberg, K. D. Paulsen, "Spatially variant
regularization improves diffuse optical tomography", Appl. Opt. 38(13), 2950-2961, 1999.
Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE TIP 13(4), 600-612, 2004.
L. R. Dice, "Measures of the amount of ecologic association between species", Ecology 26(3),
297-302, 1945.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from workbench.io_utils import InputError
from workbench.metrics import psnr, rmse

CHANNELS = ("mua", "mus")
CONTRAST_FRACTION = 0.05   # an inclusion has contrast in a channel above 5 % of the background
DETECTION_FLOOR = 0.01     # a reconstructed contrast below 1 % of the background counts as none

__all__ = ["CHANNELS", "CONTRAST_FRACTION", "DETECTION_FLOOR", "evaluate_dot", "summarize", "format_table"]


def _check(result, reference, body, inclusions, background, voxel_mm):
    res = np.asarray(result, np.float64)
    ref = np.asarray(reference, np.float64)
    if res.shape != ref.shape or res.ndim != 4 or res.shape[0] != 2:
        raise InputError(f"result {res.shape} and reference {ref.shape} must both be (2, X, Y, Z) "
                         "(channel 0 mu_a, channel 1 mu_s')")
    body = np.asarray(body)
    if body.shape != res.shape[1:]:
        raise InputError(f"body mask {body.shape} does not match the volume grid {res.shape[1:]}")
    body = body.astype(bool)
    if not body.any():
        raise InputError("body mask is empty: nothing to evaluate")
    if not (np.isfinite(res[:, body]).all() and np.isfinite(ref[:, body]).all()):
        raise InputError("result or reference has NaN or infinite values inside the body")
    # values outside the body never matter: replace them so that NaNs there cannot leak in
    res, ref = np.where(body, res, 0.0), np.where(body, ref, 0.0)
    inc = None
    if inclusions is not None:
        inc = np.asarray(inclusions)
        if inc.shape != body.shape:
            raise InputError(f"inclusion labels {inc.shape} do not match the volume grid {body.shape}")
        if not np.issubdtype(inc.dtype, np.integer) and not np.array_equal(inc, np.round(inc)):
            raise InputError("inclusion labels must be integers (0 = none, 1..K)")
        inc = np.where(body, inc, 0).astype(np.int64)
    bg = tuple(float(b) for b in np.asarray(background, np.float64).ravel())
    if len(bg) != 2 or not all(math.isfinite(b) and b != 0 for b in bg):
        raise InputError(f"background must be two finite non-zero numbers (mu_a0, mu_s0), got {background!r}")
    if not (math.isfinite(float(voxel_mm)) and float(voxel_mm) > 0):
        raise InputError(f"voxel_mm must be a positive number, got {voxel_mm!r}")
    return res, ref, body, inc, bg, float(voxel_mm)


def _ssim(res: np.ndarray, ref: np.ndarray, body: np.ndarray, dr: float, sigma: float = 1.5) -> float:
    """Masked 3D SSIM with data range ``dr``, in float64.

    The scheme of :func:`workbench.losses.ssim` (Gaussian window sigma 1.5, 7 wide; local
    statistics by normalised convolution ``G(m x) / G(m)`` with ``m`` the body, so voxels
    outside it never enter; the map averaged over the body; ``C1 = (0.01 L)^2``,
    ``C2 = (0.03 L)^2``), computed in float64: that function runs in float32, which leaves
    ``1 - SSIM ~ 1e-5`` for identical volumes.
    """
    m = body.astype(np.float64)

    def g(v):  # truncate 2.0 at sigma 1.5: radius int(3.5) = 3, zero padding
        return ndimage.gaussian_filter(v, sigma=sigma, truncate=2.0, mode="constant")

    w = np.maximum(g(m), 1e-12)
    mx, my = g(m * res) / w, g(m * ref) / w
    vx = np.maximum(g(m * res * res) / w - mx * mx, 0.0)
    vy = np.maximum(g(m * ref * ref) / w - my * my, 0.0)
    cxy = g(m * res * ref) / w - mx * my
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(np.mean(smap[body]))


def _active(d_ref: np.ndarray, inc: np.ndarray, labels: Sequence[int], bg: float) -> dict[int, float]:
    """Labels whose mean |reference - background| exceeds ``CONTRAST_FRACTION |bg|``, with their sign."""
    out = {}
    for k in labels:
        v = d_ref[inc == k]
        if np.mean(np.abs(v)) > CONTRAST_FRACTION * abs(bg):
            out[k] = 1.0 if v.mean() >= 0 else -1.0
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def _inclusion_metrics(d_res, d_ref, body, inc, active, bg, voxel_mm) -> dict[str, float]:
    """``contrast``, ``detected``, ``loc_error`` and ``dice`` of one channel (keys without suffix)."""
    sign = np.zeros(inc.shape)
    for k, s in active.items():
        sign[inc == k] = s
    denom = float(np.sum(sign * d_ref))
    contrast = float(np.sum(sign * d_res) / denom) if denom > 0 else float("nan")
    sizes = {k: int(np.count_nonzero(inc == k)) for k in active}
    target_label = max(sorted(active), key=lambda k: sizes[k])     # largest; ties: lowest label
    target, s = inc == target_label, active[target_label]
    signed = np.where(body, s * d_res, -np.inf)
    peak = float(signed.max())
    nan = float("nan")
    if peak <= DETECTION_FLOOR * abs(bg):
        return {"contrast": contrast, "detected": 0.0, "loc_error": nan, "dice": 0.0}
    region = signed > 0.5 * peak
    same = sign == s                                                 # true voxels of the sign looked for
    dice = 2.0 * np.count_nonzero(region & same) / (np.count_nonzero(region) + np.count_nonzero(same))
    comps, n = ndimage.label(region)
    overlap = np.bincount(comps[target], minlength=n + 1)[1:]
    if overlap.max() > 0:
        pick = int(np.argmax(overlap)) + 1
        centre = _centroid(comps == pick)
    else:
        centres = np.array(ndimage.center_of_mass(region, comps, range(1, n + 1)), ndmin=2)
        centre = centres[int(np.argmin(np.linalg.norm(centres - _centroid(target), axis=1)))]
    loc = float(np.linalg.norm(centre - _centroid(target)) * voxel_mm)
    return {"contrast": contrast, "detected": 1.0, "loc_error": loc, "dice": float(dice)}


def _crosstalk(res, inc, only: list[int], this: int, other: int, bg) -> float:
    if not only:
        return float("nan")
    vox = np.isin(inc, only)
    rel_this = np.mean(np.abs(res[this][vox] - bg[this])) / abs(bg[this])
    rel_other = np.mean(np.abs(res[other][vox] - bg[other])) / abs(bg[other])
    if rel_this == 0:
        return float("nan") if rel_other == 0 else float("inf")
    return float(rel_other / rel_this)


def evaluate_dot(result, reference, body, *, inclusions=None, background=(0.01, 1.0),
                 voxel_mm: float = 2.0) -> dict[str, float]:
    """Image and inclusion metrics of a reconstructed optical-property volume.

    Parameters
    ----------
    result, reference : ndarray (2, X, Y, Z)
        Channel 0 mu_a, channel 1 mu_s' (1/mm).  Values outside ``body`` are ignored (NaN
        allowed there); inside they must be finite.
    body : ndarray of bool (X, Y, Z)
        The tissue; every metric runs over its voxels only.
    inclusions : ndarray of int (X, Y, Z), optional
        True inclusion labels, 0 = none, 1..K; voxels outside ``body`` are dropped.
    background : (float, float)
        Nominal background ``(mu_a0, mu_s0)`` (non-zero), the reference level of every contrast.
    voxel_mm : float
        Isotropic voxel size in mm (localisation error unit).

    Returns
    -------
    dict of str to float
        For each channel ``c`` in ``("mua", "mus")``, with ``bg`` its background,
        ``d = volume - bg`` its contrast:

        - ``rmse_c``: RMSE inside the body, 1/mm;
        - ``psnr_c``: ``20 log10(R / rmse_c)`` dB, ``R = max - min`` of the reference inside the
          body (``inf`` when the RMSE is 0; NaN when ``R == 0``, a constant reference channel);
        - ``ssim_c``: masked 3D SSIM (Wang et al. 2004; the scheme of :func:`workbench.losses.ssim`:
          Gaussian window sigma 1.5, 7 wide, normalised convolutions so outside voxels never
          enter, in float64) with data range ``R`` (NaN when ``R == 0``).

        An inclusion *has contrast* in a channel when its mean ``|d_ref|`` exceeds
        ``CONTRAST_FRACTION`` (5 %) of ``|bg|``; its sign ``s`` is that of its mean ``d_ref``.
        Over the inclusions with contrast in ``c`` (the *true region* ``T``):

        - ``contrast_c``: contrast recovery ``sum(s d_res) / sum(s d_ref)`` over ``T``, i.e.
          ``mean(d_res) / mean(d_ref)`` when all signs agree (1 = perfect, 0 = flat; NaN if
          the denominator is not positive, an inclusion whose contrast averages out);
        - ``detected_c``: 1.0 if the reconstruction has a contrast of sign ``s`` (that of the
          largest inclusion of ``T``) above ``DETECTION_FLOOR`` (1 %) of ``|bg|`` anywhere in
          the body, else 0.0;
        - ``loc_error_c``: mm between the centroid of the largest true inclusion of ``T`` and
          the centroid of the reconstructed inclusion: the half-maximum region is the body
          voxels with ``s d_res > 0.5 max_body(s d_res)``; of its connected components
          (``scipy.ndimage.label``, face connectivity) the one overlapping that true inclusion
          most, or if none overlaps the one whose centroid is nearest.  NaN when not detected;
        - ``dice_c``: Dice ``2|H & T_s| / (|H| + |T_s|)`` of the whole half-maximum region
          ``H`` (all components) against ``T_s``, the voxels of ``T`` whose inclusion has sign
          ``s`` (``H`` only looks for that sign); 0.0 when not detected.

        These four are NaN when ``inclusions`` is None or no inclusion has contrast in ``c``.

        - ``crosstalk_mua_to_mus`` (``crosstalk_mus_to_mua``): over the voxels of the
          inclusions with contrast in mu_a only (mu_s' only), the mean relative change
          ``|result - bg| / |bg|`` of the other channel divided by that of the same channel
          (0 = no cross-talk, 1 = as much as the true change).  NaN when there is no such
          inclusion (or ``inclusions`` is None) or neither channel changes there; ``inf`` when
          only the other channel changes.

        All values are Python floats (``json.dumps`` writes NaN / inf as ``NaN`` /
        ``Infinity``).

    Raises
    ------
    InputError
        Shapes that differ, an empty body, non-finite values inside the body, non-integer
        labels, a zero background or a non-positive voxel size.
    """
    res, ref, body, inc, bg, voxel_mm = _check(result, reference, body, inclusions, background, voxel_mm)
    nan = float("nan")
    out: dict[str, float] = {}
    for c, name in enumerate(CHANNELS):
        r_in = ref[c][body]
        dr = float(r_in.max() - r_in.min())
        out[f"rmse_{name}"] = rmse(res[c], ref[c], body)
        out[f"psnr_{name}"] = psnr(res[c], ref[c], body, data_range=dr) if dr > 0 else nan
        out[f"ssim_{name}"] = _ssim(res[c], ref[c], body, dr) if dr > 0 else nan

    labels = [] if inc is None else [int(k) for k in np.unique(inc) if k > 0]
    active = [_active(ref[c] - bg[c], inc, labels, bg[c]) if labels else {} for c in range(2)]
    for c, name in enumerate(CHANNELS):
        if active[c]:
            m = _inclusion_metrics(res[c] - bg[c], ref[c] - bg[c], body, inc, active[c], bg[c], voxel_mm)
        else:
            m = dict.fromkeys(("contrast", "detected", "loc_error", "dice"), nan)
        out.update({f"{key}_{name}": float(v) for key, v in m.items()})
    for this, other in ((0, 1), (1, 0)):
        only = [k for k in labels if k in active[this] and k not in active[other]]
        out[f"crosstalk_{CHANNELS[this]}_to_{CHANNELS[other]}"] = _crosstalk(res, inc, only, this, other, bg)
    return out


def summarize(metrics: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float, int]]:
    """Mean, standard deviation and count of each metric over cases, NaNs ignored.

    Parameters
    ----------
    metrics : sequence of dict
        One :func:`evaluate_dot` dict per case; a key missing from a case counts as NaN.

    Returns
    -------
    dict of str to (mean, std, n)
        ``n`` is the number of non-NaN values, ``mean`` / ``std`` (population, ``ddof=0``) are
        over them (NaN, NaN when ``n == 0``).  An ``inf`` value is kept: it makes the mean inf.
    """
    keys: list[str] = []
    for m in metrics:
        keys += [k for k in m if k not in keys]
    out = {}
    for k in keys:
        v = np.array([float(m.get(k, np.nan)) for m in metrics], np.float64)
        v = v[~np.isnan(v)]
        if v.size == 0:
            out[k] = (float("nan"), float("nan"), 0)
            continue
        mean = float(np.mean(v))
        std = float(np.std(v)) if np.isfinite(v).all() else float("nan")
        out[k] = (mean, std, int(v.size))
    return out


def _cell(stat: Optional[tuple[float, float, int]], digits: int) -> str:
    if stat is None or stat[2] == 0:
        return "n/a"
    mean, std, _ = stat
    return f"{mean:.{digits}g} ± {std:.2g}"


def format_table(rows: Mapping[str, Mapping[str, tuple[float, float, int]]], keys: Sequence[str],
                 digits: int = 4) -> str:
    """A markdown (and plain-text readable) table of ``mean ± std`` per method and metric.

    Parameters
    ----------
    rows : dict of method name to :func:`summarize` output
    keys : sequence of str
        The metric columns, in order; a metric a method lacks (or has no value of) is ``n/a``.
    digits : int
        Significant digits of the mean (the std gets 2).

    Returns
    -------
    str
        Lines ``| method | key ... |``, a ``|---|`` separator, one line per method; columns padded
        to a common width.
    """
    table = [["method", *keys]] + [[name, *(_cell(stats.get(k), digits) for k in keys)]
                                   for name, stats in rows.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(table[0]), sep, *(line(r) for r in table[1:])])
