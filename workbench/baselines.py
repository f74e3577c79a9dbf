"""Classical DWI denoisers from DIPY behind one signature, plus Rician helpers.

Every baseline is ``fn(data, bvals, mask=None, **kw) -> denoised`` with
``data`` (X, Y, Z, N) float, ``bvals`` (N,), ``mask`` (X, Y, Z) bool or None,
and returns a float32 array of the same shape, clipped at >= 0. Voxels outside
``mask`` are set to 0 (DIPY's convention for masked denoising).

Baselines
---------
mppca       Marchenko-Pastur PCA (Veraart et al. 2016), ``dipy.denoise.localpca.mppca``.
patch2self  Patch2Self (Fadnavis et al. 2020; sketched version 3, Fadnavis et al. 2024),
            ``dipy.denoise.patch2self.patch2self``.
nlmeans     Rician-adapted non-local means (Coupé et al. 2008; Descoteaux et al. 2008),
            ``dipy.denoise.nlmeans.nlmeans``.

Helpers
-------
rician_bias_correct(data, sigma)      magnitude bias correction (Gudbjartsson & Patz 1995)
estimate_background_sigma(data, mask) Rician sigma from air (Rayleigh) voxels
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import numpy as np

from joblib import Parallel, delayed

from workbench.tasks.base import check_cancel

__all__ = [
    "BASELINES",
    "run_baseline",
    "mppca",
    "patch2self",
    "nlmeans",
    "rician_bias_correct",
    "estimate_background_sigma",
    "estimate_sigma_mppca",
    "mppca_slabs",
]


def _check_inputs(data: np.ndarray, bvals, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be 4D (X, Y, Z, N), got shape {data.shape}")
    bvals = np.asarray(bvals, dtype=float).ravel()
    if bvals.size != data.shape[-1]:
        raise ValueError(f"bvals has {bvals.size} entries but data has {data.shape[-1]} volumes")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != data.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match data shape {data.shape[:3]}")
    return data, bvals, mask


def _blas_threads(n: int | None):
    """Context manager limiting BLAS threads to ``n`` (no-op for None or without threadpoolctl)."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def _finish(out: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    out = np.asarray(out, dtype=np.float32)
    out = np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(out, 0.0, None, out=out)
    if mask is not None:
        out[~mask] = 0.0
    return out


def mppca(data, bvals, mask=None, *, patch_radius: int = 2, blas_threads: int | None = 1, progress=None,
          should_stop=None, n_jobs: int | None = None, **kw) -> np.ndarray:
    """Marchenko-Pastur PCA denoising (MP-PCA).

    Local PCA over (2r+1)^3 patches; components whose eigenvalues fall inside
    the Marchenko-Pastur bulk are treated as noise and removed, the noise
    variance being estimated from the same spectrum.

    Parameters
    ----------
    data : (X, Y, Z, N) array_like
    bvals : (N,) array_like
        Unused (kept for the common signature).
    mask : (X, Y, Z) bool, optional
        Only voxels inside are denoised; outside is set to 0.
    patch_radius : int
        Patch radius r (default 2, i.e. 125 samples per patch).
    blas_threads : int or None
        BLAS threads during the call (via threadpoolctl). The default 1 is
        much faster: DIPY does one small eigendecomposition per voxel, and
        multi-threaded OpenBLAS on a busy 2-core machine made it ~30x slower
        (20x20x12x65 phantom: 1.8 s with 1 thread, 85 s with 2). None leaves
        the BLAS setting alone.
    progress, should_stop : callable, optional
        With either, the volume is processed in axial slabs (:func:`mppca_slabs`, the same
        result): ``progress(done, total)`` after each slab, ``should_stop()`` before each
        (True raises :class:`workbench.tasks.base.Cancelled`).
    n_jobs : int, optional
        Worker processes for the slabs (joblib; one BLAS thread each, which is far faster
        than one process with several). Default: every core for series of 4 million
        elements and more (64x64x32x65 and up), else 1.
    **kw
        Passed to :func:`dipy.denoise.localpca.mppca` (e.g. ``pca_method``).

    Returns
    -------
    (X, Y, Z, N) float32

    Notes
    -----
    MP-PCA removes noise variance but not the Rician bias of magnitude data;
    follow with :func:`rician_bias_correct` for low SNR.

    References
    ----------
    Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E.
    Denoising of diffusion MRI using random matrix theory. NeuroImage 142:394-406, 2016.
    """
    from dipy.denoise.localpca import mppca as _mppca

    data, _, mask = _check_inputs(data, bvals, mask)
    kw.setdefault("suppress_warning", True)
    data = np.asarray(data, dtype=np.float64)
    jobs = _mppca_jobs(data, n_jobs)
    if progress is None and should_stop is None and jobs == 1:
        with _blas_threads(blas_threads), np.errstate(invalid="ignore", divide="ignore"):  # 0/0 outside the mask
            out = _mppca(data, mask=mask, patch_radius=patch_radius, **kw)
        return _finish(out, mask)
    out = np.empty_like(data)
    # with progress or cancel: 6 slabs (a report every sixth of the work); else one slab per worker (less overlap)
    radius_z = int(np.atleast_1d(patch_radius)[-1])  # an int, or one radius per axis (x, y, z)
    slabs = mppca_slabs(data.shape[2], radius_z, 6 if (progress or should_stop) else jobs)
    margin = 2 * radius_z
    windows = [(max(0, z0 - margin), min(data.shape[2], z1 + margin)) for z0, z1 in slabs]
    tasks = (delayed(_mppca_slab)(data[:, :, a:b], None if mask is None else mask[:, :, a:b], patch_radius,
                                  blas_threads, kw) for a, b in windows)
    check_cancel(should_stop)
    results = Parallel(n_jobs=jobs, return_as="generator")(tasks) if jobs > 1 else (t[0](*t[1], **t[2]) for t in tasks)
    for k, (part, (z0, z1), (a, _b)) in enumerate(zip(results, slabs, windows)):
        out[:, :, z0:z1] = part[:, :, z0 - a: z1 - a]
        if progress is not None:
            progress(k + 1, len(slabs))
        if k + 1 < len(slabs):
            check_cancel(should_stop)  # closing the generator stops the slabs not started yet
    return _finish(out, mask)


#: 4D series with fewer elements run MP-PCA in one process (starting worker processes costs ~1 s)
PARALLEL_MIN_ELEMENTS = 4_000_000


def _mppca_jobs(data: np.ndarray, n_jobs: int | None) -> int:
    if n_jobs is not None:
        return max(1, int(n_jobs))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if data.size >= PARALLEL_MIN_ELEMENTS and data.shape[2] >= 16 else 1


def _mppca_slab(data, mask, patch_radius, blas_threads, kw):
    """DIPY's MP-PCA on one slab (run in a worker process; one BLAS thread each)."""
    from dipy.denoise.localpca import mppca as _mppca

    with _blas_threads(blas_threads), np.errstate(invalid="ignore", divide="ignore"):
        return _mppca(data, mask=mask, patch_radius=patch_radius, **kw)


def mppca_slabs(nz: int, patch_radius: int = 2, n_slabs: int = 6) -> list[tuple[int, int]]:
    """Axial slabs ``[z0, z1)`` for MP-PCA with progress and cancel between them.

    Each slab is denoised with ``2 * patch_radius`` extra slices on either side: every
    output voxel of DIPY's patch-averaged MP-PCA depends only on data within that distance,
    so the slab-wise result equals the whole-volume one exactly (a test checks it).
    """
    size = max(2 * patch_radius + 4, -(-nz // n_slabs))
    return [(z, min(nz, z + size)) for z in range(0, nz, size)]


def patch2self(
    data,
    bvals,
    mask=None,
    *,
    model: str = "ols",
    b0_threshold: float = 50,
    seed: int | None = 0,
    blas_threads: int | None = 1,
    **kw,
) -> np.ndarray:
    """Patch2Self: self-supervised denoising by regressing each volume on the others.

    Uses DIPY's default (sketched, version 3) implementation with an OLS model.

    Parameters
    ----------
    data : (X, Y, Z, N) array_like
    bvals : (N,) array_like
        Volumes with ``bvals <= b0_threshold`` are regressed only on b0s, the
        others only on diffusion-weighted volumes.
    mask : (X, Y, Z) bool, optional
        The regression uses the whole volume; voxels outside the mask are set
        to 0 afterwards.
    model : {"ols", "ridge", "lasso"} or sklearn regressor
    b0_threshold : float
    seed : int or None
        DIPY's count sketch draws from NumPy's global random state; the state
        is seeded with ``seed`` for the call and restored afterwards, so
        results are reproducible. ``None`` leaves the global state alone.
    blas_threads : int or None
        BLAS threads during the call (1 was twice as fast as 2 on the shared
        2-core machine: 4.6 s vs 8.9 s for 64x64x32x65). None: leave as is.
    **kw
        Passed to :func:`dipy.denoise.patch2self.patch2self`.

    Returns
    -------
    (X, Y, Z, N) float32

    Notes
    -----
    Two DIPY 1.12.1 problems are handled here:

    * ``version=1`` with ``model='ols'`` and current scikit-learn returns
      volumes shifted far from their mean (about half the input mean on the
      phantom), so only the default ``version=3`` is used.
    * ``version=3`` writes its results in chunks of ``N // 5`` volumes and
      copies the wrong chunk slots into the last ``N % 5`` volumes (they come
      out worse than the noisy input). When ``N % 5 != 0`` we run it a second
      time with the volumes rolled so that those volumes come first and take
      them from that run (OLS and the count sketch are invariant to the
      volume order).

    References
    ----------
    Fadnavis S, Batson J, Garyfallidis E. Patch2Self: Denoising diffusion MRI
    with self-supervised learning. Advances in Neural Information Processing
    Systems 33, 2020.
    Fadnavis S, Chowdhury A, Batson J, Drineas P, Garyfallidis E. Patch2Self2:
    Self-supervised denoising on coresets via matrix sketching. CVPR 2024.
    """
    from dipy.denoise.patch2self import patch2self as _p2s

    data, bvals, mask = _check_inputs(data, bvals, mask)
    if kw.get("version", 3) != 3:
        raise ValueError("only Patch2Self version 3 is supported (version 1 shifts volume means in DIPY 1.12.1)")
    kw.pop("version", None)
    arr = np.asarray(data, dtype=np.float64)
    n = arr.shape[-1]

    def run(a, b):
        state = np.random.get_state() if seed is not None else None
        try:
            if seed is not None:
                np.random.seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _p2s(a, b, model=model, b0_threshold=b0_threshold, version=3, **kw)
        finally:
            if state is not None:
                np.random.set_state(state)

    with _blas_threads(blas_threads):
        out = np.asarray(run(arr, bvals))
        r = n % 5
        if r:
            order = np.roll(np.arange(n), r)  # the last r volumes first
            again = np.asarray(run(np.ascontiguousarray(arr[..., order]), bvals[order]))
            out[..., n - r :] = again[..., :r]
    return _finish(out, mask)


def nlmeans(
    data,
    bvals,
    mask=None,
    *,
    sigma=None,
    patch_radius: int = 1,
    block_radius: int = 3,
    method: str = "classic",
    coils: int = 0,
    **kw,
) -> np.ndarray:
    """Rician-adapted non-local means, volume by volume.

    Parameters
    ----------
    data : (X, Y, Z, N) array_like
    bvals : (N,) array_like
        Unused (kept for the common signature).
    mask : (X, Y, Z) bool, optional
        Only voxels inside are denoised; outside is set to 0.
    sigma : float or (N,) array, optional
        Noise sigma. Default: one estimate per volume from
        :func:`dipy.denoise.noise_estimate.estimate_sigma` with ``N=coils``.
    patch_radius, block_radius : int
        Similarity patch radius (1: 3x3x3 patches) and search radius
        (3: 7x7x7 neighbourhood) of the classic method.
    method : {"classic", "blockwise"}
        Passed to :func:`dipy.denoise.nlmeans.nlmeans`. The default is
        ``"classic"``, not DIPY 1.12's new default ``"blockwise"``: on the
        phantom (SNR 10, 2 mm) blockwise smears the thin CSF layers (CSF RMSE
        rises above the noisy input's) and does not improve a 24x24x12
        phantom at all; classic with radii (1, 3) gave the lowest RMSE in the
        brain (37.3 vs 44.7 for blockwise, noisy 65.8, on 7 volumes of the
        64x64x32 SNR 10 phantom) at ~0.5 s per volume.
    coils : int
        ``N`` of ``estimate_sigma``. The default 0 (no Koay correction factor)
        is the one that matches the true sigma on the phantom's
        diffusion-weighted volumes (within ~10 %); ``N=1`` assumes the whole
        image is Rayleigh background and over-estimates sigma by ~40 % on a
        head that fills a third of the field of view.
    **kw
        Passed to :func:`dipy.denoise.nlmeans.nlmeans` (e.g. ``num_threads``).

    Returns
    -------
    (X, Y, Z, N) float32

    Notes
    -----
    ``rician=True`` corrects the Rician bias inside the filter (2 sigma^2
    subtracted from the weighted mean of squares), but only partly: on the
    64x64x32 SNR 10 phantom the mean error over DW volumes in the brain went
    from +21 (noisy) to +14, and :func:`rician_bias_correct` with the
    background sigma on top still lowered the RMSE from 39.5 to 36.8.

    References
    ----------
    Descoteaux M, Wiest-Daesslé N, Prima S, Barillot C, Deriche R. Impact of
    Rician adapted non-local means filtering on HARDI. MICCAI 2008, LNCS 5242:122-130
    (the "classic" DIPY method).
    Coupé P, Yger P, Prima S, Hellier P, Kervrann C, Barillot C. An optimized
    blockwise nonlocal means denoising filter for 3-D magnetic resonance
    images. IEEE Transactions on Medical Imaging 27(4):425-441, 2008.
    """
    from dipy.denoise.nlmeans import nlmeans as _nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma

    data, _, mask = _check_inputs(data, bvals, mask)
    arr = np.asarray(data, dtype=np.float64)
    if sigma is None:
        sigma = estimate_sigma(arr, N=coils).astype(np.float64)
    else:
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.ndim == 0:
            sigma = np.full(arr.shape[-1], float(sigma))
    kw.setdefault("rician", True)
    out = _nlmeans(
        arr, sigma, mask=mask, patch_radius=patch_radius, block_radius=block_radius, method=method, **kw
    )
    return _finish(out, mask)


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "mppca": mppca,
    "patch2self": patch2self,
    "nlmeans": nlmeans,
}


def run_baseline(name: str, data, bvals, mask=None, **kw) -> np.ndarray:
    """Run the baseline ``name`` (a key of :data:`BASELINES`).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    try:
        fn = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}") from None
    return fn(data, bvals, mask=mask, **kw)


# noise-level helpers moved to workbench.noise_level; kept importable from here for callers and notebooks
from workbench.noise_level import estimate_background_sigma, estimate_sigma_mppca, rician_bias_correct  # noqa: E402,F401
