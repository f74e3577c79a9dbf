"""napari reader for NIfTI (.nii, .nii.gz) via the core's loaders.

A 4D DWI opens as one image layer with the diffusion-volume axis first, so
napari's first slider picks the volume. Scale and translate come from the
affine; the affine, the header and the b-values/b-vectors found beside the file
(``NAME.bval``/``NAME.bvec``) are kept in the layer metadata, so the writer can
write the image back unchanged and the widgets can train on it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from napari_plugin._layers import dwi_metadata, spatial_kwargs, to_layer_order

SUFFIXES = (".nii.gz", ".nii")
MAX_LABELS = 32


def _is_nifti(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(SUFFIXES)


def get_reader(path) -> Optional[Callable]:
    """npe2 reader hook: a function reading ``path`` (or a list of paths), or None if not NIfTI."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_is_nifti(p) for p in paths):
        return None
    return read_nifti


def read_nifti(path) -> list[tuple]:
    """Layer data tuples for one or more NIfTI files."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [_read_one(Path(p)) for p in paths]


def _layer_name(path: Path) -> str:
    from workbench.data.nifti import strip_nifti_suffix

    return strip_nifti_suffix(path).name


def _read_gradients(path: Path, n_volumes: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    from workbench.data.nifti import find_gradient_files, read_bvals_bvecs
    from workbench.io_utils import InputError

    bval, bvec = find_gradient_files(path)
    if bval is None or bvec is None:
        return None, None
    try:
        bvals, bvecs = read_bvals_bvecs(bval, bvec)
    except InputError as exc:
        warnings.warn(f"{path.name}: gradient files ignored ({exc})", stacklevel=2)
        return None, None
    if len(bvals) != n_volumes:
        warnings.warn(f"{bval.name} lists {len(bvals)} b-values but {path.name} has {n_volumes} volumes: "
                      "gradients ignored", stacklevel=2)
        return None, None
    return bvals, bvecs


def _read_one(path: Path) -> tuple:
    from workbench.data.nifti import load_volume

    data, affine, header = load_volume(path, "NIfTI file")
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, 1, N) as some converters write
        data = data[:, :, :, 0, :]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    name = _layer_name(path)
    if data.ndim == 4:
        bvals, bvecs = _read_gradients(path, data.shape[3])
        meta = dwi_metadata(affine, header, bvals, bvecs, path, is_4d=True)
        kwargs = {"name": name, "metadata": meta, "axis_labels": ("volume", "x", "y", "z"),
                  **spatial_kwargs(affine, 4)}
        return to_layer_order(data), kwargs, "image"
    if data.ndim != 3:
        raise ValueError(f"{path.name} is {data.ndim}D with shape {data.shape}: expected a 3D or 4D NIfTI")
    meta = dwi_metadata(affine, header, None, None, path, is_4d=False)
    kwargs = {"name": name, "metadata": meta, "axis_labels": ("x", "y", "z"), **spatial_kwargs(affine, 3)}
    on_disk = np.dtype(header.get_data_dtype())
    if on_disk.kind in "biu" and len(np.unique(data)) <= MAX_LABELS:  # a mask or a label map
        return data.astype(np.int32), {**kwargs, "opacity": 0.4}, "labels"
    return data, kwargs, "image"
