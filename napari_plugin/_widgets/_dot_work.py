"""The work behind the NIR-DOT panel, without Qt widgets: what the panel reads from its layers, the workers that
call the core, and small helpers for the layers it shows.

The workers (napari ``thread_worker``) yield :class:`~napari_plugin._workers.Progress` and
:class:`~napari_plugin._workers.Status` items; :func:`reconstruct_worker` returns a :class:`DotResult`, and
everything it computes comes from :mod:`workbench.tasks.dot` (``workflow.reconstruct``,
``physics.simulate_measurements``, ``metrics.evaluate_dot``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from napari.qt.threading import thread_worker

from napari_plugin._layers import unwrap
from napari_plugin._workers import Control, Progress, Status, _pump_stoppable

METHODS = (("network", "Network (trained)"), ("tikhonov", "Tikhonov (one Rytov step, GCV)"),
           ("gauss-newton", "Gauss-Newton (3 iterations)"))
CHANNELS = (("mu_a", "mu_a", "magma"), ("mu_s", "mu_s'", "viridis"))  # key, shown name, colour map
FILE_TEXT = "(a measurement file)"
OPTODE_DISPLAY = "optodes display"  # role of the Points copies shown in each cell of the side-by-side grid
GRIDS = (16, 24, 32, 48)


# ------------------------------------------------------------------ layers (no Qt)
def is_measurement_layer(layer) -> bool:
    """A layer carrying DOT boundary data in its metadata (the sample's ``sources`` layer)."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get("role") == "measurements" and meta.get("dot_data") is not None


def layer_measurements(layer):
    """The layer's data as :class:`~workbench.tasks.dot.data.Measurements` (validated like a file's)."""
    from workbench.tasks.dot.data import Measurements
    from workbench.tasks.dot.physics import Geometry

    meta = layer.metadata
    if not meta.get("geometry"):
        raise ValueError(f"layer '{layer.name}' carries measurements without their geometry")
    g = Geometry.from_dict(dict(meta["geometry"]))
    data = np.asarray(meta["dot_data"])
    freqs = np.asarray(meta.get("frequencies_hz") or (0.0, g.frequency_hz), float)
    if data.ndim != 3 or data.shape[0] != len(freqs) or not np.iscomplexobj(data):
        raise ValueError(f"layer '{layer.name}': dot_data must be complex (frequencies, sources, detectors), "
                         f"got {data.dtype} {data.shape}")
    mask = meta.get("dot_mask")
    return Measurements(data, freqs, g.sources_mm, g.detectors_mm, None if mask is None else np.asarray(mask, bool),
                        g)


def case_layers(viewer, case: Optional[str]) -> dict:
    """The phantom channels (``"mu_a"``, ``"mu_s"``), ``"inclusions"`` and ``"body"`` layers of a sample case."""
    out: dict = {}
    if not case:
        return out
    for layer in viewer.layers:
        meta = layer.metadata
        if meta.get("task") != "dot" or meta.get("case") != case:
            continue
        if meta.get("role") == "reference" and meta.get("channel"):
            out.setdefault(meta["channel"], layer)
        elif meta.get("role") in ("inclusions", "body"):
            out.setdefault(meta["role"], layer)
    return out


def inclusion_slice(labels: np.ndarray, axis: int = 2) -> Optional[int]:
    """The slice along ``axis`` through the most inclusions, then the most inclusion voxels (None without any)."""
    labels = np.moveaxis(np.asarray(labels), axis, 0)
    best, pick = (0, 0), None
    for k, plane in enumerate(labels):
        ids = plane[plane > 0]
        score = (len(np.unique(ids)), ids.size)
        if score > best:
            best, pick = score, k
    return pick


def format_metrics(m: dict) -> str:
    """One line per channel: RMSE, SSIM, contrast recovery, localisation error (n/a where undefined)."""
    def num(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)

    lines = []
    for key, shown in (("mua", "mu_a"), ("mus", "mu_s'")):
        lines.append(f"{shown}: RMSE {num(m.get(f'rmse_{key}'), '.3g')} 1/mm, SSIM {num(m.get(f'ssim_{key}'), '.2f')}, "
                     f"contrast {num(m.get(f'contrast_{key}'), '.0%')}, "
                     f"loc. error {num(m.get(f'loc_error_{key}'), '.1f')} mm")
    return "\n".join(lines)


# ------------------------------------------------------------------ workers
@dataclass
class DotInput:
    """What to reconstruct: a layer's measurements (captured on the GUI thread) or a file (read in the worker)."""

    name: str
    measurements: Any = None
    path: Optional[str] = None
    reference: Optional[tuple] = None  # (mu (2, X, Y, Z), labels or None) of a phantom
    case: Optional[str] = None

    def load(self):
        from workbench.tasks.dot.data import load_measurements

        return self.measurements if self.path is None else load_measurements(self.path)

    def file_reference(self):
        """A simulated case's ``mu.nii.gz`` (and ``labels.nii.gz``) beside its measurement file, if there."""
        if self.path is None:
            return None
        from workbench.data.nifti import load_volume
        from workbench.tasks.dot.workflow import load_mu

        folder = Path(self.path).parent
        if not (folder / "mu.nii.gz").is_file():
            return None
        mu, _ = load_mu(folder / "mu.nii.gz", "reference")
        labels = load_volume(folder / "labels.nii.gz", "labels")[0].astype(int) \
            if (folder / "labels.nii.gz").is_file() else None
        return mu, labels


@dataclass
class DotResult:
    method: str
    mu: np.ndarray                  # (2, X, Y, Z) 1/mm
    geometry: Any
    attention: Optional[np.ndarray]
    measured: np.ndarray            # (3, S, D) Rytov data: CW ln A, f_mod ln A, f_mod phase
    predicted: np.ndarray           # the same for the forward model of ``mu``
    mask: Optional[np.ndarray]
    metrics: Optional[dict]
    seconds: float
    model: str
    info: dict = field(default_factory=dict)


def _predictor(cache: dict, checkpoint: Optional[str]):
    """The network of ``checkpoint`` (None: the shipped one), kept while its file stays the same."""
    from workbench.tasks.dot.workflow import DEFAULT_CHECKPOINT, DotPredictor

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    key = (str(path), path.stat().st_mtime_ns if path.is_file() else None)
    if cache.get("key") != key:
        cache.clear()
        cache.update(key=key, predictor=DotPredictor.from_checkpoint(path if checkpoint else None))
    return cache["predictor"]


@thread_worker(ignore_errors=True)
def reconstruct_worker(method: str, inp: DotInput, checkpoint: Optional[str], cache: dict,
                       control: Optional[Control] = None):
    """Reconstruct, simulate the boundary data of the result, score it against a phantom; returns a
    :class:`DotResult` (None when stopped). Stop is honoured between stages (a Gauss-Newton solve
    itself reports no progress and cannot be interrupted)."""
    from workbench.tasks.base import check_cancel

    control = control or Control()

    def run(emit):
        from workbench.tasks.dot.physics import serial_blas

        with serial_blas():  # sparse LU and the solvers: a multi-threaded BLAS only slows them down
            return _reconstruct(emit)

    def _reconstruct(emit):
        from workbench.tasks.dot.data import check_geometry
        from workbench.tasks.dot.metrics import evaluate_dot
        from workbench.tasks.dot.physics import default_geometry, simulate_measurements
        from workbench.tasks.dot.training import reference_data, rytov
        from workbench.tasks.dot.workflow import reconstruct

        emit(Progress(0, 4, "stages"))
        predictor, model = None, "model-based (no training)"
        if method == "network":
            emit(Status("Loading the network…"))
            predictor = _predictor(cache, checkpoint)
            geometry, model = predictor.geometry, (checkpoint or "shipped network")
        meas = inp.load()
        if predictor is None:
            geometry = meas.geometry or default_geometry()
        data = check_geometry(meas, geometry, "the checkpoint" if predictor else "the geometry")
        check_cancel(control.cancelled)
        slow = method == "gauss-newton"
        emit(Progress(1, 0 if slow else 4, "stages"))  # a busy bar: the solver reports no progress
        emit(Status({"network": "Reconstructing with the network…",
                     "tikhonov": "Tikhonov: Jacobian of the background, GCV…",
                     "gauss-newton": "Gauss-Newton: 3 iterations, each a new Jacobian (tens of seconds at grid 32; "
                                     "Stop takes effect after it)…"}[method]))
        t0 = time.perf_counter()
        mu, info = reconstruct(method, data, geometry, meas.mask, predictor=predictor)
        seconds = time.perf_counter() - t0
        mu = np.asarray(mu, np.float32)
        attention = predictor.attention() if predictor is not None else None
        check_cancel(control.cancelled)
        emit(Progress(2, 4, "stages"))
        emit(Status("Simulating the boundary data of the reconstruction…"))
        ref = reference_data(geometry)
        measured, predicted = rytov(data, ref), rytov(simulate_measurements(geometry, mu), ref)
        check_cancel(control.cancelled)
        emit(Progress(3, 4, "stages"))
        metrics = None
        reference = inp.reference if inp.reference is not None else inp.file_reference()
        if reference is not None and np.shape(reference[0]) == mu.shape:
            emit(Status("Scoring against the phantom…"))
            metrics = evaluate_dot(mu, reference[0], geometry.body_mask, inclusions=reference[1],
                                   background=geometry.background, voxel_mm=geometry.voxel_mm)
        emit(Progress(4, 4, "stages"))
        scalars = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}
        return DotResult(method, mu, geometry, attention, measured, predicted, meas.mask, metrics, seconds, model,
                         scalars)

    return (yield from _pump_stoppable(run, control))


@thread_worker(ignore_errors=True)
def simulate_worker(folder: str, n: int, grid_size: int, control: Optional[Control] = None):
    """``workflow.simulate`` into ``folder`` (resumable); yields Progress per case; returns the case folders."""
    control = control or Control()

    def run(emit):
        from workbench.tasks.dot.workflow import simulate

        workers = max(1, (os.cpu_count() or 2) - 1)  # a core stays with the viewer; one worker runs in this thread
        return simulate(folder, n=n, grid=grid_size, workers=workers, should_stop=control.cancelled,
                        progress=lambda done, total: emit(Progress(done, total, "cases")))

    return (yield from _pump_stoppable(run, control))


def show_colorbar(layer, on: bool) -> None:
    """The layer's colour bar (values in 1/mm) in its own grid cell (napari >= 0.6; silently absent before)."""
    bar = getattr(layer, "colorbar", None)
    if bar is None or type(unwrap(layer)).__name__ != "Image":
        return
    try:
        if on:
            bar.gridded, bar.position, bar.font_size, bar.size = True, "bottom_right", 8, (12, 110)
        bar.visible = on
    except (AttributeError, ValueError):
        pass


def network_output_role() -> str:
    """The role the dot task gives its network's output layers (the Compare panel preselects them)."""
    from workbench.tasks import get_task

    return get_task("dot").view.output_role
