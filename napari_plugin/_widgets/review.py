"""Clinician review panel: blinded side-by-side scoring of two or more results of the same case.

Results are shown as "Image A", "Image B", ... (order randomised per case with a
recorded seed) in napari's grid, on one grey scale, with linked volume and slice
pickers. Every answer is saved at once (JSON + CSV, atomic writes) by
:class:`napari_plugin._review_store.ReviewStore`; names are revealed only by
"Export un-blinded results".
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
    QListWidgetItem, QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget,
)

from napari_plugin._layers import axial_view, fit_view_soon, grid, is_map_layer, show_name, unwrap
from napari_plugin._review_store import CRITERIA, SCORES, ReviewStore
from napari_plugin._widgets._common import PathPicker, StatusLine, outer_layout, show_error_notification

BLIND_PREFIX = "Image "


def default_review_path() -> str:
    return str(Path.home() / "dwi_workbench_reviews" / "review.json")


def _reviewable(layer) -> bool:
    """Images that can be results (not edge, attention or difference maps, not blinded copies)."""
    return type(unwrap(layer)).__name__ == "Image" and np.ndim(layer.data) in (3, 4) and not is_map_layer(layer) \
        and "review_label" not in layer.metadata


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.store: Optional[ReviewStore] = None
        self.case_id: Optional[str] = None
        self.blind_layers: dict[str, object] = {}
        self.groups: dict[tuple[str, str], QButtonGroup] = {}
        self.comments: dict[str, QLineEdit] = {}
        self._hidden: list = []
        self._removed: list = []  # (index, layer): the results, out of the layer list while blinded

        content = QWidget()
        root = QVBoxLayout(content)
        box = QGroupBox("1. Results to review (two or more of the same case)")
        lay = QVBoxLayout(box)
        self.candidates = QListWidget()
        self.candidates.setMaximumHeight(130)
        lay.addWidget(self.candidates)
        root.addWidget(box)
        form = QFormLayout()
        self.case_edit = QLineEdit("case-1")
        self.reviewer_edit = QLineEdit()
        self.reviewer_edit.setPlaceholderText("optional")
        self.file_picker = PathPicker(default_review_path(), save=True, file_filter="Review files (*.json)")
        form.addRow("Case name", self.case_edit)
        form.addRow("Reviewer", self.reviewer_edit)
        form.addRow("Review file", self.file_picker)
        root.addLayout(form)
        self.start_btn = QPushButton("Start or continue the review")
        self.start_btn.clicked.connect(self.start)
        root.addWidget(self.start_btn)

        box = QGroupBox("2. Navigate (all images move together)")
        form = QFormLayout(box)
        self.volume_spin, self.slice_spin = QSpinBox(), QSpinBox()
        self.volume_spin.valueChanged.connect(lambda v: self._set_step(self._volume_axis(), v))
        self.slice_spin.valueChanged.connect(lambda v: self._set_step(self._slice_axis(), v))
        form.addRow("Diffusion volume", self.volume_spin)
        form.addRow("Axial slice", self.slice_spin)
        root.addWidget(box)
        self.score_box = QGroupBox("3. Score each image (1 = worst, 5 = best; saved at once)")
        self.score_layout = QVBoxLayout(self.score_box)
        root.addWidget(self.score_box)
        row = QHBoxLayout()
        self.export_btn, self.end_btn = QPushButton("Export un-blinded results"), QPushButton("End review")
        self.export_btn.clicked.connect(self.export)
        self.end_btn.clicked.connect(self.end)
        row.addWidget(self.export_btn)
        row.addWidget(self.end_btn)
        root.addLayout(row)
        self.status = StatusLine("Tick the results, name the case and press Start.")
        root.addWidget(self.status)
        root.addStretch(1)
        outer_layout(self, content)
        self.setMinimumWidth(380)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed):
            ev.connect(self.refresh_candidates)
        self.viewer.dims.events.current_step.connect(self._dims_changed)
        self.refresh_candidates()
        self._set_session_enabled(False)

    # ------------------------------------------------------------------ candidates
    def refresh_candidates(self, *_):
        try:
            checked = set(self.checked_names()) | {layer.name for _, layer in self._removed}
        except RuntimeError:
            return
        self.candidates.clear()
        layers = [layer for layer in self.viewer.layers if _reviewable(layer)]
        for index, layer in self._removed:  # results under review are out of the layer list: keep listing them
            if layer not in layers:
                layers.insert(min(index, len(layers)), layer)
        for layer in layers:
            if _reviewable(layer):
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if layer.name in checked else Qt.CheckState.Unchecked)
                self.candidates.addItem(item)

    def checked_names(self) -> list[str]:
        return [self.candidates.item(i).text() for i in range(self.candidates.count())
                if self.candidates.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, names: list[str]) -> None:
        for i in range(self.candidates.count()):
            item = self.candidates.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    # ------------------------------------------------------------------ session
    def start(self) -> None:
        """Open (or continue) the case in the review file and show the results blinded."""
        self.end(quiet=True)
        names = self.checked_names()
        try:
            layers = [self.viewer.layers[n] for n in names]
            shapes = {tuple(layer.data.shape) for layer in layers}
            if len(shapes) > 1:
                raise ValueError("The chosen results have different shapes: review results of the same case")
            self.store = ReviewStore(self.file_picker.text() or default_review_path(), self.reviewer_edit.text())
            self.case_id = self.case_edit.text().strip()
            self.store.open_case(self.case_id, names)
        except Exception as exc:
            self.store = None
            self.status.error(str(exc))
            show_error_notification(str(exc))
            return
        self._show_blinded()
        self._build_scores()
        self._set_session_enabled(True)
        done = sum(v is not None for s in self.store.data["cases"][self.case_id]["scores"].values()
                   for k, v in s.items() if k != "comment")
        self.status.info(f"Case '{self.case_id}': {len(names)} images, {done} answers so far. "
                         f"Saved to {self.store.path.name} and {self.store.csv_path.name}.")

    def _show_blinded(self) -> None:
        """Results leave the layer list (their names would un-blind); copies named Image A, B, ... replace them."""
        mapping = self.store.mapping(self.case_id)
        sources = {label: self.viewer.layers[name] for label, name in mapping.items()}
        lows, highs = zip(*(tuple(s.contrast_limits) for s in sources.values()))
        limits = (float(min(lows)), float(max(highs)))
        self._removed = sorted((self.viewer.layers.index(layer), layer) for layer in sources.values())
        for _, layer in reversed(self._removed):
            self.viewer.layers.remove(layer)
        self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        for layer in self._hidden:
            layer.visible = False
        for label in mapping:  # napari's grid fills from the bottom of the layer list: A first
            src = sources[label]
            self.blind_layers[label] = layer = self.viewer.add_image(
                src.data, name=f"{BLIND_PREFIX}{label}", scale=list(src.scale), translate=list(src.translate),
                contrast_limits=limits, colormap="gray", metadata={"review_label": label})
            show_name(layer, True)
        grid(self.viewer).enabled = True
        grid(self.viewer).stride = 1
        axial_view(self.viewer)
        fit_view_soon(self.viewer)
        ndim = self.viewer.dims.ndim
        nsteps = self.viewer.dims.nsteps
        self.volume_spin.setEnabled(ndim >= 4)
        self.volume_spin.setMaximum(max(nsteps[0] - 1, 0) if ndim >= 4 else 0)
        self.slice_spin.setMaximum(max(nsteps[self._slice_axis()] - 1, 0))
        self._dims_changed()

    def _build_scores(self) -> None:
        while self.score_layout.count():
            item = self.score_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.groups.clear()
        self.comments.clear()
        case = self.store.data["cases"][self.case_id]
        for label in self.store.labels(self.case_id):
            box = QGroupBox(f"{BLIND_PREFIX}{label}")
            grid = QGridLayout(box)
            for row, (key, title, hint) in enumerate(CRITERIA):
                name = QLabel(title)
                name.setToolTip(hint)
                grid.addWidget(name, row, 0)
                group = QButtonGroup(box)
                for col, score in enumerate(SCORES, start=1):
                    rb = QRadioButton(str(score))
                    rb.setToolTip(hint)
                    group.addButton(rb, score)
                    grid.addWidget(rb, row, col)
                    if case["scores"][label][key] == score:
                        rb.setChecked(True)
                group.idClicked.connect(lambda score, lab=label, k=key: self.answer(lab, k, score))
                self.groups[(label, key)] = group
            comment = QLineEdit(case["scores"][label].get("comment", ""))
            comment.setPlaceholderText("Comment (optional)")
            comment.textChanged.connect(lambda text, lab=label: self.comment(lab, text))
            grid.addWidget(comment, len(CRITERIA), 0, 1, len(SCORES) + 1)
            self.comments[label] = comment
            self.score_layout.addWidget(box)

    def answer(self, label: str, criterion: str, score: int) -> None:
        """Record one score and save both files at once."""
        try:
            self.store.set_score(self.case_id, label, criterion, score)
        except Exception as exc:
            self.status.error(f"Could not save the answer: {exc}")
            show_error_notification(f"Could not save the review answer: {exc}")
            return
        left = sum(v is None for s in self.store.data["cases"][self.case_id]["scores"].values()
                   for k, v in s.items() if k != "comment")
        self.status.info(f"Saved ({left} answers left in this case)." if left else
                         "Saved. Every image of this case is scored.")

    def comment(self, label: str, text: str) -> None:
        try:
            self.store.set_comment(self.case_id, label, text)
        except Exception as exc:
            self.status.error(f"Could not save the comment: {exc}")

    def export(self) -> Optional[tuple[Path, Path]]:
        if self.store is None:
            self.status.error("Start a review first")
            return None
        paths = self.store.export()
        self.status.info(f"Un-blinded results written to {paths[0].name} and {paths[1].name} "
                         f"(in {paths[0].parent}).")
        return paths

    def end(self, quiet: bool = False) -> None:
        """Remove the blinded images and show the layers as before (the review file stays)."""
        for layer in self.blind_layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.blind_layers.clear()
        for index, layer in self._removed:  # the results come back where they were
            if layer.name not in self.viewer.layers:
                self.viewer.layers.insert(min(index, len(self.viewer.layers)), layer)
        self._removed = []
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []
        if not quiet:
            grid(self.viewer).enabled = False
            self._set_session_enabled(False)
            self.status.info("Review closed; every answer is in the review file.")

    def _set_session_enabled(self, on: bool) -> None:
        for w in (self.volume_spin, self.slice_spin, self.score_box, self.export_btn, self.end_btn):
            w.setEnabled(on)

    # ------------------------------------------------------------------ linked pickers
    def _volume_axis(self) -> int:
        return 0

    def _slice_axis(self) -> int:
        order = list(self.viewer.dims.order)
        not_shown = order[:-2]
        return not_shown[-1] if not_shown else self.viewer.dims.ndim - 1

    def _set_step(self, axis: int, value: int) -> None:
        if self.store is None or axis >= self.viewer.dims.ndim:
            return
        if axis == self._volume_axis() and self.viewer.dims.ndim < 4:
            return
        self.viewer.dims.set_current_step(axis, int(value))

    def _dims_changed(self, *_):
        try:
            steps = self.viewer.dims.current_step
            for spin, axis in ((self.volume_spin, self._volume_axis()), (self.slice_spin, self._slice_axis())):
                spin.blockSignals(True)
                spin.setValue(int(steps[axis]) if axis < len(steps) else 0)
                spin.blockSignals(False)
        except RuntimeError:  # widget deleted
            pass

    def closeEvent(self, event) -> None:
        self.end(quiet=True)
        try:
            self.viewer.dims.events.current_step.disconnect(self._dims_changed)
            for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                ev.disconnect(self.refresh_candidates)
        except (TypeError, ValueError, RuntimeError):
            pass
        super().closeEvent(event)
