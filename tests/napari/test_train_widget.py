"""Train panel in a real viewer: start, live weight change, stop, resume, denoise with the live model,
errors shown in the panel and in napari's notifications, closing napari keeps the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari_helpers import error_notifications, tiny_settings, wait_idle

from napari_plugin._sample_data import NOISY_NAME


def _train_widget(viewer, run_dir: Path):
    _, widget = viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    tiny_settings(widget)
    widget.run_dir.setText(str(run_dir))
    assert widget.layer_combo.currentText() == NOISY_NAME
    return widget


def test_train_change_weight_stop_resume_then_denoise(sample_viewer, qtbot, tmp_path):
    from workbench.training.events import StepEnd, WeightsChanged

    viewer = sample_viewer
    widget = _train_widget(viewer, tmp_path / "run")
    tiny_settings(widget, steps=40)  # long enough that the test, not the step count, ends the first run
    events = []
    widget.start()
    widget.worker.yielded.connect(events.append)
    assert not widget.start_btn.isEnabled() and widget.stop_btn.isEnabled()

    # a live weight change from the slider reaches the trainer, which emits WeightsChanged
    qtbot.waitUntil(lambda: any(isinstance(e, StepEnd) for e in events), timeout=60_000)
    widget.sliders["edge"].setValue(0.2)
    qtbot.waitUntil(lambda: any(isinstance(e, WeightsChanged) for e in events), timeout=30_000)
    change = next(e for e in events if isinstance(e, WeightsChanged))
    assert (change.name, change.old, change.new) == ("edge", pytest.approx(0.05), pytest.approx(0.2))
    assert {"step": change.step, "name": "edge", "old": pytest.approx(0.05), "new": pytest.approx(0.2)} \
        in widget.trainer.weights_history
    assert any(h["name"] == "edge" and h["new"] == pytest.approx(0.2) for h in widget.trainer.loss_weights.history)
    qtbot.waitUntil(lambda: any(isinstance(e, StepEnd) and e.step >= change.step for e in events), timeout=30_000)
    after = [e for e in events if isinstance(e, StepEnd) and e.step >= change.step]
    assert after[0].weights["edge"] == pytest.approx(0.2)  # in effect from the recorded step on
    assert any(step == change.step for step, _ in widget.plot.markers)  # marked on the loss plot

    widget.stop()
    wait_idle(qtbot, widget)
    assert widget.result.reason == "stopped"
    stopped_at = widget.result.steps_done
    assert (tmp_path / "run" / "last.pt").is_file()
    assert "Stopped" in widget.status.text() and widget.resume_btn.isEnabled()
    assert widget.progress.value() == stopped_at

    widget.steps.setValue(stopped_at + 2)
    widget.start(resume=True)
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.result.reason == "completed" and widget.result.steps_done == stopped_at + 2
    # the resumed trainer carries the change (restored from the checkpoint) and uses the new weight
    assert widget.trainer.loss_weights.get()["edge"] == pytest.approx(0.2)
    assert any(h["name"] == "edge" for h in widget.trainer.weights_history)
    assert widget.plot.steps[-1] == stopped_at + 2

    # denoise with a snapshot of the model that was just trained
    _, den = viewer.window.add_plugin_dock_widget("recon-workbench", "Denoise")
    den.run()
    wait_idle(qtbot, den)
    assert den.last_error is None, den.last_error
    src, out = viewer.layers[NOISY_NAME], den.output_layer
    assert out.name == f"{NOISY_NAME} denoised" and out.data.shape == src.data.shape
    assert np.allclose(out.scale, src.scale) and np.allclose(out.translate, src.translate)
    assert np.allclose(out.metadata["affine"], src.metadata["affine"])
    assert np.allclose(out.metadata["bvals"], src.metadata["bvals"])
    assert out.metadata["denoise"]["heldout_mse"] > 0
    # every volume, then the slabs of the two MP-PCA runs of the blend, on one bar that ends full
    assert den.progress.value() == den.progress.maximum() > src.data.shape[0]


def test_failing_trainer_shows_error_in_widget_and_notifications(sample_viewer, qtbot, tmp_path, monkeypatch):
    from workbench.training import trainer as trainer_mod

    def boom(self):
        raise RuntimeError("simulated failure inside the training step")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", boom)
    widget = _train_widget(sample_viewer, tmp_path / "run")
    widget.start()
    wait_idle(qtbot, widget)
    assert widget.last_error is not None  # RuntimeError wrapped, so superqt does not swallow it
    assert widget.status.is_error and "simulated failure" in widget.status.text()
    assert any("simulated failure" in m for m in error_notifications())
    assert widget.start_btn.isEnabled()


def test_config_the_trainer_rejects_is_reported(sample_viewer, qtbot, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (the trainer refuses device=cuda there)")
    widget = _train_widget(sample_viewer, tmp_path / "run")
    assert "No CUDA GPU" in widget.device_info.text()
    widget.device.setCurrentIndex(widget.device.findData("cuda"))
    widget.start()
    wait_idle(qtbot, widget)
    assert widget.status.is_error and "cuda" in widget.status.text().lower()
    assert any("cuda" in m.lower() for m in error_notifications())


@pytest.mark.parametrize("how", ["close napari", "close the panel"])
def test_closing_stops_training_and_keeps_checkpoint(sample_viewer, qtbot, tmp_path, how):
    from workbench.training.events import StepEnd

    widget = _train_widget(sample_viewer, tmp_path / "run")
    tiny_settings(widget, steps=500)
    steps = []
    widget.start()
    widget.worker.yielded.connect(lambda e: steps.append(e) if isinstance(e, StepEnd) else None)
    qtbot.waitUntil(lambda: bool(steps), timeout=60_000)
    control = widget.control
    if how == "close napari":
        sample_viewer.close()
    else:
        sample_viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(control.done.is_set, timeout=60_000)
    assert (tmp_path / "run" / "last.pt").is_file()
    from workbench.training.checkpoint import load_checkpoint

    assert 1 <= load_checkpoint(tmp_path / "run" / "last.pt")["step"] < 500
