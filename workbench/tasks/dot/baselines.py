"""Model-based baselines for frequency-domain diffuse optical tomography (DOT).

Data convention (Rytov / log-ratio data)
----------------------------------------
Complex boundary data ``(2, S, D)`` (CW, modulated) are compared with a reference of the
same shape through :func:`rytov_data`: ``[ln|m_cw / m0_cw|, ln|m_fd / m0_fd|,
angle(m_fd / m0_fd)]`` (the phase wrapped to ``(-pi, pi]``).  The unknowns are relative
deviations from the geometry's background ``mu0 = (mu_a0, mu_s0')``, ``x = (mu - mu0) / mu0``
over the body voxels (C order of ``geometry.body_mask``), mu_a first and mu_s' second, so the
linearised model is ``y ~ J x`` with :func:`rytov_jacobian` ``J`` of shape
``(3 * S * D, 2 * N_body)``; rows ``[Re(J_cw / m_cw); Re(J_fd / m_fd); Im(J_fd / m_fd)]``,
each block in (S, D) C order (the Rytov approximation: O'Leary 1996; Boas et al. 2001).

Rows are weighted by ``1 / sigma``: ``sigma_amp`` is the relative amplitude noise, which is
also the standard deviation of the log-amplitude, and ``sigma_phase_deg`` the phase noise.
A boolean ``mask`` ``(S, D)`` of measured pairs drops the rows of the others.

Both solvers work in data space (``3P x 3P`` with ``P = S * D`` pairs, 768 x 768 for the
default geometry) instead of parameter space (``2 N_body``, ~34k at grid 32): for
``min ||W (J x - y)||^2 + lam ||x||^2`` the solution is ``x = J^T W (W J J^T W + lam I)^-1 W y``;
one eigendecomposition of ``W J J^T W`` gives it for every ``lam`` and the generalised
cross-validation function (Golub, Heath & Wahba 1979) used to choose ``lam`` without
ground truth.  Reconstructed values are clipped to ``mu_a >= 1e-4`` and ``mu_s' >= 0.05``
1/mm (the forward model needs positive values; both are far below tissue values).

The Jacobian is stored in float32 (105 MB at grid 32); its Gram matrix is accumulated in
float64 block by block, so the small eigenvalues that GCV looks at are not lost to float32
rounding in the product.

References
----------
G. H. Golub, M. Heath, G. Wahba, "Generalized cross-validation as a method for choosing a
good ridge parameter", Technometrics 21(2), 215-223, 1979.
S. R. Arridge, "Optical tomography in medical imaging", Inverse Problems 15(2), R41-R93, 1999.
M. Schweiger, S. R. Arridge, I. Nissilä, "Gauss-Newton method for image reconstruction in
diffuse optical tomography", Phys. Med. Biol. 50(10), 2365-2386, 2005.
D. A. Boas, D. H. Brooks, E. L. Miller, C. A. DiMarzio, M. Kilmer, R. J. Gaudette, Q. Zhang,
"Imaging the body with diffuse optical tomography", IEEE Signal Process. Mag. 18(6), 57-75, 2001.
M. A. O'Leary, "Imaging with diffuse photon density waves", PhD thesis, Univ. Pennsylvania, 1996.
D. W. Marquardt, "An algorithm for least-squares estimation of nonlinear parameters",
J. SIAM 11(2), 431-441, 1963.
C. R. Vogel, "Computational Methods for Inverse Problems", SIAM, 2002 (ch. 7: GCV with
filter factors).
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import numpy as np

from workbench.io_utils import InputError
from workbench.tasks.dot.physics import ForwardModel, Geometry, homogeneous, serial_blas

MUA_MIN = 1e-4          # 1/mm, lower clip of reconstructed mu_a
MUS_MIN = 0.05          # 1/mm, lower clip of reconstructed mu_s'
GCV_GRID = np.logspace(-10.0, 0.0, 101)   # candidate lam / (largest singular value)^2
_BLOCK = 4096           # Jacobian columns per float64 block of the Gram product


def _serial(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with serial_blas():
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- data convention
def rytov_data(data: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Log-amplitude and phase of ``data`` relative to ``reference``.

    Parameters
    ----------
    data, reference : (2, S, D) complex
        Boundary data, CW first and modulated second (as ``ForwardModel.measurements``).

    Returns
    -------
    (3, S, D) float
        ``[ln|m_cw/m0_cw|, ln|m_fd/m0_fd|, angle(m_fd/m0_fd)]``, the phase in ``(-pi, pi]``.
    """
    data, reference = np.asarray(data), np.asarray(reference)
    if data.ndim != 3 or data.shape[0] != 2 or data.shape != reference.shape:
        raise InputError(f"data {data.shape} and reference {reference.shape} must both be (2, S, D) "
                         "complex arrays (CW, modulated)")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = data / reference
    if not np.all(np.isfinite(ratio)) or np.any(ratio == 0):
        raise InputError("data and reference must be finite and nonzero for log-ratio (Rytov) data")
    phase = np.angle(ratio[1])
    phase = np.where(phase <= -np.pi, phase + 2 * np.pi, phase)
    return np.stack([np.log(np.abs(ratio[0])), np.log(np.abs(ratio[1])), phase])


def _check_data(geometry: Geometry, data, name: str = "data") -> np.ndarray:
    data = np.asarray(data)
    shape = (2, len(geometry.sources_mm), len(geometry.detectors_mm))
    if data.shape != shape:
        raise InputError(f"{name} has shape {data.shape}; this geometry needs {shape} (CW, modulated) x S x D")
    return data.astype(complex, copy=False)


def _rows(geometry: Geometry, mask) -> tuple[np.ndarray, np.ndarray]:
    """(mask (S, D), row selector (3 S D,)) for the measured pairs."""
    shape = (len(geometry.sources_mm), len(geometry.detectors_mm))
    if mask is None:
        mask = np.ones(shape, bool)
    mask = np.asarray(mask)
    if mask.shape != shape or mask.dtype != bool:
        raise InputError(f"mask must be a boolean (S, D) = {shape} array of measured pairs; got "
                         f"{mask.dtype} {mask.shape}")
    if not mask.any():
        raise InputError("mask selects no source-detector pair: nothing to reconstruct from")
    return mask, np.tile(mask.ravel(), 3)


def _weights(n_pairs: int, sigma_amp: float, sigma_phase_deg: float) -> np.ndarray:
    if not (sigma_amp > 0 and sigma_phase_deg > 0):
        raise InputError(f"sigma_amp ({sigma_amp}) and sigma_phase_deg ({sigma_phase_deg}) must be > 0")
    sig = np.repeat([sigma_amp, sigma_amp, np.deg2rad(sigma_phase_deg)], n_pairs)
    return 1.0 / sig


# ----------------------------------------------------------------------------- the Jacobian
def _linearise(fm: ForwardModel) -> tuple[np.ndarray, np.ndarray]:
    """(float32 Rytov Jacobian (3P, 2N) scaled by the background, complex data (2, S, D)) at ``fm``."""
    g = fm.geometry
    mu0 = g.background
    n, P = fm.n, len(fm.src) * len(fm.det)
    out = np.empty((3 * P, 2 * n), np.float32)
    data = []
    for k, freq in enumerate((0.0, g.frequency_hz)):
        m, j_mua, j_mus = fm.jacobian(freq)
        data.append(m.astype(complex))
        inv = (1.0 / m).reshape(P, 1)
        for c, (jac, scale) in enumerate(((j_mua, mu0[0]), (j_mus, mu0[1]))):
            q = jac.reshape(P, n) * (inv * scale)
            cols = slice(c * n, (c + 1) * n)
            if k == 0:
                out[:P, cols] = q.real
            else:
                out[P:2 * P, cols] = q.real
                out[2 * P:, cols] = q.imag
            del q                             # (P, N) complex temporaries: one at a time
        del j_mua, j_mus
    return out, np.stack(data)


def _gram(A: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``A[rows] A[rows]^T`` accumulated in float64 over column blocks."""
    idx = np.flatnonzero(rows)
    G = np.zeros((len(idx), len(idx)))
    for start in range(0, A.shape[1], _BLOCK):
        blk = A[idx, start:start + _BLOCK].astype(np.float64)
        G += blk @ blk.T
    return G


def _eig(G: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    evals, U = np.linalg.eigh(G * w[:, None] * w[None, :])
    return np.clip(evals, 0.0, None), U


@functools.lru_cache(maxsize=2)
def _background(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Cached (model data (2, S, D), read-only Rytov Jacobian) at the homogeneous background."""
    A, m0 = _linearise(ForwardModel(geometry, *homogeneous(geometry)))
    A.flags.writeable = m0.flags.writeable = False
    return m0, A


@functools.lru_cache(maxsize=2)
def _background_gram(geometry: Geometry) -> np.ndarray:
    return _gram(_background(geometry)[1], np.ones(3 * geometry.n_pairs, bool))


@functools.lru_cache(maxsize=8)
def _background_eig(geometry: Geometry, sigma_amp: float, sigma_phase_deg: float, mask_bytes: bytes):
    rows = np.tile(np.frombuffer(mask_bytes, bool), 3)
    w = _weights(geometry.n_pairs, sigma_amp, sigma_phase_deg)[rows]
    evals, U = _eig(_background_gram(geometry)[np.ix_(rows, rows)], w)
    evals.flags.writeable = U.flags.writeable = False
    return evals, U


@_serial
def rytov_jacobian(geometry: Geometry, mu: Optional[np.ndarray] = None) -> np.ndarray:
    """Jacobian of :func:`rytov_data` with respect to relative changes of mu_a and mu_s'.

    Parameters
    ----------
    geometry : Geometry
    mu : (2, X, Y, Z) array, optional
        Where to linearise (1/mm); default the homogeneous background, whose Jacobian is
        computed once per geometry and cached (returned read-only).

    Returns
    -------
    (3 S D, 2 N_body) float32
        ``d rytov_data / d x`` with ``x = (mu - mu0) / mu0`` (``mu0 = geometry.background``,
        also when linearising at ``mu``): rows ``[Re(J_cw/m_cw); Re(J_fd/m_fd); Im(J_fd/m_fd)]``
        in (S, D) C order, columns mu_a then mu_s' body voxels (adjoint method: Arridge 1999).
    """
    if mu is None:
        return _background(geometry)[1]
    mu = np.asarray(mu, float)
    return _linearise(ForwardModel(geometry, mu[0], mu[1]))[0]


# ----------------------------------------------------------------------------- linear algebra
def _gcv(evals: np.ndarray, beta: np.ndarray):
    """GCV(lam) = m ||r(lam)||^2 / trace(I - A(lam))^2 on ``GCV_GRID * max(evals)``.

    ``evals`` are the squared singular values of the weighted Jacobian, ``beta = U^T W y``;
    with as many eigenpairs as rows the residual is ``sum((lam / (s^2 + lam) beta)^2)``.
    """
    lams = GCV_GRID * evals.max()
    filt = lams[:, None] / (evals[None, :] + lams[:, None])      # 1 - filter factors
    values = len(beta) * ((filt * beta) ** 2).sum(1) / filt.sum(1) ** 2
    i = int(np.argmin(values))
    return float(lams[i]), lams, values, i


def _solve(A: np.ndarray, rows: np.ndarray, w: np.ndarray, evals, U, lam: float, beta) -> np.ndarray:
    """``x = A^T W U (Lambda + lam)^-1 beta`` (float32 matvec; no row copy of A)."""
    v = np.zeros(A.shape[0], np.float32)
    v[rows] = w * (U @ (beta / (evals + lam)))
    return (A.T @ v).astype(np.float64)


def _to_volume(geometry: Geometry, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu (2, X, Y, Z) clipped, the x of the clipped volume)."""
    body = geometry.body_mask
    n = int(body.sum())
    mu = homogeneous(geometry)
    for c, floor in enumerate((MUA_MIN, MUS_MIN)):
        mu[c][body] = np.maximum(geometry.background[c] * (1.0 + x[c * n:(c + 1) * n]), floor)
    x_clipped = np.concatenate([mu[c][body] / geometry.background[c] - 1.0 for c in range(2)])
    return mu, x_clipped


def _misfit(data, model, rows, w) -> float:
    """Weighted data misfit per measured row, ``||W (rytov_data(data, model))||^2 / m``."""
    r = rytov_data(data, model).ravel()[rows] * w
    return float(r @ r / len(r))


# ----------------------------------------------------------------------------- the solvers
@_serial
def tikhonov(geometry: Geometry, data: np.ndarray, *, mask=None, lam: Optional[float] = None,
             sigma_amp: float = 0.01, sigma_phase_deg: float = 0.5, reference=None):
    """One-step linear (Rytov) reconstruction with Tikhonov regularisation, lam by GCV.

    Solves ``x = argmin ||W (J x - y)||^2 + lam ||x||^2`` in data space, ``J`` the background
    :func:`rytov_jacobian`, ``y = rytov_data(data, reference)``, ``W = diag(1 / sigma)``.

    Parameters
    ----------
    geometry : Geometry
    data : (2, S, D) complex
        Measured boundary data (CW, modulated).
    mask : (S, D) bool, optional
        Measured pairs (None: all; the data of the others, e.g. 0 or NaN, are ignored).
        Raises ``InputError`` (a ``ValueError``) if none.
    lam : float, optional
        Regularisation weight in the weighted units of ``||W (J x - y)||^2``; None chooses it
        by GCV (Golub, Heath & Wahba 1979) over ``GCV_GRID * s_max^2``, no ground truth used.
    sigma_amp, sigma_phase_deg : float
        Relative amplitude noise (= sigma of log-amplitude) and phase noise in degrees.
    reference : (2, S, D) complex, optional
        Reference data (e.g. a homogeneous calibration measurement); default the model's
        homogeneous prediction, which assumes calibrated absolute data.

    Returns
    -------
    mu : (2, X, Y, Z) float
        ``mu0 (1 + x)`` in the body, ``mu0`` outside, clipped to mu_a >= 1e-4, mu_s' >= 0.05 (1/mm).
    info : dict
        ``lam``, ``lam_relative`` (lam / s_max^2), ``gcv`` ``(lams, values)``, ``lam_at_edge``,
        ``residual`` (``||W (J x - y)||^2 / m`` of the unclipped linear solution), ``n_rows``.
    """
    data = _check_data(geometry, data)
    mask, rows = _rows(geometry, mask)
    m0, A = _background(geometry)
    ref = m0 if reference is None else _check_data(geometry, reference, "reference")
    data = np.where(mask, data, ref)          # unmeasured pairs may hold 0 / NaN: never read
    w = _weights(geometry.n_pairs, sigma_amp, sigma_phase_deg)[rows]
    evals, U = _background_eig(geometry, float(sigma_amp), float(sigma_phase_deg), mask.tobytes())
    beta = U.T @ (w * rytov_data(data, ref).ravel()[rows])
    info = {"n_rows": int(rows.sum())}
    if lam is None:
        lam, lams, values, i = _gcv(evals, beta)
        info.update(gcv=(lams, values), lam_at_edge=i in (0, len(lams) - 1))
    lam = float(lam)
    x = _solve(A, rows, w, evals, U, lam, beta)
    info.update(lam=lam, lam_relative=lam / evals.max(),
                residual=float(((lam / (evals + lam) * beta) ** 2).sum() / len(beta)))
    return _to_volume(geometry, x)[0], info


@_serial
def gauss_newton(geometry: Geometry, data: np.ndarray, *, mask=None, iterations: int = 3,
                 sigma_amp: float = 0.01, sigma_phase_deg: float = 0.5, lam: Optional[float] = None,
                 lam_factor: float = 3.0, lam_increase: float = 10.0):
    """Regularised (Levenberg-Marquardt style) Gauss-Newton on the nonlinear diffusion model.

    Each iteration re-linearises at the current estimate ``mu_k`` (its model data ``m_k`` and
    Jacobian ``J_k``, columns scaled by the background so ``x`` stays ``(mu - mu0) / mu0``) and
    solves the Tikhonov-regularised Gauss-Newton step *toward the background*,

        ``dx = argmin ||W (J_k dx - r_k)||^2 + lam ||x_k + dx||^2,  r_k = rytov_data(data, m_k)``,

    i.e. ``x_k + dx = J_k^T W (W J_k J_k^T W + lam I)^-1 W (r_k + J_k x_k)`` (the iteratively
    regularised Gauss-Newton form of the Tikhonov functional: Schweiger, Arridge & Nissilä 2005;
    Arridge 1999).  ``lam`` is chosen by GCV at the first iteration (whose step is therefore
    the :func:`tikhonov` solution) and divided by ``lam_factor`` after every step that lowers
    the data misfit; a step that does not is retried once with ``lam * lam_increase``
    (Marquardt 1963), and if that fails too the iteration stops at the last accepted estimate,
    so the recorded misfit never increases.

    Parameters
    ----------
    geometry, data, mask, sigma_amp, sigma_phase_deg
        As :func:`tikhonov`; ``data`` must be absolute (calibrated) since it is compared with
        the model's prediction.
    iterations : int
        Gauss-Newton steps (each costs one Jacobian, one 3P x 3P eigendecomposition and the
        factorisations of the trial model at both frequencies).
    lam : float, optional
        First regularisation weight (weighted units); None: GCV.
    lam_factor, lam_increase : float
        Decrease after an accepted step, increase for the one retry.

    Returns
    -------
    mu : (2, X, Y, Z) float
        Last accepted estimate (1/mm), clipped as in :func:`tikhonov`.
    info : dict
        ``misfit`` (``||W r||^2 / m`` at the background then after each accepted step),
        ``lam`` (lam used per attempted step), ``accepted`` (per attempt), ``seconds``
        (per iteration), ``stopped`` (reason or None), ``gcv`` when lam was chosen.
    """
    data = _check_data(geometry, data)
    mask, rows = _rows(geometry, mask)
    if iterations < 1:
        raise InputError(f"iterations must be >= 1, got {iterations}")
    w = _weights(geometry.n_pairs, sigma_amp, sigma_phase_deg)[rows]
    m_k, A = _background(geometry)
    data = np.where(mask, data, m_k)          # unmeasured pairs may hold 0 / NaN: never read
    mu = homogeneous(geometry)
    x = np.zeros(A.shape[1])
    fm = None
    info = {"misfit": [_misfit(data, m_k, rows, w)], "lam": [], "accepted": [], "seconds": [],
            "stopped": None, "n_rows": int(rows.sum())}
    for it in range(iterations):
        t0 = time.perf_counter()
        if fm is None:
            evals, U = _background_eig(geometry, float(sigma_amp), float(sigma_phase_deg), mask.tobytes())
        else:
            A, m_k = _linearise(fm)
            evals, U = _eig(_gram(A, rows), w)
        target = rytov_data(data, m_k).ravel()[rows] + (A @ x.astype(np.float32))[rows]
        beta = U.T @ (w * target)
        if lam is None:
            lam, lams, values, i = _gcv(evals, beta)
            info.update(gcv=(lams, values), lam_at_edge=i in (0, len(lams) - 1))
        for attempt in range(2):
            info["lam"].append(float(lam))
            mu_t, x_t = _to_volume(geometry, _solve(A, rows, w, evals, U, lam, beta))
            fm_t = ForwardModel(geometry, mu_t[0], mu_t[1])
            chi2 = _misfit(data, fm_t.measurements(), rows, w)
            ok = chi2 < info["misfit"][-1]
            info["accepted"].append(bool(ok))
            if ok:
                mu, x, fm = mu_t, x_t, fm_t
                info["misfit"].append(chi2)
                lam = lam / lam_factor
                break
            lam = lam * lam_increase
        info["seconds"].append(time.perf_counter() - t0)
        if not info["accepted"][-1]:
            info["stopped"] = f"iteration {it + 1}: no decrease of the data misfit after a retry"
            break
    return mu, info
