"""Denoise panel: apply the model being trained (a snapshot of it) or a checkpoint file to a DWI layer.

The result is a new layer with the input's scale, translate and metadata (so the
writer saves it with the input's affine and header) plus the held-out quality
estimate of ``Denoiser.denoise``.
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_plugin._layers import add_or_update_image, derived_kwargs, inputs_fn, to_layer_order
from napari_plugin._widgets._common import (
    outer_layout, report_failure, series_mask_and_model, show_error_notification,
)
from napari_plugin._widgets._lifecycle import WorkerPanel
from workbench.api import estimate_warning
from workbench.error_estimate import describe


class DenoiseWidget(WorkerPanel, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.control = None
        self.output_layer = None
        self.last_error: Optional[BaseException] = None

        content = QWidget()
        root = QVBoxLayout(content)
        series_mask_and_model(self, root)
        self.add_run_controls(root, "Denoise", "Cancel", "%v of %m (volumes, then MP-PCA planes)",
                              "Choose a layer and a model, then press Denoise.")
        outer_layout(self, content)

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
        control = Control()
        self.start_worker(denoise_worker(make_denoiser, make_inputs, control=control), control)

    def _on_returned(self, out) -> None:
        if out is None:
            self.status.info("Cancelled.")
            return
        layer = self._input
        extra = {"denoise": {"heldout_mse": float(out.heldout_mse), "sigma_upper": float(out.sigma_upper),
                             "sigma": out.sigma, "est_rmse_vs_clean": out.est_rmse,
                             "est_rmse_per_shell": out.est_per_shell,
                             "blend_weights_mean": None if out.blend_weights is None
                             else out.blend_weights.mean(axis=0).round(4).tolist(),
                             "model": self._source_text, "input_layer": layer.name}}
        kwargs = derived_kwargs(layer, f"{layer.name} denoised", extra)
        kwargs["axis_labels"] = tuple(layer.axis_labels)
        self.output_layer = add_or_update_image(self.viewer, to_layer_order(out.denoised), kwargs,
                                                contrast_limits=tuple(layer.contrast_limits))
        quality = ("" if out.est_rmse is None else
                   f" Noise sigma {out.sigma:.3g}; estimated error to the clean signal {out.est_rmse:.3g}"
                   + ("" if not out.est_per_shell else f" (per shell: {describe(out.est_per_shell)})") + ".")
        warning = estimate_warning(out.est_per_shell)
        if warning:
            quality += f" {warning}."
        self.status.info(f"Done: new layer '{kwargs['name']}'. Held-out error {out.heldout_mse:.4g} (each "
                         f"volume predicted without seeing it), so the noise level is at most "
                         f"{out.sigma_upper:.3g} signal units.{quality}")

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        report_failure(self.status, "Denoising", exc)

    def shutdown(self, wait: bool = False) -> None:
        self.cancel()  # the core stops within a volume; nothing to wait for
