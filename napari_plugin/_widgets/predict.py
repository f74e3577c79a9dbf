"""Predict panel: apply a task's network (a checkpoint, or the one shipped with the task) to an image layer.

Task-generic: the tasks offered are those with :meth:`~workbench.tasks.base.Task.predict_array`;
their choices (``Task.predict_choices``, e.g. the model and the scale) become combo boxes,
enabled only where they apply (``Task.predict_choice_requires``). The result lands on its
own grid (scale and translate from the affine the task returns), so an x4 super-resolved
volume overlays its LR input and HR reference in world coordinates. Further outputs
(:class:`~workbench.tasks.base.ExtraOutput`) become layers too: an overlay (SR3's
uncertainty map, fading to transparent where it is low) and a stack on a slider (SR3's
K samples, to see what varies from sample to sample).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QVBoxLayout, QWidget

from napari_plugin._layers import add_or_update_image, dwi_metadata, is_volume_image, layer_affine, spatial_kwargs
from napari_plugin._widgets._common import (
    LayerCombo, PathPicker, outer_layout, report_failure, show_error_notification,
)
from napari_plugin._widgets._lifecycle import WorkerPanel


def _predictable_tasks() -> list:
    from workbench.tasks import TASKS
    from workbench.tasks.base import Task

    return [t for t in TASKS.values() if type(t).predict_array is not Task.predict_array]


class PredictWidget(WorkerPanel, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.output_layer = self.attention_layer = None
        self.extra_layers: list = []
        self.last_error: Optional[BaseException] = None
        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.task_combo = QComboBox()
        self.tasks = {t.label: t for t in _predictable_tasks()}
        self.task_combo.addItems(list(self.tasks))
        self.layer_combo = LayerCombo(self.viewer, is_volume_image,
                                      prefer=lambda l: l.metadata.get("role") == self.task().view.input_role)
        self.checkpoint = PathPicker(file_filter="Checkpoints (*.pt)",
                                     placeholder="empty: the network shipped with the workbench")
        form.addRow("Task", self.task_combo)
        form.addRow("Input layer", self.layer_combo)
        form.addRow("Checkpoint", self.checkpoint)
        self.attention = QCheckBox("Also show the network's attention (on the input's grid)")
        self.attention.setToolTip("The CBAM spatial attention of the network, as an overlay that fades to "
                                  "transparent where attention is low")
        form.addRow(self.attention)
        self.choice_boxes: dict[str, QComboBox] = {}
        self.choice_form = form
        root.addLayout(form)
        self.task_combo.currentTextChanged.connect(self._task_changed)
        self._task_changed()
        self.add_run_controls(root, "Predict", "Stop", "%v of %m",
                              "Choose a layer (e.g. File > Open Sample > soil), then press Predict.")
        outer_layout(self, content)

    def task(self):
        return self.tasks[self.task_combo.currentText()]

    def _task_changed(self, *_):
        from workbench.tasks.base import Task

        has_attention = type(self.task()).attention_array is not Task.attention_array
        self.attention.setEnabled(has_attention)
        if not has_attention:
            self.attention.setChecked(False)
        for name, box in list(self.choice_boxes.items()):
            self.choice_form.removeRow(box)
        self.choice_boxes = {}
        for name, values in self.task().predict_choices.items():
            box = QComboBox()
            box.addItems(["default" if v is None else str(v) for v in values])
            box.currentIndexChanged.connect(self._update_choices)
            self.choice_form.addRow(name.capitalize(), box)
            self.choice_boxes[name] = box
        self._update_choices()

    def _update_choices(self, *_) -> None:
        """Enable a choice only where it applies (e.g. samples and steps with the SR3 model)."""
        values = self.choices()
        for name, (other, wanted) in self.task().predict_choice_requires.items():
            if name in self.choice_boxes:
                box = self.choice_boxes[name]
                box.setEnabled(values.get(other) == wanted)
                box.setToolTip("" if box.isEnabled() else f"only with {other} {wanted}")

    def choices(self) -> dict:
        task = self.task()
        return {name: task.predict_choices[name][box.currentIndex()] for name, box in self.choice_boxes.items()}

    def set_choice(self, name: str, value) -> None:
        self.choice_boxes[name].setCurrentIndex(list(self.task().predict_choices[name]).index(value))

    def run(self) -> None:
        from napari_plugin._workers import Control, predict_worker

        if self.worker is not None:
            return
        layer = self.layer_combo.layer()
        if layer is None:
            msg = "Open a 3D image first (File > Open Sample has soil and chest-CT samples)"
            self.status.error(msg)
            show_error_notification(msg)
            return
        self._input, self.last_error = layer, None
        self.progress.setValue(0)
        control = Control()
        self.start_worker(predict_worker(self.task().name, np.asarray(layer.data, np.float32), layer_affine(layer),
                                         self.choices(), self.checkpoint.text() or None, control=control,
                                         attention=self.attention.isChecked()), control)

    def _on_returned(self, out) -> None:
        if out is None:
            self.status.info("Stopped: no layer was added.")
            return
        array, affine, attention, extras = out
        task, layer = self.task(), self._input
        spec = {s.role: s for s in task.view.layers}[task.view.output_role]
        name = f"{layer.name} -> {spec.label}"
        source = self.checkpoint.text() or "shipped network"
        meta = {**dwi_metadata(affine, is_4d=False), "role": task.view.output_role, "task": task.name,
                "input_layer": layer.name, "model": source}
        kwargs = {"name": name, "axis_labels": ("x", "y", "z"), **spatial_kwargs(affine, 3), "metadata": meta}
        lo, hi = (float(v) for v in np.percentile(array, [0.5, 99.5]))  # its own range: the LR's is narrower
        self.output_layer = add_or_update_image(self.viewer, array, kwargs, contrast_limits=(lo, max(hi, lo + 1e-6)))
        note = ""
        if attention is not None and attention[0] is not None:
            note = f" Attention overlay: '{self._show_attention(layer, *attention).name}'."
        self.extra_layers = [self._show_extra(name, extra, affine, meta) for extra in extras.values()]
        if self.extra_layers:
            note += " Also: " + ", ".join(f"'{l.name}'" for l in self.extra_layers) + "."
        self.status.info(f"Done: new layer '{name}' {array.shape} ({source}).{note}")

    def _show_extra(self, name, extra, affine, meta):
        """An overlay on the result's grid, or a (K, X, Y, Z) stack with K on a slider."""
        from napari_plugin._widgets.attention import fading_colormap, overlay_limits

        data = np.asarray(extra.data, np.float32)
        meta = {**meta, "role": extra.role or extra.kind}
        if extra.kind == "stack":
            kwargs = {"name": f"{name}: {extra.label}", "axis_labels": ("sample", "x", "y", "z"),
                      **spatial_kwargs(affine, 4), "metadata": meta}
            lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
            return add_or_update_image(self.viewer, data, kwargs, contrast_limits=(lo, max(hi, lo + 1e-6)),
                                       visible=False)
        kwargs = {"name": f"{name}: {extra.label}", "axis_labels": ("x", "y", "z"), **spatial_kwargs(affine, 3),
                  "metadata": meta}
        return add_or_update_image(self.viewer, data, kwargs, colormap=fading_colormap("magma"), opacity=0.8,
                                   blending="translucent", contrast_limits=overlay_limits(data))

    def _show_attention(self, layer, att, affine):
        from napari_plugin._widgets.attention import PREFIX, fading_colormap, overlay_limits

        kwargs = {"name": f"{PREFIX}: {layer.name}", "axis_labels": ("x", "y", "z"), **spatial_kwargs(affine, 3),
                  "metadata": {**dwi_metadata(affine, is_4d=False), "attention_block": "attention",
                               "input_layer": layer.name}}
        self.attention_layer = add_or_update_image(self.viewer, att, kwargs, colormap=fading_colormap("inferno"),
                                                   opacity=0.7, blending="translucent",
                                                   contrast_limits=overlay_limits(att))
        return self.attention_layer

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        report_failure(self.status, "Prediction", exc)
