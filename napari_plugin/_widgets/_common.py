"""Small Qt pieces shared by the widgets: layer pickers, status line, model source, helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup, QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QRadioButton,
    QScrollArea, QVBoxLayout, QWidget,
)

from napari_plugin._layers import unwrap

NONE_TEXT = "(none)"


def show_error_notification(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_exception(exc: BaseException) -> None:
    """Send a worker's exception to napari's notifications (with its traceback).

    napari's worker classes mean to do this themselves, but their notifying mixin is
    not initialised under PyQt (``QRunnable.__init__`` does not chain to it), so the
    widgets do it.
    """
    from napari.utils.notifications import notification_manager

    notification_manager.receive_error(type(exc), exc, exc.__traceback__)


def report_failure(status: "StatusLine", what: str, exc: BaseException) -> None:
    """A worker failed: say so in the panel (red) and in napari's notifications."""
    status.error(f"{what} failed: {exc}", repr(exc))
    notify_exception(exc)


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; plain words for the progress line."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


class FitWidthScrollArea(QScrollArea):
    """Scrolls vertically only, and is always wide enough for its content (nothing is cut off)."""

    def __init__(self, content: QWidget, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)
        self._fit()

    def _fit(self) -> None:
        content = self.widget()
        if content is not None:
            self.setMinimumWidth(content.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 4)

    def eventFilter(self, obj, event) -> bool:
        if obj is self.widget() and event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Polish,
                                                     QEvent.Type.Show):
            self._fit()
        return False


def scrolling(content: QWidget) -> QScrollArea:
    return FitWidthScrollArea(content)


def outer_layout(widget: QWidget, content: QWidget) -> None:
    """Put ``content`` in a scroll area filling ``widget`` (napari docks do not scroll)."""
    lay = QVBoxLayout(widget)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(scrolling(content))


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that pass ``accept``; follows layers being added/removed/renamed."""

    def __init__(self, viewer, accept: Callable, *, allow_none: bool = False, none_text: str = NONE_TEXT,
                 prefer: Optional[Callable] = None, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer, self._accept, self._allow_none, self._none_text = viewer, accept, allow_none, none_text
        self._prefer = prefer
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self.refresh)
        self.refresh()

    def _names(self) -> list[str]:
        out = []
        for layer in self.viewer.layers:
            try:
                if self._accept(layer):
                    out.append(layer.name)
            except Exception:  # a layer we cannot inspect is not offered
                continue
        return out

    def refresh(self, *_):
        try:
            current = self.currentText()
        except RuntimeError:  # the C++ object is gone (widget closed)
            return
        names = self._names()
        items = ([self._none_text] if self._allow_none else []) + names
        if items == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        if current in items:
            self.setCurrentText(current)
        elif names and (not self._allow_none or self._prefer is not None):
            first = self._initial(names)
            if not self._allow_none or self._prefer(self.viewer.layers[first]):
                self.setCurrentText(first)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def _initial(self, names: list[str]) -> str:
        """First choice: the selected layer if it fits, else the first preferred one (inputs, not maps)."""
        active = self.viewer.layers.selection.active
        if active is not None and active.name in names and (self._prefer is None or self._prefer(active)):
            return active.name
        if self._prefer is not None:
            for want_visible in (True, False):
                for name in names:
                    layer = self.viewer.layers[name]
                    if self._prefer(layer) and (layer.visible or not want_visible):
                        return name
        return names[0]

    def showPopup(self):  # names may have changed (renamed layers)
        self.refresh()
        super().showPopup()

    def layer(self):
        name = self.currentText()
        if not name or name == self._none_text or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def set_layer(self, name: Optional[str]) -> None:
        self.refresh()
        self.setCurrentText(name if name else self._none_text)

    def disconnect_viewer(self) -> None:
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            try:
                ev.disconnect(self.refresh)
            except (TypeError, ValueError, RuntimeError):
                pass


class StatusLine(QLabel):
    """One or two lines telling the user what is happening, red for errors."""

    def __init__(self, text: str = "", parent: Optional[QWidget] = None):
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.is_error = False

    def info(self, text: str) -> None:
        self.is_error = False
        self.setStyleSheet("")
        self.setText(text)
        self.setToolTip("")

    def error(self, text: str, details: str = "") -> None:
        self.is_error = True
        self.setStyleSheet("color: #ff6b6b;")
        self.setText(text)
        self.setToolTip(details or text)


class PathPicker(QWidget):
    """A line edit with a "Choose…" button (file or folder)."""

    changed = Signal(str)

    def __init__(self, text: str = "", *, folder: bool = False, file_filter: str = "", save: bool = False,
                 placeholder: str = "", parent: Optional[QWidget] = None):
        super().__init__(parent)
        self._folder, self._filter, self._save = folder, file_filter, save
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit(text)
        self.edit.setPlaceholderText(placeholder)
        self.edit.setToolTip(text)
        self.edit.textChanged.connect(self._changed)
        self.button = QPushButton("Choose…")
        self.button.clicked.connect(self._browse)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.button)

    def _changed(self, text: str) -> None:
        self.edit.setToolTip(text)
        self.changed.emit(text)

    def _browse(self) -> None:
        start = self.text() or str(Path.home())
        if self._folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        elif self._save:
            path, _ = QFileDialog.getSaveFileName(self, "Choose a file", start, self._filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self._filter)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(text)


class ModelSource(QWidget):
    """Where the model comes from: the run of the Train panel, or a checkpoint file."""

    def __init__(self, viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = viewer
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.from_run = QRadioButton("Model being trained (Train panel)")
        self.from_file = QRadioButton("Checkpoint file (.pt)")
        self.from_run.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.from_run)
        group.addButton(self.from_file)
        self.checkpoint = PathPicker(file_filter="Checkpoints (*.pt)", placeholder="best.pt or last.pt of a run")
        self.checkpoint.setEnabled(False)
        self.from_file.toggled.connect(self.checkpoint.setEnabled)
        for w in (self.from_run, self.from_file, self.checkpoint):
            lay.addWidget(w)

    def factory(self) -> Callable:
        """A function building the ``Denoiser`` in a worker; ValueError (plain words) if none is available."""
        from napari_plugin._session import denoiser_factory

        if self.from_file.isChecked():
            path = self.checkpoint.text()
            if not path or not Path(path).is_file():
                raise ValueError("Choose a checkpoint file (.pt) that exists, or use the model being trained")
            return denoiser_factory(self.viewer, path)
        return denoiser_factory(self.viewer)

    def key(self):
        """Identifies the chosen model (for caches)."""
        from napari_plugin._session import run_for

        if self.from_file.isChecked():
            return ("file", self.checkpoint.text())
        info = run_for(self.viewer)
        return ("run", id(info.trainer) if info else None)


def same_layer(a, b) -> bool:
    return a is not None and b is not None and unwrap(a) is unwrap(b)


class FollowsVolume:
    """Mixin placed before ``QWidget``: calls ``self._volume_changed`` when the viewer's sliders move,
    and lets go of the viewer when the panel closes.

    The default ``_volume_changed`` recomputes (``self.compute()``) when the panel's ``follow``
    check box is on and :meth:`_follow_ready`; ``_finished`` ends a worker and runs a
    recomputation that was asked for meanwhile (``self._pending``).
    """

    def follow_volume(self) -> None:
        self.viewer.dims.events.current_step.connect(self._volume_changed)

    def _follow_ready(self) -> bool:
        return True

    def _volume_changed(self, *_):
        if self.follow.isChecked() and self._follow_ready():
            self.compute()

    def _finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.compute()

    def closeEvent(self, event) -> None:
        try:
            self.viewer.dims.events.current_step.disconnect(self._volume_changed)
        except (TypeError, ValueError, RuntimeError):
            pass
        super().closeEvent(event)


def distinct_layers(combos) -> list:
    """The layers chosen in ``combos``, each once, in order (None left out)."""
    out = []
    for combo in combos:
        layer = combo.layer()
        if layer is not None and all(unwrap(layer) is not unwrap(o) for o in out):
            out.append(layer)
    return out


def series_mask_and_model(panel, root) -> None:
    """``panel.layer_combo`` (a 4D series, inputs first), ``panel.mask_combo`` (optional) and
    ``panel.source`` (the model: the Train panel's run or a checkpoint), added to the layout ``root``."""
    from qtpy.QtWidgets import QFormLayout, QGroupBox

    from napari_plugin._layers import is_input_layer, is_mask_layer, is_series_layer

    form = QFormLayout()
    panel.layer_combo = LayerCombo(panel.viewer, is_series_layer, prefer=is_input_layer)
    panel.mask_combo = LayerCombo(panel.viewer, is_mask_layer, allow_none=True, none_text="(automatic brain mask)")
    form.addRow("Image layer", panel.layer_combo)
    form.addRow("Brain mask", panel.mask_combo)
    root.addLayout(form)
    box = QGroupBox("Model")
    panel.source = ModelSource(panel.viewer)
    QVBoxLayout(box).addWidget(panel.source)
    root.addWidget(box)
