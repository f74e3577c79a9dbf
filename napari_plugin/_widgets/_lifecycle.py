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
