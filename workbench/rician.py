"""Rician magnitude statistics: the mean of a Rician variable and its inverse.

A magnitude image ``M = |A + n|`` with complex Gaussian noise of standard
deviation ``sigma`` per channel is Rician distributed. A denoiser trained with
an L2 loss against noisy magnitudes estimates ``E[M]``, which lies above the
true signal ``A`` (by up to ``sigma * sqrt(pi/2)`` where ``A = 0``). Inverting
the mean function (Koay & Basser 2006, J Magn Reson 179:317) removes that bias.
"""

from __future__ import annotations

import numpy as np
from scipy.special import i0e, i1e

_RAYLEIGH_MEAN = float(np.sqrt(np.pi / 2))


def rician_mean(a: np.ndarray, sigma: float) -> np.ndarray:
    """``E[M]`` for true signal ``a >= 0``: ``sigma sqrt(pi/2) [(1+2x) I0(x) + 2x I1(x)] e^{-x}``, ``x = a^2/4 sigma^2``."""
    a = np.asarray(a, dtype=np.float64)
    x = a**2 / (4.0 * sigma**2)
    return sigma * _RAYLEIGH_MEAN * ((1 + 2 * x) * i0e(x) + 2 * x * i1e(x))


_T = np.concatenate([np.linspace(0, 4, 801), np.linspace(4.005, 60, 2000)])
_MEAN_OVER_SIGMA = rician_mean(_T, 1.0)


def invert_rician_mean(m: np.ndarray, sigma: float, chunk: int = 1 << 21) -> np.ndarray:
    """The signal ``A`` whose Rician mean is ``m``; 0 where ``m`` is below the Rayleigh mean.

    Beyond the table (``A > 60 sigma``) the mean is ``sqrt(A^2 + sigma^2)`` to within 1e-6.
    Float32 out, float64 inside, ``chunk`` values at a time (a 4D series needs no float64 copy).
    """
    if sigma <= 0:
        return np.asarray(m, dtype=np.float32)
    m = np.asarray(m)
    out = np.empty(m.shape, dtype=np.float32)
    flat_in, flat_out = m.reshape(-1), out.reshape(-1)
    for a in range(0, flat_in.size, chunk):
        r = flat_in[a:a + chunk].astype(np.float64) / sigma
        v = np.interp(r, _MEAN_OVER_SIGMA, _T, left=0.0)
        high = r > _MEAN_OVER_SIGMA[-1]
        v[high] = np.sqrt(r[high] ** 2 - 1.0)
        flat_out[a:a + chunk] = v * sigma
    return out


def rician_noise_stats(mean: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per (N, X, Y, Z) volume of magnitude means: mean Rician variance and mean squared bias in ``mask``.

    The variance ``A^2 + 2 sigma^2 - E[M]^2`` tends to ``sigma^2`` at high SNR and is
    smaller near the noise floor (Rayleigh: ``(2 - pi/2) sigma^2``); the bias is
    ``E[M] - A`` with ``A`` from inverting the Rician mean.
    """
    var, bias2 = np.empty(mean.shape[0]), np.empty(mean.shape[0])
    for j in range(mean.shape[0]):
        m = np.maximum(mean[j][mask].astype(np.float64), 0.0)
        a = invert_rician_mean(m, sigma).astype(np.float64)
        var[j] = float(np.mean(np.clip(a**2 + 2 * sigma**2 - m**2, 0.0, sigma**2)))
        bias2[j] = float(np.mean((m - a) ** 2))
    return var, bias2
