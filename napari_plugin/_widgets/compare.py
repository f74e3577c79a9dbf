"""Compare panel: reconstruction vs reference (and noisy input, a baseline) side by side.

napari's grid mode links slicing and zoom (one camera, one set of sliders), so
every layer shows the same diffusion volume. The panel adds a difference map and
a per-volume table of PSNR and SSIM (``workbench.metrics``, inside the mask if
one is chosen) that follows the volume slider. Baselines (MP-PCA, Patch2Self,
NLMeans) are computed with ``workbench.baselines.run_baseline`` in a worker.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel, QPushButton,
    QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from napari_plugin._layers import (
    add_or_update_image, axial_view, current_volume, derived_kwargs, difference_colormap, fit_view_soon, grid,
    grid_with_names, inputs_fn, is_baseline_layer, is_comparable_layer, is_mask_layer, is_noisy_layer,
    is_reference_layer, is_result_layer, mask_array, show_name, to_layer_order, unwrap,
)
from napari_plugin._widgets._common import (
    FollowsVolume, LayerCombo, StatusLine, distinct_layers, outer_layout, report_failure, show_error_notification,
)

BASELINES = [("MP-PCA", "mppca"), ("Patch2Self", "patch2self"), ("Non-local means", "nlmeans")]
DIFF_PREFIX = "difference"


class CompareWidget(FollowsVolume, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.baseline_worker = None
        self.metrics_worker = None
        self._metrics_pending = False
        self._range_cache: dict = {}
        self.metrics: dict[str, tuple[float, float]] = {}
        self.metrics_volume: Optional[int] = None
        self.diff_layer = None
        self.active = False

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.recon = LayerCombo(self.viewer, is_comparable_layer, prefer=is_result_layer)
        self.reference = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_reference_layer)
        self.noisy = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_noisy_layer)
        self.baseline = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_baseline_layer)
        self.mask = LayerCombo(self.viewer, is_mask_layer, allow_none=True, none_text="(whole image)",
                               prefer=lambda layer: type(unwrap(layer)).__name__ == "Labels")
        form.addRow("Reconstruction", self.recon)
        form.addRow("Reference (ground truth)", self.reference)
        form.addRow("Input (noisy, LR)", self.noisy)
        form.addRow("Baseline result", self.baseline)
        form.addRow("Metrics inside", self.mask)
        root.addLayout(form)

        box = QGroupBox("Compute a baseline from the noisy input")
        row = QHBoxLayout(box)
        self.method = QComboBox()
        for label, key in BASELINES:
            self.method.addItem(label, key)
        self.baseline_btn = QPushButton("Compute baseline")
        self.baseline_btn.clicked.connect(self.compute_baseline)
        row.addWidget(self.method, 1)
        row.addWidget(self.baseline_btn)
        root.addWidget(box)

        row = QHBoxLayout()
        self.show_btn = QPushButton("Show side by side")
        self.show_btn.setToolTip("Grid view with linked slicing and zoom, a difference map and the metrics table")
        self.show_btn.clicked.connect(self.show_side_by_side)
        self.single_btn = QPushButton("Back to single view")
        self.single_btn.clicked.connect(self.single_view)
        row.addWidget(self.show_btn)
        row.addWidget(self.single_btn)
        root.addLayout(row)

        self.table_title = QLabel("Metrics for the volume on screen")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["PSNR (dB)", "SSIM"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(60)
        self.table.setMaximumHeight(140)
        self.table.setToolTip("Against the reference, for the diffusion volume on screen; data range = the "
                              "reference's maximum inside the mask over all volumes")
        self.status = StatusLine("Choose the layers, then press Show side by side.")
        for w in (self.table_title, self.table, self.status):
            root.addWidget(w)
        root.addStretch(1)
        outer_layout(self, content)
        self.follow_volume()

    # ------------------------------------------------------------------ layers
    def compared_layers(self) -> list:
        return distinct_layers((self.recon, self.reference, self.noisy, self.baseline))

    def show_side_by_side(self) -> None:
        """Grid view of the compared layers plus the difference map; fills the metrics table."""
        recon = self.recon.layer()
        if recon is None:
            self._fail("Choose a reconstruction layer")
            return
        other = self.reference.layer() or self.noisy.layer()
        images = self.compared_layers()
        layers = list(images)
        try:
            if other is not None:
                if other.data.shape != recon.data.shape:
                    raise ValueError(f"'{recon.name}' has shape {recon.data.shape} but '{other.name}' has "
                                     f"{other.data.shape}: compare the same series")
                diff = np.asarray(recon.data, np.float32) - np.asarray(other.data, np.float32)
                limit = float(np.percentile(np.abs(diff), 99.5)) or 1.0
                what = "reference" if self.reference.layer() is not None else "noisy input"
                kwargs = derived_kwargs(recon, f"{DIFF_PREFIX}: {recon.name} − {what}",
                                        {"difference_of": [recon.name, other.name]})
                self.diff_layer = add_or_update_image(self.viewer, diff, kwargs, colormap=difference_colormap(),
                                                      contrast_limits=(-limit, limit))
                layers.append(self.diff_layer)
        except Exception as exc:
            self._fail(str(exc))
            return
        keep = {id(unwrap(layer)) for layer in layers}
        for layer in self.viewer.layers:
            layer.visible = id(unwrap(layer)) in keep
            show_name(layer, False)
        limits = tuple((self.reference.layer() or self.noisy.layer() or recon).contrast_limits)
        for layer in images:
            layer.contrast_limits = limits  # the same grey scale on every image
        for layer in layers:  # napari's grid fills from the bottom of the layer list: reconstruction first
            self.viewer.layers.move(self.viewer.layers.index(layer), len(self.viewer.layers))
        grid_with_names(self.viewer, layers)
        axial_view(self.viewer)
        fit_view_soon(self.viewer)
        self.active = True
        self.status.info("Side by side (reconstruction first): slicing and zoom are linked; the volume slider "
                         "moves every image. Difference: blue = below, red = above the "
                         + ("reference." if self.reference.layer() is not None else "noisy input."))
        self.update_metrics()

    def single_view(self) -> None:
        grid(self.viewer).enabled = False
        for layer in self.viewer.layers:
            show_name(layer, False)
        self.active = False

    # ------------------------------------------------------------------ baseline
    def compute_baseline(self) -> None:
        from napari_plugin._workers import baseline_worker

        if self.baseline_worker is not None:
            return
        noisy = self.noisy.layer()
        try:
            if noisy is None:
                raise ValueError("Choose the noisy input layer first")
            make_inputs = inputs_fn(noisy, self.mask.layer(), need_gradients=True)
        except Exception as exc:
            self._fail(str(exc))
            return
        label, key = self.method.currentText(), self.method.currentData()
        self.baseline_worker = w = baseline_worker(key, make_inputs)
        w.yielded.connect(lambda item: self.status.info(getattr(item, "text", str(item))))
        w.returned.connect(lambda out, n=noisy, lab=label: self._baseline_done(n, lab, out))
        w.errored.connect(lambda exc: report_failure(self.status, "Baseline", exc))
        w.finished.connect(self._baseline_finished)
        self.baseline_btn.setEnabled(False)
        w.start()

    def _baseline_done(self, noisy, label: str, out: np.ndarray) -> None:
        kwargs = derived_kwargs(noisy, f"{noisy.name} {label}", {"baseline": label})
        layer = add_or_update_image(self.viewer, to_layer_order(out), kwargs,
                                    contrast_limits=tuple(noisy.contrast_limits))
        self.baseline.set_layer(layer.name)
        self.status.info(f"{label} done: layer '{layer.name}'.")
        if self.active:
            self.update_metrics()

    def _baseline_finished(self) -> None:
        self.baseline_worker = None
        self.baseline_btn.setEnabled(True)

    # ------------------------------------------------------------------ metrics
    def _volume_changed(self, *_):
        if self.active:
            self.update_metrics()

    def _data_range(self, ref, mask) -> float:
        key = (id(unwrap(ref)), id(ref.data), None if mask is None else hash(mask.tobytes()))
        if key not in self._range_cache:
            data = np.asarray(ref.data)
            inside = data if mask is None else (data[:, mask] if data.ndim == 4 else data[mask])
            self._range_cache = {key: float(np.max(inside))}
        return self._range_cache[key]

    def update_metrics(self) -> None:
        """PSNR/SSIM of each compared layer against the reference, for the volume on screen (in a worker)."""
        from napari_plugin._workers import metrics_worker

        ref = self.reference.layer()
        if ref is None:
            self.table.setRowCount(0)
            self.table_title.setText("Choose a reference to see PSNR and SSIM")
            return
        if self.metrics_worker is not None:
            self._metrics_pending = True
            return
        series = np.ndim(ref.data) == 4
        j = current_volume(self.viewer, ref) if series else 0
        pick = (lambda data: np.asarray(data[j])) if series else np.asarray
        self.off_grid = []
        try:
            mask = mask_array(self.mask.layer(), ref.data.shape[-3:])
            rows = {}
            for layer in (self.recon.layer(), self.noisy.layer(), self.baseline.layer()):
                if layer is not None and unwrap(layer) is not unwrap(ref) and layer.name not in rows:
                    if layer.data.shape != ref.data.shape:
                        if np.ndim(layer.data) == 3 and layer is not self.recon.layer():
                            self.off_grid.append(layer.name)  # e.g. the LR input: another grid, not scored
                            continue
                        raise ValueError(f"'{layer.name}' and the reference differ in shape")
                    rows[layer.name] = pick(layer.data)
            data_range = self._data_range(ref, mask)
        except Exception as exc:
            self._fail(str(exc))
            return
        self.metrics_worker = w = metrics_worker(rows, pick(ref.data), mask, data_range, j)
        w.returned.connect(self._show_metrics)
        w.errored.connect(lambda exc: report_failure(self.status, "Metrics", exc))
        w.finished.connect(self._metrics_finished)
        w.start()

    def _show_metrics(self, result) -> None:
        j, values = result
        self.metrics, self.metrics_volume = values, j
        ref = self.reference.layer()
        bvals = None if ref is None else ref.metadata.get("bvals")
        bval = f" (b = {float(bvals[j]):g} s/mm²)" if bvals is not None and j < len(bvals) else ""
        where = "inside the mask" if self.mask.layer() is not None else "whole image"
        what = f"Volume {j}{bval}" if ref is not None and np.ndim(ref.data) == 4 else "Whole volume"
        off = f"; not scored (another grid): {', '.join(self.off_grid)}" if getattr(self, "off_grid", None) else ""
        self.table_title.setText(f"{what}, vs the reference, {where}{off}")
        self.table.setRowCount(len(values))
        self.table.setVerticalHeaderLabels(list(values))
        for row, (p, s) in enumerate(values.values()):
            self.table.setItem(row, 0, QTableWidgetItem(f"{p:.2f}"))
            self.table.setItem(row, 1, QTableWidgetItem(f"{s:.4f}"))

    def _metrics_finished(self) -> None:
        self.metrics_worker = None
        if self._metrics_pending:
            self._metrics_pending = False
            self.update_metrics()

    def _fail(self, message: str) -> None:
        self.status.error(message)
        show_error_notification(message)
