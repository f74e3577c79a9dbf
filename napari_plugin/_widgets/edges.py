"""Edge-map panel: 3D Sobel magnitude of input, prediction and reference for the volume on screen.

Computed by ``workbench.inference.edge_map``, the operator the edge loss uses, so
what is shown is what the loss compares.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QPushButton, QVBoxLayout, QWidget

from napari_plugin._layers import (
    add_or_update_image, current_volume, derived_kwargs, is_comparable_layer, is_noisy_layer, is_reference_layer,
    is_result_layer,
)
from napari_plugin._widgets._common import (
    FollowsVolume, LayerCombo, StatusLine, distinct_layers, outer_layout, report_failure, show_error_notification,
)

PREFIX = "edges"


class EdgeWidget(FollowsVolume, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self._pending = False
        self.edge_layers: dict[str, object] = {}

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.input = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_noisy_layer)
        self.prediction = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_result_layer)
        self.reference = LayerCombo(self.viewer, is_comparable_layer, allow_none=True, prefer=is_reference_layer)
        form.addRow("Input (noisy, LR)", self.input)
        form.addRow("Prediction", self.prediction)
        form.addRow("Reference", self.reference)
        root.addLayout(form)
        self.compute_btn = QPushButton("Compute edge maps for the volume on screen")
        self.compute_btn.clicked.connect(self.compute)
        self.follow = QCheckBox("Update when the volume slider moves")
        self.status = StatusLine("3D Sobel gradient magnitude (the edge loss's operator), one layer per image.")
        for w in (self.compute_btn, self.follow, self.status):
            root.addWidget(w)
        root.addStretch(1)
        outer_layout(self, content)
        self.follow_volume()

    def _sources(self) -> list:
        return distinct_layers((self.input, self.prediction, self.reference))

    def compute(self) -> None:
        from napari_plugin._workers import edge_worker

        if self.worker is not None:
            self._pending = True
            return
        sources = self._sources()
        if not sources:
            message = "Choose at least one layer (input, prediction or reference)"
            self.status.error(message)
            show_error_notification(message)
            return
        series = [s for s in sources if np.ndim(s.data) == 4]
        j = current_volume(self.viewer, series[0]) if series else 0
        j = min(j, *(s.data.shape[0] - 1 for s in series)) if series else 0
        volumes = {layer.name: np.asarray(layer.data[j] if np.ndim(layer.data) == 4 else layer.data)
                   for layer in sources}
        by_name = {layer.name: layer for layer in sources}
        self.worker = w = edge_worker(volumes)
        w.returned.connect(lambda maps, jj=j, src=by_name: self._show(maps, jj, src))
        w.errored.connect(lambda exc: report_failure(self.status, "Edge maps", exc))
        w.finished.connect(self._finished)
        self.status.info(f"Computing edge maps for volume {j}…")
        w.start()

    def _show(self, maps: dict, j: int, sources: dict) -> None:
        top = max((float(np.percentile(m, 99.5)) for m in maps.values()), default=1.0) or 1.0
        for name, edge in maps.items():
            kwargs = derived_kwargs(sources[name], f"{PREFIX}: {name}", {"edge_map_of": name, "volume": j}, ndim=3)
            self.edge_layers[name] = add_or_update_image(self.viewer, edge, kwargs, colormap="magma",
                                                         contrast_limits=(0.0, top))
        which = f"volume {j}" if any(np.ndim(s.data) == 4 for s in sources.values()) else "the volumes"
        self.status.info(f"Edge maps of {which}: {', '.join(maps)} (same colour scale on every map).")
