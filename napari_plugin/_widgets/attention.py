"""Attention panel: the spatial attention of a chosen CBAM block for the volume on screen.

Maps come from ``Denoiser.attention_maps`` (values in [0, 1], on the image grid)
and are shown as an overlay with a chosen colour map and opacity. The overlay keeps
the anatomy readable: its colour map fades to transparent at low attention (an alpha
ramp), it is blended translucently (not additively, which brightened every voxel), and
its colours span the map's own range from its median up, so only above-median
attention tints the image.
"""

from __future__ import annotations

from typing import Optional

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QPushButton, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from napari_plugin._layers import (
    add_or_update_image, current_volume, derived_kwargs, inputs_fn, unwrap,
)
from napari_plugin._widgets._common import (
    FollowsVolume, StatusLine, outer_layout, report_failure, series_mask_and_model,
    show_error_notification,
)

COLORMAPS = ["inferno", "magma", "viridis", "turbo", "red"]
PREFIX = "attention"


def fading_colormap(name: str):
    """``name`` as a napari colour map whose opacity ramps from 0 (low attention) to 1."""
    import numpy as np
    from matplotlib import colormaps
    from napari.utils.colormaps import Colormap

    t = np.linspace(0.0, 1.0, 32)
    rgba = np.array([[1.0, 0.1, 0.1, 1.0]] * len(t)) if name == "red" else colormaps[name](0.25 + 0.75 * t)
    rgba[:, 3] = t ** 0.8
    return Colormap(rgba, name=f"{name} (fading)", controls=t)


def overlay_limits(att) -> tuple[float, float]:
    """Colour range of an attention map: its median to its maximum."""
    import numpy as np

    lo, hi = float(np.median(att)), float(np.max(att))
    return lo, max(hi, lo + 1e-6)


class AttentionWidget(FollowsVolume, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.maps: dict = {}
        self.maps_volume: Optional[int] = None
        self.overlay = None
        self._cache: dict = {}
        self._pending = False

        content = QWidget()
        root = QVBoxLayout(content)
        series_mask_and_model(self, root)
        self.compute_btn = QPushButton("Compute attention for the volume on screen")
        self.compute_btn.clicked.connect(self.compute)
        self.follow = QCheckBox("Update when the volume slider moves")
        root.addWidget(self.compute_btn)
        root.addWidget(self.follow)

        form = QFormLayout()
        self.block = QComboBox()
        self.block.setToolTip("CBAM attention block of the network (computed maps are listed here)")
        self.block.currentTextChanged.connect(lambda _t: self._show())
        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.currentTextChanged.connect(self._restyle)
        self.opacity = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0.0, 1.0)
        self.opacity.setValue(0.7)
        self.opacity.valueChanged.connect(self._restyle)
        form.addRow("Attention block", self.block)
        form.addRow("Colour map", self.colormap)
        form.addRow("Opacity", self.opacity)
        root.addLayout(form)
        self.status = StatusLine("Attention shows where the network looks (1 = full attention).")
        root.addWidget(self.status)
        root.addStretch(1)
        outer_layout(self, content)
        self.follow_volume()

    def compute(self) -> None:
        from napari_plugin._workers import attention_worker

        if self.worker is not None:
            self._pending = True
            return
        layer = self.layer_combo.layer()
        try:
            if layer is None:
                raise ValueError("Open a 4D DWI image first")
            make_denoiser = self.source.factory()
            mask_layer = self.mask_combo.layer()
            make_inputs = inputs_fn(layer, mask_layer)
        except Exception as exc:
            self.status.error(str(exc))
            show_error_notification(str(exc))
            return
        j = current_volume(self.viewer, layer)
        key = (id(unwrap(layer)), id(layer.data), None if mask_layer is None else id(mask_layer.data),
               self.source.key())
        self._layer = layer
        self.worker = w = attention_worker(make_denoiser, make_inputs, j, cache=self._cache, key=key)
        w.yielded.connect(lambda item: self.status.info(getattr(item, "text", str(item))))
        w.returned.connect(lambda maps, jj=j: self._got_maps(maps, jj))
        w.errored.connect(self._on_error)
        w.finished.connect(self._finished)
        w.start()

    def _on_error(self, exc) -> None:
        report_failure(self.status, "Attention maps", exc)

    def _got_maps(self, maps: dict, j: int) -> None:
        self.maps, self.maps_volume = maps, j
        if not maps:
            self.status.error("This model has no attention (CBAM) blocks: train with attention switched on")
            return
        current = self.block.currentText()
        self.block.blockSignals(True)
        self.block.clear()
        self.block.addItems(list(maps))
        self.block.setCurrentText(current if current in maps else next(iter(maps)))
        self.block.blockSignals(False)
        self._show()

    def _show(self) -> None:
        name = self.block.currentText()
        if name not in self.maps:
            return
        layer = self._layer
        kwargs = derived_kwargs(layer, f"{PREFIX}: {layer.name}",
                                {"attention_block": name, "volume": self.maps_volume}, ndim=3)
        att = self.maps[name]
        self.overlay = add_or_update_image(self.viewer, att, kwargs,
                                           colormap=fading_colormap(self.colormap.currentText()),
                                           opacity=float(self.opacity.value()), blending="translucent",
                                           contrast_limits=overlay_limits(att))
        self.status.info(f"Block '{name}', volume {self.maps_volume}: overlay '{self.overlay.name}'.")

    def _restyle(self, *_):
        if self.overlay is not None and self.overlay.name in self.viewer.layers:
            self.overlay.colormap = fading_colormap(self.colormap.currentText())
            self.overlay.opacity = float(self.opacity.value())

    def _follow_ready(self) -> bool:
        return bool(self.maps)
