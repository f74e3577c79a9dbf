"""Batched Marchenko-Pastur PCA in torch: DIPY's algorithm, many patches per eigendecomposition call.

DIPY's :func:`dipy.denoise.localpca.mppca` loops over voxels in Python: per voxel one
(2r+1)^3 x N patch, its covariance, one ``numpy.linalg.eigh``, the Marchenko-Pastur
threshold, and the patch's reconstruction added into the output with weight
1 / (1 + kept components). This module does the same arithmetic on thousands of patches
per call (``torch.bmm`` for the covariances and projections, one batched
``torch.linalg.eigh``, the threshold search vectorised, ``index_add_`` for the
overlapping patches), one axial plane of patch centres at a time, so progress and
cancel come every plane and memory stays at the output plus one chunk.

``stride=1`` is DIPY's estimator (every voxel a patch centre; a test checks the match).
The eigendecomposition is what costs (about 0.25 ms per 65 x 65 matrix on one core;
threads each run their own batch). ``stride=s`` centres patches on every ``s``-th voxel per
axis (plus the last one, so every voxel stays covered), which divides the work by about
``s**3`` and averages each voxel over ``ceil((2r+1)/s)**3`` patches (27 for r = 2, s = 2)
instead of 125; ``dense`` keeps every voxel a centre in a region (the brain), so the stride
only thins the air. On the 64x64x32x65 benchmark a stride of 2 everywhere cost the blend
0.3 dB inside the brain (README), which is why the pipeline strides only outside it.
``lattice`` thins the dense region more gently: every second voxel in a checkerboard (2) or a
body-centred cubic lattice (4, centres where x, y and z are all even or all odd), so each voxel
still averages ~62 or ~31 patches spread evenly around it (README, "DWI at clinical size": the
BCC lattice costs MP-PCA ~0.01 dB where a stride of 2, also 27 patches but on a coarser grid,
costs ~0.06 dB).

Written by hand because no library batches MP-PCA: DIPY and MRtrix's ``dwidenoise`` work
voxel by voxel.

References
----------
Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E. Denoising of
diffusion MRI using random matrix theory. NeuroImage 142:394-406, 2016.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from workbench.allocator import trim_heap
from workbench.tasks.base import check_cancel

__all__ = ["mppca_batched", "patch_centres", "mp_threshold", "dense_region", "centre_grid", "centre_planes",
           "LATTICES"]

#: Patch-centre lattices of the dense region: 1 = every voxel (DIPY), 2 = checkerboard, 4 = body-centred cubic.
LATTICES = (1, 2, 4)


def patch_centres(size: int, radius: int, stride: int) -> np.ndarray:
    """Patch centres along one axis: ``radius, radius + stride, ...`` and always the last one.

    With ``stride <= 2 * radius + 1`` every voxel lies in at least one patch.
    """
    if size < 2 * radius + 1:
        raise ValueError(f"an axis of {size} voxels is shorter than the {2 * radius + 1}-voxel patch; "
                         f"use patch_radius <= {(size - 1) // 2}")
    centres = list(range(radius, size - radius, max(1, int(stride))))
    if centres[-1] != size - 1 - radius:
        centres.append(size - 1 - radius)
    return np.asarray(centres)


def dense_region(region: np.ndarray, radius: int = 2) -> np.ndarray:
    """``region`` dilated by ``radius`` voxels with a cube: the patch centres every voxel of it uses."""
    from scipy import ndimage

    return ndimage.binary_dilation(np.asarray(region, bool), np.ones((3, 3, 3), bool), iterations=radius)


def lattice_points(shape, lattice: int = 1, origin=(0, 0, 0)) -> np.ndarray:
    """(X, Y, Z) bool: the voxels of a patch-centre lattice, by global coordinates (``origin`` + index).

    1: every voxel; 2: ``x + y + z`` even (face-centred cubic, half the voxels); 4: ``x, y, z`` all
    even or all odd (body-centred cubic, a quarter). Every voxel is within one step per axis of a point.
    """
    if lattice not in LATTICES:
        raise ValueError(f"lattice must be one of {LATTICES} (every voxel, checkerboard, body-centred cubic), "
                         f"got {lattice}")
    x, y, z = (np.arange(o, o + s) % 2 for o, s in zip(origin, shape))
    if lattice == 1:
        return np.ones(shape, bool)
    if lattice == 2:
        return (x[:, None, None] + y[None, :, None] + z[None, None, :]) % 2 == 0
    return (x[:, None, None] == y[None, :, None]) & (y[None, :, None] == z[None, None, :])


def centre_grid(shape, radius=2, stride: int | None = 1, mask: np.ndarray | None = None,
                dense: np.ndarray | None = None, lattice: int = 1) -> np.ndarray:
    """(X, Y, Z) bool: the patch centres of :func:`mppca_batched` (the stride grid, plus the ``lattice``
    points of ``dense``, within ``mask``).

    With ``lattice`` > 1, a voxel of ``dense`` (of ``mask`` without one) that no patch would reach
    (next to the field of view's edge, or at a thin part of ``mask``) gets a patch of its own: the
    nearest valid centre, even outside ``mask``.
    """
    radius = np.broadcast_to(np.asarray(radius, dtype=int), (3,)).copy()
    radius[np.asarray(shape) == 1] = 0
    grid = np.zeros(shape, bool)
    if stride is not None:  # None: no strided grid, the lattice points of ``dense`` only
        grid[np.ix_(*(patch_centres(s, int(r), stride) for s, r in zip(shape, radius)))] = True
    valid = np.zeros(shape, bool)
    valid[radius[0]: shape[0] - radius[0], radius[1]: shape[1] - radius[1], radius[2]: shape[2] - radius[2]] = True
    if dense is not None:
        grid |= np.asarray(dense, bool) & valid & lattice_points(shape, lattice)
    if mask is not None:
        grid &= np.asarray(mask, bool)
    if lattice > 1:
        from scipy import ndimage

        need = np.asarray(dense if dense is not None else (mask if mask is not None else np.ones(shape, bool)), bool)
        reached = ndimage.maximum_filter(grid, size=tuple(2 * radius + 1), mode="constant")
        lost = np.nonzero(need & ~reached)
        if len(lost[0]):
            grid[tuple(np.clip(c, r, s - 1 - r) for c, r, s in zip(lost, radius, shape))] = True
    return grid


def centre_planes(shape, radius=2, stride: int = 1, mask: np.ndarray | None = None,
                  dense: np.ndarray | None = None, lattice: int = 1) -> int:
    """Axial planes holding patch centres: the ``progress`` total of :func:`mppca_batched`."""
    return int(centre_grid(shape, radius, stride, mask, dense, lattice).any(axis=(0, 1)).sum())


def mp_threshold(eigenvalues: torch.Tensor, n_samples: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Marchenko-Pastur noise variance and kept-component mask for ascending eigenvalues (B, N).

    DIPY's ``_pca_classifier`` vectorised: the noise variance is the mean of the ``c + 1``
    smallest eigenvalues for the largest ``c`` at which
    ``L[c] - L[0] <= 4 sqrt((c + 1) / n_samples) mean(L[:c + 1])``; components with
    eigenvalue below ``(1 + sqrt(N / n_samples))^2`` times that variance are noise.
    Returns ``(variance (B,), keep (B, N) bool)``.
    """
    vals = eigenvalues
    if vals.shape[-1] > n_samples - 1:  # the mean-subtracted patch has rank <= n_samples - 1
        vals = vals[..., -(n_samples - 1):]
    count = torch.arange(1, vals.shape[-1] + 1, dtype=vals.dtype, device=vals.device)
    means = torch.cumsum(vals, -1) / count
    gap = vals - vals[..., :1] - 4.0 * torch.sqrt(count / n_samples) * means
    last = torch.where(gap <= 0, torch.arange(vals.shape[-1], device=vals.device), -1).amax(-1).clamp_min(0)
    variance = means.gather(-1, last[:, None])[:, 0]
    tau = (1.0 + (n_features / n_samples) ** 0.5) ** 2 * variance
    return variance, eigenvalues >= tau[:, None]


def mppca_batched(data: np.ndarray, mask: np.ndarray | None = None, patch_radius=2, stride: int = 1,
                  chunk: int = 256, eig_dtype: torch.dtype = torch.float32, progress=None,
                  should_stop=None, dense: np.ndarray | None = None, workers: int | None = None,
                  lattice: int = 1, centres: np.ndarray | None = None,
                  channels: np.ndarray | None = None) -> np.ndarray:
    """MP-PCA of a 4D series (X, Y, Z, N) with batched eigendecompositions.

    Parameters
    ----------
    data : (X, Y, Z, N) array
    mask : (X, Y, Z) bool, optional
        Patches are centred only inside; voxels outside are 0 in the output (as DIPY).
    patch_radius : int or 3 ints
        ``r`` per axis; patches are ``(2r + 1)^3`` voxels (default 2: 125 samples).
    stride : int
        Every ``stride``-th voxel per axis is a patch centre (1: DIPY's estimator).
    chunk : int
        Patches per batched call (memory ~ ``chunk * (2r+1)^3 * N * 4`` bytes, times a few per
        worker; 256 ran as fast as 1024 on 128 x 128 x 16 x 65 with a quarter of the extra memory).
    eig_dtype : torch.dtype
        Precision of the covariances and their eigendecomposition (float32, the default,
        is ~1.5x faster than float64 and agrees with DIPY's float64 to ~1e-6 of the signal).
    progress, should_stop : callable, optional
        ``progress(done, total)`` after each plane of centres; ``should_stop()`` before each
        (True raises :class:`workbench.tasks.base.Cancelled`).
    channels : (C,) int array, optional
        Denoise only these volumes of ``data`` (the output has C volumes): the same values as
        ``mppca_batched(np.take(data, channels, axis=-1))`` without that copy of the series
        (one slab of patch planes is gathered at a time).
    dense : (X, Y, Z) bool, optional
        Where every voxel is a patch centre whatever ``stride`` (still only inside ``mask``).
        A voxel whose whole ``(2r+1)^3`` neighbourhood is dense gets exactly the ``stride=1``
        (DIPY) value when no strided centre lies within ``r`` of it outside ``dense``; dilating a
        region of interest by ``r`` with a cube (:func:`dense_region`) ensures both.
    workers : int, optional
        Threads that each run one batched eigendecomposition at a time with one torch
        thread (default: ``torch.get_num_threads()``; restored afterwards).

    Returns
    -------
    (X, Y, Z, N) float32 (C volumes with ``channels``), clipped at 0, with NaNs (voxels no patch reached)
    set to 0.
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"data must be 4D (X, Y, Z, N), got shape {data.shape}")
    shape = data.shape[:3]
    if channels is not None:
        channels = torch.as_tensor(np.asarray(channels, dtype=np.int64))
        if channels.ndim != 1 or len(channels) == 0 or int(channels.min()) < 0 or int(channels.max()) >= data.shape[3]:
            raise ValueError(f"channels must be a non-empty list of volumes of the {data.shape[3]} in data")
    n = data.shape[3] if channels is None else len(channels)
    radius = np.broadcast_to(np.asarray(patch_radius, dtype=int), (3,)).copy()
    radius[np.asarray(shape) == 1] = 0
    size = 2 * radius + 1
    n_samples = int(np.prod(size))
    if n_samples < 2:
        raise ValueError("MP-PCA needs patches of 2+ voxels; increase patch_radius")
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match data shape {shape}")
    for s_, r_ in zip(shape, radius):
        patch_centres(s_, int(r_), stride)  # refuses axes shorter than a patch
    if centres is None:
        grid = centre_grid(shape, radius, stride, mask, dense, lattice)
    else:
        grid = np.asarray(centres, bool)
        if grid.shape != shape:
            raise ValueError(f"centres shape {grid.shape} does not match data shape {shape}")
        edge = grid.copy()
        edge[radius[0]: shape[0] - radius[0], radius[1]: shape[1] - radius[1], radius[2]: shape[2] - radius[2]] = False
        if edge.any():
            raise ValueError(f"centres within {tuple(int(r) for r in radius)} voxels of the edge: their patches would leave the volume")
    planes = np.flatnonzero(grid.any(axis=(0, 1)))
    # a C-ordered copy of any other layout: patches gather 5-20% faster from it than from an (N, X, Y, Z) view
    vol = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    acc = torch.zeros(int(np.prod(shape)), n, dtype=torch.float32)  # (voxels, n): n counts ``channels``
    weight = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
    # linear index offsets of a patch's samples relative to its corner, in the order unfold lays them out
    ox, oy, oz = np.meshgrid(np.arange(size[0]), np.arange(size[1]), np.arange(size[2]), indexing="ij")
    offsets = torch.from_numpy(((ox * shape[1] + oy) * shape[2] + oz).reshape(-1))
    workers = max(1, int(workers or torch.get_num_threads()))
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        if pool is not None:
            torch.set_num_threads(1)  # one LAPACK call per thread: ~1.6x the throughput of intra-op threads
        for plane, k in enumerate(planes):
            check_cancel(should_stop)
            sx, sy = np.nonzero(grid[:, :, k])
            if len(sx):
                px, py = torch.from_numpy(sx - radius[0]), torch.from_numpy(sy - radius[1])
                slab = vol[:, :, k - radius[2]: k + radius[2] + 1]  # (X, Y, 2rz+1, N)
                if channels is not None:  # a copy of the slab's selected volumes (X x Y x (2rz+1) x n)
                    slab = slab.index_select(3, channels)
                # (X', Y', 2rz+1, N, 2rx+1, 2ry+1): patches at the selected corners, samples in (x, y, z) order
                windows = slab.unfold(0, int(size[0]), 1).unfold(1, int(size[1]), 1)
                corners = (px * shape[1] + py) * shape[2] + (k - radius[2])
                step = min(chunk, -(-len(px) // workers))
                parts = [slice(a, a + step) for a in range(0, len(px), step)]

                def denoise(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
                    patches = windows[px[part], py[part]].permute(0, 3, 4, 1, 2).reshape(-1, n_samples, n)
                    return _denoise_patches(patches, eig_dtype)

                for part, (est, theta) in zip(parts, bounded_map(pool, denoise, parts, 2 * workers)):
                    idx = (corners[part, None] + offsets[None, :]).reshape(-1)
                    acc.index_add_(0, idx, est.reshape(-1, n))
                    weight.index_add_(0, idx, theta[:, None].expand(-1, n_samples).reshape(-1))
            if progress is not None:
                progress(plane + 1, len(planes))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
        trim_heap()  # the chunks' freed buffers, scattered over the heap, go back to the OS
    out = acc.div_(weight[:, None]).reshape(*shape, n).numpy()
    out = np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(out, 0.0, None, out=out)
    out[~mask] = 0.0
    return out


def bounded_map(pool: ThreadPoolExecutor | None, fn, items: list, ahead: int):
    """``pool.map(fn, items)`` in order with at most ``ahead`` results computed but not yet consumed.

    ``Executor.map`` submits everything at once: when the consumer (here the serial ``index_add_``)
    is slower than the workers, the finished batches (8 MB each at 256 patches of 125 x 65) pile up
    by the hundred on a plane of the brain. Without a pool, a plain ``map``.
    """
    if pool is None:
        yield from map(fn, items)
        return
    pending = deque(pool.submit(fn, item) for item in items[:ahead])
    for item in items[ahead:]:
        result = pending.popleft().result()
        pending.append(pool.submit(fn, item))
        yield result
    while pending:
        yield pending.popleft().result()


def _denoise_patches(patches: torch.Tensor, eig_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, N) patches -> their MP-PCA estimates times the weight 1 / (1 + kept components), and that weight.

    The kept components are the largest eigenvalues (a suffix of ``eigh``'s ascending
    order), so the projection uses only the ``kmax`` last eigenvectors of the batch,
    zeroed per patch beyond its own count: the same estimate as projecting on all N
    masked eigenvectors, with two (S x N x kmax) products instead of (S x N x N) ones.
    """
    n_samples, n = patches.shape[1:]
    x = patches.to(eig_dtype)
    mean = x.mean(1, keepdim=True)
    x = x.sub_(mean) if x is not patches else x - mean
    cov = torch.bmm(x.transpose(1, 2), x).div_(n_samples)
    vals, vecs = torch.linalg.eigh(cov)
    del cov
    _, keep = mp_threshold(vals, n_samples, n)
    counts = keep.sum(-1)
    kmax = int(counts.max()) if len(counts) else 0
    kept = vecs[:, :, n - kmax:] * keep[:, None, n - kmax:].to(vecs.dtype)
    est = torch.baddbmm(mean, torch.bmm(x, kept), kept.transpose(1, 2))
    theta = 1.0 / (1.0 + counts.to(torch.float32))  # DIPY: 1 / (1 + N - noise components)
    return est.to(torch.float32).mul_(theta[:, None, None]), theta
