"""Denoise panel: apply the model being trained (a snapshot of it) or a checkpoint file to a DWI layer.

The result is a new layer with the input's scale, translate and metadata (so the
writer saves it with the input's affine and header) plus the held-out quality
estimate of ``Denoiser.denoise``.
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_plugin._layers import (
    add_or_update_image, derived_kwargs, inputs_fn, is_input_layer, is_mask_layer, is_series_layer, to_layer_order,
)
from napari_plugin._widgets._common import (
    LayerCombo, ModelSource, StatusLine, outer_layout, report_failure, show_error_notification,
)
from napari_plugin._widgets._lifecycle import StopsOnClose


class DenoiseWidget(StopsOnClose, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.control = None
        self.output_layer = None
        self.last_error: Optional[BaseException] = None

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.layer_combo = LayerCombo(self.viewer, is_series_layer, prefer=is_input_layer)
        self.mask_combo = LayerCombo(self.viewer, is_mask_layer, allow_none=True,
                                     none_text="(automatic brain mask)")
        form.addRow("Image layer", self.layer_combo)
        form.addRow("Brain mask", self.mask_combo)
        root.addLayout(form)
        box = QGroupBox("Model")
        QVBoxLayout(box).addWidget(source := ModelSource(self.viewer))
        self.source = source
        root.addWidget(box)
        row = QHBoxLayout()
        self.run_btn, self.cancel_btn = QPushButton("Denoise"), QPushButton("Cancel")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setFormat("volume %v of %m")
        self.status = StatusLine("Choose a layer and a model, then press Denoise.")
        root.addWidget(self.progress)
        root.addWidget(self.status)
        root.addStretch(1)
        outer_layout(self, content)
        self._update_buttons()

    def run(self) -> None:
        from napari_plugin._workers import Control, denoise_worker

        if self.worker is not None:
            return
        try:
            layer = self.layer_combo.layer()
            if layer is None:
                raise ValueError("Open a 4D DWI image first")
            make_denoiser = self.source.factory()
            make_inputs = inputs_fn(layer, self.mask_combo.layer())
        except Exception as exc:
            self.last_error = exc
            self.status.error(str(exc))
            show_error_notification(str(exc))
            return
        self._input = layer
        self._source_text = ("checkpoint " + self.source.checkpoint.text()) if self.source.from_file.isChecked() \
            else "model being trained"
        self.last_error = None
        self.progress.setMaximum(layer.data.shape[0])
        self.progress.setValue(0)
        self.control = Control()
        self.worker = denoise_worker(make_denoiser, make_inputs, control=self.control)
        self.control.worker = self.worker
        self.worker.yielded.connect(self._on_yield)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        self._update_buttons()

    def cancel(self) -> None:
        if self.control is not None:
            self.control.stop()

    def _on_yield(self, item) -> None:
        from napari_plugin._workers import Progress, Status

        if isinstance(item, Progress):
            self.progress.setMaximum(item.total)
            self.progress.setValue(item.done)
        elif isinstance(item, Status):
            self.status.info(item.text)

    def _on_returned(self, out) -> None:
        if out is None:
            self.status.info("Cancelled.")
            return
        layer = self._input
        extra = {"denoise": {"heldout_mse": float(out.heldout_mse), "sigma_upper": float(out.sigma_upper),
                             "sigma": out.sigma, "est_rmse_vs_clean": out.est_rmse,
                             "blend_weights_mean": None if out.blend_weights is None
                             else out.blend_weights.mean(axis=0).round(4).tolist(),
                             "model": self._source_text, "input_layer": layer.name}}
        kwargs = derived_kwargs(layer, f"{layer.name} denoised", extra)
        kwargs["axis_labels"] = tuple(layer.axis_labels)
        self.output_layer = add_or_update_image(self.viewer, to_layer_order(out.denoised), kwargs,
                                                contrast_limits=tuple(layer.contrast_limits))
        quality = ("" if out.est_rmse is None else
                   f" Noise sigma {out.sigma:.3g}; estimated error to the clean signal {out.est_rmse:.3g}.")
        self.status.info(f"Done: new layer '{kwargs['name']}'. Held-out error {out.heldout_mse:.4g} (each "
                         f"volume predicted without seeing it), so the noise level is at most "
                         f"{out.sigma_upper:.3g} signal units.{quality}")

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        report_failure(self.status, "Denoising", exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.run_btn.setEnabled(self.worker is None)
        self.cancel_btn.setEnabled(self.worker is not None)

    def shutdown(self, wait: bool = False) -> None:
        self.cancel()
