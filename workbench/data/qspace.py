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
The regression weights are cross-fitted (fitted on one checkerboard parity of
voxels, applied to the other), so they do not depend on the voxel's own noise either.

A third, non-linear prior adds spatial denoising: the volumes are split into
interleaved folds that each cover q-space; for each fold, MP-PCA (Veraart et
al. 2016) denoises the other folds' volumes, which are regressed onto the fold's
volumes (:func:`split_mppca_prior`). Volume ``j`` is then predicted from denoised data
that never saw it.
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


def checkerboard(shape: tuple[int, int, int]) -> np.ndarray:
    """(X, Y, Z) int array of voxel parity ``(x + y + z) % 2``, the two halves used for cross-fitting.

    A regression fitted over all voxels fits each voxel's own noise a little
    (about ``features / voxels`` of it): on a small field of view that leak breaks
    J-invariance. Fitting on one parity and predicting the other removes it
    exactly; the two halves interleave, so both see the same anatomy.
    """
    return np.indices(shape).sum(axis=0) % 2


def fit_voxels(data: np.ndarray, mask: np.ndarray | None, n_features: int, per_feature: int = 20) -> np.ndarray:
    """(X, Y, Z) bool: the voxels the regressions are fitted on.

    The brain mask, unless it holds fewer than ``per_feature`` voxels per fitted
    weight in each checkerboard half (a field of view cropped to the brain, where
    an Otsu mask keeps only the brightest voxels); then every voxel with signal.
    """
    signal = np.any(data != 0, axis=-1)
    if mask is None or not mask.any():
        return signal
    mask = np.asarray(mask, bool)
    return mask if mask.sum() // 2 >= per_feature * n_features else (mask | signal)


def fold_labels(n: int, bvals: np.ndarray | None, n_folds: int = 2) -> np.ndarray:
    """Assign volumes to ``n_folds`` interleaved folds, alternating within each shell (b0s included)."""
    labels = np.zeros(n, dtype=np.int64)
    shells = shell_labels(bvals) if bvals is not None else np.zeros(n, dtype=np.int64)
    for shell in np.unique(shells):
        idx = np.flatnonzero(shells == shell)
        labels[idx] = np.arange(len(idx)) % n_folds
    return labels


def clip_for(dtype, values: np.ndarray) -> np.ndarray:
    """``values`` clipped in place to float16's range when they are to be stored as float16
    (a wild voxel would become inf there); unchanged otherwise."""
    if np.dtype(dtype) == np.float16:
        np.clip(values, -65000.0, 65000.0, out=values)
    return values


def split_mppca_prior(
    data: np.ndarray,
    bvals: np.ndarray | None,
    mask: np.ndarray | None,
    n_folds: int = 2,
    patch_radius: int = 2,
    ridge: float = 1e-4,
    progress=None,
    should_stop=None,
    fallback: np.ndarray | None = None,
    stride: int = 1,
    out: np.ndarray | None = None,
    lattice: int = 1,
    denoised=None,
) -> np.ndarray:
    """Leave-one-fold-out prediction of every volume from MP-PCA-denoised other volumes.

    For each fold ``k`` of :func:`fold_labels`, MP-PCA denoises the volumes *not*
    in ``k`` (inside the brain dilated by 2 voxels) and a ridge regression over
    brain voxels maps those denoised volumes (plus an intercept) onto each
    volume of ``k``, cross-fitted over the two :func:`checkerboard` parities.
    The prediction of volume ``j`` at a voxel therefore depends on the noise of
    other volumes and on the noise of ``j`` at *other* voxels only (through the
    weights), never on its own noisy value.

    Parameters
    ----------
    data : (X, Y, Z, N)
    bvals : (N,) or None
    mask : (X, Y, Z) bool or None
    n_folds, patch_radius
    ridge : float
        Tikhonov weight of the regression, times the mean energy of its features. Ridge shrinks the
        weights, so each predicted volume keeps less of what sets its direction apart from the others
        (lower angular contrast), and FA comes out low: on the 64x64x32 benchmark phantoms (seed 0)
        1e-3 gave the prior an FA bias of -0.008 at multishell SNR 20 and -0.039 at DTI SNR 20, 1e-4
        -0.005 and -0.025, and a PSNR 0.2-0.7 dB higher but at multishell SNR 10 (-0.03 dB); below
        1e-4 little changes (``benchmarks/dwi_prior_ridge.py``).
    stride : int
        Patch-centre spacing of MP-PCA (:func:`workbench.mppca.mppca_batched`; 1 = DIPY's estimator).
    lattice : {1, 2, 4}
        With ``stride`` 1: patch centres on every voxel (1), every second (2, checkerboard) or every
        fourth (4, body-centred cubic) of the grown brain (:func:`workbench.mppca.lattice_points`).
    fallback : (X, Y, Z, N) array or callable, optional
        Used for a fold whose complement has fewer than 4 volumes (MP-PCA needs a spectrum) and
        outside the denoised region; a callable ``fallback(where)`` returns its (V, N) values at the
        voxels of the (X, Y, Z) bool ``where`` (a prior computed only where it is needed).
    out : (X, Y, Z, N) array, optional
        Written in place and returned (any float dtype and strides, e.g. a view of the
        float16 priors the network reads; values are clipped to float16's range there),
        instead of a new float32 array.
    denoised : :class:`workbench.data.fold_inputs.DenoisedFolds`, optional
        Receives what each fold's prediction read, for ``data.volume_input: denoised``: the volumes
        outside fold ``k`` as MP-PCA denoised them without ``k`` (0 beyond the brain dilated by 2
        voxels); a fold without MP-PCA keeps its other volumes noisy.
    progress, should_stop : callable, optional
        ``progress(done, total)`` after each MP-PCA plane of patch centres of each fold (total:
        ``n_folds`` x planes); ``should_stop()`` before each (True raises
        :class:`workbench.tasks.base.Cancelled`).

    Returns
    -------
    (X, Y, Z, N) float32

    References
    ----------
    Veraart J et al. Denoising of diffusion MRI using random matrix theory. NeuroImage 142:394-406, 2016.
    Batson J, Royer L. Noise2Self: blind denoising by self-supervision. ICML 2019.
    """
    from scipy import ndimage

    from workbench.mppca import centre_grid, mppca_batched

    n = data.shape[-1]
    brain = fit_voxels(data, mask, n // max(n_folds, 1) * (n_folds - 1) + 1)
    grown = ndimage.binary_dilation(brain, iterations=2) if not brain.all() else brain
    labels = fold_labels(n, bvals, n_folds)
    if denoised is not None and not np.array_equal(denoised.folds, labels):
        raise ValueError("denoised.folds are not this prior's folds: build it with fold_labels(n, bvals, n_folds)")
    checker = checkerboard(data.shape[:3]).reshape(-1)
    radius = np.array([min(patch_radius, (d - 1) // 2) for d in data.shape[:3]])  # small images: smaller patch
    targets = data.reshape(-1, n)
    if out is None:
        out = np.zeros(data.shape, dtype=np.float32)
    elif out.shape != data.shape:
        raise ValueError(f"out has shape {out.shape}, the data {data.shape}")
    # patch centres: every ``stride``-th voxel of the grown brain, or with ``lattice`` > 1 (and stride 1)
    # the lattice's points in it
    centres = (centre_grid(data.shape[:3], radius, None, grown, grown, lattice) if lattice > 1 and stride == 1
               else centre_grid(data.shape[:3], radius, stride, grown))
    per_fold = int(centres.any(axis=(0, 1)).sum())  # the planes mppca_batched reports
    for k in range(n_folds):
        def fold_progress(done, _total, k=k):
            if progress is not None:
                progress(k * per_fold + done, n_folds * per_fold)

        dst, src = np.flatnonzero(labels == k), np.flatnonzero(labels != k)
        if len(dst) == 0:
            continue
        if len(src) < 4:
            if fallback is None:
                raise ValueError(f"fold {k}: only {len(src)} other volumes; MP-PCA needs at least 4")
            out[..., dst] = _fallback_at(fallback, np.ones(data.shape[:3], bool))[:, dst].reshape(
                data.shape[:3] + (len(dst),))
            if denoised is not None:
                denoised.keep(k, np.take(data, src, axis=-1), grown, from_prior=False)
            continue
        # MP-PCA gathers the volumes outside k plane by plane (no copy of them)
        den = mppca_batched(data, grown, patch_radius=radius, centres=centres, channels=src,
                            progress=fold_progress, should_stop=should_stop)
        flat = den.reshape(-1, len(src))  # float32; float64 only for the fit's voxels
        pred = np.empty((flat.shape[0], len(dst)), dtype=np.float32)
        for parity in (0, 1):  # cross-fitting: weights fitted on one parity, applied to the other
            fit = brain.reshape(-1) & (checker != parity)
            feats = np.concatenate([flat[fit].astype(np.float64), np.ones((int(fit.sum()), 1))], 1)
            gram = feats.T @ feats
            reg = ridge * np.trace(gram[:-1, :-1]) / max(len(src), 1) * np.eye(len(gram))
            reg[-1, -1] = 0.0
            w = np.linalg.solve(gram + reg, feats.T @ targets[fit][:, dst].astype(np.float64))
            apply = checker == parity
            pred[apply] = flat[apply] @ w[:-1].astype(np.float32) + w[-1].astype(np.float32)
        if denoised is not None:  # MP-PCA wrote 0 beyond the grown brain
            denoised.keep(k, den, grown, from_prior=True)
        del den, flat
        out[..., dst] = clip_for(out.dtype, pred).reshape(data.shape[:3] + (len(dst),))
    if fallback is not None:  # beyond the denoised region (air) the regression prior is the better guess
        step = max(1, (1 << 16) // max(1, data.shape[1] * data.shape[2]))  # ~64k voxels at a time: no copy of the air
        for a in range(0, data.shape[0], step):
            where = np.zeros_like(grown)
            where[a:a + step] = ~grown[a:a + step]
            if where.any():
                out[where] = clip_for(out.dtype, _fallback_at(fallback, where))
    return out


def _fallback_at(fallback, where: np.ndarray) -> np.ndarray:
    """(V, N) values of ``fallback`` (an array or a callable, see :func:`split_mppca_prior`) at ``where``."""
    return np.asarray(fallback(where) if callable(fallback) else fallback[where], dtype=np.float32)


def prior_names(kind: str) -> tuple[list[str], list[str]]:
    """The stored (non-linear) and the linear priors of ``kind``, in channel order (stored first)."""
    known = {"none": ([], []), "regression": ([], ["regression"]), "sh": ([], ["sh"]),
             "both": ([], ["regression", "sh"]), "mppca": (["mppca"], ["regression", "sh"])}
    if kind not in known:
        raise ValueError(f"unknown q-space prior {kind!r}; known: {', '.join(known)}")
    return known[kind]


def stored_and_linear_priors(
    data: np.ndarray,
    bvals: np.ndarray | None,
    bvecs: np.ndarray | None,
    mask: np.ndarray | None,
    kind: str = "both",
    sh_order: int = 4,
    n_folds: int = 2,
    progress=None,
    should_stop=None,
    mppca_stride: int = 1,
    volumes_first: bool = False,
    dtype=np.float32,
    mppca_lattice: int = 1,
    denoised=None,
    ridge: float = 1e-4,
):
    """The priors of :func:`qspace_priors` as the network reads them: the split MP-PCA prior stored,
    (S, X, Y, Z, N) (``volumes_first``: (S, N, X, Y, Z)) in ``dtype``, S = 1 for ``mppca`` else 0,
    and the linear ones as a :class:`workbench.data.linear_priors.LinearPriors` applied on demand.
    ``progress``/``should_stop`` report and cancel the split prior's MP-PCA planes; ``denoised``
    (a :class:`workbench.data.fold_inputs.DenoisedFolds`, with ``kind`` 'mppca') receives the split
    prior's denoised folds (:func:`split_mppca_prior`); ``ridge`` is its regression's."""
    from workbench.data.linear_priors import linear_priors

    stored_names, linear_names = prior_names(kind)
    n = data.shape[-1]
    stored = np.empty(((len(stored_names), n) + data.shape[:3]) if volumes_first
                      else ((len(stored_names),) + data.shape), dtype=dtype)
    linear = linear_priors(data, bvals, bvecs, mask, tuple(linear_names), sh_order) if linear_names else None
    if denoised is not None and not stored_names:
        raise ValueError(f"denoised volumes come from the 'mppca' prior, not from {kind!r}")
    if stored_names:  # beyond the denoised region the split prior falls back to the regression prior
        checker = checkerboard(data.shape[:3])

        def regression_at(where: np.ndarray) -> np.ndarray:
            return linear.predict_rows(data[where], checker[where], linear_names.index("regression"))

        split_mppca_prior(data, bvals, mask, n_folds=n_folds, progress=progress, should_stop=should_stop,
                          fallback=regression_at, stride=mppca_stride, lattice=mppca_lattice, denoised=denoised,
                          ridge=ridge,
                          out=np.moveaxis(stored[0], 0, -1) if volumes_first else stored[0])
    return stored, linear


def qspace_priors(
    data: np.ndarray,
    bvals: np.ndarray | None,
    bvecs: np.ndarray | None,
    mask: np.ndarray | None,
    kind: str = "both",
    sh_order: int = 4,
    n_folds: int = 2,
    progress=None,
    should_stop=None,
    mppca_stride: int = 1,
    volumes_first: bool = False,
    dtype=np.float32,
    mppca_lattice: int = 1,
    ridge: float = 1e-4,
) -> np.ndarray:
    """Leave-one-out predictions, shaped (P, X, Y, Z, N): P = 3 for ``mppca``, 2 for ``both``,
    1 for ``sh``/``regression``, 0 for ``none``.

    The order is split MP-PCA (``mppca`` only), regression, SH: the first has the
    lowest error and is the one the network corrects. Without gradient
    information the SH prior falls back to regression. ``progress``/``should_stop``
    report and cancel the split MP-PCA prior (:func:`split_mppca_prior`), the slow part.
    ``volumes_first`` returns (P, N, X, Y, Z). Arithmetic is float32 but for the regressions'
    fits (float64 Gram matrices); ``dtype`` is what the priors are stored in. The network
    itself reads the linear priors on demand (:func:`stored_and_linear_priors`); this
    function writes them out, one x-plane at a time.
    """
    stored, linear = stored_and_linear_priors(data, bvals, bvecs, mask, kind, sh_order, n_folds, progress,
                                              should_stop, mppca_stride, volumes_first, dtype, mppca_lattice,
                                              ridge=ridge)
    if linear is None:
        return stored
    n, s = data.shape[-1], len(stored)
    out = np.empty(((s + len(linear), n) + data.shape[:3]) if volumes_first
                   else ((s + len(linear),) + data.shape), dtype=dtype)
    out[:s] = stored
    del stored
    checker = checkerboard(data.shape[:3])
    for x in range(data.shape[0]):
        block = np.ascontiguousarray(data[x], dtype=np.float32).reshape(-1, n)
        for k in range(len(linear)):
            plane = clip_for(dtype, linear.predict_rows(block, checker[x].reshape(-1), k))
            if volumes_first:
                out[s + k][:, x] = plane.T.reshape((n,) + data.shape[1:3])
            else:
                out[s + k][x] = plane.reshape(data.shape[1:3] + (n,))
    return out
