"""NIR diffuse optical tomography panel: reconstruct mu_a and mu_s' from boundary data, see how well they fit.

Input: a layer carrying measurements (the DOT sample's ``sources`` Points layer: ``role``
``"measurements"``, complex ``dot_data`` (2, S, D) and its ``geometry`` in the metadata) or a
measurement file (``.npz``, :mod:`workbench.tasks.dot.data`). The method is the trained network
(a checkpoint, the Train panel's run, or the shipped one), Tikhonov (one Rytov step, GCV) or
Gauss-Newton (:func:`workbench.tasks.dot.workflow.reconstruct`), run in a worker.

Results: ``"<method> mu_a"`` and ``"<method> mu_s'"`` image layers on the geometry's mm grid
(metadata ``role`` = the task's output role for the network, the baseline's name otherwise,
so the Compare panel preselects them against the phantom), the network's attention as a
fading overlay, and in the panel a plot of the measured against the predicted boundary data
(Rytov log-amplitude and phase, relative to the homogeneous medium; predicted = the forward
model applied to the reconstruction) with a metrics line against the phantom when the input
has one (:func:`workbench.tasks.dot.metrics.evaluate_dot`).

Training: "Simulate" writes cases to a folder; the generic Train panel trains on that folder
(task "NIR diffuse optical tomography"); "From Train panel" makes its run's best.pt the
checkpoint used here.
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
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QSpinBox,
    QVBoxLayout, QWidget,
)

from napari_plugin import _session
from napari_plugin._layers import (
    add_or_update_image, axial_view, dwi_metadata, fit_view_soon, grid, show_name, spatial_kwargs, unwrap,
)
from napari_plugin._widgets._common import (
    LayerCombo, PathPicker, StatusLine, outer_layout, report_failure, show_error_notification,
)
from napari_plugin._widgets._lifecycle import WorkerPanel
from napari_plugin._workers import Control, Progress, Status, _pump

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
    from workbench.tasks.base import Cancelled, check_cancel

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

    try:
        return (yield from _pump(run, control))
    except Cancelled:
        return None
    finally:
        control.done.set()


@thread_worker(ignore_errors=True)
def simulate_worker(folder: str, n: int, grid_size: int, control: Optional[Control] = None):
    """``workflow.simulate`` into ``folder`` (resumable); yields Progress per case; returns the case folders."""
    from workbench.tasks.base import Cancelled

    control = control or Control()

    def run(emit):
        from workbench.tasks.dot.workflow import simulate

        workers = max(1, (os.cpu_count() or 2) - 1)  # a core stays with the viewer; one worker runs in this thread
        return simulate(folder, n=n, grid=grid_size, workers=workers, should_stop=control.cancelled,
                        progress=lambda done, total: emit(Progress(done, total, "cases")))

    try:
        return (yield from _pump(run, control))
    except Cancelled:
        return None
    finally:
        control.done.set()


# ------------------------------------------------------------------ the boundary-data plot
class BoundaryPlot(QWidget):
    """Measured against predicted Rytov data per source-detector pair: CW log-amplitude and modulated phase."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        from napari_plugin._widgets._loss_plot import BG

        self.figure = Figure(figsize=(4.2, 2.5), dpi=90, facecolor=BG)
        self.figure.subplots_adjust(left=0.15, right=0.97, bottom=0.2, top=0.8, wspace=0.45)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(230)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.axes = self.figure.subplots(1, 2)
        self.n_points = 0
        self.rms: dict[str, float] = {}
        self.clear()

    def _style(self, ax, title: str, unit: str) -> None:
        from napari_plugin._widgets._loss_plot import BG, FG, GRID

        ax.clear()
        ax.set_facecolor(BG)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=FG, labelsize=7)
        ax.grid(True, color=GRID, linewidth=0.5)
        ax.set_title(title, color=FG, fontsize=8)
        ax.set_xlabel(f"measured {unit}", color=FG, fontsize=8)
        ax.set_ylabel(f"predicted {unit}", color=FG, fontsize=8)

    def clear(self) -> None:
        from napari_plugin._widgets._loss_plot import FG

        for ax, (title, unit) in zip(self.axes, self._panels()):
            self._style(ax, title, unit)
        self.figure.suptitle("Measured vs predicted boundary data\n(after a reconstruction)", color=FG, fontsize=8)
        self.n_points = 0
        self.canvas.draw_idle()

    @staticmethod
    def _panels():
        return (("CW log-amplitude", "ln(A/A0)"), ("modulated phase", "(deg)"))

    def show_result(self, result: DotResult, frequency_mhz: float) -> None:
        from napari_plugin._widgets._loss_plot import FG

        use = np.ones(result.measured.shape[1:], bool) if result.mask is None else np.asarray(result.mask, bool)
        pairs = [(result.measured[0][use], result.predicted[0][use]),
                 (np.degrees(result.measured[2][use]), np.degrees(result.predicted[2][use]))]
        titles = (("CW log-amplitude", "ln(A/A0)"), (f"{frequency_mhz:g} MHz phase", "(deg)"))
        self.rms = {}
        for ax, (x, y), (title, unit), color in zip(self.axes, pairs, titles, ("#ffb000", "#4cc9f0")):
            self._style(ax, title, unit)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#9aa0a6", linewidth=0.8, linestyle="--")
            ax.scatter(x, y, s=5, color=color, alpha=0.6, linewidths=0)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            rms = float(np.sqrt(np.mean((x - y) ** 2)))
            self.rms[title] = rms
            ax.text(0.03, 0.95, f"rms misfit {rms:.3g}", transform=ax.transAxes, va="top", ha="left", fontsize=7,
                    color=FG)
        self.n_points = int(use.sum())
        self.figure.suptitle(f"{result.method}: measured vs predicted boundary data\n"
                             f"({self.n_points} source-detector pairs, relative to the homogeneous medium)",
                             color=FG, fontsize=8)
        self.canvas.draw_idle()


# ------------------------------------------------------------------ the panel
class DotWidget(WorkerPanel, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: Optional[DotResult] = None
        self.output_layers: dict[str, Any] = {}
        self.attention_layer = None
        self.last_error: Optional[BaseException] = None
        self._cache: dict = {}
        self.input_used: Optional[DotInput] = None
        self._display_layers: list = []
        self._shown_before: list = []
        self._margins: Optional[tuple] = None
        self.sim_worker = self.sim_control = None
        self.cases: Optional[list] = None

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.input_combo = LayerCombo(self.viewer, is_measurement_layer, allow_none=True, none_text=FILE_TEXT,
                                      prefer=is_measurement_layer)
        self.input_combo.setToolTip("A layer carrying boundary data (File > Open Sample > NIR diffuse optical "
                                    "tomography phantom: its 'sources' layer), or a measurement file below")
        self.file = PathPicker(file_filter="DOT measurements (*.npz)",
                               placeholder="measurements.npz (used when no layer is chosen)")
        self.method = QComboBox()
        for key, label in METHODS:
            self.method.addItem(label, key)
        self.checkpoint = PathPicker(file_filter="Checkpoints (*.pt)", placeholder="empty: the shipped network")
        self.from_run_btn = QPushButton("From Train panel")
        self.from_run_btn.setToolTip("Use the best.pt of the Train panel's NIR-DOT run")
        self.from_run_btn.clicked.connect(self.use_training_run)
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint, 1)
        ckpt_row.addWidget(self.from_run_btn)
        form.addRow("Measurements", self.input_combo)
        form.addRow("Measurement file", self.file)
        form.addRow("Method", self.method)
        form.addRow("Checkpoint", ckpt_row)
        root.addLayout(form)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.input_combo.currentTextChanged.connect(self._input_changed)
        self._input_changed()
        self._method_changed()

        box = QGroupBox("Fit to the data")
        lay = QVBoxLayout(box)
        self.plot = BoundaryPlot()
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setToolTip("Against the phantom, inside the body: RMSE, SSIM, contrast recovery "
                                      "(1 = the true inclusion contrast) and localisation error of the largest "
                                      "inclusion (workbench.tasks.dot.metrics)")
        row = QHBoxLayout()
        self.beside_btn, self.single_btn = QPushButton("Show beside the phantom"), QPushButton("Single view")
        self.beside_btn.setToolTip("A grid: phantom and reconstruction, mu_a above mu_s', with the optodes, "
                                   "sliced through the inclusions")
        self.beside_btn.clicked.connect(self.show_beside_phantom)
        self.single_btn.clicked.connect(self.single_view)
        row.addWidget(self.beside_btn)
        row.addWidget(self.single_btn)
        lay.addWidget(self.plot)
        lay.addWidget(self.metrics_label)
        lay.addLayout(row)

        run_box = QVBoxLayout()
        self.add_run_controls(run_box, "Reconstruct", "Stop", "stage %v of %m",
                              "Open the sample (File > Open Sample > NIR diffuse optical tomography phantom), "
                              "choose a method, then press Reconstruct.")
        root.addLayout(run_box)
        root.addWidget(box)
        root.addWidget(self._training_box())
        root.addStretch(1)
        outer_layout(self, content)
        self.setMinimumWidth(380)
        self._update_view_buttons()

    # ------------------------------------------------------------------ inputs
    def method_key(self) -> str:
        return self.method.currentData()

    def set_method(self, key: str) -> None:
        self.method.setCurrentIndex(self.method.findData(key))

    def _method_changed(self, *_) -> None:
        network = self.method_key() == "network"
        for w in (self.checkpoint, self.from_run_btn):
            w.setEnabled(network)

    def _input_changed(self, *_) -> None:
        self.file.setEnabled(self.input_combo.layer() is None)

    def _make_input(self) -> DotInput:
        layer = self.input_combo.layer()
        if layer is None:
            path = self.file.text()
            if not path:
                raise ValueError("Choose a layer with measurements (File > Open Sample > NIR diffuse optical "
                                 "tomography phantom) or a measurement file (.npz)")
            return DotInput(Path(path).name, path=str(Path(path).expanduser()))
        meas = layer_measurements(layer)
        case = layer.metadata.get("case")
        found = case_layers(self.viewer, case)
        reference = None
        if "mu_a" in found and "mu_s" in found:
            labels = found.get("inclusions")
            reference = (np.stack([np.asarray(found["mu_a"].data, np.float32),
                                   np.asarray(found["mu_s"].data, np.float32)]),
                         None if labels is None else np.asarray(labels.data).astype(int))
        return DotInput(layer.name, measurements=meas, reference=reference, case=case)

    def use_training_run(self) -> None:
        """The Train panel's run: its best.pt (or last.pt) becomes the checkpoint."""
        info = _session.run_for(self.viewer)
        cfg = getattr(getattr(info, "trainer", None), "config", None)
        path = None
        if info is not None and getattr(cfg, "task", "dot") == "dot":
            path = info.best_checkpoint or info.last_checkpoint
            if not path and info.run_dir:
                path = next((str(Path(info.run_dir) / n) for n in ("best.pt", "last.pt")
                             if (Path(info.run_dir) / n).is_file()), None)
        if not path:
            self._fail("No NIR-DOT checkpoint from the Train panel yet: simulate cases below, train them in the "
                       "Train panel (task 'NIR diffuse optical tomography'), then press this again")
            return
        self.checkpoint.setText(str(path))
        self.set_method("network")
        self.status.info(f"Checkpoint: {path} (the Train panel's run).")

    # ------------------------------------------------------------------ reconstruct
    def run(self) -> None:
        if self.worker is not None:
            return
        try:
            inp = self._make_input()
        except Exception as exc:
            self._fail(str(exc))
            return
        self.input_used, self.last_error = inp, None
        self.progress.setRange(0, 4)
        self.progress.setValue(0)
        control = Control()
        self.start_worker(reconstruct_worker(self.method_key(), inp, self.checkpoint.text() or None, self._cache,
                                             control=control), control)
        self.watch_for_close()

    def cancel(self) -> None:
        super().cancel()
        try:
            if self.worker is not None:
                self.status.info("Stopping after the current stage…")
        except RuntimeError:  # the panel is being deleted
            pass

    def _on_returned(self, result: Optional[DotResult]) -> None:
        if result is None:
            self.status.info("Stopped: no layer was added.")
            return
        self.result = result
        inp = self.input_used
        found = case_layers(self.viewer, inp.case)
        g = result.geometry
        aff = g.affine()
        role = _output_role() if result.method == "network" else result.method
        self.output_layers = {}
        for c, (key, shown, cmap) in reversed(list(enumerate(CHANNELS))):  # mu_a last: on top, and the active layer
            vol = result.mu[c]
            ref = found.get(key)
            if ref is not None and tuple(ref.data.shape) == vol.shape:
                limits = tuple(float(v) for v in ref.contrast_limits)
            else:
                inside = vol[g.body_mask]
                limits = (float(inside.min()), float(max(inside.max(), inside.min() + 1e-6)))
            meta = {**dwi_metadata(aff, is_4d=False), "task": "dot", "role": role, "channel": key, "units": "1/mm",
                    "method": result.method, "model": result.model, "input_layer": inp.name, "case": inp.case}
            kwargs = {"name": f"{result.method} {shown}", "axis_labels": ("x", "y", "z"), **spatial_kwargs(aff, 3),
                      "metadata": meta}
            self.output_layers[key] = add_or_update_image(self.viewer, vol, kwargs, colormap=cmap,
                                                          contrast_limits=limits, visible=c == 0)
        note = ""
        if result.attention is not None:
            self.attention_layer = self._show_attention(result, aff)
            note = f" Attention overlay: '{self.attention_layer.name}'."
        self.plot.show_result(result, g.frequency_hz / 1e6)
        self.metrics_label.setText(format_metrics(result.metrics) if result.metrics else
                                   "No phantom for this input: no metrics (the plot shows the fit to the data).")
        names = ", ".join(f"'{self.output_layers[key].name}'" for key, _, _ in CHANNELS)
        self.status.info(f"Done in {result.seconds:.1f} s ({result.model}): {names}.{note}")
        self._update_view_buttons()

    def _show_attention(self, result: DotResult, aff):
        from napari_plugin._widgets.attention import PREFIX, fading_colormap, overlay_limits

        att = np.asarray(result.attention, np.float32)
        kwargs = {"name": f"{PREFIX}: {result.method}", "axis_labels": ("x", "y", "z"), **spatial_kwargs(aff, 3),
                  "metadata": {**dwi_metadata(aff, is_4d=False), "attention_block": "deepest spatial attention",
                               "task": "dot", "input_layer": self.input_used.name}}
        return add_or_update_image(self.viewer, att, kwargs, colormap=fading_colormap("inferno"), opacity=0.6,
                                   blending="translucent", contrast_limits=overlay_limits(att))

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        report_failure(self.status, "Reconstruction", exc)

    def _on_finished(self) -> None:
        if self.progress.maximum() == 0:  # a busy bar left by a stopped or failed Gauss-Newton
            self.progress.setRange(0, 4)
        super()._on_finished()

    # ------------------------------------------------------------------ side by side
    def show_beside_phantom(self) -> None:
        """Phantom and reconstruction per channel in a grid (mu_a row above mu_s'), each cell with the optodes,
        sliced through the inclusions."""
        if not self.output_layers:
            self._fail("Reconstruct first")
            return
        self.single_view()
        found = case_layers(self.viewer, self.input_used.case if self.input_used else None)
        images = []
        for key, _, _ in CHANNELS:
            out = self.output_layers.get(key)
            if out is None or out not in self.viewer.layers:
                continue
            if key in found and tuple(found[key].data.shape) == tuple(out.data.shape):
                images.append(found[key])
            images.append(out)
        if not images:
            self._fail("The reconstruction's layers were removed: reconstruct again")
            return
        g = self.result.geometry
        self._shown_before = [layer for layer in self.viewer.layers if layer.visible]
        pairs = []
        for image in images:
            pts = self._optode_layer(g, f"optodes: {image.name}")
            pairs.append((image, pts))
        for image, pts in reversed(pairs):  # bottom of the list, image then its optodes: one stride-2 cell each
            for layer in (pts, image):
                self.viewer.layers.move(self.viewer.layers.index(layer), 0)
        keep = {id(unwrap(layer)) for pair in pairs for layer in pair}
        for layer in self.viewer.layers:
            layer.visible = id(unwrap(layer)) in keep
            show_name(layer, False)
        for image in images:
            show_name(image, True, 9.0)
            _colorbar(image, True)
        columns = 2 if len(images) > 1 else 1
        gr = grid(self.viewer)
        gr.enabled, gr.stride, gr.shape = True, 2, (-(-len(images) // columns), columns)
        axial_view(self.viewer)
        labels = found.get("inclusions")
        k = inclusion_slice(labels.data) if labels is not None else None
        if k is not None:
            self.viewer.dims.set_point(2, float((g.affine() @ [0, 0, k, 1.0])[2]))
        # a slab of half the ring spacing on each side: every slice shows the optodes of its nearest ring
        dims = self.viewer.dims
        self._margins = (tuple(dims.margin_left), tuple(dims.margin_right))
        slab = max(g.ring_span_mm / max(g.rings - 1, 1) / 2, g.voxel_mm)
        dims.margin_left = dims.margin_right = tuple(slab if axis == 2 else 0.0 for axis in range(dims.ndim))
        fit_view_soon(self.viewer)
        self._update_view_buttons()
        self.status.info("Beside the phantom: slicing and zoom are linked; the slice goes through the inclusions "
                         "(red: sources, cyan: detectors; points fade with distance to the slice).")

    def _optode_layer(self, g, name: str):
        from napari_plugin._sample_data import DETECTOR_COLOR, SOURCE_COLOR, optode_points

        colors = [SOURCE_COLOR] * len(g.sources_mm) + [DETECTOR_COLOR] * len(g.detectors_mm)
        data, kwargs = optode_points(np.concatenate([g.sources_mm, g.detectors_mm]), g.affine(), name, colors,
                                     "disc", 2.0 * g.voxel_mm, {"task": "dot", "role": OPTODE_DISPLAY})
        kwargs["projection_mode"] = "rescale_linear"  # within the slab, smaller with the distance to the slice
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_points(data, **kwargs)
        self._display_layers.append(layer)
        return layer

    def single_view(self) -> None:
        """Leave the grid: remove the optode copies, show what was shown before."""
        for layer in self._display_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._display_layers = []
        if self._shown_before:
            shown = {id(unwrap(layer)) for layer in self._shown_before}
            for layer in self.viewer.layers:
                layer.visible = id(unwrap(layer)) in shown
                show_name(layer, False)
                _colorbar(layer, False)
            self._shown_before = []
        if self._margins is not None:
            self.viewer.dims.margin_left, self.viewer.dims.margin_right = self._margins
            self._margins = None
        gr = grid(self.viewer)
        gr.enabled, gr.stride = False, 1
        self._update_view_buttons()

    def _update_view_buttons(self) -> None:
        self.beside_btn.setEnabled(bool(self.output_layers))
        self.single_btn.setEnabled(bool(self._display_layers))

    # ------------------------------------------------------------------ training data
    def _training_box(self) -> QGroupBox:
        box = QGroupBox("Training data (then train in the Train panel)")
        form = QFormLayout(box)
        self.sim_folder = PathPicker(folder=True, placeholder="a new or partly simulated folder")
        self.sim_n = QSpinBox()
        self.sim_n.setRange(1, 100_000)
        self.sim_n.setValue(200)
        self.sim_n.setToolTip("Cases to simulate (phantoms with their noise-free boundary data; noise is drawn "
                              "while training). Complete cases already in the folder are kept.")
        self.sim_grid = QComboBox()
        for n in GRIDS:
            self.sim_grid.addItem(f"{n}³ ({64 / n:g} mm voxels)", n)
        self.sim_grid.setCurrentIndex(GRIDS.index(32))
        row = QHBoxLayout()
        self.sim_btn, self.sim_stop_btn = QPushButton("Simulate"), QPushButton("Stop")
        self.train_btn = QPushButton("Train on them…")
        self.train_btn.setToolTip("Open the Train panel with task NIR-DOT and this folder")
        self.sim_btn.clicked.connect(self.simulate)
        self.sim_stop_btn.clicked.connect(self.stop_simulation)
        self.train_btn.clicked.connect(self.open_train_panel)
        for b in (self.sim_btn, self.sim_stop_btn, self.train_btn):
            row.addWidget(b)
        self.sim_progress = QProgressBar()
        self.sim_progress.setFormat("%v of %m cases")
        self.sim_status = StatusLine("")
        form.addRow("Folder", self.sim_folder)
        form.addRow("Cases", self.sim_n)
        form.addRow("Grid", self.sim_grid)
        form.addRow(row)
        form.addRow(self.sim_progress)
        form.addRow(self.sim_status)
        self._update_sim_buttons()
        return box

    def simulate(self) -> None:
        if self.sim_worker is not None:
            return
        folder = self.sim_folder.text()
        if not folder:
            self._fail("Choose a folder for the simulated cases", self.sim_status)
            return
        self.cases = None
        self.sim_control = control = Control()
        self.sim_worker = w = simulate_worker(str(Path(folder).expanduser()), self.sim_n.value(),
                                              self.sim_grid.currentData(), control=control)
        control.worker = w
        w.yielded.connect(self._sim_event)
        w.returned.connect(self._sim_done)
        w.errored.connect(self._sim_error)  # bound methods only: a finished worker must not keep the panel alive
        w.finished.connect(self._sim_finished)
        self.sim_status.info("Simulating (one forward solve per case and frequency)…")
        w.start()
        self.watch_for_close()
        self._update_sim_buttons()

    def stop_simulation(self) -> None:
        if self.sim_control is not None:
            self.sim_control.stop()
            self.sim_status.info("Stopping after the current case (complete cases are kept)…")

    def _sim_event(self, item) -> None:
        if isinstance(item, Progress):
            self.sim_progress.setMaximum(item.total)
            self.sim_progress.setValue(item.done)

    def _sim_done(self, dirs) -> None:
        if dirs is None:
            self.sim_status.info("Stopped: the complete cases stay; Simulate again to go on.")
            return
        self.cases = [str(d) for d in dirs]
        self.sim_status.info(f"{len(dirs)} cases in {self.sim_folder.text()}: press 'Train on them…' "
                             "(the Train panel), then 'From Train panel' above.")

    def _sim_error(self, exc: BaseException) -> None:
        report_failure(self.sim_status, "Simulation", exc)

    def _sim_finished(self) -> None:
        self.sim_worker = None
        self._update_sim_buttons()

    def _update_sim_buttons(self) -> None:
        running = self.sim_worker is not None
        self.sim_btn.setEnabled(not running)
        self.sim_stop_btn.setEnabled(running)
        for w in (self.sim_folder, self.sim_n, self.sim_grid):
            w.setEnabled(not running)

    def folder_grid(self) -> int:
        """The grid of the cases in the folder (its dataset.json), else the one chosen here."""
        import json

        manifest = Path(self.sim_folder.text()).expanduser() / "dataset.json"
        try:
            return int(json.loads(manifest.read_text())["geometry"]["grid"])
        except (OSError, ValueError, KeyError, TypeError):
            return int(self.sim_grid.currentData())

    def open_train_panel(self):
        """The Train panel, set to this task, the simulated folder and its grid (returns it)."""
        _, train = self.viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
        train = unwrap(train)
        index = train.task_combo.findData("dot")
        if index >= 0 and not train.is_running():
            train.task_combo.setCurrentIndex(index)
            if train.data_dir is not None and self.sim_folder.text():
                train.data_dir.setText(self.sim_folder.text())
            train.task_options = {"grid": self.folder_grid()}  # options.grid must be the data's grid
        return train

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, wait: bool = False) -> None:
        if self.sim_control is not None:
            self.sim_control.stop()
        super().shutdown(wait)

    def _fail(self, message: str, status: Optional[StatusLine] = None) -> None:
        (status or self.status).error(message)
        show_error_notification(message)


def _colorbar(layer, on: bool) -> None:
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


def _output_role() -> str:
    from workbench.tasks import get_task

    return get_task("dot").view.output_role
