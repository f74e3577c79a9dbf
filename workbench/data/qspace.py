"""Closed-form leave-one-out predictions of each diffusion volume from the others.

A J-invariant denoiser must predict volume ``j`` without seeing it. Telling the
network *which* volume to predict through its index alone teaches it little in a
few hundred steps (it regresses to the shell mean, see
``shared/notes/dwi-denoising-findings.md``). Giving it an aligned closed-form
estimate of volume ``j`` computed from the other volumes works. Two estimators
are provided, both linear in the signal, so each is one (N, N) matrix applied to
every voxel:

* spherical harmonics per shell (Descoteaux et al. 2007, Laplace-Beltrami
  regularised): uses the gradient directions, keeps the angular contrast;
* voxelwise linear regression on all other volumes (the patch-radius-0 case of
  Patch2Self, Fadnavis et al. 2020): uses no geometry, strongest averaging.

Every matrix has a zero diagonal: the prediction of ``j`` never uses volume ``j``.
"""

from __future__ import annotations

import numpy as np

B0_THRESHOLD = 50.0


def shell_labels(bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD, tol: float = 100.0) -> np.ndarray:
    """Group b-values into shells: 0 for b0, then 1, 2, ... by increasing b (within ``tol``)."""
    bvals = np.asarray(bvals, dtype=np.float64)
    labels = np.zeros(len(bvals), dtype=np.int64)
    centers: list[float] = []
    for i in np.argsort(bvals):
        b = bvals[i]
        if b <= b0_threshold:
            continue
        if not centers or abs(b - centers[-1]) > tol:
            centers.append(b)
        labels[i] = len(centers)
    return labels


def _sh_basis(bvecs: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    from dipy.reconst.shm import real_sh_descoteaux

    v = bvecs / np.maximum(np.linalg.norm(bvecs, axis=1, keepdims=True), 1e-12)
    theta = np.arccos(np.clip(v[:, 2], -1, 1))
    phi = np.arctan2(v[:, 1], v[:, 0])
    basis, _, l_degree = real_sh_descoteaux(order, theta, phi, legacy=False)
    return basis, l_degree


def sh_loo_matrix(bvecs: np.ndarray, order: int = 4, smooth: float = 0.006) -> np.ndarray:
    """(n, n) matrix W with W[j, j] = 0: row j predicts direction j from an SH fit to the others.

    The order drops (4 -> 2 -> 0) while a shell has too few other directions to fit it.
    """
    n = len(bvecs)
    if n < 2:
        return np.zeros((n, n))
    while order > 0 and (order + 1) * (order + 2) // 2 > n - 1:
        order -= 2
    if order == 0:
        w = np.ones((n, n)) / (n - 1)
        np.fill_diagonal(w, 0.0)
        return w
    basis, l_degree = _sh_basis(bvecs, order)
    lap = np.diag((l_degree * (l_degree + 1.0)) ** 2)
    w = np.zeros((n, n))
    for j in range(n):
        keep = np.arange(n) != j
        b = basis[keep]
        coef_op = np.linalg.solve(b.T @ b + smooth * lap, b.T)  # (ncoef, n-1)
        w[j, keep] = basis[j] @ coef_op
    return w


def regression_loo_matrix(data_2d: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """(n, n + 1) matrix: row j regresses volume j on the other volumes plus an intercept.

    ``data_2d`` is (voxels, n) from inside the mask. Solved from one Gram matrix,
    so the cost is one (n+1)^2 product over voxels plus n small solves.
    """
    x = np.asarray(data_2d, dtype=np.float64)
    n = x.shape[1]
    xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    gram = xa.T @ xa / len(x)
    scale = np.trace(gram[:n, :n]) / max(n, 1)
    w = np.zeros((n, n + 1))
    for j in range(n):
        feats = np.array([i for i in range(n + 1) if i != j])
        g = gram[np.ix_(feats, feats)] + ridge * scale * np.eye(len(feats))
        w[j, feats] = np.linalg.solve(g, gram[feats, j])
    return w


def sh_prior_matrix(bvals: np.ndarray, bvecs: np.ndarray, order: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) SH leave-one-out matrix over all volumes, and a bool vector of rows it could not fill.

    b0 volumes are predicted by the mean of the other b0s; a lone b0 is left to
    the caller (``unfilled``), which falls back to regression.
    """
    n = len(bvals)
    labels = shell_labels(bvals)
    w = np.zeros((n, n))
    unfilled = np.zeros(n, dtype=bool)
    for shell in np.unique(labels):
        idx = np.flatnonzero(labels == shell)
        if len(idx) < 2:
            unfilled[idx] = True
            continue
        if shell == 0:
            sub = np.ones((len(idx), len(idx))) / (len(idx) - 1)
            np.fill_diagonal(sub, 0.0)
        else:
            sub = sh_loo_matrix(bvecs[idx], order)
        w[np.ix_(idx, idx)] = sub
    return w, unfilled


def qspace_priors(
    data: np.ndarray,
    bvals: np.ndarray | None,
    bvecs: np.ndarray | None,
    mask: np.ndarray | None,
    kind: str = "both",
    sh_order: int = 4,
) -> np.ndarray:
    """Leave-one-out predictions, shaped (P, X, Y, Z, N) with P = 2 for ``both``, else 1 (0 for ``none``).

    For ``both`` the regression prediction comes first (it has the lower error),
    then the SH one. Without gradient information the SH prior falls back to
    regression.
    """
    if kind == "none":
        return np.zeros((0,) + data.shape, dtype=np.float32)
    n = data.shape[-1]
    flat = data.reshape(-1, n).astype(np.float64)
    inside = flat[mask.reshape(-1)] if mask is not None and mask.any() else flat
    reg = regression_loo_matrix(inside)
    reg_pred = (flat @ reg[:, :n].T + reg[:, n]).astype(np.float32).reshape(data.shape)
    out = []
    if kind in ("regression", "both"):
        out.append(reg_pred)
    if kind in ("sh", "both"):
        if bvals is None or bvecs is None:
            out.append(reg_pred)
        else:
            w, unfilled = sh_prior_matrix(bvals, bvecs, sh_order)
            sh_pred = (flat @ w.T).astype(np.float32).reshape(data.shape)
            sh_pred[..., unfilled] = reg_pred[..., unfilled]
            out.append(sh_pred)
    return np.stack(out, axis=0)
