"""The NIR-DOT panel's training-data box: simulate cases into a folder (resumable, stoppable), then open the
Train panel on them. A mixin of :class:`~napari_plugin._widgets.dot.DotWidget`, which provides ``viewer``,
``watch_for_close`` and ``_fail``."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QProgressBar, QPushButton, QSpinBox

from napari_plugin._layers import unwrap
from napari_plugin._widgets._common import PathPicker, StatusLine, report_failure
from napari_plugin._widgets._dot_work import GRIDS, simulate_worker
from napari_plugin._workers import Control, Progress


class TrainingDataBox:
    """Simulate (``sim_*`` widgets, ``sim_worker``, ``cases``) and "Train on them…"."""

    sim_worker = sim_control = None
    cases = None

    def _training_box(self) -> QGroupBox:
        box = QGroupBox("Training data (then train in the Train panel)")
        form = QFormLayout(box)
        self.sim_folder = PathPicker(folder=True, placeholder="a new or partly simulated folder")
        self.sim_n = QSpinBox()
        self.sim_n.setRange(1, 100_000)
        self.sim_n.setValue(200)
        self.sim_n.setToolTip("Cases to simulate (phantoms with their noise-free boundary data; noise is drawn "
                              "while training). Complete cases already in the folder are kept.")
        self.sim_grid = QComboBox()
        for n in GRIDS:
            self.sim_grid.addItem(f"{n}³ ({64 / n:g} mm voxels)", n)
        self.sim_grid.setCurrentIndex(GRIDS.index(32))
        row = QHBoxLayout()
        self.sim_btn, self.sim_stop_btn = QPushButton("Simulate"), QPushButton("Stop")
        self.train_btn = QPushButton("Train on them…")
        self.train_btn.setToolTip("Open the Train panel with task NIR-DOT and this folder")
        self.sim_btn.clicked.connect(self.simulate)
        self.sim_stop_btn.clicked.connect(self.stop_simulation)
        self.train_btn.clicked.connect(self.open_train_panel)
        for b in (self.sim_btn, self.sim_stop_btn, self.train_btn):
            row.addWidget(b)
        self.sim_progress = QProgressBar()
        self.sim_progress.setFormat("%v of %m cases")
        self.sim_status = StatusLine("")
        form.addRow("Folder", self.sim_folder)
        form.addRow("Cases", self.sim_n)
        form.addRow("Grid", self.sim_grid)
        form.addRow(row)
        form.addRow(self.sim_progress)
        form.addRow(self.sim_status)
        self._update_sim_buttons()
        return box

    def simulate(self) -> None:
        if self.sim_worker is not None:
            return
        folder = self.sim_folder.text()
        if not folder:
            self._fail("Choose a folder for the simulated cases", self.sim_status)
            return
        self.cases = None
        self.sim_control = control = Control()
        self.sim_worker = w = simulate_worker(str(Path(folder).expanduser()), self.sim_n.value(),
                                              self.sim_grid.currentData(), control=control)
        control.worker = w
        w.yielded.connect(self._sim_event)
        w.returned.connect(self._sim_done)
        w.errored.connect(self._sim_error)  # bound methods only: a finished worker must not keep the panel alive
        w.finished.connect(self._sim_finished)
        self.sim_status.info("Simulating (one forward solve per case and frequency)…")
        w.start()
        self.watch_for_close()
        self._update_sim_buttons()

    def stop_simulation(self) -> None:
        if self.sim_control is not None:
            self.sim_control.stop()
            self.sim_status.info("Stopping after the current case (complete cases are kept)…")

    def _sim_event(self, item) -> None:
        if isinstance(item, Progress):
            self.sim_progress.setMaximum(item.total)
            self.sim_progress.setValue(item.done)

    def _sim_done(self, dirs) -> None:
        if dirs is None:
            self.sim_status.info("Stopped: the complete cases stay; Simulate again to go on.")
            return
        self.cases = [str(d) for d in dirs]
        self.sim_status.info(f"{len(dirs)} cases in {self.sim_folder.text()}: press 'Train on them…' "
                             "(the Train panel), then 'From Train panel' above.")

    def _sim_error(self, exc: BaseException) -> None:
        report_failure(self.sim_status, "Simulation", exc)

    def _sim_finished(self) -> None:
        self.sim_worker = None
        self._update_sim_buttons()

    def _update_sim_buttons(self) -> None:
        running = self.sim_worker is not None
        self.sim_btn.setEnabled(not running)
        self.sim_stop_btn.setEnabled(running)
        for w in (self.sim_folder, self.sim_n, self.sim_grid):
            w.setEnabled(not running)

    def folder_grid(self) -> int:
        """The grid of the cases in the folder (its dataset.json), else the one chosen here."""
        import json

        manifest = Path(self.sim_folder.text()).expanduser() / "dataset.json"
        try:
            return int(json.loads(manifest.read_text())["geometry"]["grid"])
        except (OSError, ValueError, KeyError, TypeError):
            return int(self.sim_grid.currentData())

    def open_train_panel(self):
        """The Train panel, set to this task, the simulated folder and its grid (returns it)."""
        _, train = self.viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
        train = unwrap(train)
        index = train.task_combo.findData("dot")
        if index >= 0 and not train.is_running():
            train.task_combo.setCurrentIndex(index)
            if train.data_dir is not None and self.sim_folder.text():
                train.data_dir.setText(self.sim_folder.text())
            train.task_options = {"grid": self.folder_grid()}  # options.grid must be the data's grid
        return train
