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

from pathlib import Path
from typing import Any, Optional

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_plugin import _session
from napari_plugin._layers import (
    add_or_update_image, axial_view, dwi_metadata, fit_view_soon, grid, show_name, spatial_kwargs, unwrap,
)
from napari_plugin._widgets._common import LayerCombo, PathPicker, StatusLine, outer_layout, report_failure, \
    show_error_notification
from napari_plugin._widgets._dot_plot import BoundaryPlot
from napari_plugin._widgets._dot_training_data import TrainingDataBox
from napari_plugin._widgets._dot_work import (
    CHANNELS, FILE_TEXT, METHODS, OPTODE_DISPLAY, DotInput, DotResult, case_layers, format_metrics, inclusion_slice,
    is_measurement_layer, layer_measurements, network_output_role, reconstruct_worker, show_colorbar,
)
from napari_plugin._widgets._lifecycle import WorkerPanel
from napari_plugin._workers import Control


class DotWidget(TrainingDataBox, WorkerPanel, QWidget):
    """The NIR-DOT panel (see the module's docstring)."""

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
        role = network_output_role() if result.method == "network" else result.method
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
            show_colorbar(image, True)
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
                show_colorbar(layer, False)
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

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self, wait: bool = False) -> None:
        if self.sim_control is not None:
            self.sim_control.stop()
        super().shutdown(wait)

    def _fail(self, message: str, status: Optional[StatusLine] = None) -> None:
        (status or self.status).error(message)
        show_error_notification(message)
