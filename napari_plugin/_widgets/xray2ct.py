"""CT from two X-rays panel: reconstruct a CT volume from an AP and a lateral radiograph, see how well it fits.

Input: two 2D image layers holding line integrals (the sample's ``AP X-ray`` and ``lateral X-ray``,
metadata ``role`` ``"xray_ap"`` / ``"xray_lat"`` and their ``geometry``; or any two pictures of the
same size, then the built-in parallel-beam geometry). Methods: the stage-1 network (64³), the network
followed by the stage-2 refinement (128³), back-projection, the atlas and ridge regression
(:func:`workbench.tasks.xray2ct.workflow.reconstruct`), run in a worker
(:mod:`napari_plugin._widgets._xray2ct_work`).

Results: ``"<method> CT"`` on the volume's grid (HU, window -1000..1000, ``role`` ``"ct"``, so Compare,
Edge maps and the review preselect it against the reference), the re-projection residuals (the result's
X-rays minus the input X-rays) as two 2D layers below the X-rays, and with a reference a difference
layer and a metrics line (:func:`workbench.tasks.xray2ct.metrics.evaluate_ct`).

Views: "X-rays beside the CT" shows a sagittal slice (head up, through the lungs) between the two X-rays
and their residuals, with titles; "3D view" renders the CT as an attenuated maximum intensity projection
with the two X-rays standing where their detectors are (behind the patient and on the patient's left).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget,
)

from napari_plugin._layers import (
    add_or_update_image, difference_colormap, dwi_metadata, fit_view_soon, fit_visible, is_reference_layer,
    is_volume_image, spatial_kwargs, unwrap,
)
from napari_plugin._widgets._common import LayerCombo, PathPicker, outer_layout, show_error_notification
from napari_plugin._widgets._lifecycle import WorkerPanel
from napari_plugin._widgets._xray2ct_work import (
    BASELINES, DISPLAY_ROLE, HU_LIMITS, METHOD_TIPS, METHODS, NAME_OF, VIEW_NAMES, XrayResult, format_metrics, has_role,
    display_geometry, is_xray_layer, make_input, one_line, reconstruct_worker, reference_place, residual_placement,
    sagittal_slice, symmetric_limits, titles, wall,
)
from napari_plugin._workers import Control

SHOWN = (("ct", "the reconstruction"), ("reference", "the reference"), ("difference", "the difference"))
TITLES = "titles: X-rays beside the CT"
#: the 3D camera looks from the front, the patient's right and above (world X, Y, Z), so both X-rays stand behind
VIEW_3D, UP_3D, ZOOM_3D = (1.0, -1.0, -0.6), (0.0, 0.0, 1.0), 0.7
ATTENUATION_3D = 0.02


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class Xray2CtWidget(WorkerPanel, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: Optional[XrayResult] = None
        self.last_error: Optional[BaseException] = None
        self.ct_layer = self.difference_layer = None
        self.residual_layers: dict[str, Any] = {}
        self.inputs_used: tuple = ()
        self._cache: dict = {}
        self._walls: list = []
        self._before_3d: Optional[dict] = None

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.ap_combo = LayerCombo(self.viewer, is_xray_layer, allow_none=True, prefer=has_role("xray_ap"))
        self.lat_combo = LayerCombo(self.viewer, is_xray_layer, allow_none=True, prefer=has_role("xray_lat"))
        for combo, view in ((self.ap_combo, "AP (anteroposterior)"), (self.lat_combo, "lateral")):
            combo.setToolTip(f"The {view} X-ray: a 2D layer of line integrals (-log(I/I0)); "
                             "File > Open Sample > Biplanar X-ray phantom has both")
        self.method = QComboBox()
        for i, (key, label, _) in enumerate(METHODS):
            self.method.addItem(label, key)
            self.method.setItemData(i, METHOD_TIPS[key], Qt.ItemDataRole.ToolTipRole)
        self.stage1 = PathPicker(file_filter="Checkpoints (*.pt)", placeholder="empty: the shipped stage-1 network")
        self.stage2 = PathPicker(file_filter="Checkpoints (*.pt)", placeholder="empty: the shipped stage-2 network")
        self.linear = PathPicker(file_filter="Linear models (*.npz)", placeholder="empty: the shipped atlas/ridge")
        self.stage1.setToolTip("best.pt of `workbench xray2ct train` (stage 1)")
        self.stage2.setToolTip("best.pt of `workbench xray2ct train --stage 2` (the sr network, x2)")
        self.linear.setToolTip("linear.npz of `workbench xray2ct train --stage linear`")
        self.reference = LayerCombo(self.viewer, is_volume_image, allow_none=True, prefer=is_reference_layer)
        self.reference.setToolTip("A CT (HU) on the result's grid for the metrics and the difference (optional)")
        self.viewer.layers.events.inserted.connect(self._layer_added)
        form.addRow("AP X-ray", self.ap_combo)
        form.addRow("Lateral X-ray", self.lat_combo)
        form.addRow("Method", self.method)
        form.addRow("Stage-1 checkpoint", self.stage1)
        form.addRow("Stage-2 checkpoint", self.stage2)
        form.addRow("Atlas/ridge model", self.linear)
        form.addRow("Reference CT", self.reference)
        root.addLayout(form)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()

        run_box = QVBoxLayout()
        self.add_run_controls(run_box, "Reconstruct", "Stop", "stage %v of %m",
                              "Open the sample (File > Open Sample > Biplanar X-ray phantom), choose a method, "
                              "then press Reconstruct.")
        root.addLayout(run_box)

        box = QGroupBox("Result")
        lay = QVBoxLayout(box)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setToolTip("PSNR and SSIM on the HU window -1000..1000, Dice of the lungs (< -400 HU "
                                      "inside the body) and bone (> 250 HU), mean |X-rays of the result - input "
                                      "X-rays| / mean input (workbench.tasks.xray2ct.metrics)")
        row = QHBoxLayout()
        self.shown = QComboBox()
        for key, label in SHOWN:
            self.shown.addItem(label, key)
        self.shown.setToolTip("The volume shown between the X-rays (and in the 3D view)")
        self.shown.currentIndexChanged.connect(self._shown_changed)
        self.beside_btn = QPushButton("X-rays beside the CT")
        self.beside_btn.setToolTip("Sagittal slice (head up) between the AP and lateral X-rays, their "
                                   "re-projection residuals below them")
        self.beside_btn.clicked.connect(self.show_beside)
        self.view3d_btn = QPushButton("3D view")
        self.view3d_btn.setCheckable(True)
        self.view3d_btn.setToolTip("The CT as an (attenuated) maximum intensity projection, the X-rays where their "
                                   "detectors stand")
        self.view3d_btn.toggled.connect(self.set_3d)
        row.addWidget(self.beside_btn)
        row.addWidget(self.view3d_btn)
        shown_row = QFormLayout()
        shown_row.addRow("Show", self.shown)
        lay.addWidget(self.metrics_label)
        lay.addLayout(shown_row)
        lay.addLayout(row)
        root.addWidget(box)
        root.addStretch(1)
        outer_layout(self, content)

    # ------------------------------------------------------------------ inputs
    def method_key(self) -> str:
        return self.method.currentData()

    def set_method(self, key: str) -> None:
        self.method.setCurrentIndex(self.method.findData(key))

    def _method_changed(self, *_) -> None:
        key = self.method_key()
        self.stage1.setEnabled(key.startswith("network"))
        self.stage2.setEnabled(key == "network+refine")
        self.linear.setEnabled(key in ("atlas", "ridge"))

    def _layer_added(self, event) -> None:
        """An X-ray or reference opened after the panel: chosen where nothing is (e.g. the sample opened later)."""
        layer = getattr(event, "value", None)
        try:
            for combo, role in ((self.ap_combo, "xray_ap"), (self.lat_combo, "xray_lat"),
                                (self.reference, "reference")):
                if layer is not None and combo.layer() is None and layer.metadata.get("role") == role:
                    combo.set_layer(layer.name)
        except RuntimeError:  # the panel's widgets are gone
            self.viewer.layers.events.inserted.disconnect(self._layer_added)

    def closeEvent(self, event) -> None:
        try:
            self.viewer.layers.events.inserted.disconnect(self._layer_added)
        except (TypeError, ValueError, RuntimeError):
            pass
        super().closeEvent(event)

    def run(self) -> None:
        if self.worker is not None:
            return
        ap, lat = self.ap_combo.layer(), self.lat_combo.layer()
        try:
            inp = make_input(ap, lat, self.reference.layer())
        except ValueError as exc:
            self._fail(one_line(exc))
            return
        self.inputs_used, self.last_error = (ap, lat), None
        self.progress.setRange(0, 4)
        self.progress.setValue(0)
        paths = {"stage1": self.stage1.text() or None, "stage2": self.stage2.text() or None,
                 "linear": self.linear.text() or None}
        control = Control()
        self.start_worker(reconstruct_worker(self.method_key(), inp, paths, self._cache, control=control), control)
        self.watch_for_close()

    def cancel(self) -> None:
        super().cancel()
        try:
            if self.worker is not None:
                self.status.info("Stopping after the current stage…")
        except RuntimeError:  # the panel is being deleted
            pass

    # ------------------------------------------------------------------ results
    def _on_returned(self, result: Optional[XrayResult]) -> None:
        if result is None:
            self.status.info("Stopped: no layer was added.")
            return
        self.result = result
        ap, lat = self.inputs_used
        name = f"{NAME_OF[result.method]} CT"
        aff = result.affine
        meta = {**dwi_metadata(aff, is_4d=False), "task": "xray2ct", "role": "ct", "units": "HU",
                "method": result.method, "model": result.model, "input_layers": [ap.name, lat.name],
                "case": ap.metadata.get("case"), "geometry": result.geometry.to_dict()}
        if result.method in BASELINES:
            meta["baseline"] = NAME_OF[result.method]
        if result.difference is not None:
            ref_name = self.reference.currentText()
            place = reference_place(self.viewer.layers, ref_name, result)
            affine = place.pop("affine")
            kwargs = {"name": f"{NAME_OF[result.method]} − reference", "axis_labels": ("x", "y", "z"), **place,
                      "metadata": {**dwi_metadata(affine, is_4d=False), "task": "xray2ct",
                                   "difference_of": [name, ref_name], "units": "HU"}}
            self.difference_layer = self._put(result.difference, kwargs, colormap=difference_colormap(),
                                              contrast_limits=symmetric_limits(result.difference, 1.0), visible=False)
        kwargs = {"name": name, "axis_labels": ("x", "y", "z"), **spatial_kwargs(aff, 3), "metadata": meta}
        self.ct_layer = self._put(result.hu, kwargs, colormap="gray", contrast_limits=HU_LIMITS, visible=True)
        self._add_residuals(result, name, (ap, lat))
        self._place_xrays()
        text = format_metrics(result.metrics)
        self.metrics_label.setText(f"{result.note} {text}".strip())
        shape = "x".join(map(str, result.hu.shape))
        self.status.info(f"Done in {result.seconds:.1f} s ({result.model}): '{name}' ({shape}, HU); residuals "
                         "below the X-rays. Press 'X-rays beside the CT' or '3D view'.")
        self.shown.setCurrentIndex(0)
        if self.view3d_btn.isChecked():
            self._show_3d()

    def _put(self, data: np.ndarray, kwargs: dict, **display):
        """Add the image or replace the data of the layer of that name (its placement follows)."""
        layer = add_or_update_image(self.viewer, data, kwargs, **display)
        layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        return layer

    def _add_residuals(self, result: XrayResult, name: str, inputs) -> None:
        self.residual_layers = {}
        res = result.residual
        limits = symmetric_limits(res, 0.05)
        for k, (view, layer) in enumerate(zip(result.geometry.views, inputs)):
            kwargs = {"name": f"{NAME_OF[result.method]} residual {VIEW_NAMES[view]}", "axis_labels": ("y", "z"),
                      **residual_placement(result.geometry, view, res[k].shape),
                      "metadata": {"task": "xray2ct", "role": f"residual_{'ap' if view == 'ap' else 'lat'}",
                                   "view": view, "units": "line integral", "difference_of": [name, layer.name],
                                   "affine": result.geometry.image_affine(view)}}
            self.residual_layers[view] = self._put(res[k].astype(np.float32), kwargs,
                                                   colormap=difference_colormap(), contrast_limits=limits)

    def _place_xrays(self) -> None:
        """Put the input X-rays beside the volume (a sample's are there already; a picture's may not be)."""
        from napari_plugin._sample_data import xray_placement

        if self.result is None:
            return
        for layer, view in zip(self.inputs_used, self.result.geometry.views):
            if layer in self.viewer.layers:
                where = xray_placement(self.result.geometry, view, layer.data.shape)
                layer.scale, layer.translate = where["scale"], where["translate"]

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        self._fail(f"Reconstruction failed: {one_line(exc)}", repr(exc))

    # ------------------------------------------------------------------ views
    def shown_layer(self):
        """The volume to show: the reconstruction, the reference or the difference (what exists of them)."""
        want = self.shown.currentData()
        ref = self.reference.layer()
        candidates = {"ct": self.ct_layer, "reference": ref, "difference": self.difference_layer}
        for key in (want, "ct", "reference"):
            layer = candidates.get(key)
            if layer is not None and layer in self.viewer.layers:
                return layer
        return None

    def _shown_changed(self, *_) -> None:
        if self._walls:
            self._show_3d()
        elif self._titles() is not None and self._titles().visible:
            self.show_beside()

    def _xray_layers(self) -> list:
        used = [layer for layer in self.inputs_used if layer in self.viewer.layers]
        return used or [c.layer() for c in (self.ap_combo, self.lat_combo) if c.layer() is not None]

    def show_beside(self) -> None:
        """A sagittal slice (head up) through the lungs, between the X-rays (residuals below them), with titles."""
        if self.view3d_btn.isChecked():
            self.view3d_btn.setChecked(False)
        volume, xrays = self.shown_layer(), self._xray_layers()
        if volume is None or not xrays:
            self._fail("Open the X-rays and a CT first (File > Open Sample > Biplanar X-ray phantom), or reconstruct")
            return
        self._place_xrays()
        keep = [volume, *xrays, *(r for r in self.residual_layers.values() if r in self.viewer.layers)]
        ids = {id(unwrap(layer)) for layer in keep}
        for layer in self.viewer.layers:
            layer.visible = id(unwrap(layer)) in ids
        dims = self.viewer.dims
        dims.ndisplay = 2
        dims.order = (0, 2, 1)  # slider on X; rows Z, columns Y
        try:
            _camera(self.viewer).orientation2d = ("up", "right")  # the head at the top, anterior to the right
        except (AttributeError, ValueError, TypeError):  # napari without camera orientation
            pass
        dims.set_point(0, float(volume.data_to_world([sagittal_slice(volume.data), 0, 0])[0]))
        self._add_titles(volume, keep)
        fit_view_soon(self.viewer)
        self.status.info("Sagittal slice through the lungs (head up, anterior to the right; the X slider moves it) "
                         "between the X-rays; red/blue below them: where the result's X-rays are darker/lighter than "
                         "the input's.")

    def _titles(self):
        return self.viewer.layers[TITLES] if TITLES in self.viewer.layers else None

    def _add_titles(self, volume, layers) -> None:
        """A Points layer of text above each picture (in the (Y, Z) plane, shown on every slice)."""
        old = self._titles()
        if old is not None:
            self.viewer.layers.remove(old)
        pos, text = titles(volume, layers)
        self.viewer.add_points(np.asarray(pos), name=TITLES, size=0.1, face_color="transparent",
                               border_width=0, text={"string": text, "size": 9, "color": "white",
                                                     "anchor": "center"},
                               metadata={"display_of": "xray2ct", "task": "xray2ct", "role": DISPLAY_ROLE})
        self.viewer.layers.selection.active = volume

    def set_3d(self, on: bool) -> None:
        """The 3D view (the toggle's state), or back to the 2D view as it was."""
        if on:
            self._show_3d()
        else:
            self._leave_3d()

    def _show_3d(self) -> None:
        volume = self.shown_layer()
        if volume is None:
            self.view3d_btn.blockSignals(True)
            self.view3d_btn.setChecked(False)
            self.view3d_btn.blockSignals(False)
            self._fail("Open a CT or reconstruct one first (File > Open Sample > Biplanar X-ray phantom)")
            return
        if self._before_3d is None:
            self._before_3d = {"visible": {id(unwrap(layer)): layer.visible for layer in self.viewer.layers},
                               "rendering": {}, "order": tuple(self.viewer.dims.order)}
        self._remove_walls()
        g = display_geometry(self.result, self._xray_layers())
        for layer, view in zip(self._xray_layers(), g.views if g is not None else ()):
            data, kwargs = wall(np.asarray(layer.data, np.float32), g, view)
            self._walls.append(self.viewer.add_image(
                data, name=f"3D: {layer.name}", **kwargs, colormap="gray", contrast_limits=tuple(layer.contrast_limits),
                metadata={"display_of": layer.name, "task": "xray2ct", "role": DISPLAY_ROLE}))
        for layer in self._walls:  # drawn first: the volume in front of them hides them (depth-tested)
            self.viewer.layers.move(self.viewer.layers.index(layer), 0)
        keep = {id(unwrap(layer)) for layer in [volume, *self._walls]}
        for layer in self.viewer.layers:
            layer.visible = id(unwrap(layer)) in keep
        renders = self._before_3d["rendering"]
        renders.setdefault(id(unwrap(volume)), (volume, volume.rendering))
        if volume is self.difference_layer:
            volume.rendering = "translucent"
        else:  # a MIP lets the bone stand out; attenuated, the volume hides the X-rays behind it cleanly
            volume.rendering, volume.attenuation = "attenuated_mip", ATTENUATION_3D
        self.viewer.dims.ndisplay = 3
        self.viewer.dims.order = (0, 1, 2)  # X, Y, Z: a right-handed scene for the camera below
        fit_visible(self.viewer)
        camera, shown = _camera(self.viewer), self.viewer.dims.displayed
        try:
            camera.set_view_direction(tuple(VIEW_3D[d] for d in shown), tuple(UP_3D[d] for d in shown))
            camera.zoom *= ZOOM_3D  # the oblique view is wider than the face the zoom was fitted to
        except (AttributeError, ValueError):  # napari without set_view_direction: its default view
            pass
        self.status.info(f"3D: '{volume.name}' ({volume.rendering}) with the AP X-ray behind the patient and the "
                         "lateral on the patient's left, where their detectors stand. Drag to rotate.")

    def _leave_3d(self) -> None:
        self._remove_walls()
        before, self._before_3d = self._before_3d, None
        self.viewer.dims.ndisplay = 2
        if before is not None:
            self.viewer.dims.order = before["order"]
            for layer in self.viewer.layers:
                layer.visible = before["visible"].get(id(unwrap(layer)), layer.visible)
            for layer, rendering in before["rendering"].values():
                layer.rendering = rendering
        fit_view_soon(self.viewer)

    def _remove_walls(self) -> None:
        for layer in self._walls:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._walls = []

    # ------------------------------------------------------------------ lifecycle
    def _fail(self, message: str, details: str = "") -> None:
        """One line in the panel (red) and a plain notification (no traceback)."""
        self.status.error(message, details)
        show_error_notification(message)
