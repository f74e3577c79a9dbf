"""Stop a panel's work when the panel or napari closes (mixin for QWidget panels).

Three ways a panel goes away, three hooks: the main window closes (an event
filter on it), the panel is removed from its dock (its parent becomes None), the
application quits (``aboutToQuit``, where the panel may block until the core has
written its checkpoint). napari also aborts running workers when its window
closes; the workers notice that too (``Control.aborted``).
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QApplication


class StopsOnClose:
    """Mixin placed before ``QWidget``; subclasses implement :meth:`shutdown`."""

    def shutdown(self, wait: bool = False) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_window_closed(self) -> None:
        """Called once the main window is closed (after :meth:`shutdown`)."""

    def watch_for_close(self) -> None:
        """Install the hooks (call when work starts and when shown; idempotent)."""
        window = self.window()
        if window is not self and window is not getattr(self, "_watched_window", None):
            window.installEventFilter(self)
            self._watched_window = window
        app = QApplication.instance()
        if app is not None and not getattr(self, "_quit_hooked", False):
            app.aboutToQuit.connect(self._about_to_quit)
            self._quit_hooked = True

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.watch_for_close()

    def eventFilter(self, obj, event) -> bool:
        watched = getattr(self, "_watched_window", None)  # None while Python tears the widget down
        if watched is not None and obj is watched and event.type() == QEvent.Type.Close:
            QTimer.singleShot(0, self._after_window_close)  # closing may still be cancelled by the user
        return False

    def _after_window_close(self) -> None:
        window = getattr(self, "_watched_window", None)
        try:
            closed = window is None or not window.isVisible()
        except RuntimeError:
            closed = True
        if closed:
            self.shutdown(wait=False)
            self.on_window_closed()

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and self.parent() is None \
                and getattr(self, "_watched_window", None) is not None:
            self.shutdown(wait=False)  # the panel was removed from the viewer
        return super().event(event)

    def closeEvent(self, event) -> None:
        self.shutdown(wait=False)
        super().closeEvent(event)

    def _about_to_quit(self) -> None:
        self.shutdown(wait=True)


class WorkerPanel(StopsOnClose):
    """A panel that runs one ``thread_worker`` at a time with a Run and a Stop button.

    Subclasses create ``run_btn``, ``cancel_btn``, ``progress`` (a QProgressBar) and
    ``status`` (a StatusLine), call :meth:`start_worker` with a worker and its ``Control``,
    and implement ``_on_returned(result)`` and ``_on_error(exc)``. Progress and Status
    items the worker yields update the bar and the status line.
    """

    worker = None
    control = None

    def add_run_controls(self, root, run_text: str, stop_text: str, progress_format: str, hint: str) -> None:
        """Run and Stop buttons, a progress bar and a status line, appended to the layout ``root``."""
        from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton

        from napari_plugin._widgets._common import StatusLine

        row = QHBoxLayout()
        self.run_btn, self.cancel_btn = QPushButton(run_text), QPushButton(stop_text)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setFormat(progress_format)
        self.status = StatusLine(hint)
        root.addWidget(self.progress)
        root.addWidget(self.status)
        root.addStretch(1)
        self._update_buttons()

    def start_worker(self, worker, control) -> None:
        self.control, self.worker = control, worker
        control.worker = worker
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        worker.start()
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

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.run_btn.setEnabled(self.worker is None)
        self.cancel_btn.setEnabled(self.worker is not None)

    def shutdown(self, wait: bool = False) -> None:
        self.cancel()
        if wait and self.worker is not None and self.control is not None:
            self.control.done.wait(5)
