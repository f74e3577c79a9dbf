"""Train panel: pick a task and its input layers, set the run up, Start / Stop / Resume, watch the losses live.

Task-generic: the task's ``train_inputs`` become layer pickers (a DWI series and its mask; an
LR volume and its HR reference), or a folder picker for a task that trains on a folder of
simulated cases (no ``train_inputs`` but a ``load_training_data``: dot); its ``models`` the model
list and its default config the starting values. The widget only marshals values into
:class:`workbench.config.Config` and hands the work to :func:`napari_plugin._workers.train_worker`,
which calls ``Task.trainer_from_arrays`` (or ``Task.make_trainer`` on the folder). Loss-weight sliders act
on the trainer's shared ``LossWeights`` while it runs (from the next step on;
the core records the change and emits ``WeightsChanged``, marked on the plot).
Stopping, closing the panel or closing napari asks the trainer to stop, which
writes ``last.pt`` in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from napari_plugin import _session
from napari_plugin._layers import accepts, input_array, prefers
from napari_plugin._widgets._common import (
    LayerCombo, PathPicker, StatusLine, format_duration, notify_exception, outer_layout, show_error_notification,
)
from napari_plugin._widgets._lifecycle import StopsOnClose
from napari_plugin._widgets._loss_plot import TERM_LABELS, LossPlot
from napari_plugin._widgets._train_options import (
    MODEL_LABELS, UI_REFRESH_MS, WEIGHT_APPLY_MS, cuda_description, new_run_folder,
)
from napari_plugin._widgets._train_settings import add_run_settings


def trains_from_folder(task) -> bool:
    """A task trained on a folder of simulated cases rather than on layers (e.g. dot)."""
    return not task.train_inputs and callable(getattr(task, "load_training_data", None))


class TrainWidget(StopsOnClose, QWidget):
    def __init__(self, napari_viewer, parent: Optional[QWidget] = None):
        super().__init__(parent)
        from workbench.losses import LOSSES
        from workbench.tasks import TASKS

        self.viewer = napari_viewer
        self.worker = None
        self.control = None
        self.trainer = None
        self.loss_weights = None
        self.result = None
        self.last_error: Optional[BaseException] = None
        self._pending: dict[str, float] = {}
        self._auto_folder = True
        self.tasks = {t.label: t for t in TASKS.values() if t.train_inputs or trains_from_folder(t)}
        self.data_dir: Optional[PathPicker] = None
        #: the task's own config options a panel sets for the data it prepared (dot: {"grid": 16})
        self.task_options: dict = {}
        defaults = next(iter(self.tasks.values())).default_config()

        content = QWidget()
        root = QVBoxLayout(content)
        form = QFormLayout()
        self.task_combo = QComboBox()
        for label, task in self.tasks.items():
            self.task_combo.addItem(label, task.name)
        self.task_combo.setToolTip("What to train: each task brings its inputs, models, losses and defaults")
        form.addRow("Task", self.task_combo)
        self.inputs: dict[str, LayerCombo] = {}
        self.model_combo = QComboBox()
        self.input_form = form
        root.addLayout(form)
        form = QFormLayout()
        form.addRow("Model", self.model_combo)
        root.addLayout(form)

        box = QGroupBox("Loss weights")
        grid = QGridLayout(box)
        hint = QLabel("0 = term not used. Moving a slider while training changes the loss from the next step.")
        hint.setWordWrap(True)
        grid.addWidget(hint, len(LOSSES), 0, 1, 2)
        self.sliders: dict[str, QLabeledDoubleSlider] = {}
        self.slider_labels: dict[str, QLabel] = {}
        for row, name in enumerate(LOSSES):
            s = QLabeledDoubleSlider()
            s.setToolTip(TERM_LABELS.get(name, name))
            s.setRange(0.0, 1.0)
            s.setSingleStep(0.01)
            s.setDecimals(2)
            s.setValue(float(defaults.loss.weights.get(name, 0.0)))
            s.valueChanged.connect(lambda v, n=name: self._weight_moved(n, v))
            self.slider_labels[name] = label = QLabel(TERM_LABELS.get(name, name))
            grid.addWidget(label, row, 0)
            grid.addWidget(s, row, 1)
            self.sliders[name] = s
        root.addWidget(box)
        self._weight_timer = QTimer(self)
        self._weight_timer.setSingleShot(True)
        self._weight_timer.setInterval(WEIGHT_APPLY_MS)
        self._weight_timer.timeout.connect(self._apply_pending_weights)
        self._latest_step = None  # progress is shown at most every UI_REFRESH_MS (repaints are costly)
        self._ui_timer = QTimer(self)
        self._ui_timer.setInterval(UI_REFRESH_MS)
        self._ui_timer.timeout.connect(self._show_progress)

        add_run_settings(self, root, defaults)

        self.run_dir = PathPicker(new_run_folder(), folder=True)
        self.run_dir.changed.connect(self._folder_edited)
        form = QFormLayout()
        form.addRow("Run folder", self.run_dir)
        root.addLayout(form)

        buttons = QHBoxLayout()
        self.start_btn, self.stop_btn, self.resume_btn = QPushButton("Start"), QPushButton("Stop"), QPushButton("Resume")
        self.start_btn.setToolTip("Train a new model in the run folder")
        self.stop_btn.setToolTip("Stop after the current step and save last.pt")
        self.resume_btn.setToolTip("Continue the run in the run folder from last.pt (steps may be raised)")
        self.start_btn.clicked.connect(lambda: self.start(resume=False))
        self.resume_btn.clicked.connect(lambda: self.start(resume=True))
        self.stop_btn.clicked.connect(self.stop)
        for b in (self.start_btn, self.stop_btn, self.resume_btn):
            buttons.addWidget(b)
        root.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setFormat("step %v of %m")
        self.progress.setValue(0)
        self.time_left = QLabel("")
        self.status = StatusLine("Choose a task and its layers, then press Start.")
        self.plot = LossPlot()
        for w in (self.progress, self.time_left, self.status, self.plot):
            root.addWidget(w)
        outer_layout(self, content)
        self.setMinimumWidth(360)
        self.task_combo.currentIndexChanged.connect(self._task_changed)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self._task_changed()

    # ------------------------------------------------------------------ task
    def task(self):
        return self.tasks[self.task_combo.currentText()]

    @property
    def layer_combo(self) -> LayerCombo:
        """The picker of the task's first input (the image to train on)."""
        return next(iter(self.inputs.values()))

    @property
    def mask_combo(self) -> Optional[LayerCombo]:
        return self.inputs.get("mask")

    def _task_changed(self, *_) -> None:
        """Rebuild the input pickers and the model list; reset the settings to the task's defaults."""
        from workbench.models import MODELS

        task = self.task()
        for combo in self.inputs.values():
            combo.disconnect_viewer()
            self.input_form.removeRow(combo)
        self.inputs = {}
        self.task_options = {}
        if self.data_dir is not None:
            self.input_form.removeRow(self.data_dir)
            self.data_dir = None
        if trains_from_folder(task):
            self.data_dir = PathPicker(folder=True, placeholder="a folder of simulated cases")
            self.data_dir.setToolTip(f"Cases written by `workbench {task.name} simulate` (or a panel's Simulate)")
            self.input_form.addRow("Training data folder", self.data_dir)
        for spec in task.train_inputs:
            combo = LayerCombo(self.viewer, accepts(spec), allow_none=spec.optional, none_text=spec.none_text,
                               prefer=None if spec.optional else prefers(spec))
            combo.setToolTip(spec.hint)
            self.input_form.addRow(spec.label, combo)
            self.inputs[spec.role] = combo
        cfg = task.default_config()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in task.models or tuple(MODELS):
            self.model_combo.addItem(MODEL_LABELS.get(name, name), name)
        self.model_combo.setCurrentIndex(max(self.model_combo.findData(cfg.model.name), 0))
        self.model_combo.blockSignals(False)
        self._apply_defaults(cfg)

    def _model_changed(self, *_) -> None:
        """A model with its own defaults (the sr task's SR3: diffusion term, cosine schedule) brings them."""
        name = self.model_combo.currentData()
        if name:
            self._apply_defaults(self.task().config_for_model(name))

    def _apply_defaults(self, cfg) -> None:
        task = self.task()
        unavailable = task.unavailable_terms(cfg)
        for name, slider in self.sliders.items():
            slider.setValue(float(cfg.loss.weights.get(name, 0.0)))
            why = unavailable.get(name)  # off, and the tooltip says why (e.g. no perceptual feature network)
            slider.setEnabled(why is None)
            for w in (slider, self.slider_labels[name]):
                w.setToolTip(f"Off: {why}" if why else TERM_LABELS.get(name, name))
        self.steps.setValue(cfg.train.steps)
        self.lr.setValue(cfg.train.lr)
        self.schedule.setCurrentIndex(max(self.schedule.findData(cfg.train.schedule), 0))
        self.patch.setValue(task.patch_size(cfg))
        self.batch.setValue(cfg.data.batch_size)
        self.filters.setValue(cfg.model.base_filters)
        self._update_buttons()

    # ------------------------------------------------------------------ config
    def weights(self) -> dict[str, float]:
        return {name: round(float(s.value()), 4) for name, s in self.sliders.items()}

    def make_config(self):
        """The run's :class:`workbench.config.Config` from the widget's values."""
        task = self.task()
        cfg = task.config_for_model(self.model_combo.currentData()).model_copy(deep=True)
        if self.task_options:
            cfg.options = {**cfg.options, **self.task_options}
        cfg.model.base_filters = self.filters.value()
        task.set_patch_size(cfg, self.patch.value())
        cfg.data.batch_size = self.batch.value()
        weights = self.weights()
        if not any(weights.values()):
            raise ValueError("Give at least one loss term a weight above 0")
        cfg.loss.weights = weights  # every term, zeros included: the run log gets a column for each
        steps = self.steps.value()
        cfg.train.steps = steps
        cfg.train.lr = float(self.lr.value())
        cfg.train.schedule = self.schedule.currentData()
        cfg.train.amp = self.amp.currentData()
        cfg.train.device = self.device.currentData()
        cfg.train.threads = self.threads.value()
        cfg.train.val_every = min(100, max(5, steps // 10))
        cfg.train.checkpoint_every = min(200, max(10, steps // 5))
        return cfg

    def _resume_config(self, folder: Path):
        from workbench.config import load_config

        cfg = load_config(folder / "config.yaml")  # the run's own config: only steps/device may change
        index = self.task_combo.findData(cfg.task)
        if index < 0:
            raise ValueError(f"the run in {folder} is for task '{cfg.task}', which this panel cannot train")
        if index != self.task_combo.currentIndex():
            self.task_combo.setCurrentIndex(index)
        cfg.train.steps = max(self.steps.value(), 1)
        cfg.train.device = self.device.currentData()
        cfg.train.threads = self.threads.value()
        self.model_combo.setCurrentIndex(max(self.model_combo.findData(cfg.model.name), 0))
        for spin, value in ((self.filters, cfg.model.base_filters), (self.patch, self.task().patch_size(cfg)),
                            (self.batch, cfg.data.batch_size)):
            spin.setValue(value)
        return cfg

    # ------------------------------------------------------------------ actions
    def is_running(self) -> bool:
        return self.worker is not None

    def start(self, resume: bool = False) -> None:
        """Start a new run (or resume the one in the run folder) in a worker thread."""
        from workbench.loss_weights import LossWeights
        from napari_plugin._workers import Control, train_worker

        if self.is_running():
            return
        try:
            task = self.task()
            chosen = {}
            for spec in task.train_inputs:
                layer = self.inputs[spec.role].layer()
                if layer is None and not spec.optional:
                    raise ValueError(f"Choose the {spec.label} first (File > Open, or File > Open Sample)")
                chosen[spec.role] = (spec, layer)
            data_dir = None
            if self.data_dir is not None:
                data_dir = self.data_dir.text()
                if not data_dir or not Path(data_dir).expanduser().is_dir():
                    raise ValueError("Choose the training data folder (simulated cases) first")
                data_dir = str(Path(data_dir).expanduser())
            folder = Path(self.run_dir.text()).expanduser()
            has_run = (folder / "last.pt").is_file()
            if resume:
                if not has_run or not (folder / "config.yaml").is_file():
                    raise ValueError(f"Nothing to resume in {folder}: press Start for a new run")
                cfg = self._resume_config(folder)
            else:
                if has_run and self._auto_folder:
                    self.run_dir.setText(new_run_folder())
                    self._auto_folder = True
                    folder = Path(self.run_dir.text())
                elif has_run:
                    raise ValueError(f"{folder} already holds a run: press Resume, or choose another folder")
                cfg = self.make_config()
                self.plot.reset()

            def make_inputs(chosen=chosen):
                return {role: None if layer is None else input_array(layer, spec)
                        for role, (spec, layer) in chosen.items()}
        except Exception as exc:  # pydantic errors, bad layers, bad folders: all in plain words
            self._fail(str(exc), exc)
            return
        # the sliders' weights, also on resume: the trainer keeps weights moved while stopped (recorded as
        # WeightsChanged from the resumed step on)
        self.loss_weights = LossWeights(self.weights() if resume else cfg.loss.weights)
        self.result, self.last_error = None, None
        self.progress.setMaximum(cfg.train.steps)
        self.control = Control()
        self.worker = train_worker(task.name, make_inputs, cfg, str(folder), resume=resume,
                                   loss_weights=self.loss_weights, control=self.control, data_dir=data_dir)
        self.control.worker = self.worker
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.status.info("Starting…")
        self.watch_for_close()
        self.plot.start()
        self._ui_timer.start()
        self.worker.start()
        self._update_buttons()

    def stop(self) -> None:
        """Ask training to stop after the current step; the core writes last.pt."""
        if self.control is not None:
            self.control.stop()
            self.status.info("Stopping after the current step…")

    def shutdown(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Stop training (panel or napari closing); with ``wait``, block until last.pt is written."""
        control = self.control
        if control is None:
            return
        control.stop()
        if wait and control.fitting:
            control.done.wait(timeout)

    # ------------------------------------------------------------------ live weights
    def _weight_moved(self, name: str, value: float) -> None:
        if self.loss_weights is None or not self.is_running():
            return
        self._pending[name] = round(float(value), 4)
        self._weight_timer.start()

    def _apply_pending_weights(self) -> None:
        pending, self._pending = self._pending, {}
        lw = self.loss_weights
        if lw is None:
            return
        current = lw.get()
        for name, value in pending.items():
            if current.get(name, 0.0) != value:
                lw.set(name, value)  # thread-safe; the trainer applies it from the next step on

    # ------------------------------------------------------------------ worker events
    def _on_event(self, ev) -> None:
        from workbench.training.events import Failed, Finished, StepEnd, Validation, WeightsChanged
        from napari_plugin._workers import Status, TrainerReady

        if isinstance(ev, StepEnd):
            self._latest_step = ev
            self.plot.add_step(ev)
        elif isinstance(ev, Validation):
            self.plot.add_validation(ev)
            what = ("held-out error (each volume predicted without seeing it; lower is better)"
                    if "heldout_mse" in ev.terms else "validation loss (held-out patches; lower is better)")
            self.status.info(f"Step {ev.step}: {what} {ev.terms.get('heldout_mse', ev.loss):.4g}"
                             + (", best so far" if ev.is_best else ""))
        elif isinstance(ev, WeightsChanged):
            self.plot.mark_weight_change(ev)
            self.status.info(f"{TERM_LABELS.get(ev.name, ev.name)} weight {ev.old:g} → {ev.new:g} "
                             f"from step {ev.step}")
        elif isinstance(ev, Finished):
            words = {"completed": "Finished", "stopped": "Stopped", "early_stopping": "Stopped early (no gain)"}
            self.status.info(f"{words.get(ev.reason, ev.reason)} at step {ev.step}. "
                             f"Last checkpoint: {ev.last_checkpoint}")
            info = _session.run_for(self.viewer)
            if info is not None:
                info.last_checkpoint, info.best_checkpoint = ev.last_checkpoint, ev.best_checkpoint
        elif isinstance(ev, Failed):
            self.status.error(f"Training failed at step {ev.step}: {ev.error}", ev.traceback)
        elif isinstance(ev, TrainerReady):
            self.trainer = ev.trainer
            self.loss_weights = ev.trainer.loss_weights
            amp = "on" if ev.amp else "off"
            self.device_info.setText(f"Running on {ev.device.upper()} (mixed precision {amp}). {cuda_description()}")
            _session.set_run(self.viewer, _session.RunInfo(trainer=ev.trainer, run_dir=ev.run_dir,
                                                           layer_name=self.layer_combo.currentText()
                                                           if self.inputs else None, running=True))
            self.status.info("Resuming from last.pt…" if ev.resume else "Training…")
        elif isinstance(ev, Status):
            self.status.info(ev.text)

    def _show_progress(self) -> None:
        ev, self._latest_step = self._latest_step, None
        if ev is None:
            return
        self.progress.setMaximum(ev.total_steps)
        self.progress.setValue(ev.step)
        self.time_left.setText(f"About {format_duration(ev.eta_s)} left (running for {format_duration(ev.elapsed_s)})")

    def _on_returned(self, result) -> None:
        self.result = result

    def _on_error(self, exc: BaseException) -> None:
        self.last_error = exc
        if not self.status.is_error:  # the Failed event may already have said it
            self.status.error(f"Training failed: {exc}", repr(exc))
        notify_exception(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._ui_timer.stop()
        self._show_progress()
        self.plot.stop()
        info = _session.run_for(self.viewer)
        if info is not None:
            info.running = False
        self._update_buttons()

    def _fail(self, message: str, exc: Optional[BaseException] = None) -> None:
        self.last_error = exc
        self.status.error(message)
        show_error_notification(message)

    def _folder_edited(self, _text: str) -> None:
        self._auto_folder = False
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.is_running()
        self.start_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        folder = Path(self.run_dir.text() or ".")
        self.resume_btn.setEnabled(not running and (folder / "last.pt").is_file())
        folder_picker = [self.data_dir] if self.data_dir is not None else []
        for w in (self.task_combo, *self.inputs.values(), *folder_picker, self.model_combo, self.patch, self.batch,
                  self.filters, self.run_dir, self.lr, self.schedule, self.amp, self.device, self.steps, self.threads):
            w.setEnabled(not running)

    def on_window_closed(self) -> None:
        _session.set_run(self.viewer, None)
