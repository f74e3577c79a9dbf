"""The Train panel's run settings (steps, device, and the collapsible advanced ones), built onto the panel."""

from __future__ import annotations

import os

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QSpinBox, QWidget
from superqt import QCollapsible

from napari_plugin._widgets._train_options import AMP_CHOICES, DEVICES, SCHEDULES, cuda_description, default_threads


def add_run_settings(panel, root, defaults) -> None:
    """Create ``panel.steps, lr, schedule, amp, device, device_info, patch, batch, filters, threads``
    and ``panel.advanced`` from a default config, and add them to the layout ``root``."""
    form = QFormLayout()
    panel.steps = QSpinBox()
    panel.steps.setRange(1, 1_000_000)
    panel.steps.setValue(defaults.train.steps)
    panel.lr = QDoubleSpinBox()
    panel.lr.setDecimals(5)
    panel.lr.setRange(1e-5, 1.0)
    panel.lr.setSingleStep(1e-4)
    panel.lr.setValue(defaults.train.lr)
    panel.schedule = QComboBox()
    for label, value in SCHEDULES:
        panel.schedule.addItem(label, value)
    panel.amp = QComboBox()
    for label, value in AMP_CHOICES:
        panel.amp.addItem(label, value)
    panel.device = QComboBox()
    for label, value in DEVICES:
        panel.device.addItem(label, value)
    panel.device_info = QLabel(cuda_description())
    panel.device_info.setWordWrap(True)
    panel.patch = QSpinBox()
    panel.patch.setRange(8, 256)
    panel.patch.setSingleStep(8)
    panel.patch.setValue(defaults.data.patch_size)
    panel.batch = QSpinBox()
    panel.batch.setRange(1, 256)
    panel.batch.setValue(defaults.data.batch_size)
    panel.filters = QSpinBox()
    panel.filters.setRange(4, 256)
    panel.filters.setValue(defaults.model.base_filters)
    panel.threads = QSpinBox()
    panel.threads.setRange(1, max(os.cpu_count() or 1, 1))
    panel.threads.setValue(default_threads())
    panel.threads.setToolTip("CPU threads for training; one core is left free so the viewer stays responsive")
    form.addRow("Training steps (total)", panel.steps)
    form.addRow("Device", panel.device)
    form.addRow(panel.device_info)
    root.addLayout(form)
    panel.advanced = QCollapsible("More settings (learning rate, precision, patch size)")
    inner = QWidget()
    form = QFormLayout(inner)
    form.setContentsMargins(0, 0, 0, 0)
    form.addRow("Learning rate", panel.lr)
    form.addRow("Rate schedule", panel.schedule)
    form.addRow("Mixed precision", panel.amp)
    form.addRow("Patch size (voxels)", panel.patch)
    form.addRow("Batch size", panel.batch)
    form.addRow("Network width", panel.filters)
    form.addRow("CPU threads", panel.threads)
    panel.advanced.addWidget(inner)
    root.addWidget(panel.advanced)
