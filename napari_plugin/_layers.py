"""Conversions between napari layers and the core's arrays (no Qt here).

Layout convention of the plugin: a 4D DWI layer holds ``(N, X, Y, Z)`` (the
diffusion-volume axis first, so napari's first slider picks the volume) while
the core works on ``(X, Y, Z, N)``. Layer metadata keeps what the core and the
writer need: ``affine``, ``header``, ``bvals``, ``bvecs``, ``source_path``.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np

#: metadata keys copied from an input layer to every layer derived from it
KEPT_KEYS = ("affine", "header", "bvals", "bvecs", "source_path", "volume_axis")
VOLUME_AXIS = 0


def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (identity comparisons, registries)."""
    return getattr(obj, "__wrapped__", obj)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Column norms of the affine's 3x3 part: voxel size in mm along x, y, z."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def spatial_kwargs(affine: np.ndarray, ndim: int) -> dict:
    """napari ``scale``/``translate`` for a 3D (X, Y, Z) or 4D (N, X, Y, Z) array from a NIfTI affine.

    Oblique (rotated) affines are reduced to voxel size and origin; the full
    affine stays in the layer metadata and is what the writer uses.
    """
    affine = np.asarray(affine, float)
    scale = [float(v) for v in voxel_sizes(affine)]
    translate = [float(v) for v in affine[:3, 3]]
    if ndim == 4:
        return {"scale": [1.0, *scale], "translate": [0.0, *translate]}
    return {"scale": scale, "translate": translate}


def dwi_metadata(affine, header=None, bvals=None, bvecs=None, source_path=None, is_4d=True) -> dict:
    meta: dict = {"affine": np.asarray(affine, float).copy(), "header": header,
                  "bvals": None if bvals is None else np.asarray(bvals, float),
                  "bvecs": None if bvecs is None else np.asarray(bvecs, float),
                  "source_path": None if source_path is None else str(source_path)}
    if is_4d:
        meta["volume_axis"] = VOLUME_AXIS
    return meta


def to_layer_order(data4d_xyzn: np.ndarray) -> np.ndarray:
    """(X, Y, Z, N) -> (N, X, Y, Z): the volume axis first, for napari's slider."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(data4d_xyzn), -1, 0))


def to_core_order(layer_data: np.ndarray) -> np.ndarray:
    """(N, X, Y, Z) -> (X, Y, Z, N) float32, as the core expects."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(layer_data), 0, -1), dtype=np.float32)


def is_dwi_layer(layer) -> bool:
    return getattr(layer, "data", None) is not None and np.ndim(layer.data) == 4 and \
        type(unwrap(layer)).__name__ == "Image"


def is_volume_layer(layer) -> bool:
    """A 3D layer (a mask, an edge map)."""
    return getattr(layer, "data", None) is not None and np.ndim(layer.data) == 3 and \
        type(unwrap(layer)).__name__ in ("Image", "Labels")


def layer_affine(layer) -> np.ndarray:
    """The layer's NIfTI affine: from metadata, else built from scale/translate."""
    aff = layer.metadata.get("affine")
    if aff is not None:
        return np.asarray(aff, float)
    scale = list(layer.scale)[-3:]
    translate = list(layer.translate)[-3:]
    out = np.eye(4)
    out[:3, :3] = np.diag(scale)
    out[:3, 3] = translate
    return out


def layer_series(layer):
    """A :class:`workbench.data.nifti.DWISeries` from a 4D layer (gradients from metadata)."""
    from workbench.data.nifti import DWISeries

    if not is_dwi_layer(layer):
        raise ValueError(f"layer '{layer.name}' is not a 4D diffusion series (volumes, x, y, z)")
    meta = layer.metadata
    return DWISeries(data=to_core_order(layer.data), affine=layer_affine(layer), header=meta.get("header"),
                     bvals=meta.get("bvals"), bvecs=meta.get("bvecs"))


def require_gradients(layer) -> tuple[np.ndarray, np.ndarray]:
    bvals, bvecs = layer.metadata.get("bvals"), layer.metadata.get("bvecs")
    if bvals is None or bvecs is None:
        raise ValueError(f"layer '{layer.name}' has no b-values/b-vectors: open it from a .nii.gz with "
                         "NAME.bval and NAME.bvec beside it")
    return np.asarray(bvals, float), np.asarray(bvecs, float)


def mask_array(layer, spatial_shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """A boolean (X, Y, Z) mask from a 3D layer (or None), checked against the series' shape."""
    if layer is None:
        return None
    arr = np.asarray(layer.data)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(spatial_shape):
        raise ValueError(f"mask '{layer.name}' has shape {arr.shape}, the series has {tuple(spatial_shape)}")
    return arr > 0


def derived_kwargs(source, name: str, extra_meta: Optional[dict] = None, ndim: Optional[int] = None) -> dict:
    """Layer kwargs for a result of ``source``: same scale/translate (last ``ndim`` axes) and metadata."""
    ndim = ndim or source.ndim
    meta = {k: copy.deepcopy(source.metadata[k]) for k in KEPT_KEYS if k in source.metadata}
    if ndim == 3:
        meta.pop("volume_axis", None)
    meta.update(extra_meta or {})
    return {"name": name, "scale": list(source.scale)[-ndim:], "translate": list(source.translate)[-ndim:],
            "metadata": meta}


def add_or_update_image(viewer, data: np.ndarray, kwargs: dict, **display):
    """Replace the data of the layer called ``kwargs['name']`` or add a new image layer."""
    name = kwargs["name"]
    if name in viewer.layers:
        layer = viewer.layers[name]
        if np.ndim(layer.data) == np.ndim(data):
            layer.data = data
            layer.metadata.update(kwargs.get("metadata", {}))
            for key, value in display.items():
                setattr(layer, key, value)
            return layer
        viewer.layers.remove(name)
    return viewer.add_image(data, **kwargs, **display)


def set_volume(viewer, j: int) -> None:
    """Show diffusion volume ``j`` on every layer (the first axis is the volume axis)."""
    if viewer.dims.ndim >= 4:
        viewer.dims.set_point(0, float(j))


def current_volume(viewer, layer=None) -> int:
    """The diffusion-volume index the first slider shows (0 for a 3D-only viewer)."""
    if viewer.dims.ndim < 4:
        return 0
    j = int(round(float(viewer.dims.point[0])))
    if layer is not None and is_dwi_layer(layer):
        j = min(max(j, 0), layer.data.shape[0] - 1)
    return j


def inputs_fn(layer, mask_layer=None, need_gradients: bool = True):
    """A function giving ``(DWISeries, mask or None)`` for a worker, capturing arrays (not layers).

    The (N, X, Y, Z) -> (X, Y, Z, N) copy happens when the worker calls it, off the GUI thread.
    """
    from workbench.data.nifti import DWISeries

    if not is_dwi_layer(layer):
        raise ValueError(f"layer '{layer.name}' is not a 4D diffusion series (volumes, x, y, z)")
    if need_gradients:
        bvals, bvecs = require_gradients(layer)
    else:
        bvals, bvecs = layer.metadata.get("bvals"), layer.metadata.get("bvecs")
    data, affine, header = layer.data, layer_affine(layer), layer.metadata.get("header")
    spatial = tuple(np.shape(data)[1:])
    mask = mask_array(mask_layer, spatial)  # checked now: a wrong mask is reported at once

    def make():
        return DWISeries(data=to_core_order(data), affine=affine, header=header, bvals=bvals, bvecs=bvecs), mask

    return make


def axial_view(viewer) -> None:
    """Slice along z with x to the right and y (anterior) up: the usual axial view of a NIfTI in RAS."""
    if viewer.dims.ndim >= 3:
        n = viewer.dims.ndim
        viewer.dims.order = tuple(range(n - 3)) + (n - 1, n - 2, n - 3)
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    try:
        camera.orientation2d = ("up", "right")
    except (AttributeError, ValueError, TypeError):  # napari without camera orientation
        pass


def grid(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` from napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


#: metadata keys of layers the plugin derives for display (maps; ``display_of``: a copy of a layer placed for a
#: view), never offered as inputs or results
MAP_KEYS = ("edge_map_of", "attention_block", "difference_of", "review_label", "display_of")
#: metadata keys of computed results (a denoised series, a baseline)
RESULT_KEYS = ("denoise", "baseline")


def is_map_layer(layer) -> bool:
    return any(k in layer.metadata for k in MAP_KEYS)


def is_original_layer(layer) -> bool:
    """Data the user opened (not a result or a map the plugin computed)."""
    return not is_map_layer(layer) and not any(k in layer.metadata for k in RESULT_KEYS)


def show_name(layer, on: bool = True, font_size: float = 8.0) -> None:
    """The layer's name in its grid cell (napari >= 0.6 name overlay; silently absent before)."""
    overlay = getattr(layer, "name_overlay", None)
    if overlay is not None:
        if on:
            overlay.font_size = float(font_size)  # before it shows: the canvas picks the size up on showing
        overlay.visible = on


#: average glyph width of napari's overlay font per character, in font pixels (measured on a screenshot)
GLYPH_WIDTH = 0.7
PT_TO_PX = 4 / 3


def canvas_width(viewer, default: int = 800) -> int:
    """The canvas width in screen pixels (``default`` when it cannot be read)."""
    try:
        return int(viewer.window._qt_viewer.canvas.native.width()) or default  # noqa: private, no public API
    except Exception:  # noqa: BLE001 - private API; the layout still works with the default
        return default


def grid_with_names(viewer, layers, max_columns: int = 2) -> tuple[int, int]:
    """Grid the shown ``layers`` in at most ``max_columns`` columns, names sized to fit their cell.

    Long layer names in a 3-column grid were cut off; two columns and a font size chosen from
    the longest name and the cell width keep every title whole (5.5 to 10 pt). Returns (rows, columns).
    """
    n = max(1, len(layers))
    cols = min(max_columns, n)
    rows = -(-n // cols)
    g = grid(viewer)
    g.enabled, g.stride, g.shape = True, 1, (rows, cols)
    cell_px = canvas_width(viewer) / cols - 12  # a small margin on each side
    longest = max((len(layer.name) for layer in layers), default=1)
    size = cell_px / (GLYPH_WIDTH * longest) / PT_TO_PX
    for layer in layers:
        show_name(layer, False)
        show_name(layer, True, float(min(10.0, max(5.5, size))))
    return rows, cols


def difference_colormap():
    """Blue (negative) - black (0) - red (positive): zero stays dark on napari's dark canvas."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0.25, 0.55, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.35, 0.25, 1.0]],
                    controls=[0.0, 0.5, 1.0], name="difference (blue below, red above)")


def is_series_layer(layer) -> bool:
    """A 4D series the widgets can train on, denoise or compare (not a difference map)."""
    return is_dwi_layer(layer) and not is_map_layer(layer)


def is_mask_layer(layer) -> bool:
    """A 3D layer usable as a mask (not an edge or attention map)."""
    return is_volume_layer(layer) and not is_map_layer(layer)


def is_volume_image(layer) -> bool:
    """A 3D image a task can take as input (not a map the plugin computed)."""
    return type(unwrap(layer)).__name__ == "Image" and np.ndim(layer.data) == 3 and not is_map_layer(layer)


def accepts(spec):
    """The layer filter for a task's :class:`~workbench.tasks.base.TrainInput`."""
    if spec.kind == "labels":
        return is_mask_layer
    return is_series_layer if spec.ndim == 4 else is_volume_image


def prefers(spec):
    """Preselect a layer whose metadata role is one the input asks for, else an unlabelled input."""
    def prefer(layer) -> bool:
        role = layer.metadata.get("role")
        return role in spec.roles or (role is None and is_input_layer(layer))
    return prefer


def input_array(layer, spec):
    """A layer as the core's :class:`~workbench.tasks.base.InputArray` (core axis order, affine, metadata)."""
    from workbench.tasks.base import InputArray

    if np.ndim(layer.data) != spec.ndim:
        raise ValueError(f"layer '{layer.name}' is {np.ndim(layer.data)}D; {spec.label} must be {spec.ndim}D")
    data = to_core_order(layer.data) if spec.ndim == 4 else np.asarray(layer.data)
    if spec.kind == "image":
        data = np.ascontiguousarray(data, dtype=np.float32)
    return InputArray(data, layer_affine(layer), dict(layer.metadata), layer.name)


def is_input_layer(layer) -> bool:
    """An opened series that is not a known reference (what one trains on or denoises)."""
    return is_original_layer(layer) and layer.metadata.get("role") != "reference"


def _view_role(layer, which: str) -> bool:
    """Whether the layer's ``role`` is its task's input, output or reference role (task layers only)."""
    name = layer.metadata.get("task")
    if not name:
        return False
    try:
        from workbench.tasks import get_task

        view = get_task(name).view
    except ValueError:
        return False
    return layer.metadata.get("role") == getattr(view, f"{which}_role")


def is_reference_layer(layer) -> bool:
    """A ground truth (the DWI sample marks its clean reference with ``role``; task samples per their view)."""
    return layer.metadata.get("role") == "reference" or _view_role(layer, "reference")


def is_noisy_layer(layer) -> bool:
    """The input a result was made from (noisy DWI; a task's input role, e.g. the LR volume)."""
    return layer.metadata.get("role") == "noisy input" or _view_role(layer, "input")


def is_result_layer(layer) -> bool:
    return any(k in layer.metadata for k in RESULT_KEYS) or _view_role(layer, "output")


def is_baseline_layer(layer) -> bool:
    """A classical baseline: computed here (``baseline`` metadata) or a task sample's (a role in its baselines)."""
    if "baseline" in layer.metadata:
        return True
    name = layer.metadata.get("task")
    try:
        from workbench.tasks import get_task

        return bool(name) and layer.metadata.get("role") in get_task(name).baselines
    except ValueError:
        return False


def is_comparable_layer(layer) -> bool:
    """What Compare takes: a 4D series or a 3D volume."""
    return is_series_layer(layer) or is_volume_image(layer)


def fit_visible(viewer) -> None:
    """Reset the view to the visible layers (hidden ones placed elsewhere, e.g. 2D pictures beside a
    volume, do not shrink and shift what is shown); all layers on napari without ``reset_view(layers=)``."""
    shown = [layer for layer in viewer.layers if layer.visible]
    if shown:
        try:
            viewer.reset_view(layers=shown)
            return
        except TypeError:  # an older napari: no ``layers`` argument
            pass
    viewer.reset_view()


def fit_view_soon(viewer) -> None:
    """Fit the view to the visible layers now and again once Qt has laid out the docks (the canvas size may
    change)."""
    import weakref

    from qtpy.QtCore import QTimer

    fit_visible(viewer)
    ref = weakref.ref(unwrap(viewer))  # a pending timer must not keep a closed viewer alive

    def again():
        v = ref()
        try:
            if v is not None:
                fit_visible(v)
        except Exception:  # the viewer closed meanwhile
            pass

    QTimer.singleShot(50, again)
