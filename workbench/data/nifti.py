"""Reading and writing 4D DWI NIfTI series with their b-values and b-vectors.

Affine, header and on-disk dtype are kept so a denoised series lines up with the
original in any viewer. Every writer is atomic and refuses to overwrite the
input it was derived from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from workbench.io_utils import InputError, atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def strip_nifti_suffix(path: str | os.PathLike) -> Path:
    """``sub-01_dwi.nii.gz`` -> ``sub-01_dwi`` (same folder)."""
    path = Path(path)
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_name(path.stem)


@dataclass
class DWISeries:
    """A 4D diffusion series: ``data`` is (X, Y, Z, N) float32."""

    data: np.ndarray
    affine: np.ndarray
    header: Optional[nib.Nifti1Header] = None
    bvals: Optional[np.ndarray] = None
    bvecs: Optional[np.ndarray] = None
    path: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @property
    def n_volumes(self) -> int:
        return int(self.data.shape[3])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, not a file: {path}")


def load_volume(path: str | os.PathLike, what: str = "image") -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Load any NIfTI image as a C-ordered float32 array with its affine and header.

    NIfTI stores voxels x-fastest, so nibabel hands back Fortran-ordered arrays; C order is
    what numpy reshapes and ``torch.from_numpy`` read without copying (and the last axis of a
    4D series contiguous per voxel, the layout MP-PCA's patches are gathered from fastest).
    """
    path = Path(path)
    _require_file(path, what)
    try:
        img = nib.load(str(path))
        data = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"cannot read {what} {path} as NIfTI ({type(exc).__name__}: {exc})") from exc
    return data, img.affine.copy(), img.header.copy()


def volume_shape(path: str | os.PathLike, what: str = "image") -> tuple[int, ...]:
    """The array shape from a NIfTI header (no voxel data read)."""
    path = Path(path)
    _require_file(path, what)
    try:
        return tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:
        raise InputError(f"cannot read {what} {path} as NIfTI ({type(exc).__name__}: {exc})") from exc


def find_gradient_files(path: str | os.PathLike) -> tuple[Optional[Path], Optional[Path]]:
    """The ``.bval``/``.bvec`` files beside a NIfTI file (FSL/BIDS naming), or None."""
    stem = strip_nifti_suffix(path)
    bval, bvec = stem.with_suffix(".bval"), stem.with_suffix(".bvec")
    alt_bval, alt_bvec = stem.with_name(stem.name + ".bvals"), stem.with_name(stem.name + ".bvecs")
    return (bval if bval.exists() else alt_bval if alt_bval.exists() else None,
            bvec if bvec.exists() else alt_bvec if alt_bvec.exists() else None)


def read_bvals_bvecs(bval_path: str | os.PathLike, bvec_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL-format gradient files: bvals (N,), bvecs (N, 3) (either orientation on disk)."""
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    _require_file(bval_path, "bval file")
    _require_file(bvec_path, "bvec file")
    try:
        bvals = np.loadtxt(bval_path, dtype=np.float64).reshape(-1)
        bvecs = np.loadtxt(bvec_path, dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"cannot parse gradient files {bval_path.name}/{bvec_path.name}: {exc}") from exc
    bvecs = np.atleast_2d(bvecs)
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    elif bvecs.shape[0] == 3 and bvecs.shape[1] == 3:
        bvecs = bvecs.T  # FSL convention: 3 rows
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise InputError(f"{bvec_path} must hold 3 rows (x, y, z) of N columns, got shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise InputError(f"{bval_path.name} has {len(bvals)} b-values but {bvec_path.name} has {len(bvecs)} vectors")
    return bvals, bvecs


#: b-vectors of diffusion-weighted volumes may deviate this much from unit length (rounding in files)
BVEC_NORM_TOLERANCE = 0.1
B0_MAX = 50.0


def check_gradients(bvals, bvecs, where: str = "gradient table") -> None:
    """Refuse impossible gradient tables before any work: NaN/Inf, negative b-values, and
    b-vectors far from unit length where b > 50 s/mm^2 (one line naming the volume and the fix)."""
    bvals, bvecs = np.asarray(bvals, float).reshape(-1), np.asarray(bvecs, float).reshape(len(bvals), -1)
    bad = np.flatnonzero(~np.isfinite(bvals) | ~np.isfinite(bvecs).all(axis=1))
    if bad.size:
        raise InputError(f"{where}: volume {bad[0]} has a NaN/Inf b-value or b-vector ({bad.size} volumes in all): "
                         "fix the bval/bvec files")
    neg = np.flatnonzero(bvals < 0)
    if neg.size:
        raise InputError(f"{where}: volume {neg[0]} has a negative b-value ({bvals[neg[0]]:g}): b-values are "
                         "s/mm^2 >= 0; fix the bval file")
    norms = np.linalg.norm(bvecs, axis=1)
    off = np.flatnonzero((bvals > B0_MAX) & (np.abs(norms - 1.0) > BVEC_NORM_TOLERANCE))
    if off.size:
        raise InputError(f"{where}: volume {off[0]} (b={bvals[off[0]]:g}) has a b-vector of length "
                         f"{norms[off[0]]:.3g}, not 1: fix the bvec file (rows x, y, z of unit vectors)")


def check_finite(data: np.ndarray, nan_to_zero: bool, what: str = "input") -> np.ndarray:
    """Refuse NaN/Inf voxels (saying how many), or replace them with 0 when asked."""
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if not nan_to_zero:
            raise InputError(
                f"{what} has {n_bad} NaN/Inf voxels: fix the file or pass --nan-to-zero to replace them with 0"
            )
        data = np.where(bad, 0.0, data).astype(np.float32)
    return data


def load_dwi(
    path: str | os.PathLike,
    bval: str | os.PathLike | None = None,
    bvec: str | os.PathLike | None = None,
    *,
    nan_to_zero: bool = False,
    require_gradients: bool = True,
) -> DWISeries:
    """Load a 4D DWI series and its gradient table, checking everything a denoiser relies on.

    Raises :class:`InputError` with a one-line fix for: a missing file, a 3D image,
    gradient files missing or with another count than the volumes, NaN/Inf voxels,
    an all-zero volume.
    """
    path = Path(path)
    data, affine, header = load_volume(path, "DWI file")
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4:
        raise InputError(
            f"{path.name} is {data.ndim}D with shape {data.shape}; a DWI series must be 4D (X, Y, Z, volumes)"
        )
    if data.shape[3] < 2:
        raise InputError(f"{path.name} has {data.shape[3]} volume; J-invariant denoising needs at least 2")
    data = check_finite(data, nan_to_zero, what=path.name)
    zero = [i for i in range(data.shape[3]) if not np.any(data[..., i])]
    if zero:
        raise InputError(
            f"{path.name}: volume(s) {zero} are all zero; remove them (and their bval/bvec entries) first"
        )

    if bval is None or bvec is None:
        found_bval, found_bvec = find_gradient_files(path)
        bval = bval or found_bval
        bvec = bvec or found_bvec
    bvals = bvecs = None
    if bval is not None and bvec is not None:
        bvals, bvecs = read_bvals_bvecs(bval, bvec)
        if len(bvals) != data.shape[3]:
            raise InputError(
                f"{Path(bval).name} lists {len(bvals)} b-values but {path.name} has {data.shape[3]} volumes: "
                "pass the matching --bval/--bvec"
            )
        check_gradients(bvals, bvecs, f"{Path(bval).name}/{Path(bvec).name}")
    elif require_gradients:
        stem = strip_nifti_suffix(path)
        raise InputError(
            f"no gradient files for {path.name}: put {stem.name}.bval and {stem.name}.bvec beside it "
            "or pass --bval/--bvec"
        )
    return DWISeries(data=data, affine=affine, header=header, bvals=bvals, bvecs=bvecs, path=path)


def ensure_distinct_output(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output path that is one of the inputs (never overwrite a user's input)."""
    out = Path(out)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src)):
            raise InputError(f"output {out} is the input file: choose another output path")
    if not any(str(out).endswith(s) for s in NIFTI_SUFFIXES):
        raise InputError(f"output {out} must end in .nii or .nii.gz")
    return out


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: Optional[nib.Nifti1Header] = None,
    dtype: np.dtype | type | None = np.float32,
) -> Path:
    """Write a NIfTI image atomically, keeping the reference header's geometry and units.

    The header's scaling is reset (we write real values), its data type is set to
    ``dtype`` (float32 by default, so denoised values are not rounded to the
    input's integer type).
    """
    path = Path(path)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(np.asarray(data), affine, header=hdr)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_gradients(stem: str | os.PathLike, bvals: np.ndarray, bvecs: np.ndarray) -> tuple[Path, Path]:
    """Write ``stem.bval`` (one row) and ``stem.bvec`` (3 rows, FSL) atomically."""
    stem = Path(stem)
    bval_path, bvec_path = stem.with_suffix(".bval"), stem.with_suffix(".bvec")
    with atomic_path(bval_path) as tmp:
        np.savetxt(tmp, np.asarray(bvals)[None, :], fmt="%g")
    with atomic_path(bvec_path) as tmp:
        np.savetxt(tmp, np.asarray(bvecs).T, fmt="%.8f")
    return bval_path, bvec_path


def save_dwi(path: str | os.PathLike, series: DWISeries, data: np.ndarray, write_gradients: bool = True) -> Path:
    """Write ``data`` with ``series``' affine/header, and copy its bval/bvec beside it."""
    path = save_volume(path, data.astype(np.float32, copy=False), series.affine, series.header)
    if write_gradients and series.bvals is not None and series.bvecs is not None:
        save_gradients(strip_nifti_suffix(path), series.bvals, series.bvecs)
    return path
