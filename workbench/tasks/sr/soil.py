"""Procedural 3-phase soil micro-CT with ground truth: pores, organic/clay matrix, mineral grains.

Any shape, any seed, generated on the fly (nothing downloaded). Each seed draws its own
soil: porosity 0.15-0.45, mean grain radius 2-6 voxels (40-120 um at the default 20 um
voxel: fine to medium sand), a mineral fraction of the solid, a few root or crack
channels. Grains are rounded, irregular spheres with lognormal radii (a Boolean model
with a perturbed distance, each voxel judged against its nearest centre); pores are the low set of a Gaussian random field between the grains (the
threshold is chosen by quantile, so the porosity hits its target); the matrix fills the
rest. The scan then adds per-phase and per-grain attenuation variation, the scanner's
Gaussian point-spread function, cupping (beam hardening: a radial intensity drop) and
Gaussian noise.

Hand-written because porespy (whose ``blobs``/``polydisperse_spheres`` generators do part
of this) pulls VTK (about 1 GB) and makes two-phase media only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from workbench.io_utils import InputError

SOIL_PHASES = ("pore", "matrix", "mineral")
PHASE_ATTENUATION = (0.10, 0.45, 0.80)
TRAINING_GRAIN_RADII = (2.0, 16.0)
"""Median grain radii (voxels, log-uniform) of the x8 in-plane training volumes: silt and fine sand to medium
sand (40-320 um at 20 um voxels), wider than :func:`simulate_soil`'s own default of 2-6."""


def _field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """A smooth Gaussian random field with zero mean and unit variance."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _grains(rng, shape, radius: float, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Rounded irregular grains covering about ``fraction`` of the volume; returns (mask, grain id)."""
    vol = float(np.prod(shape))
    mean_grain = 4.0 / 3.0 * np.pi * radius**3
    n = max(1, int(-np.log(max(1e-3, 1 - fraction)) * vol / mean_grain))  # Boolean-model density
    centres = np.stack([rng.integers(0, s, n) for s in shape], 1)
    radii = np.clip(rng.lognormal(np.log(radius), 0.3, n), 1.0, 4 * radius).astype(np.float32)
    seeds = np.ones(shape, bool)
    seeds[tuple(centres.T)] = False
    dist, idx = ndimage.distance_transform_edt(seeds, return_indices=True)
    owner = np.zeros(shape, np.int64)
    owner[tuple(centres.T)] = np.arange(n)
    nearest = owner[tuple(idx)]
    rough = _field(rng, shape, max(1.0, radius / 2)) * 0.25 * radius
    return (dist + rough) < radii[nearest], nearest


def _channels(rng, shape, n: int) -> np.ndarray:
    """``n`` straight root/crack channels of radius 1-2 voxels."""
    out = np.zeros(shape, bool)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    for _ in range(n):
        p = np.array([rng.uniform(0, s) for s in shape], np.float32)
        d = rng.standard_normal(3).astype(np.float32)
        d /= np.linalg.norm(d)
        rel = grid - p
        dist = np.linalg.norm(rel - (rel @ d)[..., None] * d, axis=-1)
        out |= dist < rng.uniform(1.0, 2.0)
    return out


def simulate_soil(shape: Sequence[int] = (64, 64, 64), seed: int = 0, *, porosity: Optional[float] = None,
                  grain_radius: Optional[float] = None, voxel_um: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A scanned soil volume and its phase labels (0 pore, 1 matrix, 2 mineral).

    Parameters
    ----------
    shape : sequence of int
        Volume size in voxels (any, odd sizes included).
    seed : int
        All randomness comes from ``np.random.default_rng(seed)``: same seed, same volume.
    porosity : float, optional
        Target pore fraction in [0, 1) (default: drawn in 0.15-0.45); the pore set is the
        ``round(porosity * size)`` lowest voxels of the pore field, so it is met exactly.
    grain_radius : float, optional
        Median mineral grain radius in voxels (default: drawn in 2-6); radii are
        lognormal with a log-sd of 0.3.
    voxel_um : float
        Voxel size in micrometres (> 0); the structure is defined in voxels, so this is
        only checked here and recorded by callers (in the NIfTI affine).

    Returns
    -------
    volume : ndarray, float32
        Attenuation, about [0, 1] (pore ~0.1, matrix ~0.45, mineral ~0.8), blurred and noisy.
    labels : ndarray, uint8
        The true phase of each voxel (index into :data:`SOIL_PHASES`).

    Raises
    ------
    InputError
        A shape that is not three positive sizes, or a porosity, grain radius or voxel
        size out of range.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"soil shape must be three positive sizes, got {shape}")
    if porosity is not None and not 0.0 <= porosity < 1.0:
        raise InputError(f"porosity must be in [0, 1), got {porosity}")
    if grain_radius is not None and not grain_radius > 0:
        raise InputError(f"grain_radius must be > 0 voxels, got {grain_radius}")
    if not voxel_um > 0:
        raise InputError(f"voxel_um must be > 0, got {voxel_um}")
    rng = np.random.default_rng(seed)
    p = float(rng.uniform(0.15, 0.45) if porosity is None else porosity)
    r = float(rng.uniform(2.0, 6.0) if grain_radius is None else grain_radius)
    solid = 1.0 - p
    grain_target = float(rng.uniform(0.45, 0.75)) * solid
    grains, grain_id = _grains(rng, shape, r, grain_target)
    pores = _channels(rng, shape, int(rng.integers(0, 3))) if min(shape) >= 16 else np.zeros(shape, bool)
    # pores: low set of a random field, preferring the space next to grains (inter-granular pores)
    near = ndimage.distance_transform_edt(~grains)
    g = _field(rng, shape, max(1.0, 0.6 * r)) + 0.4 * np.exp(-near / max(1.0, r))
    g[grains] = np.inf
    g[pores] = -np.inf
    k = int(round(p * g.size))
    labels = np.ones(shape, np.uint8)
    labels[grains] = 2
    if k > 0:
        order = np.argpartition(g.ravel(), min(k, g.size - 1))[:k]
        flat = labels.ravel()
        flat[order] = 0
    # attenuation: phase means, matrix texture, per-grain mineralogy
    vol = np.asarray(PHASE_ATTENUATION, np.float32)[labels]
    vol += np.where(labels == 1, 0.04 * _field(rng, shape, 1.5), 0).astype(np.float32)
    grain_shift = rng.normal(0.0, 0.05, int(grain_id.max()) + 1).astype(np.float32)
    vol += np.where(labels == 2, grain_shift[grain_id], 0).astype(np.float32)
    # scanner: PSF, cupping, noise
    vol = ndimage.gaussian_filter(vol, rng.uniform(0.6, 0.9), mode="nearest")
    # cupping in the axial plane: the attenuation drops by 2-5% from the axis to the rim
    cx, cy = (np.linspace(-1.0, 1.0, n, dtype=np.float32) ** 2 for n in shape[:2])
    vol *= 1.0 - rng.uniform(0.02, 0.05) * ((cx[:, None] + cy[None, :]) / 2)[..., None]
    vol += rng.normal(0.0, rng.uniform(0.02, 0.04), shape).astype(np.float32)
    return vol.astype(np.float32), labels
