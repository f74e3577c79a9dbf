"""No-reference error estimate of a denoised DWI series, carried through the Rician inversion.

The J-invariant held-out loss and the SURE value of the MP-PCA blend (:mod:`workbench.sure`)
estimate the error of the *magnitude mean* ``E[M]`` that the denoiser predicts. The output is
not that mean: the post-processing inverts the Rician mean function (Koay & Basser 2006) and
applies the free-water floor. Near the noise floor (high b, CSF) the inverse has a steep slope,
so an error in ``E[M]`` of a few percent of sigma becomes a large error in the signal; reporting
the magnitude-mean risk as "error to clean" understated the true error by ~40% on multi-shell
data at SNR 10.

:func:`propagate_risk` pushes each volume's risk through the inversion and the floor by
Gauss-Hermite quadrature, voxel by voxel: the error of the magnitude mean is modelled as
Gaussian with the volume's risk as variance (the first-order error model behind SURE, Stein
1981), centred on the estimate itself (the clean mean is unknown). The result is reported per
shell (:func:`per_shell`) with a flag where the model is outside the range it was checked on
(:data:`FLOOR_FRACTION_LIMIT`): there a user is told that the figure may be low.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from workbench.rician import invert_rician_mean, rician_noise_stats

#: Gauss-Hermite order of the quadrature over the magnitude-mean error.
QUADRATURE_NODES = 9
#: A shell is flagged when more than this fraction of its brain voxels has an estimated signal
#: below 1.5 sigma: there the inversion's slope changes faster than the quadrature can follow,
#: and the estimate may be low (``benchmarks/dwi_denoise.py`` prints estimate vs truth per shell).
#: On the phantoms the b = 1000 shells at SNR 10 (estimates within 13%) have 17.5% of their voxels
#: there, the b = 2000 shells at SNR 20 (estimates 0.44-0.64 of the truth) 23%: 0.25 let one of the
#: latter through unflagged (stop 42).
FLOOR_FRACTION_LIMIT = 0.20
FLOOR_SNR = 1.5
#: A shell is also flagged when its estimated RMSE is below this fraction of sigma: the estimate is then a
#: difference of numbers ~50x larger than itself, and the Rician noise variance it subtracts was measured 3% off
#: at b = 2000 (multishell SNR 20: 3.3 estimated vs 7.8 true, while b = 1000 shells at 18-23% of sigma were
#: within 10%).
RELATIVE_LIMIT = 0.15


def propagate_risk(means: np.ndarray, risk: np.ndarray, sigma: float, mask: np.ndarray,
                   floor=None, nodes: int = QUADRATURE_NODES, max_voxels: int = 100_000) -> np.ndarray:
    """Mean squared error per volume after Rician inversion and floor, from the risk of the mean.

    Parameters
    ----------
    means : (N, X, Y, Z) array
        The magnitude means before inversion (the blend or the J-invariant prediction).
    risk : (N,) array
        Estimated mean squared error of ``means`` against the true magnitude mean, per volume, in
        ``mask`` (the SURE value of the blend, or held-out MSE minus the noise variance).
    sigma : float
        Gaussian noise sigma, same units.
    mask : (X, Y, Z) bool
        Where the error is measured.
    floor : (N, X, Y, Z) array, anything indexed ``floor[j]`` (e.g. :class:`workbench.inference.FreeWaterFloor`), or None
        Lower bound applied after inversion (the free-water floor), or None.
    max_voxels : int
        The mean runs over at most this many mask voxels per volume, evenly spaced in memory
        order (the quadrature is ~20 inversions per voxel; a mean over 100k voxels is within
        a fraction of a percent of the full one).

    Returns
    -------
    (N,) array: the estimated mean squared error of the final output against the clean signal.
    """
    x, w = np.polynomial.hermite.hermgauss(nodes)
    w = w / np.sqrt(np.pi)
    out = np.empty(len(means))
    mask = np.asarray(mask, bool)
    inside = np.flatnonzero(mask.reshape(-1))
    if len(inside) > max_voxels:
        inside = inside[np.linspace(0, len(inside) - 1, max_voxels).round().astype(int)]
    for j in range(len(means)):
        m = np.asarray(means[j]).reshape(-1)[inside].astype(np.float64)
        spread = np.sqrt(2.0 * max(float(risk[j]), 0.0))
        lo = None if floor is None else np.asarray(floor[j]).reshape(-1)[inside].astype(np.float64)

        def final(v):
            a = invert_rician_mean(np.maximum(v, 0.0), sigma).astype(np.float64)
            return a if lo is None else np.maximum(a, lo)

        centre = final(m)
        err = np.zeros_like(m)
        for xk, wk in zip(x, w):
            err += wk * (final(m + spread * xk) - centre) ** 2
        out[j] = float(err.mean())
    return out


def floor_fraction(means: np.ndarray, sigma: float, mask: np.ndarray) -> np.ndarray:
    """Per volume, the fraction of ``mask`` voxels whose estimated signal is below ``FLOOR_SNR`` sigma."""
    return np.array([float(np.mean(invert_rician_mean(np.maximum(means[j][mask], 0.0), sigma) < FLOOR_SNR * sigma))
                     for j in range(len(means))])


def per_shell(mse: np.ndarray, bvals, near_floor: Optional[np.ndarray] = None,
              risk: Optional[np.ndarray] = None, sigma: Optional[float] = None) -> list[dict]:
    """Group per-volume MSEs by shell: ``[{"b": b, "volumes": n, "rmse": r, "near_floor": f, "flagged": bool}]``.

    ``b`` is the shell's mean b-value (0 for the b0 volumes); ``flagged`` is True where more than
    :data:`FLOOR_FRACTION_LIMIT` of the shell's voxels are near the noise floor (``near_floor`` from
    :func:`floor_fraction`), where the shell's mean ``risk`` is not positive (SURE's variance term
    then outweighs the error it measures: a 3% error in the Rician noise variance does that at
    b = 2000, SNR 10), or where the estimated RMSE is below :data:`RELATIVE_LIMIT` x ``sigma``: i.e.
    where the estimate may be low.
    """
    from workbench.data.qspace import shell_labels

    bvals = np.asarray(bvals, dtype=np.float64)
    labels = shell_labels(bvals)
    rows = []
    for label in np.unique(labels):
        sel = labels == label
        frac = None if near_floor is None else float(np.mean(near_floor[sel]))
        rmse = float(np.sqrt(max(float(np.mean(mse[sel])), 0.0)))
        flagged = ((frac is not None and frac > FLOOR_FRACTION_LIMIT)
                   or (risk is not None and float(np.mean(risk[sel])) <= 0)
                   or (sigma is not None and rmse < RELATIVE_LIMIT * sigma))
        rows.append({"b": float(round(bvals[sel].mean())), "volumes": int(sel.sum()), "rmse": rmse,
                     "near_floor": frac, "flagged": bool(flagged)})
    return rows


#: What a flagged estimate is told with, wherever it is shown.
LOW_WARNING = ("may be low: much of this shell's signal is near the noise floor, where the no-reference "
               "estimate misses part of the error (up to 4x on our phantoms)")


def describe(rows: list[dict]) -> str:
    """One line for the CLI, the demo and napari: ``b=0: 12.1, b=1000: 13, b=2000: 3.2 (may be low*)``."""
    return ", ".join(f"b={r['b']:.0f}: {r['rmse']:.3g}" + (" (may be low*)" if r["flagged"] else "")
                     for r in rows)


def any_flagged(rows: Optional[list[dict]]) -> bool:
    return bool(rows) and any(r["flagged"] for r in rows)


def estimate_output_error(means: np.ndarray, risk: np.ndarray, output: np.ndarray, sigma: float, mask: np.ndarray,
                          bvals, *, rician_correction: bool, free_water_floor: bool) -> tuple[float, list[dict]]:
    """Estimated RMSE of the final output to the clean signal, overall and per shell (normalised units).

    ``means`` (N, X, Y, Z) are the magnitude means the post-processing started from, ``risk`` (N,) their
    estimated MSE against the true magnitude mean, ``output`` the post-processed result. With the Rician
    inversion on, the risk goes through it (:func:`propagate_risk`); without it the output is the
    magnitude mean, whose error to the clean signal adds the squared Rician bias.
    """
    from workbench import inference

    if rician_correction:
        floor = inference.free_water_floor(output, bvals) if free_water_floor else None
        mse = propagate_risk(means, risk, sigma, mask, floor)
    else:
        mse = np.maximum(risk, 0.0) + rician_noise_stats(means, mask, sigma)[1]
    near = floor_fraction(means, sigma, mask)
    bv = np.zeros(len(means)) if bvals is None else bvals
    rows = per_shell(mse, bv, near, risk, sigma)
    return float(np.sqrt(max(float(np.mean(mse)), 0.0))), rows
