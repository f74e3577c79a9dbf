"""Denoise from a checkpoint, compare view, edge maps and attention maps in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari_helpers import error_notifications, wait_idle

from napari_plugin._layers import grid
from napari_plugin._sample_data import CLEAN_NAME, MASK_NAME, NOISY_NAME


def _add_reconstruction(viewer):
    """A stand-in reconstruction: the clean reference plus a little noise (fast, deterministic)."""
    from napari_plugin._layers import derived_kwargs

    clean = viewer.layers[CLEAN_NAME]
    rng = np.random.default_rng(0)
    data = (clean.data + rng.normal(0, 5.0, clean.data.shape)).astype(np.float32)
    return viewer.add_image(data, **derived_kwargs(clean, "reconstruction"))


def test_denoise_from_checkpoint_file(sample_viewer, qtbot, tiny_checkpoint):
    _, den = sample_viewer.window.add_plugin_dock_widget("recon-workbench", "Denoise")
    den.source.from_file.setChecked(True)
    den.source.checkpoint.setText(str(tiny_checkpoint))
    den.mask_combo.set_layer(MASK_NAME)
    den.run()
    wait_idle(qtbot, den)
    assert den.last_error is None, den.last_error
    out, src = den.output_layer, sample_viewer.layers[NOISY_NAME]
    assert out.data.shape == src.data.shape and np.isfinite(out.data).all()
    np.testing.assert_allclose(out.scale, src.scale)
    assert "checkpoint" in out.metadata["denoise"]["model"]
    # the panel gives what `workbench denoise` gives for the same checkpoint: same sigma, MP-PCA blend, output
    from napari_plugin._layers import inputs_fn, to_layer_order
    from workbench.api import denoise_series

    series, mask = inputs_fn(src, sample_viewer.layers[MASK_NAME])()
    expected, report = denoise_series(series, checkpoint=tiny_checkpoint, mask=mask)
    meta = out.metadata["denoise"]
    assert meta["sigma"] == pytest.approx(report.sigma) and meta["blend_weights_mean"] is not None
    assert meta["est_rmse_vs_clean"] == pytest.approx(report.est_rmse_vs_clean, rel=1e-5)
    np.testing.assert_allclose(out.data, to_layer_order(expected), atol=1e-4 * float(np.abs(expected).max()))
    assert "estimated error to the clean signal" in den.status.text()
    # per shell, as the CLI and OUT.json give it, with the warning beside a flagged shell
    assert meta["est_rmse_per_shell"] == report.est_rmse_per_shell
    assert "per shell: b=0:" in den.status.text()
    assert (report.est_warning is not None) == ("may be low" in den.status.text())


def test_denoise_without_model_says_what_to_do(sample_viewer):
    _, den = sample_viewer.window.add_plugin_dock_widget("recon-workbench", "Denoise")
    den.run()
    assert den.worker is None and den.status.is_error and "Train panel" in den.status.text()
    assert any("Train panel" in m for m in error_notifications())


def test_compare_view_grid_difference_metrics_follow_volume_and_baseline(sample_viewer, qtbot):
    viewer = sample_viewer
    recon = _add_reconstruction(viewer)
    _, cmp = viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    # sensible defaults with the sample data: reference, noisy input and mask are filled in
    assert (cmp.reference.currentText(), cmp.noisy.currentText(), cmp.mask.currentText()) == \
        (CLEAN_NAME, NOISY_NAME, MASK_NAME)
    cmp.recon.set_layer(recon.name)
    cmp.reference.set_layer(CLEAN_NAME)
    cmp.noisy.set_layer(NOISY_NAME)
    cmp.mask.set_layer(MASK_NAME)

    cmp.compute_baseline()  # MP-PCA through workbench.baselines.run_baseline
    wait_idle(qtbot, cmp, "baseline_worker", timeout=120_000)
    assert cmp.baseline.currentText() == f"{NOISY_NAME} MP-PCA"
    baseline = viewer.layers[cmp.baseline.currentText()]
    assert baseline.data.shape == recon.data.shape

    viewer.dims.set_current_step(0, 3)
    cmp.show_side_by_side()
    assert grid(viewer).enabled
    diff = cmp.diff_layer
    assert diff is not None and diff.name.startswith("difference")
    np.testing.assert_allclose(diff.data, recon.data - viewer.layers[CLEAN_NAME].data, atol=1e-4)
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert set(shown) == {recon.name, CLEAN_NAME, NOISY_NAME, baseline.name, diff.name}
    assert viewer.layers[NOISY_NAME].contrast_limits == viewer.layers[CLEAN_NAME].contrast_limits
    # titles stay whole: two columns, and the longest name at its font size fits the cell
    from napari_plugin._layers import GLYPH_WIDTH, PT_TO_PX, canvas_width

    assert tuple(grid(viewer).shape) == (3, 2)
    cell = canvas_width(viewer) / 2
    for layer in (layer for layer in viewer.layers if layer.visible):
        assert layer.name_overlay.visible
        assert GLYPH_WIDTH * len(layer.name) * layer.name_overlay.font_size * PT_TO_PX <= cell or \
            layer.name_overlay.font_size == 5.5

    qtbot.waitUntil(lambda: cmp.metrics_volume == 3, timeout=30_000)
    from workbench.metrics import psnr, ssim3d

    ref, mask = viewer.layers[CLEAN_NAME].data, viewer.layers[MASK_NAME].data > 0
    dr = float(ref[:, mask].max())
    assert cmp.metrics[recon.name][0] == pytest.approx(psnr(recon.data[3], ref[3], mask, data_range=dr))
    assert cmp.metrics[recon.name][1] == pytest.approx(ssim3d(recon.data[3], ref[3], mask, data_range=dr))
    assert set(cmp.metrics) == {recon.name, NOISY_NAME, baseline.name}
    assert cmp.metrics[recon.name][0] > cmp.metrics[NOISY_NAME][0]
    assert cmp.table.rowCount() == 3 and "Volume 3" in cmp.table_title.text()

    viewer.dims.set_current_step(0, 10)  # the table follows the volume slider
    qtbot.waitUntil(lambda: cmp.metrics_volume == 10, timeout=30_000)
    assert cmp.metrics[recon.name][0] == pytest.approx(psnr(recon.data[10], ref[10], mask, data_range=dr))
    cmp.single_view()
    assert not grid(viewer).enabled


def test_edge_maps_use_the_edge_loss_operator(sample_viewer, qtbot):
    from workbench.inference import edge_map

    viewer = sample_viewer
    recon = _add_reconstruction(viewer)
    _, edges = viewer.window.add_plugin_dock_widget("recon-workbench", "Edge maps")
    edges.input.set_layer(NOISY_NAME)
    edges.prediction.set_layer(recon.name)
    edges.reference.set_layer(CLEAN_NAME)
    viewer.dims.set_current_step(0, 5)
    edges.compute()
    wait_idle(qtbot, edges)
    assert set(edges.edge_layers) == {NOISY_NAME, recon.name, CLEAN_NAME}
    layer = viewer.layers[f"edges: {recon.name}"]
    np.testing.assert_allclose(layer.data, edge_map(recon.data[5]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.scale, recon.scale[1:])
    assert layer.metadata["volume"] == 5

    edges.follow.setChecked(True)  # follows the volume slider when asked
    viewer.dims.set_current_step(0, 7)
    qtbot.waitUntil(lambda: viewer.layers[f"edges: {recon.name}"].metadata["volume"] == 7, timeout=30_000)
    np.testing.assert_allclose(viewer.layers[f"edges: {recon.name}"].data, edge_map(recon.data[7]), atol=1e-5)


def test_attention_overlay_for_current_volume(sample_viewer, qtbot, tiny_checkpoint):
    from workbench.inference import Denoiser

    viewer = sample_viewer
    _, att = viewer.window.add_plugin_dock_widget("recon-workbench", "Attention maps")
    att.source.from_file.setChecked(True)
    att.source.checkpoint.setText(str(tiny_checkpoint))
    att.mask_combo.set_layer(MASK_NAME)
    viewer.dims.set_current_step(0, 4)
    att.compute()
    wait_idle(qtbot, att)
    assert att.maps_volume == 4 and len(att.maps) >= 1
    blocks = [att.block.itemText(i) for i in range(att.block.count())]
    assert blocks == list(att.maps)
    overlay = att.overlay
    assert overlay.data.shape == (32, 32, 16) and 0.0 <= overlay.data.min() and overlay.data.max() <= 1.0
    assert overlay.blending == "translucent" and overlay.metadata["attention_block"] == att.block.currentText()
    # readable: the colour map is transparent at low attention, and only above-median attention is coloured
    alpha = overlay.colormap.colors[:, 3]
    assert alpha[0] == 0.0 and alpha[-1] == 1.0 and np.all(np.diff(alpha) >= 0)
    assert overlay.contrast_limits[0] == pytest.approx(float(np.median(overlay.data)), abs=1e-6)

    noisy = viewer.layers[NOISY_NAME]
    den = Denoiser.from_checkpoint(tiny_checkpoint)
    from napari_plugin._layers import to_core_order

    subject = den.prepare(to_core_order(noisy.data), noisy.metadata["bvals"], noisy.metadata["bvecs"],
                          viewer.layers[MASK_NAME].data > 0)
    expected = den.attention_maps(subject, 4)
    np.testing.assert_allclose(overlay.data, expected[att.block.currentText()], atol=1e-5)

    if len(blocks) > 1:  # choosing another block swaps the overlay
        att.block.setCurrentText(blocks[-1])
        np.testing.assert_allclose(att.overlay.data, expected[blocks[-1]], atol=1e-5)
    att.colormap.setCurrentText("viridis")
    att.opacity.setValue(0.3)
    assert att.overlay.colormap.name == "viridis (fading)" and att.overlay.opacity == pytest.approx(0.3)
