"""Reference-free combination of denoisers by Stein's unbiased risk estimate (SURE).

The J-invariant network never sees the noisy voxel it predicts; MP-PCA sees all
of them. Their errors differ, so a weighted sum beats both, and SURE picks the
weights from the noisy data alone: for ``z = sum_k theta_k f_k(y)`` with noise
of variance ``v``,

    SURE(theta) = ||z - y||^2 - n v + 2 v div z,   div z = sum_k theta_k div f_k,

is an unbiased estimate of ``||z - E[y]||^2`` and is quadratic in ``theta``, so
the optimum is one small linear solve per volume (SURE-LET). The divergence of a
black-box denoiser (MP-PCA) comes from one extra run on a slightly perturbed
input (Monte-Carlo SURE); a J-invariant prediction of volume ``j`` does not
depend on volume ``j``, so its divergence is 0.

Magnitude (Rician) noise is not Gaussian: Stein's identity holds only
approximately, with ``v`` the Rician variance about the magnitude mean
(:func:`workbench.inference.rician_noise_stats`); the combination targets that
mean, and the Rician inversion runs afterwards.

References
----------
C. M. Stein, "Estimation of the mean of a multivariate normal distribution",
Annals of Statistics 9(6), 1981.
T. Blu, F. Luisier, "The SURE-LET approach to image denoising", IEEE TIP 16(11), 2007.
S. Ramani, T. Blu, M. Unser, "Monte-Carlo SURE: a black-box optimization of
regularization parameters for general denoising algorithms", IEEE TIP 17(9), 2008.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["monte_carlo_divergence", "sure_combine", "sure_convex_pair", "sure_weights", "sure_convex_weights",
           "weighted_sum"]


def monte_carlo_divergence(denoise: Callable[[np.ndarray], np.ndarray], volumes: np.ndarray, eps: float,
                           mask: Optional[np.ndarray] = None, seed: int = 0,
                           base: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume divergence of a denoiser of (N, X, Y, Z) volumes, by one perturbed run.

    ``div_j ~ sum_{x in mask} b_j(x) [f(y + eps b) - f(y)]_j(x) / eps`` with a
    standard normal probe ``b`` (Ramani et al. 2008). ``eps`` should be small
    against the noise (1% of sigma); ``base`` is ``f(volumes)`` when already
    computed. Returns ``(divergences (N,), f(volumes))``.
    """
    volumes = np.asarray(volumes, dtype=np.float32)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if base is None:
        base = denoise(volumes)
    probe = np.random.default_rng(seed).standard_normal(volumes.shape).astype(np.float32)
    moved = denoise(volumes + np.float32(eps) * probe)
    terms = probe * (moved.astype(np.float32) - base.astype(np.float32)) / np.float32(eps)
    if mask is None:
        return terms.reshape(len(terms), -1).sum(axis=1, dtype=np.float64), base
    return np.array([float(t[mask].sum(dtype=np.float64)) for t in terms]), base


def sure_combine(noisy: np.ndarray, estimates: Sequence[np.ndarray], divergences: Sequence[np.ndarray],
                 noise_var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SURE-optimal weights per volume for a linear combination of estimates, inside ``mask``.

    Parameters
    ----------
    noisy : (N, X, Y, Z) array
    estimates : sequence of K (N, X, Y, Z) arrays
        Candidate denoised series (for example the J-invariant prediction and MP-PCA).
    divergences : sequence of K (N,) arrays
        Each estimate's divergence per volume, summed over ``mask`` (0 for a
        J-invariant estimate, ``mask.sum()`` for the noisy volume itself).
    noise_var : (N,) array
        Noise variance per volume.
    mask : (X, Y, Z) bool
        Voxels the risk is estimated on (the brain).

    Returns
    -------
    combined : (N, X, Y, Z) float32
        The weighted sum, everywhere (callers decide what to keep outside ``mask``).
    weights : (N, K) float64
    risk : (N,) float64
        SURE of the combination per volume, as a mean squared error per voxel
        (an estimate of the error against the noise-free magnitude mean).
    """
    weights, risk = sure_weights(noisy, estimates, divergences, noise_var, mask)
    return weighted_sum(estimates, weights), weights, risk


def sure_weights(noisy: np.ndarray, estimates: Sequence[np.ndarray], divergences: Sequence[np.ndarray],
                 noise_var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``weights`` (N, K) and ``risk`` (N,) of :func:`sure_combine`, without the combination."""
    k, n = len(estimates), noisy.shape[0]
    if k == 0 or len(divergences) != k:
        raise ValueError(f"need one divergence per estimate, got {len(estimates)} estimates and "
                         f"{len(divergences)} divergences")
    m = int(mask.sum())
    if m == 0:
        raise ValueError("the mask is empty: SURE needs voxels to estimate the risk on")
    weights, risk = np.empty((n, k)), np.empty(n)
    for j in range(n):
        y = noisy[j][mask].astype(np.float64)
        basis = np.stack([e[j][mask].astype(np.float64) for e in estimates], axis=1)
        div = np.array([float(d[j]) for d in divergences])
        gram = basis.T @ basis
        rhs = basis.T @ y - noise_var[j] * div
        # a tiny ridge keeps the solve defined when two estimates coincide (e.g. both pass air through)
        theta = np.linalg.solve(gram + 1e-9 * np.trace(gram) / k * np.eye(k), rhs)
        risk[j] = _risk_per_voxel(basis @ theta - y, noise_var[j], float(theta @ div), m)
        weights[j] = theta
    return weights, risk


def weighted_sum(estimates: Sequence[np.ndarray], weights: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``sum_k weights[j, k] estimates[k][j]`` for each volume ``j``, as float32.

    Volume by volume, so ``out`` may be one of the estimates (overwritten in place: no
    series-sized temporary); a new array without it.
    """
    out = np.empty(estimates[0].shape, dtype=np.float32) if out is None else out
    for j in range(len(weights)):
        out[j] = sum(np.float32(t) * e[j] for t, e in zip(weights[j], estimates))
    return out


def _risk_per_voxel(resid: np.ndarray, noise_var: float, divergence: float, voxels: int) -> float:
    """SURE as a mean squared error per voxel: ``(||z - y||^2 + 2 v div z) / n - v``."""
    return float((resid @ resid + 2.0 * noise_var * divergence) / voxels - noise_var)


def sure_convex_pair(noisy: np.ndarray, first: np.ndarray, second: np.ndarray, div_first: np.ndarray,
                     div_second: np.ndarray, noise_var: np.ndarray,
                     mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per volume, the SURE-optimal ``t`` in [0, 1] for ``(1 - t) first + t second``.

    The safe fallback of :func:`sure_combine`: a convex mix of two denoisers can
    never be wilder than either, so a noisy risk estimate (few voxels in
    ``mask``) costs little. ``SURE(t)`` is quadratic; its minimiser is clipped.
    Returns ``(mixed (N, X, Y, Z) float32, t (N,), risk (N,))`` as :func:`sure_combine` does.
    """
    t, risk = sure_convex_weights(noisy, first, second, div_first, div_second, noise_var, mask)
    return weighted_sum([first, second], np.stack([1.0 - t, t], axis=1)), t, risk


def sure_convex_weights(noisy: np.ndarray, first: np.ndarray, second: np.ndarray, div_first: np.ndarray,
                        div_second: np.ndarray, noise_var: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``t`` (N,) and ``risk`` (N,) of :func:`sure_convex_pair`, without the mix."""
    n, m = noisy.shape[0], int(mask.sum())
    t, risk = np.empty(n), np.empty(n)
    for j in range(n):
        y = noisy[j][mask].astype(np.float64)
        a, b = first[j][mask].astype(np.float64), second[j][mask].astype(np.float64)
        d = b - a
        denom = float(d @ d)
        slope = float((a - y) @ d) + noise_var[j] * (float(div_second[j]) - float(div_first[j]))
        t[j] = 0.5 if denom <= 0 else float(np.clip(-slope / denom, 0.0, 1.0))
        div = (1 - t[j]) * float(div_first[j]) + t[j] * float(div_second[j])
        risk[j] = _risk_per_voxel(a + t[j] * d - y, noise_var[j], div, m)
    return t, risk
