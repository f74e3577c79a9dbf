"""The work behind the "Reconstruct CT from X-rays" panel, without Qt widgets: what the panel reads from its
layers, the worker that calls the core, and the arrays and placements of the layers it adds.

The worker (a napari ``thread_worker``) yields :class:`~napari_plugin._workers.Progress` and
:class:`~napari_plugin._workers.Status` items and returns an :class:`XrayResult`; everything it
computes comes from :mod:`workbench.tasks.xray2ct` (``workflow.reconstruct``, ``workflow.refine``,
``geometry.project_hu``, ``metrics.evaluate_ct``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from napari.qt.threading import thread_worker

from napari_plugin._layers import is_map_layer, unwrap
from napari_plugin._workers import Control, Progress, Status, _pump_stoppable

#: (key, shown in the combo box, used in layer names)
METHODS = (("network", "Network (64³)", "network"),
           ("network+refine", "Network + refinement (128³)", "refined network"),
           ("backprojection", "Back-projection", "back-projection"),
           ("atlas", "Atlas (mean volume)", "atlas"),
           ("ridge", "Ridge regression", "ridge"))
#: what each method is, for the combo box's tool tips
METHOD_TIPS = {"network": "the stage-1 network: 2D encoders lifted along the rays, a 3D decoder (64³); the shipped "
                          "one is fused voxel by voxel with the ridge shape model (xray2ct_fusion.pt)",
               "network+refine": "stage 1, then the stage-2 network (the sr task's, x2) to 128³",
               "backprojection": "each X-ray spread evenly along its rays, the two views averaged (no training)",
               "atlas": "the mean training volume, whatever the X-rays (what ignoring the input scores)",
               "ridge": "PCA shape model regressed on the downsampled X-rays (ridge, GCV)"}
NAME_OF = {key: name for key, _, name in METHODS}
BASELINES = ("backprojection", "atlas", "ridge")
HU_LIMITS = (-1000.0, 1000.0)
VIEW_NAMES = {"ap": "AP", "lateral": "lateral"}
DISPLAY_ROLE = "xray display"  # role of the detector walls shown in the 3D view


# ------------------------------------------------------------------ layers (read on the GUI thread)
def is_xray_layer(layer) -> bool:
    """A 2D single-channel image the user opened (not a residual or another derived map)."""
    return type(unwrap(layer)).__name__ == "Image" and np.ndim(layer.data) == 2 and \
        not getattr(layer, "rgb", False) and not is_map_layer(layer)


def has_role(role: str):
    return lambda layer: layer.metadata.get("role") == role


def layer_geometry(layer):
    """The :class:`XrayGeometry` a layer's X-ray was taken with (its ``geometry`` metadata), or None."""
    from workbench.tasks.xray2ct.geometry import XrayGeometry

    d = layer.metadata.get("geometry")
    if not d:
        return None
    try:
        return XrayGeometry.from_dict(dict(d))
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"layer '{layer.name}' carries a geometry that cannot be read ({exc})") from exc


@dataclass
class XrayInput:
    """What to reconstruct from, captured on the GUI thread (arrays, not layers)."""

    names: tuple[str, str]                      # AP and lateral layer names
    xrays: np.ndarray                           # (2, nu, nv) line integrals
    geometry: Any = None                        # XrayGeometry of the X-rays' metadata, or None
    reference: Optional[np.ndarray] = None      # HU volume
    reference_name: Optional[str] = None
    reference_place: dict = field(default_factory=dict)  # scale, translate and affine of the reference layer
    case: Optional[str] = None


def make_input(ap, lateral, reference=None) -> XrayInput:
    """Check the chosen layers and capture their arrays; ValueError (one line) when they do not fit."""
    if ap is None or lateral is None:
        missing = "the AP and lateral X-ray layers" if ap is lateral else \
            f"the {'AP' if ap is None else 'lateral'} X-ray layer too"
        raise ValueError(f"Choose {missing}: the reconstruction needs both views (AP and lateral), e.g. "
                         "File > Open Sample > Biplanar X-ray phantom")
    if unwrap(ap) is unwrap(lateral):
        raise ValueError(f"'{ap.name}' is chosen as both views: choose the AP and the lateral X-ray")
    a, b = (np.asarray(layer.data, np.float32) for layer in (ap, lateral))
    if a.shape != b.shape:
        raise ValueError(f"the AP ({a.shape[0]}x{a.shape[1]}) and lateral ({b.shape[0]}x{b.shape[1]}) X-rays differ "
                         "in size: choose two views from the same detector")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the X-rays contain NaN or infinite values: give line integrals (-log(I/I0))")
    g_ap, g_lat = layer_geometry(ap), layer_geometry(lateral)
    if g_ap is not None and g_lat is not None and not g_ap.same_beams(g_lat):
        raise ValueError(f"'{ap.name}' and '{lateral.name}' were taken with different geometries: choose two views "
                         "of the same case")
    inp = XrayInput((ap.name, lateral.name), np.stack([a, b]), g_ap or g_lat, case=ap.metadata.get("case"))
    if reference is not None:
        from napari_plugin._layers import layer_affine

        inp.reference = np.asarray(reference.data, np.float32)
        inp.reference_name = reference.name
        inp.reference_place = {"scale": list(reference.scale), "translate": list(reference.translate),
                               "affine": layer_affine(reference)}
    return inp


# ------------------------------------------------------------------ the worker
@dataclass
class XrayResult:
    method: str
    hu: np.ndarray                  # (G, G, G) HU
    geometry: Any                   # XrayGeometry of the X-rays, on the stage-1 grid
    xrays: np.ndarray               # the input (2, nu, nv)
    projected: np.ndarray           # the X-rays of ``hu`` (2, nu, nv), noise-free
    metrics: Optional[dict]
    note: str                       # how the metrics were taken (or why not)
    difference: Optional[np.ndarray]  # result - reference, on the reference's grid
    seconds: float
    model: str

    @property
    def residual(self) -> np.ndarray:
        return self.projected - self.xrays

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.with_size(self.hu.shape[0]).affine()


def _cached(cache: dict, kind: str, path: Path, load):
    """``load()`` once per file (kept while the file stays the same)."""
    key = (str(path), path.stat().st_mtime_ns if path.is_file() else None)
    if cache.get(kind, (None,))[0] != key:
        cache[kind] = (key, load())
    return cache[kind][1]


def _on_reference_grid(hu: np.ndarray, ref: np.ndarray) -> tuple[Optional[np.ndarray], str]:
    """The result on the reference's grid (the refined 128³ volume averaged 2x onto a 64³ reference)."""
    if hu.shape == ref.shape:
        return hu, ""
    n = ref.shape
    if ref.ndim == 3 and hu.shape == tuple(2 * s for s in n):
        return hu.reshape(n[0], 2, n[1], 2, n[2], 2).mean((1, 3, 5)), f" (on the reference's {n[0]}³ grid)"
    return None, ""


@thread_worker(ignore_errors=True)
def reconstruct_worker(method: str, inp: XrayInput, paths: dict, cache: dict, control: Optional[Control] = None):
    """Reconstruct, re-project, score against the reference; returns an :class:`XrayResult` (None when stopped).

    ``paths``: ``stage1``, ``stage2``, ``linear`` files (None: the shipped ones). Stop is honoured
    between stages and between the refinement's tiles.
    """
    from workbench.tasks.base import check_cancel

    control = control or Control()

    def run(emit):
        from workbench.io_utils import InputError
        from workbench.tasks.xray2ct import workflow
        from workbench.tasks.xray2ct.geometry import default_geometry, project_hu
        from workbench.tasks.xray2ct.metrics import evaluate_ct

        emit(Progress(0, 4, "stages"))
        predictor = linear = None
        xrays, g = inp.xrays, inp.geometry
        if method.startswith("network"):
            emit(Status("Loading the network…"))
            path = Path(paths.get("stage1") or workflow.DEFAULT_STAGE1)
            predictor = _cached(cache, "stage1", path, lambda: workflow.XrayPredictor.from_checkpoint(path))
            predictor.check(xrays, g)
            g, model = predictor.geometry, predictor.source
        else:
            if g is None:
                nu, nv = xrays.shape[-2:]
                if nu != nv:
                    raise InputError(f"the X-rays are {nu}x{nv} pixels and carry no geometry: the built-in one has "
                                     "square detectors")
                g = default_geometry(nu, "parallel")
            if tuple(xrays.shape[-2:]) != tuple(g.detector_px):
                raise InputError(f"the X-rays are {xrays.shape[-2]}x{xrays.shape[-1]} pixels but their geometry has "
                                 f"{g.detector_px[0]}x{g.detector_px[1]}")
            model = "model-based (no training)"
            if method in ("atlas", "ridge"):
                emit(Status("Loading the linear model…"))
                path = Path(paths.get("linear") or workflow.DEFAULT_LINEAR)
                linear = _cached(cache, "linear", path, lambda: workflow.open_linear(path))
                model = str(path)
        check_cancel(control.cancelled)
        emit(Progress(1, 4, "stages"))
        emit(Status(f"Reconstructing ({NAME_OF[method]})…"))
        t0 = time.perf_counter()
        if predictor is not None:
            hu, fused = predictor.predict_with_info(xrays)
            if fused["fused"]:
                model += f", fused with ridge by {predictor.fusion.source}"
            elif predictor.fusion is not None:
                model += ", not fused with ridge (ridge does not fit these X-rays)"
        else:
            hu = workflow.reconstruct(method, xrays, g, linear=linear)
        if method == "network+refine":
            check_cancel(control.cancelled)

            def tiles(done, total):
                check_cancel(control.cancelled)  # raised inside the core: the refinement stops at this tile
                emit(Status(f"Stage 2 (refinement to {2 * g.size}³): tile {done} of {total}…"))

            emit(Status("Stage 2: refining to 128³…"))
            path2 = paths.get("stage2")
            hu = workflow.refine(hu, path2, progress=tiles)
            model += f" + {path2 or workflow.DEFAULT_STAGE2}"
        seconds = time.perf_counter() - t0
        hu = np.asarray(hu, np.float32)
        check_cancel(control.cancelled)
        emit(Progress(2, 4, "stages"))
        emit(Status("Re-projecting the result…"))
        projected = project_hu(hu, g.with_size(hu.shape[0]))
        check_cancel(control.cancelled)
        emit(Progress(3, 4, "stages"))
        metrics, note, diff = None, "No reference chosen: no metrics (the residuals show the fit to the X-rays).", None
        if inp.reference is not None:
            on_ref, where = _on_reference_grid(hu, inp.reference)
            if on_ref is None:
                note = (f"The reference '{inp.reference_name}' {inp.reference.shape} is not on the result's grid "
                        f"{hu.shape}: no metrics.")
            else:
                emit(Status("Scoring against the reference…"))
                metrics = evaluate_ct(on_ref, inp.reference, xrays=xrays, geometry=g.with_size(on_ref.shape[0]))
                note, diff = f"Against '{inp.reference_name}'{where}:", (on_ref - inp.reference).astype(np.float32)
        emit(Progress(4, 4, "stages"))
        return XrayResult(method, hu, g, xrays, projected, metrics, note, diff, seconds, model)

    return (yield from _pump_stoppable(run, control))


# ------------------------------------------------------------------ what the panel shows
def reference_place(layers, name: str, result: XrayResult) -> dict:
    """``scale``, ``translate`` and ``affine`` of the reference layer (its grid when it was removed meanwhile)."""
    if name in layers:
        from napari_plugin._layers import layer_affine

        ref = layers[name]
        return {"scale": list(ref.scale), "translate": list(ref.translate), "affine": layer_affine(ref)}
    from napari_plugin._layers import spatial_kwargs

    g = result.geometry.with_size(result.difference.shape[0])
    return {**spatial_kwargs(g.affine(), 3), "affine": g.affine()}


def display_geometry(result: Optional[XrayResult], xray_layers: list):
    """The geometry to place the X-rays by: the last result's, the layers' own, else the built-in parallel beam."""
    if result is not None:
        return result.geometry
    g = next((layer_geometry(layer) for layer in xray_layers if layer_geometry(layer) is not None), None)
    if g is None and xray_layers:
        from workbench.tasks.xray2ct.geometry import default_geometry

        g = default_geometry(int(xray_layers[0].data.shape[0]), "parallel")
    return g


def format_metrics(metrics: Optional[dict]) -> str:
    """PSNR, SSIM, Dice lungs, Dice bone, re-projection error (MAE), on one line."""
    if not metrics:
        return ""

    def num(key, fmt, suffix=""):
        v = metrics.get(key)
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt) + suffix

    return (f"PSNR {num('psnr', '.2f', ' dB')} · SSIM {num('ssim', '.3f')} · Dice lungs {num('dice_lung', '.2f')} · "
            f"Dice bone {num('dice_bone', '.2f')} · re-projection error {num('reprojection_error', '.1%')} · "
            f"MAE {num('mae_hu', '.0f', ' HU')}")


def symmetric_limits(a: np.ndarray, floor: float = 1e-6) -> tuple[float, float]:
    top = max(float(np.percentile(np.abs(a), 99.5)), floor)
    return -top, top


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def residual_placement(g, view: str, shape=None) -> dict:
    """A residual's ``scale`` and ``translate``: right below its X-ray beside the volume."""
    from napari_plugin._sample_data import XRAY_GAP, xray_placement

    where = xray_placement(g, view, shape)
    nv = (shape or g.detector_px)[1]
    where["translate"][1] -= nv * where["scale"][1] + XRAY_GAP * g.fov_mm[1]
    return where


def volume_centre(g) -> np.ndarray:
    """World (napari) coordinates of the volume's centre, for a volume placed by ``spatial_kwargs(g.affine())``."""
    from napari_plugin._layers import spatial_kwargs

    where = spatial_kwargs(g.affine(), 3)
    return np.asarray(where["translate"]) + (g.size - 1) / 2 * np.asarray(where["scale"])


def wall(xray: np.ndarray, g, view: str, gap_fraction: float = 0.3) -> tuple[np.ndarray, dict]:
    """A 3D copy of an X-ray standing where its detector is (behind the patient for the AP view, on the
    patient's left for the lateral; ``gap_fraction`` of the field away), two 1 mm voxels thick, on the
    volume's world axes."""
    centre = volume_centre(g)
    su, sv = (p / g.magnification() for p in g.pixel_mm(view))
    nu, nv = xray.shape
    gap = gap_fraction * g.fov_mm[1]
    start_u = -(nu - 1) / 2 * su
    start_v = centre[2] - (nv - 1) / 2 * sv
    if view == "ap":      # source in front (+Y): the picture on the posterior side, u along X
        data = np.stack([xray, xray], axis=1)
        scale, translate = [su, 1.0, sv], [centre[0] + start_u, centre[1] - g.fov_mm[1] / 2 - gap - 1.0, start_v]
    else:                 # source on the right (-X): the picture on the left (+X), u along Y
        data = np.stack([xray, xray], axis=0)
        scale, translate = [1.0, su, sv], [centre[0] + g.fov_mm[0] / 2 + gap, centre[1] + start_u, start_v]
    plane = {"position": tuple((n - 1) / 2 for n in data.shape), "thickness": 1.0,
             "normal": (0.0, 1.0, 0.0) if view == "ap" else (1.0, 0.0, 0.0)}  # drawn as a plane: crisp at any angle
    return data.astype(np.float32), {"scale": scale, "translate": translate, "depiction": "plane", "plane": plane,
                                     "axis_labels": ("x", "y", "z")}


def sagittal_slice(hu) -> int:
    """The X index of the sagittal slice through the most lung (:func:`~workbench.tasks.xray2ct.metrics.lungs`:
    air inside the body), else the middle one."""
    from workbench.tasks.xray2ct.metrics import lungs

    hu = np.asarray(hu)
    counts = lungs(hu).sum(axis=(1, 2)) if hu.ndim == 3 else np.zeros(1)
    return int(np.argmax(counts)) if counts.max() > 0 else int(np.shape(hu)[0] // 2)


def titles(volume, layers) -> tuple[np.ndarray, list[str]]:
    """Positions (Y, Z) just above each layer and their titles, for the side-by-side view."""
    pos, text = [], []
    for layer in layers:
        ext = np.asarray(layer.extent.world)[:, -2:]  # (Y, Z) of 2D and 3D layers alike
        pos.append([float(ext.mean(0)[0]), float(ext[1, 1]) + 8.0])
        view = layer.metadata.get("view")
        if layer is volume:
            text.append(f"{layer.name}, sagittal")
        elif "difference_of" in layer.metadata and view:
            text.append(f"{VIEW_NAMES[view]} residual")
        else:
            text.append(layer.name)
    return np.asarray(pos), text
