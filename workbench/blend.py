"""The SURE-weighted blend of the J-invariant prediction with full-data MP-PCA.

Stein's unbiased risk estimate (Stein 1981) needs each candidate's divergence; the
J-invariant prediction has none, the noisy volume's is the voxel count, and MP-PCA's
is measured by one perturbed rerun (Ramani, Blu, Unser 2008) on part of the brain.

References
----------
Stein CM. Estimation of the mean of a multivariate normal distribution. Ann Stat 9:1135-1151, 1981.
Ramani S, Blu T, Unser M. Monte-Carlo SURE: a black-box optimization of regularization
parameters for general denoising algorithms. IEEE TIP 17:1540-1554, 2008.
Veraart J et al. Denoising of diffusion MRI using random matrix theory. NeuroImage 142:394-406, 2016.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from workbench.mppca import centre_grid, dense_region, mppca_batched

#: Range of blend weights taken as trustworthy; outside it a volume falls back to a convex mix.
PLAUSIBLE_WEIGHTS = (-0.5, 1.5)
#: Fewer brain voxels than this and SURE is too noisy for three free weights (its spread is
#: ~ sigma^2 sqrt(2 / voxels)): every volume gets the convex network/MP-PCA mix.
MIN_SURE_VOXELS = 1000


def divergence_slabs(mask: np.ndarray, voxels: int, n_slabs: int = 3, min_planes: int = 4) -> list[tuple[int, int]]:
    """Axial slabs ``[z0, z1)`` on which the blend's Monte-Carlo divergence is measured.

    The whole volume when ``voxels`` is 0 or at least the brain's voxel count; else
    ``n_slabs`` slabs centred on the quantiles of the brain's axial extent, thickened
    together until they hold ``voxels`` brain voxels. The divergence is a sum over brain
    voxels; measured on a part of them and scaled by the voxel count, it estimates the
    same sum only as far as the slabs are typical of the brain: on the 128x128x80 phantom
    three slabs of 100k voxels read it 4.7% low (the brain's top and bottom, unsampled,
    have more divergence per voxel; README, "DWI at clinical size").
    """
    per_plane = np.asarray(mask, bool).sum(axis=(0, 1))
    nz, total = len(per_plane), int(per_plane.sum())
    if voxels <= 0 or total <= voxels:
        return [(0, nz)]
    cumulative = np.cumsum(per_plane) / total
    centres = [int(np.searchsorted(cumulative, (k + 0.5) / n_slabs)) for k in range(n_slabs)]
    planes = np.ones(nz, bool)
    for half in range(min_planes // 2, nz):
        planes = np.zeros(nz, bool)
        for c in centres:
            planes[max(0, c - half): c + half] = True
        if per_plane[planes].sum() >= voxels or planes.all():
            break
    edges = np.flatnonzero(np.diff(np.concatenate([[0], planes.astype(np.int8), [0]])))
    return [(int(z0), int(z1)) for z0, z1 in zip(edges[::2], edges[1::2])]


def _windows(slabs, nz: int, radius: int = 2) -> list[tuple[int, int, int, int]]:
    """Per slab ``[z0, z1)``: the window ``[a, b)`` whose patches reach it (``2 r`` planes more on each side)."""
    return [(z0, z1, max(0, z0 - 2 * radius), min(nz, z1 + 2 * radius)) for z0, z1 in slabs]


def _divergence_centres(grid: np.ndarray, dense: np.ndarray, a: int, b: int, radius: int = 2) -> np.ndarray:
    """The full run's patch centres in the window ``[a, b)`` that reach the slab inside it (those in ``dense``)."""
    centres = grid[:, :, a:b] & dense[:, :, a:b]
    centres[:, :, :radius] = False  # outside the window's valid range; the slab needs none of them
    centres[:, :, centres.shape[2] - radius:] = False
    return centres


def _centres(shape, mask: np.ndarray, stride: int, divergence_voxels: int, lattice: int):
    """The blend's patch centres: the full run's grid, and per divergence window its slab's share."""
    dense = dense_region(mask)
    grid = centre_grid(shape, 2, stride, None, dense, lattice)
    windows = _windows(divergence_slabs(mask, divergence_voxels), shape[2])
    return dense, grid, [(z0, z1, a, b, _divergence_centres(grid, dense, a, b)) for z0, z1, a, b in windows]


def _planes(grid: np.ndarray, windows) -> int:
    """Axial planes holding patch centres in the full run's ``grid`` and in each divergence window."""
    return sum(int(g.any(axis=(0, 1)).sum()) for g in [grid] + [w[-1] for w in windows])


def blend_work(shape, mask: np.ndarray, stride: int = 2, divergence_voxels: int = 0, lattice: int = 1) -> int:
    """Planes of patch centres :func:`mppca_with_divergence` processes (its progress total)."""
    _, grid, windows = _centres(shape, mask, stride, divergence_voxels, lattice)
    return _planes(grid, windows)


def mppca_with_divergence(noisy: np.ndarray, sigma: float, mask: np.ndarray, bvals=None, progress=None,
                          stride: int = 2, divergence_voxels: int = 0, should_stop=None,
                          seed: int = 0, lattice: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Full-field-of-view MP-PCA of (N, X, Y, Z) volumes and its divergence per volume in ``mask``.

    MP-PCA (Veraart et al. 2016; :func:`workbench.mppca.mppca_batched`) centres a patch on
    every voxel of ``mask`` dilated by the patch radius (there it is DIPY's estimator; with
    ``lattice`` 2 or 4 on every second or fourth voxel of it, :func:`workbench.mppca.lattice_points`)
    and on every ``stride``-th voxel elsewhere (air). It runs again on the data perturbed by 1% of
    ``sigma`` times a standard normal probe ``b`` (Ramani et al. 2008):
    ``div_j = sum_x b_j(x) [f(y + eps b) - f(y)]_j(x) / eps``, with the same patches where the
    mask's voxels need them and only in the :func:`divergence_slabs` holding
    ``divergence_voxels`` mask voxels (each with its patch margin, so its values equal the
    full run's); the sum is scaled to the whole mask. Returns ``(divergences (N,), denoised
    (N, X, Y, Z))``. ``progress(done, total)`` counts planes of patch centres over both runs
    (:func:`blend_work`) and may raise to cancel; ``should_stop()`` True cancels between
    planes. ``bvals`` is unused. ``noisy`` is read in place when it is an (X, Y, Z, N) C-ordered
    float32 array seen as (N, X, Y, Z) (the layout MP-PCA reads fastest; the DWI subject's volumes are).
    """
    del bvals
    mask = np.asarray(mask, bool)
    eps = 0.01 * float(sigma)
    if eps <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    dense, grid, windows = _centres(noisy.shape[1:], mask, stride, divergence_voxels, lattice)
    total = _planes(grid, windows)
    done = [0]

    def report(step, steps):
        if progress is not None:
            progress(done[0] + step, total)
        if step == steps:
            done[0] += steps

    source = np.moveaxis(noisy, 0, -1)  # (X, Y, Z, N): no copy when noisy is a view of that layout
    base = mppca_batched(source, None, centres=grid, progress=report, should_stop=should_stop)
    rng = np.random.default_rng(seed)
    div = np.zeros(len(noisy))
    counted = 0
    for z0, z1, a, b, centres in windows:
        probe = rng.standard_normal((len(noisy),) + noisy.shape[1:3] + (b - a,), dtype=np.float32)
        perturbed = np.multiply(np.moveaxis(probe, 0, -1), np.float32(eps),
                                out=np.empty(source.shape[:2] + (b - a, len(noisy)), np.float32))
        perturbed += source[:, :, a:b]
        moved = mppca_batched(perturbed, dense[:, :, a:b], centres=centres, progress=report, should_stop=should_stop)
        del perturbed
        inside = mask[:, :, z0:z1]
        change = (moved[:, :, z0 - a: z1 - a][inside] - base[:, :, z0:z1][inside]) / np.float32(eps)  # (V, N)
        div += np.einsum("vn,nv->n", change, probe[..., z0 - a: z1 - a][:, inside], dtype=np.float64)
        counted += int(inside.sum())
    if counted:
        div *= mask.sum() / counted
    return div, np.moveaxis(base, -1, 0)


def can_blend(spatial_shape, n_volumes: int) -> bool:
    """Whether the MP-PCA blend can run: MP-PCA's 5x5x5 patches fit and there are 3+ volumes."""
    return min(spatial_shape) >= 5 and n_volumes >= 3


def blend_with_mppca(preds: np.ndarray, noisy: np.ndarray, noise_var: np.ndarray, mask: np.ndarray,
                     sigma: float, bvals=None, include_noisy: bool = True,
                     mppca: Optional[tuple[np.ndarray, np.ndarray]] = None, overwrite: bool = False,
                     ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Blend (N, X, Y, Z) J-invariant predictions with full-data MP-PCA, SURE-weighted per volume.

    MP-PCA and its divergence come from :func:`mppca_with_divergence` (or ``mppca``,
    that function's result when already computed); the J-invariant prediction has
    divergence 0; with ``include_noisy`` the noisy volume (divergence: the voxel
    count) is a third term, which mostly takes back a little of the noise MP-PCA
    keeps (its weight comes out slightly negative). Inside ``mask`` the output is
    the SURE-optimal weighted sum (:func:`workbench.sure.sure_combine`), outside it
    is MP-PCA alone (air goes smoothly to its noise floor, which the Rician
    inversion then takes to ~0). A volume whose weights leave
    :data:`PLAUSIBLE_WEIGHTS`, or every volume when the mask has fewer than
    :data:`MIN_SURE_VOXELS` voxels, gets the SURE-best convex mix of network and
    MP-PCA instead (:func:`workbench.sure.sure_convex_pair`).

    Returns ``(blended, weights, risk)``: weights (N, 2 or 3) for prediction,
    MP-PCA[, noisy], risk (N,) per voxel; with ``overwrite`` the blend is written into
    ``preds`` (no series-sized temporary); or None with a warning when the series
    is too small for MP-PCA's 5x5x5 patches (the caller falls back to shrinkage).
    """
    from workbench.sure import sure_convex_weights, sure_weights, weighted_sum

    if not can_blend(noisy.shape[1:], len(noisy)):
        warnings.warn(f"MP-PCA blend skipped: {noisy.shape[1:]} voxels x {len(noisy)} volumes is too small for "
                      "5x5x5 patches; using shrinkage toward the noisy volume instead", stacklevel=3)
        return None
    div, full = mppca if mppca is not None else mppca_with_divergence(noisy, sigma, mask, bvals)
    zero = np.zeros(len(noisy))
    estimates, divergences = [preds, full], [zero, div]
    if include_noisy:
        estimates.append(noisy)
        divergences.append(np.full(len(noisy), float(mask.sum())))
    weights, risk = sure_weights(noisy, estimates, divergences, noise_var, mask)
    # on few voxels (a tiny or misplaced mask) SURE is noisy and the free weights can run wild (DIPY's
    # small_64D crop, 117 mask voxels: -0.7 on MP-PCA, +1.2 on the noisy volume); such volumes get the
    # convex network/MP-PCA mix instead
    wild = ~np.all((weights >= PLAUSIBLE_WEIGHTS[0]) & (weights <= PLAUSIBLE_WEIGHTS[1]), axis=1)
    wild |= mask.sum() < MIN_SURE_VOXELS
    for j in np.flatnonzero(wild):
        t, r = sure_convex_weights(noisy[j:j + 1], preds[j:j + 1], full[j:j + 1], zero[j:j + 1], div[j:j + 1],
                                   noise_var[j:j + 1], mask)
        weights[j] = 0.0
        weights[j, 0], weights[j, 1], risk[j] = 1 - t[0], t[0], r[0]
    combined = preds if overwrite else None  # in place, volume by volume: no series-sized temporary
    combined = weighted_sum(estimates, weights, out=combined)
    np.copyto(combined, full, where=~np.asarray(mask, bool)[None])
    return combined, weights, risk
