"""napari writer: image and labels layers back to NIfTI with their original affine and header.

A 4D layer (volumes first) is written as (X, Y, Z, N); its b-values/b-vectors
are written beside it (``NAME.bval``/``NAME.bvec``). The affine and header come
from the layer metadata (set by the reader or copied by the widgets); a layer
without them gets an affine from its scale and translate. Writes are atomic
and never overwrite the file the layer was read from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_plugin._layers import VOLUME_AXIS

SUFFIXES = (".nii.gz", ".nii")


def _affine(meta: dict, ndim: int) -> np.ndarray:
    aff = (meta.get("metadata") or {}).get("affine")
    if aff is not None:
        return np.asarray(aff, float)
    scale = list(meta.get("scale") or [1.0] * ndim)[-3:]
    translate = list(meta.get("translate") or [0.0] * ndim)[-3:]
    out = np.eye(4)
    out[:3, :3] = np.diag(scale)
    out[:3, 3] = translate
    return out


def _target(path: str) -> Path:
    p = Path(path)
    if not str(p).lower().endswith(SUFFIXES):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _write(path: str, data: Any, meta: dict, dtype) -> list[str]:
    from workbench.data.nifti import ensure_distinct_output, save_gradients, save_volume, strip_nifti_suffix

    md = meta.get("metadata") or {}
    out = ensure_distinct_output(_target(path), md.get("source_path"))
    arr = np.asarray(data)
    if arr.ndim == 4 and md.get("volume_axis", VOLUME_AXIS) == VOLUME_AXIS:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"cannot write a {arr.ndim}D layer as NIfTI: expected 3D or 4D")
    save_volume(out, np.ascontiguousarray(arr.astype(dtype, copy=False)), _affine(meta, arr.ndim),
                md.get("header"), dtype=dtype)
    written = [str(out)]
    bvals, bvecs = md.get("bvals"), md.get("bvecs")
    if arr.ndim == 4 and bvals is not None and bvecs is not None and len(bvals) == arr.shape[3]:
        written += [str(p) for p in save_gradients(strip_nifti_suffix(out), np.asarray(bvals), np.asarray(bvecs))]
    return written


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for image layers (float32 on disk)."""
    return _write(path, data, meta, np.float32)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for labels layers (masks: uint8 if it fits, else int32)."""
    arr = np.asarray(data)
    dtype = np.uint8 if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255) else np.int32
    return _write(path, arr, meta, dtype)
