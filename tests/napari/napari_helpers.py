"""Helpers shared by the napari plugin tests."""

from __future__ import annotations

TINY = dict(steps=6, patch=8, filters=8, batch=2)


def tiny_settings(widget, steps: int = TINY["steps"]) -> None:
    """The smallest useful training setup (patch 8, 8 filters, batch 2)."""
    widget.steps.setValue(steps)
    widget.patch.setValue(TINY["patch"])
    widget.filters.setValue(TINY["filters"])
    widget.batch.setValue(TINY["batch"])
    widget.amp.setCurrentIndex(widget.amp.findData(False))


def wait_idle(qtbot, widget, attr: str = "worker", timeout: int = 90_000) -> None:
    qtbot.waitUntil(lambda: getattr(widget, attr) is None, timeout=timeout)


def error_notifications() -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]
