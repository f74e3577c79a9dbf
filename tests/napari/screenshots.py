"""Screenshots of every panel in use (not a test; run by hand):

    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1920x1200x24" python tests/napari/screenshots.py OUT_DIR

Writes train_midrun.png, denoise.png, compare.png, edges.png, attention.png, review.png, and for the
super-resolution task sr_predict.png and sr_compare.png (``... screenshots.py OUT_DIR sr`` writes only those),
and for SR3 sr3_predict.png (``... screenshots.py OUT_DIR sr3``), and for NIR diffuse optical tomography
dot_reconstruct.png (``... screenshots.py OUT_DIR dot``), and for CT from biplanar X-rays xray2ct_reconstruct.png
and xray2ct_3d.png (``... screenshots.py OUT_DIR xray2ct``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def _wait(app, cond, timeout=180.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.02)


def _grab(viewer, path: Path, app) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    viewer.window._qt_window.grab().save(str(path))
    print("wrote", path, path.stat().st_size // 1024, "KB")


def _only(viewer, keep) -> None:
    for name in list(viewer.window._dock_widgets):
        if name not in keep and "recon-workbench" in name:
            viewer.window._dock_widgets[name].hide()


def _viewer_with(out: Path, sample: str):
    """A 1500x980 viewer with one of the plugin's samples open, and the Qt application."""
    import napari
    from qtpy.QtWidgets import QApplication

    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 980)
    viewer.open_sample("recon-workbench", sample)
    return viewer, QApplication.instance()


def main(out: Path) -> None:
    from qtpy.QtWidgets import QScrollArea
    from workbench.training.events import StepEnd, WeightsChanged

    from napari_plugin._layers import axial_view, grid
    from napari_plugin._sample_data import CLEAN_NAME, MASK_NAME, NOISY_NAME

    viewer, app = _viewer_with(out, "dwi_phantom")
    axial_view(viewer)
    viewer.dims.set_current_step(0, 4)
    viewer.reset_view()

    # Train, mid-run, after a live weight change
    dock, train = viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    train.steps.setValue(60)
    train.patch.setValue(16)
    train.filters.setValue(8)
    train.batch.setValue(2)
    train.run_dir.setText(tempfile.mkdtemp(prefix="recon-workbench-shot-"))
    events = []
    train.start()
    train.worker.yielded.connect(events.append)
    _wait(app, lambda: sum(isinstance(e, StepEnd) for e in events) >= 12)
    train.sliders["edge"].setValue(0.3)
    _wait(app, lambda: any(isinstance(e, WeightsChanged) for e in events))
    _wait(app, lambda: sum(isinstance(e, StepEnd) for e in events) >= 28)
    train.plot._redraw()
    area = train.findChild(QScrollArea)
    area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())
    _grab(viewer, out / "train_midrun.png", app)
    train.stop()
    _wait(app, lambda: train.worker is None)

    # Denoise with the model just trained
    _only(viewer, ())
    _, den = viewer.window.add_plugin_dock_widget("recon-workbench", "Denoise")
    den.mask_combo.set_layer(MASK_NAME)
    den.run()
    _wait(app, lambda: den.worker is None)
    _grab(viewer, out / "denoise.png", app)

    # Compare: reconstruction vs reference, noisy and MP-PCA, with metrics
    _only(viewer, ())
    _, cmp = viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    cmp.recon.set_layer(den.output_layer.name)
    cmp.reference.set_layer(CLEAN_NAME)
    cmp.noisy.set_layer(NOISY_NAME)
    cmp.mask.set_layer(MASK_NAME)
    cmp.compute_baseline()
    _wait(app, lambda: cmp.baseline_worker is None)
    viewer.dims.set_current_step(0, 6)
    cmp.show_side_by_side()
    axial_view(viewer)
    viewer.reset_view()
    _wait(app, lambda: cmp.metrics_volume == 6)
    _grab(viewer, out / "compare.png", app)
    cmp.single_view()

    # Edge maps
    _only(viewer, ())
    _, edges = viewer.window.add_plugin_dock_widget("recon-workbench", "Edge maps")
    edges.input.set_layer(NOISY_NAME)
    edges.prediction.set_layer(den.output_layer.name)
    edges.reference.set_layer(CLEAN_NAME)
    edges.compute()
    _wait(app, lambda: edges.worker is None)
    for layer in viewer.layers:
        layer.visible = layer.name.startswith("edges:")
    grid(viewer).enabled = True
    viewer.reset_view()
    _grab(viewer, out / "edges.png", app)
    grid(viewer).enabled = False

    # Attention overlay on the noisy image
    _only(viewer, ())
    _, att = viewer.window.add_plugin_dock_widget("recon-workbench", "Attention maps")
    att.mask_combo.set_layer(MASK_NAME)
    att.compute()
    _wait(app, lambda: att.worker is None)
    for layer in viewer.layers:
        layer.visible = layer.name in (NOISY_NAME, att.overlay.name)
    viewer.reset_view()
    _grab(viewer, out / "attention.png", app)

    # Blinded review
    _only(viewer, ())
    _, rev = viewer.window.add_plugin_dock_widget("recon-workbench", "Clinician review")
    rev.file_picker.setText(str(Path(tempfile.mkdtemp(prefix="review-shot-")) / "review.json"))
    rev.case_edit.setText("phantom-01")
    rev.set_checked([NOISY_NAME, den.output_layer.name, cmp.baseline.currentText()])
    rev.start()
    rev.groups[("A", "sharpness")].button(4).click()
    rev.groups[("A", "noise")].button(3).click()
    rev.comments["A"].setText("mild blurring of the cortex")
    rev.volume_spin.setValue(5)
    rev.slice_spin.setValue(8)
    _grab(viewer, out / "review.png", app)
    viewer.close()


def main_sr(out: Path) -> None:
    """Soil sample x4: the Predict panel's result beside tricubic and the HR reference, in a grid."""
    from napari_plugin._layers import axial_view, grid, show_name

    viewer, app = _viewer_with(out, "soil_sr")
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.run()
    _wait(app, lambda: panel.worker is None)
    for layer in viewer.layers:
        layer.visible = True
        show_name(layer, True)
    grid(viewer).enabled = True
    grid(viewer).shape = (2, 2)
    axial_view(viewer)
    viewer.dims.set_current_step(2, viewer.dims.nsteps[2] // 2)
    viewer.reset_view()
    _grab(viewer, out / "sr_predict.png", app)
    grid(viewer).enabled = False
    _only(viewer, ())
    _, cmp = viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    cmp.show_side_by_side()
    _wait(app, lambda: bool(cmp.metrics))
    _grab(viewer, out / "sr_compare.png", app)
    viewer.close()


def main_sr3(out: Path) -> None:
    """Soil 8x in-plane: SR3 mean, its uncertainty overlay and the samples, beside bicubic and the HR reference."""
    from napari_plugin._layers import axial_view, grid, show_name

    viewer, app = _viewer_with(out, "soil_sr3")
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.set_choice("model", "sr3")
    panel.set_choice("samples", 4)
    panel.run()
    _wait(app, lambda: panel.worker is None, timeout=600)
    std, samples = panel.extra_layers
    for layer in viewer.layers:
        layer.visible = layer is not std
        show_name(layer, True)
    viewer.layers.move(viewer.layers.index(samples), len(viewer.layers) - 1)
    grid(viewer).enabled = True
    grid(viewer).shape = (2, 3)
    axial_view(viewer)
    viewer.reset_view()
    _grab(viewer, out / "sr3_predict.png", app)
    grid(viewer).enabled = False
    for layer in viewer.layers:
        layer.visible = layer in (panel.output_layer, std)
    viewer.reset_view()
    _grab(viewer, out / "sr3_uncertainty.png", app)
    viewer.close()


def main_dot(out: Path) -> None:
    """NIR-DOT phantom: the shipped network's mu_a and mu_s' beside the phantom, with the optodes, sliced through the
    inclusions; the panel shows the fit to the boundary data and the metrics."""
    viewer, app = _viewer_with(out, "dot_phantom")
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Reconstruct NIR-DOT")
    panel.run()
    _wait(app, lambda: panel.worker is None, timeout=900)
    if panel.last_error is not None:
        raise panel.last_error
    panel.show_beside_phantom()
    _grab(viewer, out / "dot_reconstruct.png", app)
    viewer.close()


def main_xray2ct(out: Path, checkpoint=None) -> dict:
    """Biplanar X-ray phantom: the network's CT (a sagittal slice, head up) between the AP and lateral X-rays,
    their re-projection residuals below them, the metrics in the panel; then the 3D view (the CT as an attenuated
    maximum intensity projection, the X-rays where their detectors stand). ``checkpoint``: a stage-1 best.pt (None: the
    shipped one). Returns the panel's metrics."""
    viewer, app = _viewer_with(out, "xray2ct_phantom")
    viewer.window._qt_window.resize(1800, 1000)
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Reconstruct CT from X-rays")
    if checkpoint:
        panel.stage1.setText(str(checkpoint))
    panel.run()
    _wait(app, lambda: panel.worker is None, timeout=900)
    if panel.last_error is not None:
        raise panel.last_error
    metrics = dict(panel.result.metrics or {})
    panel.show_beside()
    _grab(viewer, out / "xray2ct_reconstruct.png", app)
    panel.view3d_btn.setChecked(True)
    _grab(viewer, out / "xray2ct_3d.png", app)
    panel.view3d_btn.setChecked(False)
    viewer.close()
    return metrics


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots")
    if sys.argv[2:] == ["sr"]:
        main_sr(target)
    elif sys.argv[2:] == ["sr3"]:
        main_sr3(target)
    elif sys.argv[2:] == ["dot"]:
        main_dot(target)
    elif sys.argv[2:] == ["xray2ct"]:
        main_xray2ct(target)
    else:
        main(target)
        main_sr(target)
        main_sr3(target)
        main_dot(target)
        main_xray2ct(target)
