"""The super-resolution task in napari: samples on their grids, the generic Predict panel, Stop."""

import numpy as np
import pytest


def _viewer_with_sample(make_napari_viewer, key: str):
    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", key)
    return viewer


@pytest.fixture
def soil_viewer(make_napari_viewer):
    return _viewer_with_sample(make_napari_viewer, "soil_sr")


def _predict(viewer, qtbot):
    """The Predict panel run with its defaults (the shipped x4 network on the soil sample's LR layer)."""
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=120_000)
    return panel


def _world_centre(layer, index):
    return np.asarray(layer.data_to_world(np.asarray(index, float)))


def test_soil_sample_layers_overlay_in_world_coordinates(soil_viewer):
    names = [layer.name for layer in soil_viewer.layers]
    assert names == ["soil LR input", "soil tricubic", "soil HR reference"]
    lr, hr = soil_viewer.layers["soil LR input"], soil_viewer.layers["soil HR reference"]
    assert tuple(hr.data.shape) == tuple(4 * s for s in lr.data.shape)
    # LR voxel (i, j, k) sits at the centre of HR voxels 4i .. 4i+3
    for idx in ([0, 0, 0], [3, 5, 7]):
        hr_block_centre = np.asarray(idx) * 4 + 1.5
        assert np.allclose(_world_centre(lr, idx), _world_centre(hr, hr_block_centre), atol=1e-6)
    assert np.allclose(soil_viewer.layers["soil tricubic"].scale, hr.scale)


def test_predict_panel_adds_sr_on_the_hr_grid(soil_viewer, qtbot):
    _, panel = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    assert panel.task().name == "sr" and panel.layer_combo.layer().name == "soil LR input"
    assert panel.choices() == {"model": "rrdb_sr", "scale": None, "samples": 4, "steps": 20}
    assert not panel.choice_boxes["samples"].isEnabled() and not panel.choice_boxes["steps"].isEnabled()
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=120_000)
    assert panel.last_error is None, panel.last_error
    out = panel.output_layer
    hr = soil_viewer.layers["soil HR reference"]
    assert out.data.shape == hr.data.shape
    assert np.allclose(out.scale, hr.scale) and np.allclose(out.translate, hr.translate)
    assert out.metadata["role"] == "sr" and "shipped" in panel.status.text()
    err_sr = np.abs(out.data - hr.data).mean()
    err_tri = np.abs(soil_viewer.layers["soil tricubic"].data - hr.data).mean()
    assert err_sr < err_tri


def test_predict_panel_stop_adds_no_layer(soil_viewer, qtbot):
    _, panel = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    n = len(soil_viewer.layers)
    panel.run()
    panel.cancel()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)
    assert len(soil_viewer.layers) == n and "Stopped" in panel.status.text()


def test_predict_panel_refuses_a_checkpoint_of_another_task(soil_viewer, qtbot, tiny_checkpoint):
    _, panel = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.checkpoint.setText(str(tiny_checkpoint))
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)
    assert panel.last_error is not None and "not super-resolution" in panel.status.text()


def test_train_panel_trains_sr_from_an_lr_hr_pair_of_layers(soil_viewer, qtbot, tmp_path):
    from napari_helpers import tiny_settings, wait_idle

    from workbench.training.checkpoint import load_checkpoint

    _, train = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    assert train.task().name == "dwi"  # the first task; switching rebuilds the pickers
    train.task_combo.setCurrentIndex(train.task_combo.findData("sr"))
    assert list(train.inputs) == ["lr", "hr"] and train.mask_combo is None
    assert train.inputs["lr"].currentText() == "soil LR input"
    assert train.inputs["hr"].currentText() == "soil HR reference"
    assert [train.model_combo.itemData(i) for i in range(train.model_combo.count())] == ["rrdb_sr", "sr3"]
    assert train.weights()["l1"] == 1.0 and train.weights()["mse"] == 0.0
    # no feature network given: the perceptual slider is off and says why
    assert not train.sliders["perceptual"].isEnabled() and train.sliders["l1"].isEnabled()
    assert "nothing is downloaded" in train.slider_labels["perceptual"].toolTip()
    tiny_settings(train, steps=3)
    train.run_dir.setText(str(tmp_path / "run"))
    train.start()
    wait_idle(qtbot, train)
    assert train.last_error is None, train.last_error
    assert train.result.steps_done == 3
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["task_meta"]["task"] == "sr" and ckpt["config"]["options"]["lr_patch"] == 8

    # the run's checkpoint, applied by the Predict panel, lands on the HR grid
    _, panel = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.checkpoint.setText(str(tmp_path / "run" / "last.pt"))
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=120_000)
    assert panel.last_error is None, panel.last_error
    assert panel.output_layer.data.shape == soil_viewer.layers["soil HR reference"].data.shape


def test_train_panel_says_which_layer_is_missing(make_napari_viewer):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    train.task_combo.setCurrentIndex(train.task_combo.findData("sr"))
    train.start()
    assert train.status.is_error and "LR volume" in train.status.text() and train.worker is None


def test_compare_shows_sr_against_hr_with_difference_and_metrics(soil_viewer, qtbot):
    from napari_plugin._layers import grid
    from workbench.metrics import psnr

    panel = _predict(soil_viewer, qtbot)
    sr = panel.output_layer
    _, cmp = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    # the task's roles preselect: SR result, HR reference, LR input, tricubic baseline
    assert (cmp.recon.currentText(), cmp.reference.currentText(), cmp.noisy.currentText(),
            cmp.baseline.currentText()) == (sr.name, "soil HR reference", "soil LR input", "soil tricubic")
    cmp.show_side_by_side()
    assert grid(soil_viewer).enabled and cmp.diff_layer is not None
    hr = soil_viewer.layers["soil HR reference"].data
    np.testing.assert_allclose(cmp.diff_layer.data, sr.data - hr, atol=1e-5)
    qtbot.waitUntil(lambda: bool(cmp.metrics), timeout=60_000)
    assert set(cmp.metrics) == {sr.name, "soil tricubic"}  # the LR input is on another grid: not scored
    assert "soil LR input" in cmp.table_title.text() and "Whole volume" in cmp.table_title.text()
    dr = float(hr.max())
    assert cmp.metrics[sr.name][0] == pytest.approx(psnr(sr.data, hr, data_range=dr), rel=1e-5)
    assert cmp.metrics[sr.name][0] > cmp.metrics["soil tricubic"][0]


def test_edge_maps_of_lr_sr_and_hr_each_on_its_grid(soil_viewer, qtbot):
    from workbench.inference import edge_map

    panel = _predict(soil_viewer, qtbot)
    sr = panel.output_layer
    _, edges = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Edge maps")
    assert (edges.input.currentText(), edges.prediction.currentText(), edges.reference.currentText()) == \
        ("soil LR input", sr.name, "soil HR reference")
    edges.compute()
    qtbot.waitUntil(lambda: edges.worker is None, timeout=60_000)
    lr_edges, sr_edges = soil_viewer.layers["edges: soil LR input"], soil_viewer.layers[f"edges: {sr.name}"]
    np.testing.assert_allclose(sr_edges.data, edge_map(sr.data), rtol=1e-5, atol=1e-5)
    assert lr_edges.data.shape == soil_viewer.layers["soil LR input"].data.shape
    assert np.allclose(lr_edges.scale, soil_viewer.layers["soil LR input"].scale)
    assert np.allclose(sr_edges.scale, soil_viewer.layers["soil HR reference"].scale)


def test_blinded_review_of_sr_against_tricubic(soil_viewer, qtbot, tmp_path):
    import json

    panel = _predict(soil_viewer, qtbot)
    names = [panel.output_layer.name, "soil tricubic"]
    _, rev = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Clinician review")
    rev.file_picker.setText(str(tmp_path / "review.json"))
    rev.case_edit.setText("soil-01")
    rev.set_checked(names)
    rev.start()
    assert not rev.status.is_error, rev.status.text()
    assert set(rev.blind_layers) == {"A", "B"} and not any(n in soil_viewer.layers for n in names)
    rev.groups[("A", "sharpness")].button(5).click()
    saved = json.loads((tmp_path / "review.json").read_text())["cases"]["soil-01"]
    assert saved["scores"]["A"]["sharpness"] == 5 and sorted(saved["candidates"]) == sorted(names)
    rev.end()
    assert all(n in soil_viewer.layers for n in names)


def test_predict_panel_shows_the_networks_attention_on_the_lr_grid(soil_viewer, qtbot):
    from workbench.tasks import get_task

    _, panel = soil_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    assert panel.attention.isEnabled()
    panel.attention.setChecked(True)
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=120_000)
    assert panel.last_error is None, panel.last_error
    att, lr = panel.attention_layer, soil_viewer.layers["soil LR input"]
    assert att.data.shape == lr.data.shape and np.allclose(att.scale, lr.scale)
    expected, _ = get_task("sr").attention_array(np.asarray(lr.data), lr.metadata["affine"], scale=4)
    np.testing.assert_allclose(att.data, expected, atol=1e-5)
    assert att.blending == "translucent" and att.colormap.colors[0, 3] == 0.0  # low attention is transparent
    assert "Attention overlay" in panel.status.text()


@pytest.fixture
def soil8_viewer(make_napari_viewer):
    return _viewer_with_sample(make_napari_viewer, "soil_sr3")


def test_sr3_predict_panel_adds_mean_uncertainty_and_samples(soil8_viewer, qtbot):
    hr = soil8_viewer.layers["soil HR reference"]
    lr = soil8_viewer.layers["soil LR input"]
    assert lr.data.shape == (16, 16, 8) and hr.data.shape == (128, 128, 8)
    _, panel = soil8_viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.set_choice("model", "sr3")
    assert panel.choice_boxes["samples"].isEnabled() and panel.choice_boxes["steps"].isEnabled()
    panel.set_choice("samples", 2)
    panel.set_choice("steps", 10)
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=240_000)
    assert panel.last_error is None, panel.last_error
    mean = panel.output_layer
    assert mean.data.shape == hr.data.shape and np.allclose(mean.scale, hr.scale)
    std, samples = panel.extra_layers
    assert std.metadata["role"] == "uncertainty" and std.data.shape == hr.data.shape
    assert std.blending == "translucent" and std.colormap.colors[0, 3] == 0.0
    assert samples.data.shape == (2, *hr.data.shape) and samples.axis_labels[0] == "sample"
    np.testing.assert_allclose(mean.data, samples.data.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(std.data, samples.data.std(axis=0, ddof=1), atol=1e-4)
    assert float(std.data.mean()) > 0
    # what SR3 is for: a sample keeps the pore structure that bicubic smears (held-out case)
    from workbench.tasks.sr.metrics import evaluate_slices

    ref = np.asarray(hr.data)
    ours = evaluate_slices(np.asarray(samples.data[0]), ref)
    bicubic = evaluate_slices(np.asarray(soil8_viewer.layers["soil tricubic"].data), ref)
    assert ours["porosity_error"] < bicubic["porosity_error"] and ours["tpc_error"] < bicubic["tpc_error"]
    _, cmp = soil8_viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    assert cmp.recon.currentText() == mean.name  # the mean, not the uncertainty map, is the result


def test_coarse_soil_sample_sr3_mean_beats_bicubic_by_2_db(make_napari_viewer, qtbot):
    """File > Open Sample > coarse grains: its own layer names beside the fine sample's, and SR3's home ground."""
    from workbench.tasks.sr.metrics import evaluate_slices

    viewer = _viewer_with_sample(make_napari_viewer, "soil_sr3_coarse")
    viewer.open_sample("recon-workbench", "soil_sr3")
    coarse_hr, fine_hr = viewer.layers["coarse soil HR reference"], viewer.layers["soil HR reference"]
    lr = viewer.layers["coarse soil LR input"]
    assert lr.data.shape == (16, 16, 8) and coarse_hr.data.shape == fine_hr.data.shape == (128, 128, 8)
    edges = [np.abs(np.diff(np.asarray(x.data), axis=0)).mean() for x in (coarse_hr, fine_hr)]
    assert edges[0] < 0.8 * edges[1]  # bigger grains: fewer edges
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", "Predict")
    panel.layer_combo.setCurrentText(lr.name)
    panel.set_choice("model", "sr3")
    panel.set_choice("steps", 10)
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=240_000)
    assert panel.last_error is None, panel.last_error
    ref = np.asarray(coarse_hr.data)
    ours = evaluate_slices(np.asarray(panel.output_layer.data), ref)
    bicubic = evaluate_slices(np.asarray(viewer.layers["coarse soil tricubic"].data), ref)
    assert ours["psnr"] > bicubic["psnr"] + 2.0


def test_train_panel_switches_to_sr3_defaults_and_trains_it(soil8_viewer, qtbot, tmp_path):
    from napari_helpers import wait_idle

    from workbench.training.checkpoint import load_checkpoint

    _, train = soil8_viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    train.task_combo.setCurrentIndex(train.task_combo.findData("sr"))
    assert not train.sliders["diffusion"].isEnabled()
    train.model_combo.setCurrentIndex(train.model_combo.findData("sr3"))
    assert train.sliders["diffusion"].isEnabled() and train.weights()["diffusion"] == 1.0
    assert train.weights()["ssim"] == 0.05 and train.schedule.currentData() == "cosine"
    train.steps.setValue(2)
    train.batch.setValue(2)
    train.run_dir.setText(str(tmp_path / "run"))
    train.start()
    wait_idle(qtbot, train, timeout=180_000)
    assert train.last_error is None, train.last_error
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["model"]["name"] == "sr3" and ckpt["ema_state"]
    assert "diffusion" in ckpt["val_history"][-1]["terms"]


def test_samples_open_in_the_axial_view(make_napari_viewer):
    """File > Open Sample shows in-plane slices (slider over z), not napari's default slices along x."""
    viewer = _viewer_with_sample(make_napari_viewer, "soil_sr3")
    assert tuple(viewer.dims.order) == (2, 1, 0)
    shown = {name: tuple(viewer.layers[name].data.shape[a] for a in viewer.dims.displayed)
             for name in ("soil LR input", "soil HR reference")}
    assert shown == {"soil LR input": (16, 16), "soil HR reference": (128, 128)}  # not a 16 x 128 strip
    dwi = _viewer_with_sample(make_napari_viewer, "dwi_phantom")
    assert tuple(dwi.dims.order) == (0, 3, 2, 1)  # volume slider, then z
    dwi.dims.order = (0, 1, 2, 3)  # the user turns it back
    dwi.add_image(np.zeros((2, 4, 5, 6)), name="not a sample")
    assert tuple(dwi.dims.order) == (0, 1, 2, 3)  # the sample's hook turned the view once, not at every insertion
