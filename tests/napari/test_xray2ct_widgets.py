"""CT from biplanar X-rays in napari: the phantom sample (AP and lateral X-rays beside the reference CT, tissue
labels), the Reconstruct CT from X-rays panel (network, network + refinement, back-projection; metrics, residuals,
difference; the side-by-side and 3D views), the generic panels on its layers, bad input, and the screenshot.

Real components throughout. The stage-1 network is the shipped one (workbench/tasks/xray2ct/weights) when it is
there, else a 2-step network trained here on 4 simulated 64³ cases; the stage-2 refinement is always a tiny one
trained here (2 steps), so the 128³ test stays short.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from napari_helpers import error_notifications

PANEL = "Reconstruct CT from X-rays"
TIMEOUT = 600_000  # ms; a shared, busy CPU can be many times slower than an idle one
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _shipped_stage1() -> Path:
    from workbench.tasks.xray2ct.workflow import DEFAULT_STAGE1

    return DEFAULT_STAGE1


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """4 simulated 64³ cases (no 128³ reference), for the tiny networks."""
    from workbench.tasks.xray2ct import workflow

    out = tmp_path_factory.mktemp("x2ct_cases")
    workflow.simulate(out, n=4, size=64, seed=11, hr_size=0, workers=1)
    return out


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, request):
    """The shipped stage-1 network, else a 2-step one trained on the simulated cases (through the core)."""
    if _shipped_stage1().is_file():
        return _shipped_stage1()
    from workbench.tasks import get_task
    from workbench.tasks.xray2ct import workflow

    cfg = get_task("xray2ct").default_config(real_ct_volumes=0)
    cfg.model.base_filters, cfg.model.options = 4, {"view_channels": 4}
    cfg.train.steps = cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    run = tmp_path_factory.mktemp("x2ct_stage1")
    result = workflow.train(request.getfixturevalue("cases"), run, cfg)
    return Path(result.best_checkpoint or result.last_checkpoint)


@pytest.fixture(scope="module")
def stage2(cases, tmp_path_factory):
    """A tiny stage-2 refinement (the sr task's rrdb_sr, x2), 2 steps on (2x-averaged, original) pairs."""
    from workbench.tasks import get_task
    from workbench.tasks.sr.data import SRPair
    from workbench.tasks.sr.workflow import make_trainer
    from workbench.tasks.xray2ct.data import load_dataset

    pairs = []
    for k, hu in enumerate(load_dataset(cases).hu):
        hu = np.asarray(hu, np.float32)
        pairs.append(SRPair.from_arrays(hu.reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5)), hu, (2, 2, 2), f"c{k}"))
    cfg = get_task("sr").default_config(scale=2)
    cfg.model.base_filters, cfg.model.options = 4, {"growth": 4, "num_blocks": 1}
    cfg.train.steps = cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    cfg.options = {**cfg.options, "lr_patch": 8}
    result = make_trainer(pairs, tmp_path_factory.mktemp("x2ct_stage2"), cfg).fit()
    return Path(result.best_checkpoint or result.last_checkpoint)


def _viewer_with_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", "xray2ct_phantom")
    return viewer


def _panel(viewer):
    _, panel = viewer.window.add_plugin_dock_widget("recon-workbench", PANEL)
    return panel


def _reconstruct(panel, qtbot, method: str):
    panel.set_method(method)
    panel.run()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT)
    assert panel.last_error is None, panel.last_error
    assert not panel.status.is_error, panel.status.text()
    return panel.result


def _case():
    from napari_plugin._sample_data import XRAY_SEED, XRAY_SIZE, _xray_case

    return _xray_case(XRAY_SIZE, XRAY_SEED)


def _check_result(viewer, panel, method: str, name: str, size: int = 64):
    """The CT layer on the volume's grid, the metrics line, the residual and difference layers."""
    from napari_plugin._layers import unwrap
    from workbench.tasks.xray2ct.geometry import project_hu

    g, ref = _case()["geometry"], viewer.layers["reference CT"]
    ct = viewer.layers[name]
    assert unwrap(panel.ct_layer) is ct and ct.data.shape == (size,) * 3 and ct.data.dtype == np.float32
    assert ct.metadata["role"] == "ct" and ct.metadata["method"] == method and ct.metadata["units"] == "HU"
    assert tuple(ct.contrast_limits) == (-1000.0, 1000.0) and ct.colormap.name == "gray"
    assert np.allclose(ct.metadata["affine"], g.with_size(size).affine())
    assert np.allclose(ct.scale, np.asarray(ref.scale) * 64 / size)
    if size == 64:
        assert np.allclose(ct.translate, ref.translate)
    # the metrics line: every metric of evaluate_ct, against the reference
    text = panel.metrics_label.text()
    for words in ("reference CT", "PSNR", "SSIM", "Dice lungs", "Dice bone", "re-projection error", "MAE"):
        assert words in text, text
    assert set(panel.result.metrics) >= {"psnr", "ssim", "dice_lung", "dice_bone", "reprojection_error", "mae_hu"}
    # the residuals: the result's X-rays minus the input X-rays, 2D, below the X-rays they belong to
    xrays = np.stack([viewer.layers["AP X-ray"].data, viewer.layers["lateral X-ray"].data])
    expected = project_hu(np.asarray(ct.data), g.with_size(size)) - xrays
    for k, (view, shown) in enumerate((("ap", "AP X-ray"), ("lateral", "lateral X-ray"))):
        res = panel.residual_layers[view]
        assert res.ndim == 2 and res.data.shape == (64, 64) and res.metadata["view"] == view
        np.testing.assert_allclose(res.data, expected[k], atol=1e-4)
        above = viewer.layers[shown]
        assert np.allclose(res.scale, above.scale) and res.translate[0] == pytest.approx(above.translate[0])
        assert res.extent.world[1][1] < above.extent.world[0][1]  # below it (Z)
    diff = panel.difference_layer
    assert diff.data.shape == (64, 64, 64) and not diff.visible and "difference_of" in diff.metadata
    assert np.allclose(diff.scale, ref.scale) and np.allclose(diff.translate, ref.translate)
    return ct


def test_sample_places_xrays_beside_the_reference_ct(make_napari_viewer):
    from napari_plugin._layers import spatial_kwargs
    from workbench.tasks.xray2ct.geometry import XrayGeometry

    viewer = _viewer_with_sample(make_napari_viewer)
    assert [layer.name for layer in viewer.layers] == ["reference CT", "tissue labels", "AP X-ray", "lateral X-ray"]
    case = _case()
    g = case["geometry"]
    ct, labels = viewer.layers["reference CT"], viewer.layers["tissue labels"]
    assert ct.data.shape == (64, 64, 64) and tuple(ct.contrast_limits) == (-1000.0, 1000.0)
    assert ct.metadata["role"] == "reference" and ct.metadata["task"] == "xray2ct" and ct.metadata["units"] == "HU"
    np.testing.assert_array_equal(ct.data, case["ct"])
    place = spatial_kwargs(g.affine(), 3)
    assert np.allclose(ct.scale, place["scale"]) and np.allclose(ct.translate, place["translate"])
    assert np.allclose(ct.metadata["affine"], g.affine())
    assert type(labels).__name__ == "Labels" and not labels.visible and labels.data.shape == (64, 64, 64)
    assert set(np.unique(labels.data)) <= set(range(6)) and np.allclose(labels.translate, ct.translate)
    ct_y = np.asarray(ct.extent.world)[:, 1]
    previous_right = ct_y[0]
    for k, (name, role, view) in enumerate((("lateral X-ray", "xray_lat", "lateral"), ("AP X-ray", "xray_ap", "ap"))):
        layer = viewer.layers[name]
        assert layer.ndim == 2 and layer.data.shape == (64, 64)
        np.testing.assert_array_equal(layer.data, case["xrays"][1 if view == "lateral" else 0])
        assert layer.metadata["role"] == role and layer.metadata["view"] == view
        assert XrayGeometry.from_dict(layer.metadata["geometry"]) == g
        assert np.allclose(layer.metadata["affine"], g.image_affine(view))  # what the writer saves
        # beside the volume (the lateral next to it, the AP beyond), at the volume's Z and scale
        y, z = np.asarray(layer.extent.world).T
        assert y[1] < previous_right and np.allclose(z, np.asarray(ct.extent.world)[:, 2])
        assert np.allclose(layer.scale, [ct.scale[1], ct.scale[2]])
        previous_right = y[0]


def test_backprojection_then_views_and_generic_panels(make_napari_viewer, qtbot):
    from napari_plugin._layers import grid
    from napari_plugin._widgets._xray2ct_work import sagittal_slice

    viewer = _viewer_with_sample(make_napari_viewer)
    panel = _panel(viewer)
    assert (panel.ap_combo.currentText(), panel.lat_combo.currentText(), panel.reference.currentText(),
            panel.method_key()) == ("AP X-ray", "lateral X-ray", "reference CT", "network")
    result = _reconstruct(panel, qtbot, "backprojection")
    ct = _check_result(viewer, panel, "backprojection", "back-projection CT")
    assert ct.metadata["baseline"] == "back-projection" and panel.progress.value() == 4
    assert result.metrics["reprojection_error"] > 0.0 and "back-projection CT" in panel.status.text()
    # residual and difference layers are maps: never offered as X-rays or a reference
    names = [panel.ap_combo.itemText(i) for i in range(panel.ap_combo.count())]
    assert "back-projection residual AP" not in names
    assert "back-projection − reference" not in [panel.reference.itemText(i) for i in range(panel.reference.count())]

    # X-rays beside the CT: a sagittal slice through the middle, head up, between the X-rays, with titles
    panel.show_beside()
    assert viewer.dims.ndisplay == 2 and tuple(viewer.dims.order) == (0, 2, 1)
    shown = {layer.name for layer in viewer.layers if layer.visible}
    assert shown == {"AP X-ray", "lateral X-ray", "back-projection CT", "back-projection residual AP",
                     "back-projection residual lateral", "titles: X-rays beside the CT"}
    # the slice through the most lung of the shown volume (the middle one when it has none, as back-projection)
    assert viewer.dims.point[0] == pytest.approx(ct.data_to_world([sagittal_slice(ct.data), 0, 0])[0])
    titles = viewer.layers["titles: X-rays beside the CT"]
    assert "back-projection CT, sagittal" in list(titles.text.values)
    panel.shown.setCurrentIndex(panel.shown.findData("reference"))  # the reference in its place
    assert viewer.layers["reference CT"].visible and not ct.visible

    # 3D: the CT as an attenuated MIP, the X-rays standing where their detectors are; back to 2D as it was
    panel.shown.setCurrentIndex(panel.shown.findData("ct"))
    ct.rendering = "minip"  # the user's choice, given back when leaving 3D
    panel.view3d_btn.setChecked(True)
    assert viewer.dims.ndisplay == 3 and ct.rendering == "attenuated_mip" and len(panel._walls) == 2
    walls = {w.metadata["display_of"]: w for w in panel._walls}
    ext = np.asarray(ct.extent.world)
    ap_wall, lat_wall = (np.asarray(walls[n].extent.world) for n in ("AP X-ray", "lateral X-ray"))
    assert ap_wall[1][1] < ext[0][1] and lat_wall[0][0] > ext[1][0]  # behind (-Y) and on the left (+X)
    assert {layer.name for layer in viewer.layers if layer.visible} == {"back-projection CT", "3D: AP X-ray",
                                                                        "3D: lateral X-ray"}
    panel.view3d_btn.setChecked(False)
    assert viewer.dims.ndisplay == 2 and not panel._walls and ct.rendering == "minip"
    assert viewer.layers["AP X-ray"].visible and "3D: AP X-ray" not in viewer.layers

    # the generic panels take the task's layers: Compare, Edge maps, Attention maps
    _, cmp = viewer.window.add_plugin_dock_widget("recon-workbench", "Compare")
    assert (cmp.recon.currentText(), cmp.reference.currentText(), cmp.mask.currentText()) == \
        ("back-projection CT", "reference CT", "tissue labels")
    assert "AP X-ray" not in [cmp.noisy.itemText(i) for i in range(cmp.noisy.count())]  # 2D pictures are not volumes
    cmp.show_side_by_side()
    assert grid(viewer).enabled and not cmp.status.is_error, cmp.status.text()
    qtbot.waitUntil(lambda: bool(cmp.metrics), timeout=TIMEOUT)
    assert set(cmp.metrics) == {"back-projection CT"}
    # the hidden X-rays beside the volume do not shift the view off the compared volumes
    from napari_plugin._widgets.xray2ct import _camera

    middle = np.mean(np.asarray(ct.extent.world), axis=0)[list(viewer.dims.displayed)]
    assert np.allclose(_camera(viewer).center[-2:], middle, atol=1.0)
    cmp.single_view()
    _, edges = viewer.window.add_plugin_dock_widget("recon-workbench", "Edge maps")
    assert (edges.prediction.currentText(), edges.reference.currentText()) == ("back-projection CT", "reference CT")
    edges.compute()
    qtbot.waitUntil(lambda: edges.worker is None, timeout=TIMEOUT)
    assert set(edges.edge_layers) >= {"back-projection CT", "reference CT"} and not edges.status.is_error
    _, att = viewer.window.add_plugin_dock_widget("recon-workbench", "Attention maps")
    att.compute()  # a DWI-denoiser tool: no 4D series here, one line, nothing added
    assert att.status.is_error and att.worker is None


def test_network_reconstructs_the_sample_then_review(make_napari_viewer, qtbot, stage1, tmp_path):
    viewer = _viewer_with_sample(make_napari_viewer)
    panel = _panel(viewer)
    if stage1 != _shipped_stage1():
        panel.stage1.setText(str(stage1))
    result = _reconstruct(panel, qtbot, "network")
    ct = _check_result(viewer, panel, "network", "network CT")
    assert ct.metadata["model"].startswith(str(stage1)) and "baseline" not in ct.metadata
    # the shipped network comes with its fusion with ridge; a user's network alone
    assert ("fused with ridge" in ct.metadata["model"]) == (stage1 == _shipped_stage1())
    if stage1 == _shipped_stage1():  # the trained network beats the back-projection smear by far
        assert result.metrics["psnr"] > 18.0 and result.metrics["dice_lung"] > 0.6, result.metrics
        assert result.metrics["reprojection_error"] < 0.15
    _reconstruct(panel, qtbot, "backprojection")
    assert "network CT" in viewer.layers and panel.ct_layer.name == "back-projection CT"

    # blinded review of the two reconstructions (3D layers only; the X-rays are not candidates)
    _, rev = viewer.window.add_plugin_dock_widget("recon-workbench", "Clinician review")
    candidates = [rev.candidates.item(i).text() for i in range(rev.candidates.count())]
    assert "AP X-ray" not in candidates and "network CT" in candidates
    rev.file_picker.setText(str(tmp_path / "review.json"))
    rev.case_edit.setText("xray2ct-phantom")
    rev.set_checked(["network CT", "back-projection CT"])
    rev.start()
    assert not rev.status.is_error, rev.status.text()
    assert set(rev.blind_layers) == {"A", "B"} and "network CT" not in viewer.layers
    rev.groups[("A", "sharpness")].button(3).click()
    rev.end()
    assert "network CT" in viewer.layers and "back-projection CT" in viewer.layers


def test_network_and_refinement_give_128_cubed_scored_on_the_reference_grid(make_napari_viewer, qtbot, stage1,
                                                                            stage2):
    viewer = _viewer_with_sample(make_napari_viewer)
    panel = _panel(viewer)
    panel.stage1.setText(str(stage1))
    panel.stage2.setText(str(stage2))
    result = _reconstruct(panel, qtbot, "network+refine")
    ct = _check_result(viewer, panel, "network+refine", "refined network CT", size=128)
    assert str(stage2) in ct.metadata["model"] and "64³ grid" in panel.metrics_label.text()
    assert np.isfinite(result.metrics["psnr"])


def test_atlas_and_ridge_with_a_linear_model(make_napari_viewer, qtbot, cases, tmp_path):
    from workbench.tasks.xray2ct.stages import fit_linear_model

    model = fit_linear_model(cases, tmp_path, real_ct_volumes=0, k=2)
    viewer = _viewer_with_sample(make_napari_viewer)
    panel = _panel(viewer)
    panel.linear.setText(str(model))
    for method, name in (("atlas", "atlas CT"), ("ridge", "ridge CT")):
        _reconstruct(panel, qtbot, method)
        assert panel.linear.isEnabled() and not panel.stage1.isEnabled()
        ct = _check_result(viewer, panel, method, name)
        assert ct.metadata["model"] == str(model)


def test_bad_input_gives_one_line_and_adds_no_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    panel = _panel(viewer)
    panel.set_method("backprojection")

    def refused(words: str) -> None:
        before, n = len(error_notifications()), len(viewer.layers)
        panel.run()
        qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT)
        text = panel.status.text()
        assert panel.status.is_error and words in text and "\n" not in text, text
        assert len(error_notifications()) > before and len(viewer.layers) == n and panel.ct_layer is None

    panel.run()  # no layer at all
    assert panel.status.is_error and panel.worker is None
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((64, 64), dtype=np.float32), name="only view", metadata={"role": "xray_ap"})
    assert panel.ap_combo.currentText() == "only view" and panel.lat_combo.layer() is None
    refused("lateral X-ray layer too")
    panel.lat_combo.set_layer("only view")
    refused("chosen as both views")
    viewer.add_image(rng.random((48, 64), dtype=np.float32), name="smaller", metadata={"role": "xray_lat"})
    panel.lat_combo.set_layer("smaller")
    refused("differ in size")
    # a worker failure (a checkpoint of another task): one line in the panel, no traceback, no layer
    viewer.add_image(rng.random((64, 64), dtype=np.float32), name="lateral", metadata={"role": "xray_lat"})
    panel.lat_combo.set_layer("lateral")
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    panel.set_method("network")
    panel.stage1.setText(str(bad))
    refused("Reconstruction failed")
    panel.stage1.setText(str(tmp_path / "missing.pt"))
    refused("not found")
    assert panel.last_error is not None and panel.result is None
    # pictures without a geometry reconstruct with the built-in parallel beam
    _reconstruct(panel, qtbot, "backprojection")
    assert panel.ct_layer.data.shape == (64, 64, 64) and "No reference" in panel.metrics_label.text()


def test_stop_adds_no_layer(make_napari_viewer, qtbot, stage1):
    viewer = _viewer_with_sample(make_napari_viewer)
    panel = _panel(viewer)
    panel.stage1.setText(str(stage1))
    n = len(viewer.layers)
    panel.run()
    panel.cancel()
    qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT)
    assert "Stopped" in panel.status.text() and len(viewer.layers) == n and panel.result is None


def test_screenshot_shows_both_xrays_and_the_reconstruction(stage1, tmp_path):
    """The screenshots of the X-ray panel; with the shipped network and ``WORKBENCH_UPDATE_DOCS=1`` they replace
    docs/screenshots/xray2ct_reconstruct.png and xray2ct_3d.png (a test run leaves the source tree alone)."""
    from PIL import Image
    from screenshots import main_xray2ct

    shipped = stage1 == _shipped_stage1()
    metrics = main_xray2ct(tmp_path, None if shipped else stage1)
    assert {"psnr", "ssim", "dice_lung"} <= set(metrics)
    for name in ("xray2ct_reconstruct.png", "xray2ct_3d.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("L"), float)
        assert img.shape[1] >= 1600 and img.std() > 20  # a full window with pictures in it
        if shipped and os.environ.get("WORKBENCH_UPDATE_DOCS") == "1":
            shutil.copyfile(tmp_path / name, DOCS / name)
